"""Flow ``hal_pipeline``: the HAL method end to end, on a real policy.

    validate data -> [collect statements] -> derive traits -> fit rewards (HAL32Q, the derived
    questionnaire, other judges, the loop's) -> train the judges -> generate candidates with
    the policy -> rate them -> pair by HL and train with DPO -> generate on held-out personas
    with the base and every epoch -> evaluate and promote

Each stage is a subflow with its own MLflow run nested under the pipeline's; its result model
is what the next stages read. A stage whose parameters, inputs, data and code are unchanged is
skipped and its recorded result reused.

    hal pipeline                                   # embedded defaults
    hal demo                                       # infra/recipes/pipeline.yaml (CPU sizes)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect import Flow, flow
from pydantic import BaseModel, ConfigDict, Field

from flows.align import AlignParams, AlignResult, align
from flows.collect_statements import (
    CollectStatementsParams,
    CollectStatementsResult,
    collect_statements,
)
from flows.derive_traits import DeriveTraitsParams, DeriveTraitsResult, derive_traits
from flows.evaluate import EvaluateParams, EvaluateResult, evaluate
from flows.fit_reward import FitRewardParams, FitRewardResult, fit_reward
from flows.generate import GenerateParams, GenerateResult, generate
from flows.rate_dialogues import RateDialoguesParams, RateDialoguesResult, rate_dialogues
from flows.train_local_judge import (
    TrainLocalJudgeParams,
    TrainLocalJudgeResult,
    train_local_judge,
)
from flows.validate_data import ValidateDataParams, ValidateDataResult, validate_data
from hal_core.judges import LocalJudgeConfig
from hal_core.pipeline_report import pipeline_report, summary_metrics
from hal_core.settings import get_settings
from tasks import tracking
from tasks.stages import StageCache, input_fingerprint, stage_key

StageName = Literal[
    "validate_data",
    "collect_statements",
    "derive_traits",
    "fit_reward",
    "train_local_judge",
    "generate",
    "rate_dialogues",
    "align",
    "evaluate",
]


@dataclass(frozen=True)
class Stage:
    """A row of the pipeline: the flow, its parameter model and its result model."""

    flow: Flow
    params: type[BaseModel]
    result: type[BaseModel]


STAGES: dict[str, Stage] = {
    "validate_data": Stage(validate_data, ValidateDataParams, ValidateDataResult),
    "collect_statements": Stage(
        collect_statements, CollectStatementsParams, CollectStatementsResult
    ),
    "derive_traits": Stage(derive_traits, DeriveTraitsParams, DeriveTraitsResult),
    "fit_reward": Stage(fit_reward, FitRewardParams, FitRewardResult),
    "train_local_judge": Stage(train_local_judge, TrainLocalJudgeParams, TrainLocalJudgeResult),
    "generate": Stage(generate, GenerateParams, GenerateResult),
    "rate_dialogues": Stage(rate_dialogues, RateDialoguesParams, RateDialoguesResult),
    "align": Stage(align, AlignParams, AlignResult),
    "evaluate": Stage(evaluate, EvaluateParams, EvaluateResult),
}
STAGE_ORDER: tuple[str, ...] = StageName.__args__


def _loop_reward() -> FitRewardParams:
    return FitRewardParams(
        questionnaire_file="questionnaires/hal16q_published.json",
        register_as=None,
        alias=None,
    )


def _test_generation() -> GenerateParams:
    return GenerateParams(prompts_file="synthlabs/prompts_test.csv", samples_per_persona=1)


class PipelineParams(BaseModel):
    """Every stage's parameters in one form; the pipeline links each stage's results onward."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageName] = Field(
        default_factory=lambda: list(STAGE_ORDER), description="Stages to run, in order."
    )
    use_cache: bool = Field(
        default=True, description="Skip a stage whose inputs, parameters and code are unchanged."
    )
    validate_data: ValidateDataParams = Field(default_factory=ValidateDataParams)
    collect_statements: CollectStatementsParams | None = Field(
        default=None,
        description="A live judge writes the statements derive_traits reads; None = the "
        "statements file of derive_traits (the recorded GPT-5 statements).",
    )
    derive_traits: DeriveTraitsParams = Field(default_factory=DeriveTraitsParams)
    fit_reward: FitRewardParams = Field(
        default_factory=FitRewardParams,
        description="The HAL32Q reward on the Turing ratings (registered as hal-reward).",
    )
    fit_derived_reward: bool = Field(
        default=True,
        description="Also fit a reward on the derived questionnaire, offline (each derived "
        "trait takes the recorded ratings of its nearest HAL32Q trait), beside HAL32Q's.",
    )
    cross_judge_ratings: list[str] = Field(
        default_factory=lambda: ["turing/ratings32_gpt-5-mini.csv"],
        description="Other judges' ratings: the same reward fit, logged for comparison.",
    )
    loop_reward: FitRewardParams = Field(
        default_factory=_loop_reward,
        description="The reward the policy is aligned to: fitted on the Turing ratings of the "
        "traits the training judge rates (the published HAL16Q statements, by HAL32Q id).",
    )
    train_local_judge: TrainLocalJudgeParams = Field(
        default_factory=TrainLocalJudgeParams,
        description="The training judge: a local judge that fits doctor's-visit dialogues.",
    )
    second_judge: TrainLocalJudgeParams | None = Field(
        default=None,
        description="An independent judge for evaluation only; None = no second opinion "
        "(then the policy is never promoted).",
    )
    generate: GenerateParams = Field(
        default_factory=GenerateParams,
        description="Candidates of the base policy for the training personas.",
    )
    generate_test: GenerateParams = Field(
        default_factory=_test_generation,
        description="Dialogues on held-out test personas, for the base and every epoch.",
    )
    rate_dialogues: RateDialoguesParams = Field(
        default_factory=lambda: RateDialoguesParams(input_file="", speakers="doctor_visit"),
        description="Rates the candidates with the training judge (input and judge are linked).",
    )
    align: AlignParams = Field(default_factory=AlignParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    parent_run_id: tracking.ParentRunId = None


class PipelineResult(BaseModel):
    run_id: str
    stages: dict[str, dict] = Field(description="Each stage's result, by label.")
    cached: list[str] = Field(description="Labels of the stages skipped by cache.")
    metrics: dict[str, float]
    report: str = Field(description="What the run found, as printed by `hal pipeline`.")


class StageRunner:
    """Runs a stage flow nested under the pipeline's run, or reuses its recorded result."""

    def __init__(self, params: PipelineParams, run_id: str, fingerprint: str, cache: StageCache):
        self.selected, self.use_cache = set(params.stages), params.use_cache
        self.run_id, self.fingerprint, self.cache = run_id, fingerprint, cache
        self.results: dict[str, BaseModel] = {}
        self.cached: list[str] = []

    def __call__(
        self, name: str, params: BaseModel, *, label: str | None = None, needs: tuple = ()
    ) -> BaseModel | None:
        label = label or name
        if name not in self.selected:
            return None
        missing = [i for i, need in enumerate(needs) if need is None]
        if missing:
            raise ValueError(f"stage {label} needs the results of stages that did not run")
        stage = STAGES[name]
        params = params.model_copy(update={"parent_run_id": self.run_id})
        key = stage_key(label, params, self.fingerprint, [n.model_dump(mode="json") for n in needs])
        recorded = self.cache.read(key) if self.use_cache else None
        if recorded is not None:
            result = stage.result.model_validate(recorded)
            self.cached.append(label)
            tracking.log_params(self.run_id, {f"stage.{label}.cached_from": result.run_id})
        else:
            result = stage.flow(params)
            self.cache.write(key, result.model_dump(mode="json"))
        print(f"stage {label}: {'cached' if recorded is not None else 'ran'}")
        self.results[label] = result
        return result


@flow(name="hal_pipeline", log_prints=True)
def hal_pipeline(params: PipelineParams = PipelineParams()) -> PipelineResult:  # noqa: B008
    """The HAL method end to end; each stage a nested MLflow run, unchanged stages cached."""
    settings = get_settings()
    fingerprint = input_fingerprint(settings)
    with tracking.stage_run(
        "hal_pipeline", settings.experiment_pipeline, settings, params.parent_run_id
    ) as run:
        run_id = run.info.run_id
        tracking.log_params(run_id, {"stages": params.stages, "input_fingerprint": fingerprint})
        stage = StageRunner(params, run_id, fingerprint, StageCache(settings.home_dir))

        # Traits and rewards from the Turing games.
        stage("validate_data", params.validate_data)
        derivation = params.derive_traits
        if params.collect_statements is not None:
            statements = stage("collect_statements", params.collect_statements)
            if statements is not None:
                derivation = derivation.model_copy(
                    update={"statements_file": statements.output_file}
                )
        traits = stage("derive_traits", derivation)
        reward = stage("fit_reward", params.fit_reward)
        if params.fit_derived_reward and traits is not None:
            stage(
                "fit_reward",
                params.fit_reward.on_derived_questionnaire(traits.questionnaire_path),
                label="fit_reward:derived",
                needs=(traits,),
            )
        for ratings_file in params.cross_judge_ratings:
            stage(
                "fit_reward",
                params.fit_reward.model_copy(
                    update={"ratings_file": ratings_file, "register_as": None, "alias": None}
                ),
                label=f"fit_reward:{ratings_file.rsplit('/', 1)[-1].removesuffix('.csv')}",
            )
        loop_reward = stage("fit_reward", params.loop_reward, label="fit_reward:loop")

        # The judges.
        judge = stage("train_local_judge", params.train_local_judge, needs=(reward,))
        second = None
        if params.second_judge is not None:
            second = stage("train_local_judge", params.second_judge, label="train_local_judge:2")

        # The loop: candidates -> ratings -> pairs -> DPO.
        candidates = stage("generate", params.generate, label="generate:train")
        ratings = stage(
            "rate_dialogues",
            params.rate_dialogues.model_copy(
                update={
                    "input_file": candidates.output_file if candidates else "",
                    "id_column": "dialogue_id",
                    "judge": LocalJudgeConfig(model_path=judge.model_path if judge else ""),
                }
            ),
            needs=(candidates, judge),
        )
        aligned = stage(
            "align",
            params.align.model_copy(
                update={
                    "candidates_file": candidates.output_file if candidates else "",
                    "ratings_file": ratings.output_file if ratings else None,
                    "reward_file": loop_reward.reward_path if loop_reward else "",
                    "model_name_or_path": params.generate.policy,
                }
            ),
            needs=(candidates, ratings, loop_reward),
        )

        # Held-out personas: the base and every epoch checkpoint, then evaluation.
        tests = []
        if aligned is not None:
            checkpoints = [(None, 0), *[(c.path, c.epoch) for c in aligned.training.checkpoints]]
            for adapter, epoch in checkpoints:
                tests.append(
                    stage(
                        "generate",
                        params.generate_test.model_copy(
                            update={"adapter": adapter, "epoch": epoch, "checkpoint": None}
                        ),
                        label=f"generate:test:e{epoch}",
                        needs=(aligned,),
                    )
                )
        evaluation_params = params.evaluate
        if tests:
            evaluation_params = evaluation_params.model_copy(
                update={
                    "generated_files": [test.output_file for test in tests],
                    "judge": LocalJudgeConfig(model_path=judge.model_path),
                    "questionnaire": params.loop_reward.questionnaire_file,
                    "reward": loop_reward.reward_path,
                    "second_judge": LocalJudgeConfig(model_path=second.model_path)
                    if second
                    else None,
                    "policy": evaluation_params.policy.model_copy(
                        update={"checkpoints_dir": aligned.training.output_dir}
                    ),
                }
            )
        stage("evaluate", evaluation_params, needs=tuple(tests))

        results = {label: result.model_dump(mode="json") for label, result in stage.results.items()}
        metrics = summary_metrics(stage.results)
        tracking.log_metrics(run_id, {**metrics, "stages.cached": float(len(stage.cached))})
        report = pipeline_report(run_id, stage.results, stage.cached, metrics)
        tracking.log_text(run_id, report, "pipeline_report.md")
    return PipelineResult(
        run_id=run_id, stages=results, cached=stage.cached, metrics=metrics, report=report
    )
