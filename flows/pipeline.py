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
from typing import ClassVar, Literal

from prefect import Flow, flow
from pydantic import BaseModel, ConfigDict, Field

from flows.align import AlignParams, AlignResult, align, check_alignment_recipe
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
from hal_core.forms import Internal, RunForm
from hal_core.judges import LocalJudgeConfig
from hal_core.pipeline_report import pipeline_report, summary_metrics
from hal_core.settings import get_settings
from tasks import tracking
from tasks.reports import publish_markdown
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


def _training_judge() -> TrainLocalJudgeParams:
    return TrainLocalJudgeParams(questionnaire="hal16q", register_as=None, alias=None)


def _second_judge() -> TrainLocalJudgeParams:
    return TrainLocalJudgeParams(
        questionnaire="hal32q", transfer=False, register_as=None, alias=None
    )


def _derived_reward() -> FitRewardParams:
    return FitRewardParams(ratings_source="matched_to_hal32q", register_as=None, alias=None)


def _loop_reward() -> FitRewardParams:
    return FitRewardParams(register_as=None, alias=None)


def _train_generation() -> GenerateParams:
    return GenerateParams(prompts_file="synthlabs/prompts_train.csv", samples_per_persona=4)


def _test_generation() -> GenerateParams:
    return GenerateParams(prompts_file="synthlabs/prompts_test.csv", samples_per_persona=1)


def _loop_alignment() -> AlignParams:
    return AlignParams(recipe="smollm2-cpu", accelerate_config="single", num_processes=1)


class PipelineParams(RunForm):
    """Every stage's parameters in one form; the pipeline links each stage's results onward
    (the fields it fills are named in each description)."""

    model_config = ConfigDict(extra="forbid")
    # The run form's sections show what a person sets in each stage; the rest keeps the
    # section's defaults (a recipe or `hal pipeline --set` reaches every field).
    form_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "validate_data": ("policy",),
        "collect_statements": ("games_file", "limit"),
        "derive_traits": ("statements_file", "seeds", "consolidator"),
        "fit_reward": ("ratings_file", "register_as", "alias"),
        "derived_reward": ("match_threshold",),
        "train_local_judge": ("questionnaire", "cv_folds", "seed"),
        "loop_reward": ("ratings_file",),
        "second_judge": ("questionnaire", "transfer"),
        "generate": ("policy", "persona_limit", "samples_per_persona", "n_turns", "seed"),
        "generate_test": ("prompts_file", "persona_limit", "samples_per_persona"),
        "rate_dialogues": ("limit", "retry_failures"),
        "align": ("recipe", "accelerate_config", "num_processes", "pairing.k"),
        "evaluate": ("confidence", "policy.register_as", "policy.alias", "policy.significance"),
    }

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
    derived_reward: FitRewardParams | None = Field(
        default_factory=_derived_reward,
        description="The reward on the derived questionnaire, offline: each derived trait "
        "takes the recorded ratings of its nearest HAL32Q trait (questionnaire_file is set "
        "from derive_traits); None = not fitted.",
    )
    train_local_judge: TrainLocalJudgeParams = Field(
        default_factory=_training_judge,
        description="The training judge: fitted on doctor's visits and Turing witnesses, it "
        "rates the candidates and the held-out dialogues.",
    )
    loop_reward: FitRewardParams = Field(
        default_factory=_loop_reward,
        description="The reward the policy is aligned to: fitted on the Turing ratings of the "
        "traits the training judge rates (trait_ids is set from that judge).",
    )
    second_judge: TrainLocalJudgeParams | None = Field(
        default_factory=_second_judge,
        description="An independent judge for evaluation only, scored with the HAL32Q reward; "
        "None = no second opinion (then the policy is never promoted).",
    )
    generate: GenerateParams = Field(
        default_factory=_train_generation,
        description="Candidates of the base policy on the training personas.",
    )
    generate_test: GenerateParams = Field(
        default_factory=_test_generation,
        description="Dialogues on held-out test personas, for the base and every epoch "
        "(policy, adapter and epoch are set by the pipeline).",
    )
    rate_dialogues: RateDialoguesParams = Field(
        default_factory=lambda: RateDialoguesParams(input_file="", speakers="doctor_visit"),
        description="Rates the candidates (input, questionnaire and judge are set from the "
        "generate and judge stages).",
    )
    align: AlignParams = Field(
        default_factory=_loop_alignment,
        description="Pairs and DPO (candidates, ratings, reward and model are set from the "
        "stages before).",
    )
    evaluate: EvaluateParams = Field(
        default_factory=EvaluateParams,
        description="Scores the held-out dialogues (files, judges, rewards and the policy's "
        "checkpoints are set from the stages before).",
    )
    parent_run_id: Internal[tracking.ParentRunId] = None


class PipelineResult(BaseModel):
    run_id: str
    stages: dict[str, dict] = Field(description="Each stage's result, by label.")
    cached: list[str] = Field(description="Labels of the stages skipped by cache.")
    metrics: dict[str, float]
    report: str = Field(description="What the run found, as printed by `hal pipeline`.")


