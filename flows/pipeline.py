"""Flow ``hal_pipeline``: validate -> [collect statements] -> derive traits -> fit reward ->
train the local judge -> rate candidates -> build preferences and align -> evaluate.

Statements come from the recorded GPT-5 file unless ``collect_statements`` names a live judge;
then derive_traits reads what that judge wrote.

Each stage is a subflow with its own MLflow run nested under the pipeline's run. A stage whose
parameters, data, recipes and code are unchanged is skipped: its cached result is reused.

    hal pipeline                                   # embedded defaults (what `make demo` runs)
    hal pipeline --recipe infra/recipes/pipeline.yaml
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from flows.align import AlignParams
from flows.collect_statements import CollectStatementsParams
from flows.derive_traits import DeriveTraitsParams
from flows.evaluate import EvaluateParams
from flows.fit_reward import FitRewardParams
from flows.rate_dialogues import RateDialoguesParams
from flows.train_local_judge import TrainLocalJudgeParams
from flows.validate_data import ValidateDataParams
from hal_core.judges import LocalJudgeConfig
from hal_core.reward import HLReward
from hal_core.settings import HalSettings, get_settings
from tasks import tracking
from tasks.stages import cached_stage_runner, code_fingerprint, folder_fingerprint, run_stage

Stage = Literal[
    "validate_data",
    "collect_statements",
    "derive_traits",
    "fit_reward",
    "train_local_judge",
    "rate_dialogues",
    "align",
    "evaluate",
]
STAGE_ORDER: tuple[str, ...] = Stage.__args__
STAGE_FLOWS: dict[str, tuple[str, str]] = {
    "validate_data": (
        "flows.validate_data:validate_data",
        "flows.validate_data:ValidateDataParams",
    ),
    "collect_statements": (
        "flows.collect_statements:collect_statements",
        "flows.collect_statements:CollectStatementsParams",
    ),
    "derive_traits": (
        "flows.derive_traits:derive_traits",
        "flows.derive_traits:DeriveTraitsParams",
    ),
    "fit_reward": ("flows.fit_reward:fit_reward", "flows.fit_reward:FitRewardParams"),
    "train_local_judge": (
        "flows.train_local_judge:train_local_judge",
        "flows.train_local_judge:TrainLocalJudgeParams",
    ),
    "rate_dialogues": (
        "flows.rate_dialogues:rate_dialogues",
        "flows.rate_dialogues:RateDialoguesParams",
    ),
    "align": ("flows.align:align", "flows.align:AlignParams"),
    "evaluate": ("flows.evaluate:evaluate", "flows.evaluate:EvaluateParams"),
}


def _default_rating() -> RateDialoguesParams:
    return RateDialoguesParams(
        input_file="synthlabs/candidates_test.csv",
        id_column="dialogue_id",
        speakers="doctor_visit",
        questionnaire_file="questionnaires/hal32q.json",
        judge=LocalJudgeConfig(model_path="set-by-the-pipeline"),
    )


class PipelineParams(BaseModel):
    """Every stage's parameters in one form; the pipeline links each stage's outputs onward."""

    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(
        default_factory=lambda: list(STAGE_ORDER), description="Stages to run, in order."
    )
    use_cache: bool = Field(
        default=True, description="Skip a stage whose inputs, recipe and code are unchanged."
    )
    validate_data: ValidateDataParams = Field(default_factory=ValidateDataParams)
    collect_statements: CollectStatementsParams | None = Field(
        default=None,
        description="A live judge writes the statements derive_traits reads; None = the "
        "derive_traits statements file (the recorded GPT-5 statements).",
    )
    derive_traits: DeriveTraitsParams = Field(default_factory=DeriveTraitsParams)
    fit_reward: FitRewardParams = Field(default_factory=FitRewardParams)
    cross_judge_ratings: list[str] = Field(
        default_factory=lambda: ["turing/ratings32_gpt-5-mini.csv"],
        description="Other judges' ratings: the same reward fit, logged for comparison only.",
    )
    train_local_judge: TrainLocalJudgeParams = Field(default_factory=TrainLocalJudgeParams)
    rate_dialogues: RateDialoguesParams = Field(
        default_factory=_default_rating,
        description="Rates the candidates with the freshly trained local judge.",
    )
    align: AlignParams = Field(default_factory=AlignParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    parent_run_id: tracking.ParentRunId = None


class PipelineResult(BaseModel):
    run_id: str
    stages: dict[str, dict[str, Any]] = Field(description="Each stage's result, by label.")
    cached: list[str] = Field(description="Labels of the stages skipped by cache.")
    metrics: dict[str, float]


@task(name="score_ratings")
def score_ratings(ratings_file: str, reward_file: str, output_file: Path) -> str:
    """HL score of every rated row (``item_id``, ``hl``) with the fitted reward."""
    ratings = pd.read_csv(ratings_file)
    rated = ratings[ratings["status"] == "rated"]
    reward = HLReward.load(reward_file)
    scores = pd.DataFrame({"candidate_id": rated["item_id"].astype(str), "hl": reward.score(rated)})
    output_file.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(output_file, index=False)
    return str(output_file)


def _input_fingerprint(settings: HalSettings) -> str:
    data = folder_fingerprint(settings.require_data_dir())
    return hashlib.sha256(f"{data}:{code_fingerprint()}".encode()).hexdigest()


def _summary_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    reward = results.get("fit_reward", {}).get("metrics", {})
    for key in ("cv.accuracy.mean", "cv_grouped.accuracy", "paired.accuracy", "n_selected"):
        if key in reward:
            metrics[key] = float(reward[key])
    summary = results.get("align", {}).get("summary", {})
    for key, value in summary.items():
        if key.startswith(("dpo.", "pairs.")) and isinstance(value, int | float):
            metrics[key] = float(value)
    gains = results.get("evaluate", {}).get("hl_gain") or {}
    if gains:
        metrics["hl.gain"] = float(sum(gains.values()) / len(gains))
    return metrics


@flow(name="hal_pipeline", log_prints=True)
def hal_pipeline(params: PipelineParams | None = None) -> PipelineResult:
    """The HAL method end to end, each stage a nested MLflow run, unchanged stages cached."""
    params = params or PipelineParams()
    settings = get_settings()
    runner = (
        cached_stage_runner(settings)
        if params.use_cache
        else run_stage.with_options(cache_policy=NO_CACHE, persist_result=False)
    )
    fingerprint = _input_fingerprint(settings)
    results: dict[str, dict[str, Any]] = {}
    cached: list[str] = []

    with tracking.stage_run(
        "hal_pipeline", settings.experiment_pipeline, settings, params.parent_run_id
    ) as run:
        run_id = run.info.run_id
        tracking.log_params(run_id, {"stages": params.stages, "input_fingerprint": fingerprint})

        def stage(
            name: str, stage_params: BaseModel, upstream: dict[str, Any], label: str | None = None
        ) -> dict:
            if name not in params.stages:
                return {}
            label = label or name
            entrypoint, params_class = STAGE_FLOWS[name]
            state = runner(
                label,
                entrypoint,
                params_class,
                stage_params.model_copy(update={"parent_run_id": run_id}).model_dump(mode="json"),
                fingerprint,
                upstream,
                return_state=True,
            )
            result = state.result()
            if state.name == "Cached":
                cached.append(label)
                tracking.log_params(run_id, {f"stage.{label}.cached_from": result.get("run_id")})
            print(f"stage {label}: {'cached' if state.name == 'Cached' else 'ran'}")
            results[label] = result
            return result

        stage("validate_data", params.validate_data, {})
        derive_params = params.derive_traits
        if params.collect_statements is not None:
            statements = stage("collect_statements", params.collect_statements, {})
            if statements.get("output_file"):
                derive_params = derive_params.model_copy(
                    update={"statements_file": statements["output_file"]}
                )
        stage("derive_traits", derive_params, {})
        reward = stage("fit_reward", params.fit_reward, {})
        for ratings_file in params.cross_judge_ratings:
            cross_judge = params.fit_reward.model_copy(
                update={"ratings_file": ratings_file, "register_as": None, "alias": None}
            )
            stage("fit_reward", cross_judge, {}, label=f"fit_reward:{Path(ratings_file).stem}")
        judge = stage(
            "train_local_judge", params.train_local_judge, {"reward": reward.get("reward_version")}
        )
        rating_params = params.rate_dialogues
        if judge.get("model_path"):
            rating_params = rating_params.model_copy(
                update={"judge": LocalJudgeConfig(model_path=judge["model_path"])}
            )
        ratings = stage("rate_dialogues", rating_params, {"judge": judge.get("fingerprint")})
        align_params = params.align
        if ratings.get("output_file") and reward.get("reward_path"):
            scores_file = score_ratings(
                ratings["output_file"],
                reward["reward_path"],
                settings.home_dir / "pipeline" / f"scores-{reward['reward_version']}.csv",
            )
            align_params = align_params.model_copy(
                update={"scores_file": scores_file, "reward_file": reward["reward_path"]}
            )
        stage(
            "align",
            align_params,
            {"ratings": ratings.get("judge_fingerprint"), "reward": reward.get("reward_version")},
        )
        stage("evaluate", params.evaluate, {})

        metrics = _summary_metrics(results)
        tracking.log_metrics(run_id, {**metrics, "stages.cached": float(len(cached))})
    return PipelineResult(run_id=run_id, stages=results, cached=cached, metrics=metrics)
