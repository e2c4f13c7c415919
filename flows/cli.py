"""The ``hal`` command line: each command fills a flow's parameter model and runs the flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

app = typer.Typer(help="hal: human-likeness rewards and alignment.", no_args_is_help=True)

RecipeOption = Annotated[
    Path | None, typer.Option(help="YAML recipe with the stage's parameters.", exists=True)
]
# Options that pick and tune a judge (``add_judge`` assembles them).
JudgeFileOption = Annotated[
    Path | None, typer.Option(help="YAML judge config (backend, model, ...).", exists=True)
]
BackendOption = Annotated[str | None, typer.Option(help="openai | hf | recorded | local")]
ModelOption = Annotated[str | None, typer.Option(help="Model name (openai backend).")]
BaseUrlOption = Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint.")]
ConcurrencyOption = Annotated[int | None, typer.Option(help="Requests in flight.")]
ModelPathOption = Annotated[str | None, typer.Option(help="Local model (hf, local).")]
CacheOption = Annotated[str | None, typer.Option(help="SQLite cache of judge answers.")]
RetryOption = Annotated[
    str | None, typer.Option(help="Failures asked again: none | transient | all")
]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]


def load_recipe(recipe: Path | None) -> dict:
    """A recipe's parameters as a dict (empty without a recipe)."""
    if recipe is None:
        return {}
    payload = yaml.safe_load(recipe.read_text()) or {}
    if not isinstance(payload, dict):
        raise typer.BadParameter(f"{recipe}: a recipe is a mapping of parameter names to values")
    return payload


def merge(recipe: Path | None, **overrides: object) -> dict:
    """Recipe values, overridden by options given on the command line."""
    values = load_recipe(recipe)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return values


def add_judge(values: dict, judge_file: Path | None, **flags: object) -> None:
    """Set ``values["judge"]``: the recipe's judge, then a judge YAML, then single flags
    (backend openai unless one is named)."""
    judge = {**dict(values.get("judge") or {}), **load_recipe(judge_file)}
    judge.update({key: value for key, value in flags.items() if value is not None})
    if judge:
        values["judge"] = {"backend": "openai", **judge}


@app.command()
def validate(
    recipe: RecipeOption = None,
    policy: Annotated[str | None, typer.Option(help="fail | quarantine")] = None,
) -> None:
    """Check every dataset of the data folder against its Great Expectations contract."""
    from flows.validate_data import ValidateDataParams, validate_data

    summaries = validate_data(ValidateDataParams(**merge(recipe, policy=policy)))
    bad = [s for s in summaries if s.quarantined_rows]
    typer.echo(f"{len(summaries)} files checked, {len(bad)} with quarantined rows")


@app.command("fit-reward")
def fit_reward_command(
    recipe: RecipeOption = None,
    ratings_file: Annotated[str | None, typer.Option(help="Ratings table.")] = None,
    policy: Annotated[str | None, typer.Option(help="fail | quarantine")] = None,
    register_as: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias for the new version.")] = None,
) -> None:
    """Fit the HL reward (L1 logistic over trait ratings) and register it in MLflow."""
    from flows.fit_reward import FitRewardParams, fit_reward

    params = FitRewardParams(
        **merge(
            recipe,
            ratings_file=ratings_file,
            validation_policy=policy,
            register_as=register_as,
            alias=alias,
        )
    )
    result = fit_reward(params)
    typer.echo(json.dumps(result.model_dump(), indent=2))