class StageRunner:
    """Runs a stage flow nested under the pipeline's run, or reuses its recorded result.

    A stage that runs more than once has a role (``fit_reward:loop``, ``generate:test:e1``):
    its label, or ``role`` where the label stays the stage's name; it names the MLflow run.
    """

    def __init__(self, params: PipelineParams, run_id: str, fingerprint: str, cache: StageCache):
        self.selected, self.use_cache = set(params.stages), params.use_cache
        self.run_id, self.fingerprint, self.cache = run_id, fingerprint, cache
        self.results: dict[str, BaseModel] = {}
        self.cached: list[str] = []

    def __call__(
        self,
        name: str,
        params: BaseModel,
        *,
        label: str | None = None,
        role: str | None = None,
        needs: tuple = (),
    ) -> BaseModel | None:
        label = label or name
        run_name = f"{name}:{role}" if role else label
        if name not in self.selected:
            return None
        missing = [i for i, need in enumerate(needs) if need is None]
        if missing:
            raise ValueError(f"stage {label} needs the results of stages that did not run")
        stage = STAGES[name]
        params = params.model_copy(update={"parent_run_id": self.run_id, "run_name": run_name})
        key = stage_key(label, params, self.fingerprint, [n.model_dump(mode="json") for n in needs])
        recorded = self.cache.read(key) if self.use_cache else None
        if recorded is not None:
            result = stage.result.model_validate(recorded)
            self.cached.append(label)
            tracking.log_params(self.run_id, {f"stage.{label}.cached_from": result.run_id})
        else:
            result = stage.flow(params)
            self.cache.write(key, result.model_dump(mode="json"))
        print(f"stage {label} {'cached' if recorded is not None else 'ran'}")
        self.results[label] = result
        return result


@flow(name="hal_pipeline", log_prints=True)
def hal_pipeline(params: PipelineParams = PipelineParams()) -> PipelineResult:  # noqa: B008
    """The HAL method end to end; each stage a nested MLflow run, unchanged stages cached."""
    settings = get_settings()
    if "align" in params.stages:
        check_alignment_recipe(params.align, settings)  # a bad DPO recipe fails before any stage
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
        reward = stage("fit_reward", params.fit_reward, role="hal32q")
        if params.derived_reward is not None and traits is not None:
            stage(
                "fit_reward",
                params.derived_reward.model_copy(
                    update={"questionnaire_file": traits.questionnaire_path}
                ),
                label="fit_reward:derived",
                needs=(traits,),
            )

        # The judges, and the reward on the traits the training judge rates.
        judge = stage("train_local_judge", params.train_local_judge, role="doctor_visits")
        loop_reward = None
        if judge is not None:
            loop_reward = stage(
                "fit_reward",
                params.loop_reward.model_copy(update={"trait_ids": judge.trait_ids}),
                label="fit_reward:loop",
                needs=(judge,),
            )
        second = None
        if params.second_judge is not None:
            second = stage(
                "train_local_judge", params.second_judge, label="train_local_judge:2", role="second"
            )
        judge_questionnaire = params.train_local_judge.hal16q_questionnaire_file
        if params.train_local_judge.questionnaire == "hal32q":
            judge_questionnaire = params.train_local_judge.hal32q_questionnaire_file

        # The loop: candidates of the policy -> ratings -> HL -> pairs -> DPO.
        candidates = stage("generate", params.generate, label="generate:train")
        ratings = None
        if candidates is not None and judge is not None:
            ratings = stage(
                "rate_dialogues",
                params.rate_dialogues.model_copy(
                    update={
                        "input_file": candidates.output_file,
                        "id_column": "dialogue_id",
                        "questionnaire_file": judge_questionnaire,
                        "judge": LocalJudgeConfig(model_path=judge.model_path),
                    }
                ),
                needs=(candidates, judge),
            )
        aligned = None
        if candidates is not None and ratings is not None and loop_reward is not None:
            aligned = stage(
                "align",
                params.align.model_copy(
                    update={
                        "candidates_file": candidates.output_file,
                        "ratings_file": ratings.output_file,
                        "reward_file": loop_reward.reward_path,
                        "model_name_or_path": candidates.model_path,
                    }
                ),
                needs=(candidates, ratings, loop_reward),
            )

        # Held-out personas: the base and every epoch checkpoint, then evaluation.
        tests = []
        if aligned is not None:
            base = params.generate_test.model_copy(update={"policy": params.generate.policy})
            checkpoints = [(None, 0), *[(c.path, c.epoch) for c in aligned.training.checkpoints]]
            for adapter, epoch in checkpoints:
                tests.append(
                    stage(
                        "generate",
                        base.model_copy(update={"adapter": adapter, "epoch": epoch}),
                        label=f"generate:test:e{epoch}",
                        needs=(aligned,),
                    )
                )
        if tests and judge is not None and loop_reward is not None:
            second_judge = {}
            if second is not None and reward is not None:
                second_questionnaire = params.second_judge.hal32q_questionnaire_file
                if params.second_judge.questionnaire == "hal16q":
                    second_questionnaire = params.second_judge.hal16q_questionnaire_file
                second_judge = {
                    "second_judge": LocalJudgeConfig(model_path=second.model_path),
                    "second_questionnaire": second_questionnaire,
                    "second_reward": reward.reward_path,
                }
            stage(
                "evaluate",
                params.evaluate.model_copy(
                    update={
                        "generated_files": [test.output_file for test in tests],
                        "judge": LocalJudgeConfig(model_path=judge.model_path),
                        "questionnaire": judge_questionnaire,
                        "reward": loop_reward.reward_path,
                        **second_judge,
                        "policy": params.evaluate.policy.model_copy(
                            update={"checkpoints_dir": aligned.training.output_dir}
                        ),
                    }
                ),
                needs=tuple(tests),
            )

        results = {label: result.model_dump(mode="json") for label, result in stage.results.items()}
        metrics = summary_metrics(stage.results)
        tracking.log_metrics(run_id, {**metrics, "stages.cached": float(len(stage.cached))})
        report = pipeline_report(run_id, stage.results, stage.cached, metrics)
        publish_markdown(
            run_id,
            report,
            "pipeline_report.md",
            "pipeline-report",
            "What the pipeline run found: rewards, pairs and DPO, HL per epoch, guards, promotion.",
        )
    return PipelineResult(
        run_id=run_id, stages=results, cached=stage.cached, metrics=metrics, report=report
    )
