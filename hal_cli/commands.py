"""The ``hal`` command line. Every stage command fills its flow's parameter model one way::

    hal <stage> [--recipe FILE] [--set key=value ...] [named options]

The recipe (YAML) holds what differs from the model's defaults; ``--set`` takes dotted keys
(``--set pairing.k=1.0``) with YAML values; the named options are shortcuts for documented keys
(``--judge FILE`` loads a judge config into ``judge``). Later sources win: recipe, named
options, ``--set``. The result is the flow's result model, printed as JSON.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
import yaml

from hal_core.judging import JudgeError


@dataclass(frozen=True)
class Shortcut:
    """A named option for one parameter key."""

    flag: str
    key: str
    help: str
    kind: Literal["value", "file", "judge", "flag", "list", "csv_ints", "negated"] = "value"


@dataclass(frozen=True)
class StageCommand:
    """``hal <name>``: runs ``flow`` with a ``params`` model built from the command line."""

    name: str
    flow: str
    params: str
    help: str
    shortcuts: tuple[Shortcut, ...] = ()
    argument: Shortcut | None = None
    default_judge_backend: str | None = None


JUDGE_SHORTCUTS = (
    Shortcut("--judge", "judge", "YAML judge config (backend, model, ...).", "file"),
    Shortcut("--backend", "judge.backend", "Judge backend: openai | hf | recorded | local."),
    Shortcut("--model", "judge.model", "Judge model name (openai backend)."),
    Shortcut("--base-url", "judge.base_url", "OpenAI-compatible endpoint."),
    Shortcut("--concurrency", "judge.concurrency", "Requests in flight."),
    Shortcut("--model-path", "judge.model_path", "Local judge model (hf, local)."),
    Shortcut("--cache", "cache_file", "SQLite cache of judge answers."),
    Shortcut("--retry-failures", "retry_failures", "Failures asked again: none|transient|all."),
    Shortcut("--limit", "limit", "Use only the first N rows."),
    Shortcut("--progress", "progress", "Show a progress bar.", "flag"),
)
POLICY = Shortcut("--policy", "validation_policy", "Invalid rows: fail | quarantine.")
JUDGE_PRESET = Shortcut(
    "--judge",
    "judge",
    "Judge preset (local, or a config of infra/judges/ by name) or a YAML judge config.",
    "judge",
)

STAGE_COMMANDS: tuple[StageCommand, ...] = (
    StageCommand(
        "validate",
        "flows.validate_data:validate_data",
        "flows.validate_data:ValidateDataParams",
        "Check every dataset of the data folder against its Great Expectations contract.",
        (Shortcut("--policy", "policy", "Invalid rows: fail | quarantine."),),
    ),
    StageCommand(
        "collect-statements",
        "flows.collect_statements:collect_statements",
        "flows.collect_statements:CollectStatementsParams",
        "Ask a judge what gave the human away in each Turing game; cached, resumable.",
        (*JUDGE_SHORTCUTS, Shortcut("--output", "output_file", "Statements CSV."), POLICY),
        argument=Shortcut("games_file", "games_file", "Games table (default turing/games.csv)."),
        default_judge_backend="openai",
    ),
    StageCommand(
        "derive-traits",
        "flows.derive_traits:derive_traits",
        "flows.derive_traits:DeriveTraitsParams",
        "Derive a trait questionnaire from judges' statements (UMAP + HDBSCAN + consolidation).",
        (
            Shortcut("--statements-file", "statements_file", "Statements table."),
            Shortcut("--seeds", "derivation.seeds", "Clustering seeds, e.g. 0,1,2.", "csv_ints"),
            Shortcut("--consolidator", "consolidator", "extractive | llm"),
            Shortcut("--completer", "completer", "llm: 'module:name' with complete(prompt)."),
            Shortcut("--consolidator-judge", "consolidator_judge", "llm: judge YAML.", "file"),
            Shortcut("--reference", "reference_questionnaire", "Questionnaire for coverage."),
            POLICY,
        ),
    ),
    StageCommand(
        "fit-reward",
        "flows.fit_reward:fit_reward",
        "flows.fit_reward:FitRewardParams",
        "Fit the HL reward over trait ratings and register it in MLflow.",
        (
            Shortcut("--ratings-file", "ratings_file", "Ratings table."),
            POLICY,
            Shortcut("--register-as", "register_as", "Registered model name."),
            Shortcut("--alias", "alias", "Alias for the new version."),
        ),
    ),
    StageCommand(
        "train-local-judge",
        "flows.train_local_judge:train_local_judge",
        "flows.train_local_judge:TrainLocalJudgeParams",
        "Train the fast local judge on recorded LLM-judge ratings and register it.",
        (
            Shortcut("--questionnaire", "questionnaire", "Questionnaire the judge rates."),
            Shortcut("--cv-folds", "cv_folds", "Grouped CV folds."),
            Shortcut("--seed", "seed", "Seed of the fold assignment."),
            Shortcut("--register-as", "register_as", "Registered model name."),
            Shortcut("--alias", "alias", "Alias ('auto' = questionnaire id)."),
        ),
    ),
    StageCommand(
        "rate",
        "flows.rate_dialogues:rate_dialogues",
        "flows.rate_dialogues:RateDialoguesParams",
        "Rate dialogues on a questionnaire with a judge; cached, resumable.",
        (
            JUDGE_PRESET,
            *JUDGE_SHORTCUTS[1:],
            Shortcut("--questionnaire", "questionnaire_file", "Questionnaire JSON."),
            Shortcut("--text-column", "text_column", "Dialogue column."),
            Shortcut("--id-column", "id_column", "Unique id column."),
            Shortcut("--speakers", "speakers", "turing | doctor_visit"),
            Shortcut("--output", "output_file", "Ratings CSV to write."),
        ),
        argument=Shortcut("input_file", "input_file", "CSV with one dialogue per row."),
        default_judge_backend="openai",
    ),
    StageCommand(
        "generate",
        "flows.generate:generate",
        "flows.generate:GenerateParams",
        "Generate doctor's-visit dialogues with a policy (base model or a checkpoint).",
        (
            Shortcut("--policy", "policy", "Model: smollm2-135m-instruct, a folder or a hub id."),
            Shortcut("--adapter", "adapter", "LoRA checkpoint folder to apply."),
            Shortcut("--output", "output_file", "Generated dialogues CSV."),
        ),
    ),
    StageCommand(
        "align",
        "flows.align:align",
        "flows.align:AlignParams",
        "Pair HL-scored candidates and train the policy with DPO + LoRA (accelerate launch).",
        (
            Shortcut("--scores-file", "scores_file", "Precomputed HL score per candidate."),
            Shortcut("--ratings-file", "ratings_file", "Ratings of the candidates (rate stage)."),
            Shortcut("--judge", "judge", "YAML judge config that rates candidates.", "file"),
            Shortcut("--candidates-file", "candidates_file", "Candidates CSV."),
            Shortcut("--reward", "reward_file", "Reward JSON or MLflow model URI."),
            Shortcut("--k", "pairing.k", "Pair margin in units of σ."),
            Shortcut("--dpo-recipe", "recipe", "DPO recipe name in infra/recipes/dpo/ or a path."),
            Shortcut("--model", "model_name_or_path", "Policy: hub id, folder or a built name."),
            Shortcut("--accelerate-config", "accelerate_config", "single|ddp|zero2|zero3"),
            Shortcut("--num-processes", "num_processes", "Training processes (GPUs)."),
            Shortcut("--force-fresh-start", "force_fresh_start", "Discard checkpoints.", "flag"),
        ),
    ),
    StageCommand(
        "evaluate",
        "flows.evaluate:evaluate",
        "flows.evaluate:EvaluateParams",
        "HL per epoch with CIs, paired t-tests, trait shifts, guards, win rate and Elo.",
        (
            Shortcut("--responses-dir", "responses_dir", "Folder of <model>/samples_epoch_XX."),
            Shortcut("--model", "models", "Model folder to evaluate (repeatable).", "list"),
            Shortcut("--questionnaire", "questionnaire", "Questionnaire rated on."),
            Shortcut("--reward", "reward", "Reward JSON or MLflow model URI."),
            Shortcut("--base-epoch", "base_epoch", "Epoch of the base model."),
            Shortcut("--pairwise-csv", "pairwise_csv", "Pairwise judgements (win rate, Elo)."),
            Shortcut("--seed", "seed", "Seed of the Elo orderings."),
        ),
    ),
    StageCommand(
        "score",
        "flows.scoring:score_ratings",
        "flows.scoring:ScoreParams",
        "Score a ratings file with a reward (by trait id); writes an hl column.",
        (
            Shortcut("--reward", "reward", "Reward JSON, the paper's {w, b} or an MLflow URI."),
            Shortcut("--list-column", "list_column", "Column of rating lists to expand."),
            Shortcut("--questionnaire", "questionnaire", "Questionnaire for --list-column."),
            Shortcut("--output", "output_file", "Where to write the scored CSV."),
        ),
        argument=Shortcut("ratings_file", "ratings_file", "CSV with one column per trait id."),
    ),
    StageCommand(
        "pipeline",
        "flows.pipeline:hal_pipeline",
        "flows.pipeline:PipelineParams",
        "Run the whole HAL pipeline; unchanged stages are skipped by cache.",
        (Shortcut("--no-cache", "use_cache", "Rerun every stage.", "negated"),),
    ),
)


USER_ERRORS = (ValueError, LookupError, OSError, JudgeError)
"""Errors a user can fix (bad files, values, keys, paths, endpoints); others keep a traceback."""


def load_object(reference: str) -> Any:
    """``package.module:name`` -> the object."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def read_yaml(path: str | Path, what: str) -> dict:
    """A YAML mapping, or a usage error naming the file."""
    try:
        payload = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise click.BadParameter(f"{path}: cannot read the {what} ({error})") from error
    if not isinstance(payload, dict):
        raise click.BadParameter(f"{path}: a {what} is a mapping of keys to values")
    return payload