@app.command("derive-traits")
def derive_traits_command(
    statements_file: Annotated[
        str | None, typer.Option(help="Statements table, relative to the data folder.")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Derivation recipe YAML (infra/recipes/derive_traits.yaml).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Clustering seeds, e.g. 0,1,2,3,4.")] = None,
    consolidator: Annotated[str | None, typer.Option(help="extractive | llm")] = None,
    completer: Annotated[
        str | None, typer.Option(help="llm: 'module:name' with complete(prompt) -> str.")
    ] = None,
    consolidator_judge: Annotated[
        Path | None,
        typer.Option(help="llm: YAML judge config whose model consolidates.", exists=True),
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Reference questionnaire for coverage.")
    ] = None,
    policy: Annotated[str | None, typer.Option(help="fail | quarantine")] = None,
) -> None:
    """Derive a trait questionnaire from judges' statements (UMAP + HDBSCAN + consolidation)."""
    from flows.derive_traits import DeriveTraitsParams, derive_traits

    values = {
        "statements_file": statements_file,
        "recipe_file": recipe,
        "seeds": [int(s) for s in seeds.split(",")] if seeds else None,
        "consolidator": consolidator,
        "completer": completer,
        "consolidator_judge": (
            {"backend": "openai", **load_recipe(consolidator_judge)} if consolidator_judge else None
        ),
        "reference_questionnaire": reference,
        "validation_policy": policy,
    }
    params = DeriveTraitsParams(**{k: v for k, v in values.items() if v is not None})
    result = derive_traits(params)
    typer.echo(json.dumps(result.model_dump(), indent=2))


@app.command()
def score(
    ratings: Annotated[Path, typer.Argument(help="CSV with one column per trait id.", exists=True)],
    reward: Annotated[
        str,
        typer.Option(help="Reward JSON path or MLflow model URI (models:/hal-reward@champion)."),
    ] = "models:/hal-reward@champion",
    list_column: Annotated[
        str | None, typer.Option(help="Column of rating lists to expand by questionnaire position.")
    ] = None,
    questionnaire: Annotated[
        Path | None, typer.Option(help="Questionnaire JSON for --list-column.")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Where to write the scored CSV.")] = None,
) -> None:
    """Score a ratings file with a registered or JSON reward; writes an ``hl`` column."""
    from flows.scoring import score_file

    written = score_file(ratings, reward, output, list_column, questionnaire)
    typer.echo(f"scored -> {written}")


@app.command()
def rate(
    input_file: Annotated[
        str | None, typer.Argument(help="CSV with one dialogue per row (or set in --recipe).")
    ] = None,
    recipe: RecipeOption = None,
    judge: JudgeFileOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    concurrency: ConcurrencyOption = None,
    model_path: ModelPathOption = None,
    questionnaire: Annotated[str | None, typer.Option(help="Questionnaire JSON.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Dialogue column.")] = None,
    id_column: Annotated[str | None, typer.Option(help="Unique id column.")] = None,
    speakers: Annotated[str | None, typer.Option(help="turing | doctor_visit")] = None,
    output: Annotated[str | None, typer.Option(help="Ratings CSV to write.")] = None,
    cache: CacheOption = None,
    limit: Annotated[int | None, typer.Option(help="Rate only the first N rows.")] = None,
    retry_failures: RetryOption = None,
    progress: ProgressOption = True,
) -> None:
    """Rate dialogues on a questionnaire with a judge; cached, resumable, every item accounted."""
    from flows.rate_dialogues import RateDialoguesParams, rate_dialogues

    values = merge(
        recipe,
        input_file=input_file,
        questionnaire_file=questionnaire,
        text_column=text_column,
        id_column=id_column,
        speakers=speakers,
        output_file=output,
        cache_file=cache,
        limit=limit,
        retry_failures=retry_failures,
        progress=progress,
    )
    add_judge(
        values,
        judge,
        backend=backend,
        model=model,
        base_url=base_url,
        concurrency=concurrency,
        model_path=model_path,
    )
    result = rate_dialogues(RateDialoguesParams(**values))
    typer.echo(json.dumps(result.model_dump(), indent=2))


@app.command("collect-statements")
def collect_statements_command(
    games_file: Annotated[
        str | None, typer.Argument(help="Games table (default turing/games.csv).")
    ] = None,
    recipe: RecipeOption = None,
    judge: JudgeFileOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    concurrency: ConcurrencyOption = None,
    model_path: ModelPathOption = None,
    output: Annotated[str | None, typer.Option(help="Statements CSV to write.")] = None,
    cache: CacheOption = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N games.")] = None,
    retry_failures: RetryOption = None,
    policy: Annotated[str | None, typer.Option(help="fail | quarantine")] = None,
    progress: ProgressOption = True,
) -> None:
    """Ask a judge what gave the human away in each Turing game; cached, resumable."""
    from flows.collect_statements import CollectStatementsParams, collect_statements

    values = merge(
        recipe,
        games_file=games_file,
        output_file=output,
        cache_file=cache,
        limit=limit,
        retry_failures=retry_failures,
        validation_policy=policy,
        progress=progress,
    )
    add_judge(
        values,
        judge,
        backend=backend,
        model=model,
        base_url=base_url,
        concurrency=concurrency,
        model_path=model_path,
    )
    result = collect_statements(CollectStatementsParams(**values))
    typer.echo(json.dumps(result.model_dump(), indent=2))


@app.command()
def pipeline(
    recipe: RecipeOption = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rerun every stage.")] = False,
) -> None:
    """Run the whole HAL pipeline; unchanged stages are skipped by cache."""
    from flows.pipeline import PipelineParams, hal_pipeline

    values = load_recipe(recipe)
    if no_cache:
        values["use_cache"] = False
    result = hal_pipeline(PipelineParams(**values))
    typer.echo(f"pipeline run {result.run_id}; cached stages: {', '.join(result.cached) or 'none'}")
    for name, value in result.metrics.items():
        typer.echo(f"  {name}: {value:.4f}")


@app.command()
def demo() -> None:
    """The main job on embedded defaults: the pipeline with infra/recipes/pipeline.yaml."""
    from hal_core.settings import PROJECT_ROOT

    pipeline(recipe=PROJECT_ROOT / "infra" / "recipes" / "pipeline.yaml", no_cache=False)


@app.command("evaluate")
def evaluate_command(
    recipe: RecipeOption = None,
    responses_dir: Annotated[
        str | None, typer.Option(help="Folder of <model>/samples_epoch_XX_*.csv files.")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Model folder to evaluate (repeatable); default all.")
    ] = None,
    questionnaire: Annotated[str | None, typer.Option(help="Questionnaire rated on.")] = None,
    reward: Annotated[str | None, typer.Option(help="Reward JSON (weights by id, or w/b).")] = None,
    base_epoch: Annotated[int | None, typer.Option(help="Epoch of the base model.")] = None,
    pairwise_csv: Annotated[
        str | None, typer.Option(help="Pairwise human judgements for win rate and Elo.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the Elo orderings.")] = None,
) -> None:
    """HL score per epoch with CIs, paired t-tests against the base and per-trait shifts."""
    from flows.evaluate import EvaluateParams, evaluate

    params = EvaluateParams(
        **merge(
            recipe,
            responses_dir=responses_dir,
            models=model or None,
            questionnaire=questionnaire,
            reward=reward,
            base_epoch=base_epoch,
            pairwise_csv=pairwise_csv,
            seed=seed,
        )
    )
    typer.echo(json.dumps(evaluate(params).model_dump(mode="json"), indent=2))


@app.command()
def compare(
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment; default: the pipeline's.")
    ] = None,
    max_runs: Annotated[int, typer.Option(help="Most recent runs to show.")] = 20,
) -> None:
    """Compare pipeline runs: reward accuracy, selected traits, DPO margins, HL gain."""
    from hal_core.settings import get_settings
    from tasks.evaluation import COMPARE_METRICS, fetch_pipeline_runs
    from tasks.tracking import configure_tracking

    settings = get_settings()
    configure_tracking(settings)
    name = experiment or settings.experiment_pipeline
    table = fetch_pipeline_runs.fn(name, max_runs)
    if table.empty:
        typer.echo(f"no runs in MLflow experiment {name!r}")
        return
    table["run_id"] = table["run_id"].str[:12]
    for column in COMPARE_METRICS:
        digits = 0 if column == "n_selected" else 4
        table[column] = [f"{value:.{digits}f}" if value == value else "" for value in table[column]]
    typer.echo(table.to_string(index=False))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _wait_for_prefect(api_url: str, timeout_s: float = 180.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise typer.BadParameter(f"no Prefect API answered at {api_url} within {timeout_s:.0f} s")


def _create_process_pools(api_url: str, names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        for name in names:
            pool = WorkPoolCreate(name=name, type="process", base_job_template=template)
            client.create_work_pool(pool, overwrite=True)


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port of the local Prefect server.")] = 4200,
    api_url: Annotated[
        str | None, typer.Option(help="Use this Prefect API instead of starting a server.")
    ] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(help="Work pool to start a worker for (repeatable); default: all pools."),
    ] = None,
    deployment: Annotated[
        list[str] | None,
        typer.Option(help="Deployment to apply (repeatable); default: all whose code exists."),
    ] = None,
    prefect_file: Annotated[Path, typer.Option(help="Deployments.")] = Path("infra/prefect.yaml"),
) -> None:
    """Start a Prefect server and workers on 127.0.0.1 and apply infra/prefect.yaml."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from hal_core.settings import PROJECT_ROOT

    spec_path = prefect_file if prefect_file.is_absolute() else PROJECT_ROOT / prefect_file
    specs = (yaml.safe_load(spec_path.read_text()) or {}).get("deployments") or []
    unknown = sorted(set(deployment or []) - {d["name"] for d in specs})
    if unknown:
        raise typer.BadParameter(f"{spec_path} has no deployments {unknown}")
    pools = sorted({d["work_pool"]["name"] for d in specs})
    chosen = [d for d in specs if not deployment or d["name"] in deployment]
    ready = [d for d in chosen if (PROJECT_ROOT / d["entrypoint"].split(":")[0]).is_file()]
    for skipped in [d for d in chosen if d not in ready]:
        typer.echo(f"skipping deployment {skipped['name']!r}: {skipped['entrypoint']} not found")
    env = {**os.environ, "HAL_PROJECT_DIR": os.environ.get("HAL_PROJECT_DIR", str(PROJECT_ROOT))}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    children: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` and kill: stop children too
    try:
        if api_url is None:
            api_url = f"http://127.0.0.1:{port}/api"
            server = [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            children.append(subprocess.Popen(server, env=env))
        env["PREFECT_API_URL"] = api_url
        _wait_for_prefect(api_url)
        _create_process_pools(api_url, pools)
        for name in pool or pools:
            worker = [*prefect, "worker", "start", "--pool", name, "--type", "process"]
            children.append(subprocess.Popen(worker, env=env, cwd=PROJECT_ROOT))
        if ready:
            names = [flag for d in ready for flag in ("--name", d["name"])]
            deploy = [*prefect, "deploy", "--prefect-file", str(spec_path), *names]
            subprocess.run(deploy, env=env, cwd=PROJECT_ROOT, check=True)
        typer.echo(f"Prefect API {api_url}; workers on {', '.join(pool or pools)}; Ctrl-C stops")
        while all(child.poll() is None for child in children):
            time.sleep(1)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


@app.command()
def align(
    recipe: RecipeOption = None,
    scores_file: Annotated[
        str | None, typer.Option(help="Precomputed HL score per candidate (skips the judge).")
    ] = None,
    judge: Annotated[
        Path | None, typer.Option(help="YAML judge config that rates candidates.", exists=True)
    ] = None,
    candidates_file: Annotated[str | None, typer.Option(help="Candidates CSV.")] = None,
    reward: Annotated[str | None, typer.Option(help="Reward JSON (weights by id, or w/b).")] = None,
    k: Annotated[float | None, typer.Option(help="Pair margin in units of σ (0.5).")] = None,
    dpo_recipe: Annotated[
        str | None, typer.Option(help="DPO recipe name in infra/recipes/dpo/ or a YAML path.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Policy: hub id, local folder or hal-tiny-llama.")
    ] = None,
    accelerate_config: Annotated[
        str | None, typer.Option(help="single | ddp | zero2 | zero3")
    ] = None,
    num_processes: Annotated[int | None, typer.Option(help="Training processes (GPUs).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a DPO recipe key: --set num_train_epochs=3."),
    ] = None,
    force_fresh_start: Annotated[
        bool, typer.Option(help="Discard checkpoints instead of resuming.")
    ] = False,
) -> None:
    """Pair HL-scored candidates and train the policy with DPO + LoRA (accelerate launch)."""
    from flows.align import AlignParams
    from flows.align import align as align_flow

    values = merge(
        recipe,
        scores_file=scores_file,
        candidates_file=candidates_file,
        reward_file=reward,
        model_name_or_path=model,
        accelerate_config=accelerate_config,
        num_processes=num_processes,
        force_fresh_start=force_fresh_start or None,
    )
    if dpo_recipe is not None:
        values["recipe"] = dpo_recipe
    add_judge(values, judge)
    if k is not None:
        values["pairing"] = {**dict(values.get("pairing") or {}), "k": k}
    overrides = dict(values.get("recipe_overrides") or {})
    for item in set_ or []:
        key, separator, text = item.partition("=")
        if not separator:
            raise typer.BadParameter(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(text)
    if overrides:
        values["recipe_overrides"] = overrides
    result = align_flow(AlignParams(**values))
    typer.echo(json.dumps(result.model_dump(), indent=2, default=str))


@app.command("train-local-judge")
def train_local_judge_command(
    recipe: RecipeOption = None,
    questionnaire: Annotated[str | None, typer.Option(help="hal16q | hal32q")] = None,
    cv_folds: Annotated[int | None, typer.Option(help="Grouped CV folds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the fold assignment.")] = None,
    max_chunks: Annotated[
        int | None, typer.Option(help="MiniLM windows per dialogue (0 = all).")
    ] = None,
    register_as: Annotated[str | None, typer.Option(help="Registered model name.")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias ('auto' = questionnaire id).")] = None,
) -> None:
    """Train the local judge (per-trait regressors on MiniLM + style features) and register it."""
    from flows.train_local_judge import TrainLocalJudgeParams, train_local_judge

    values = merge(
        recipe,
        questionnaire=questionnaire,
        cv_folds=cv_folds,
        seed=seed,
        register_as=register_as,
        alias=alias,
    )
    if max_chunks is not None:
        features = dict(values.get("features") or {})
        features["max_chunks"] = max_chunks or None
        values["features"] = features
    result = train_local_judge(TrainLocalJudgeParams(**values))
    typer.echo(json.dumps(result.model_dump(), indent=2))


if __name__ == "__main__":
    app()