def set_dotted(values: dict, key: str, value: Any) -> None:
    """``values["a"]["b"] = value`` for ``key == "a.b"``; nested mappings are created."""
    *parents, last = key.split(".")
    node = values
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise click.BadParameter(f"--set {key}: {part!r} is not a mapping")
        node = child
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **value}
    else:
        node[last] = value


def shortcut_value(shortcut: Shortcut, given: Any) -> Any:
    if shortcut.kind == "file":
        return read_yaml(given, "config")
    if shortcut.kind == "judge":
        from hal_core.judges.presets import preset_names

        return given if given in preset_names() else read_yaml(given, "judge config")
    if shortcut.kind == "csv_ints":
        return [int(part) for part in str(given).split(",")]
    if shortcut.kind == "negated":
        return not given
    if shortcut.kind == "list":
        return list(given)
    if shortcut.kind == "flag":
        return True
    return yaml.safe_load(given) if isinstance(given, str) else given


def stage_values(
    spec: StageCommand, recipe: str | None, assignments: tuple[str, ...], given: dict
) -> dict:
    """The parameter values: recipe, then named options, then ``--set``."""
    values = read_yaml(recipe, "recipe") if recipe else {}
    shortcuts = [*spec.shortcuts, *([spec.argument] if spec.argument else [])]
    for shortcut in shortcuts:
        value = given.get(option_name(shortcut))
        if value is None or value == () or (shortcut.kind in ("flag", "negated") and not value):
            continue
        set_dotted(values, shortcut.key, shortcut_value(shortcut, value))
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key.strip():
            raise click.BadParameter(f"--set {assignment!r}: expected key=value")
        set_dotted(values, key.strip(), yaml.safe_load(text))
    judge = values.get("judge")
    if spec.default_judge_backend and isinstance(judge, dict) and "backend" not in judge:
        judge["backend"] = spec.default_judge_backend
    return values


def option_name(shortcut: Shortcut) -> str:
    return shortcut.flag.lstrip("-").replace("-", "_")


def build_params(spec: StageCommand, values: dict):
    """The stage's parameter model (``values`` over its defaults), or a usage error listing
    what is wrong."""
    from pydantic import ValidationError

    from hal_core.recipes import params_from_recipe

    model = load_object(spec.params)
    try:
        return params_from_recipe(model, values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in error.errors()
        )
        raise click.UsageError(f"hal {spec.name}: {problems}") from None


def result_json(result: Any) -> str:
    from pydantic import BaseModel

    if isinstance(result, BaseModel):
        return result.model_dump_json(indent=2)
    return json.dumps(result, indent=2, default=str)


def run_flow(spec: StageCommand, values: dict) -> None:
    """Validate the parameters, run the flow against a Prefect API, print its result."""
    from hal_cli.prefect_api import configured_api_url, prefect_api
    from hal_cli.serving import prepare_prefect_db

    params = build_params(spec, values)
    try:
        if configured_api_url() is None:  # a local server will start on this home's DB
            prepare_prefect_db()
        with prefect_api():
            result = load_object(spec.flow)(params)
    except USER_ERRORS as error:  # bad input or setup: the message says what and where
        raise click.ClickException(f"{type(error).__name__}: {error}") from None
    click.echo(result.report if spec.name == "pipeline" else result_json(result))


def stage_command(spec: StageCommand) -> click.Command:
    """A click command built from the table row."""
    params: list[click.Parameter] = []
    if spec.argument is not None:
        params.append(click.Argument([option_name(spec.argument)], required=False))
    params += [
        click.Option(["--recipe"], type=click.Path(exists=True, dir_okay=False),
                     help="YAML recipe: the stage's parameters that differ from the defaults."),
        click.Option(["--set", "assignments"], multiple=True, metavar="KEY=VALUE",
                     help="Set a parameter by dotted key (YAML value); repeatable."),
    ]  # fmt: skip
    for shortcut in spec.shortcuts:
        flag_like = shortcut.kind in ("flag", "negated")
        params.append(
            click.Option(
                [shortcut.flag, option_name(shortcut)],
                is_flag=flag_like,
                default=False if flag_like else None,
                multiple=shortcut.kind == "list",
                type=click.Path(exists=True, dir_okay=False) if shortcut.kind == "file" else None,
                help=f"{shortcut.help} (sets {shortcut.key})",
            )
        )

    def run(recipe: str | None, assignments: tuple[str, ...], **given: Any) -> None:
        run_flow(spec, stage_values(spec, recipe, assignments, given))

    return click.Command(spec.name, params=params, callback=run, help=spec.help)


@click.group(help="hal: human-likeness rewards and alignment.", no_args_is_help=True)
def app() -> None:
    from hal_core.settings import apply_process_defaults, isolate_prefect_home

    isolate_prefect_home()  # before prefect is imported: it reads PREFECT_HOME once
    apply_process_defaults()


for _spec in STAGE_COMMANDS:
    app.add_command(stage_command(_spec))


@app.command()
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a pipeline parameter of the demo by dotted key (YAML value); repeatable.",
)
def demo(assignments: tuple[str, ...]) -> None:
    """The main job on embedded defaults: the pipeline with infra/recipes/pipeline.yaml."""
    from hal_core.settings import PROJECT_ROOT

    spec = next(s for s in STAGE_COMMANDS if s.name == "pipeline")
    recipe = str(PROJECT_ROOT / "infra" / "recipes" / "pipeline.yaml")
    run_flow(spec, stage_values(spec, recipe, assignments, {}))


@app.command()
@click.option("--experiment", default=None, help="MLflow experiment; default: the pipeline's.")
@click.option("--max-runs", default=20, show_default=True, help="Most recent runs to show.")
@click.option(
    "--reward-run",
    default=None,
    metavar="RUN_ID",
    help="fit_reward run whose reward comparison table is shown; default: the latest one that "
    "logged it (in --experiment, else in the pipeline's and the reward stage's experiments).",
)
def compare(experiment: str | None, max_runs: int, reward_run: str | None) -> None:
    """Compare pipeline runs: reward accuracy, selected traits, DPO margins, HL gain; then the
    reward comparison table (every reward model on the same game-grouped folds) of a
    fit_reward run."""
    from hal_core.settings import get_settings
    from tasks.evaluation import COMPARE_METRICS, fetch_pipeline_runs
    from tasks.tracking import configure_tracking

    settings = get_settings()
    configure_tracking(settings)
    name = experiment or settings.experiment_pipeline
    table = fetch_pipeline_runs.fn(name, max_runs)
    if table.empty:
        click.echo(f"no runs in MLflow experiment {name!r}")
    else:
        table["run_id"] = table["run_id"].str[:12]
        for column in COMPARE_METRICS:
            digits = 0 if column == "n_selected" else 4
            table[column] = [
                f"{value:.{digits}f}" if value == value else "" for value in table[column]
            ]
        click.echo(table.to_string(index=False))
    experiments = [name] if experiment else [name, settings.experiment_reward]
    echo_reward_comparison(reward_run, list(dict.fromkeys(experiments)))


def echo_reward_comparison(run_id: str | None, experiments: list[str]) -> None:
    """Print a fit_reward run's reward_comparison table: the run named, else the latest one
    (nothing when no run logged one)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.reward import (
        COMPARISON_ARTIFACT,
        latest_reward_comparison_run,
        load_reward_comparison,
    )

    # a progress bar for one small JSON file is noise between two tables
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if run_id is None:
        run = latest_reward_comparison_run(experiments)
        if run is None:
            return
    else:
        try:
            run = MlflowClient().get_run(run_id)
        except MlflowException as error:
            raise click.ClickException(f"--reward-run {run_id}: {error.message}") from error
        listed = {a.path for a in MlflowClient().list_artifacts(run_id)}
        if f"{COMPARISON_ARTIFACT}.json" not in listed:
            raise click.ClickException(
                f"--reward-run {run_id} ({run.info.run_name}) logged no "
                f"{COMPARISON_ARTIFACT}.json: only a fit_reward run writes the reward comparison"
            )
    table = load_reward_comparison(run.info.run_id)
    start = pd.Timestamp(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")
    folds = ", ".join(
        f"{f} game-grouped folds, fold seed {s}"
        for f, s in table[["folds", "fold_seed"]].drop_duplicates().itertuples(index=False)
    )
    click.echo(f"\nreward comparison of fit_reward run {run.info.run_id} ({start}; {folds}):")
    shown = table.drop(columns=["folds", "fold_seed"])
    click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@app.command()
@click.option("--port", default=4200, show_default=True, help="Port of the Prefect server/UI.")
@click.option("--mlflow-port", default=5000, show_default=True, help="Port of the MLflow UI.")
@click.option("--api-url", default=None, help="Use this Prefect API instead of starting one.")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    help="Work pool to start a worker for (repeatable); default: every pool this "
    "machine can serve (hal-gpu only with a GPU).",
)
@click.option(
    "--deployment",
    "deployments",
    multiple=True,
    help="Deployment to apply (repeatable); default: all.",
)
@click.option(
    "--prefect-file", default="infra/prefect.yaml", show_default=True, help="Deployments."
)
def serve(port, mlflow_port, api_url, pools, deployments, prefect_file) -> None:  # fmt: skip
    """Prefect server + workers and an MLflow UI on 127.0.0.1; applies infra/prefect.yaml."""
    from hal_cli.serving import serve_locally

    serve_locally(port, mlflow_port, api_url, list(pools), list(deployments), prefect_file)
