"""Flow ``evaluate``: rate each epoch's dialogues with a judge, score them with a reward, compare
with the base; for a trained policy, check guards, ask a second judge, register and promote.

Two inputs:

- the published ``aligned_outputs/<model>/samples_epoch_XX_*.csv`` (default): ratings replayed
  from each file, HL scored paper-compatible (as the stored ``hal16_score``) and by trait id;
- ``generated_files``: the generate stage's tables of one policy (epoch 0 = the base), rated
  by any judge through the rating cache, guarded against reward hacking, checked by a second
  judge; the evaluated checkpoint is registered as ``hal-policy`` and ``@champion`` moves only
  when the promotion rule holds (hal_core.evaluation.decide_champion).

    hal evaluate                                # aligned_outputs/*, recorded ratings, paper w
    hal evaluate --model Llama-3.2-1B-Instruct --pairwise-csv pairs.csv
    hal evaluate --recipe evaluate-policy.yaml  # a trained policy, e.g.:

    # evaluate-policy.yaml
    generated_files: [.hal/generated/base.csv, .hal/generated/epoch-1.csv]
    judge: {backend: local, model_path: .hal/local_judges/<hal32q run id>}
    questionnaire: questionnaires/hal32q.json
    reward: models:/hal-reward@champion
    second_judge: {backend: local, model_path: .hal/local_judges/<hal16q run id>}
    second_questionnaire: questionnaires/hal16q_published.json
    second_reward: hal16_weights_paper.json
    policy: {checkpoints_dir: .hal/training/adapters}   # <dir>/<checkpoint>/ is registered
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hal_core.dialogue import SpeakerTags
from hal_core.evaluation import (
    EPOCH_COLUMN,
    MODEL_COLUMN,
    BeforeAfter,
    EvaluationReport,
    EvaluationReward,
    GuardReport,
    GuardThresholds,
    JudgedRatings,
    PromotionDecision,
    before_after_examples,
    check_guards,
    checkpoint_of,
    decide_champion,
    evaluate_scores,
    finite_or_none,
    judged_ratings,
    out_of_domain_fractions,
    rated_rows,
    replayed_ratings,
    require_ratings,
    score_table,
    stored_score_check,
    text_statistics,
)
from hal_core.forms import Internal, RunForm
from hal_core.judges import JudgeConfig
from hal_core.markdown import metric_value as rounded
from hal_core.pairwise import evaluate_pairwise, read_judgements
from hal_core.questionnaire import Questionnaire
from hal_core.settings import HalSettings, get_settings
from hal_core.trait_shifts import trait_shift_intervals
from tasks.evaluation import (
    find_response_files,
    load_evaluation_reward,
    log_evaluation,
    log_evaluation_plots,
    log_examples,
    log_generated_tables,
    log_guards,
    log_json_report,
    log_out_of_domain,
    log_pairwise,
    log_scores,
    log_stored_score_check,
    publish_evaluation,
    read_generated_files,
    read_response_files,
)
from tasks.rating import judge_params, rate_with_judge, rating_metrics
from tasks.registry import register_policy
from tasks.scoring import MLFLOW_SCHEMES
from tasks.tracking import (
    ParentRunId,
    RunName,
    input_hashes,
    log_metrics,
    log_params,
    stage_run,
)

DOCTOR_VISIT = SpeakerTags.doctor_visit()
"""Evaluated dialogues are doctor's visits; the patient (the policy's words) is rated."""


class PolicyRegistration(BaseModel):
    """Where the evaluated policy goes in the MLflow Model Registry, and the promotion rule."""

    model_config = ConfigDict(extra="forbid")

    register_as: str | None = Field(
        default="hal-policy",
        description="Registered model that gets a version on every generated-mode run; None = "
        "do not register.",
    )
    alias: str = Field(
        default="champion",
        description="Alias moved to the new version only when the promotion rule holds.",
    )
    checkpoints_dir: str | None = Field(
        default=None,
        description="Folder with one subfolder per evaluated checkpoint, named as the tables' "
        "checkpoint column (e.g. DIR/epoch-1, a PEFT adapter); the candidate epoch's "
        "subfolder is logged to the run and registered.",
    )
    epoch: int | None = Field(
        default=None,
        ge=0,
        description="Epoch whose checkpoint is the candidate; None = the trained epoch with the "
        "highest mean HL under the training judge.",
    )
    significance: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="A promotion needs the one-sided paired p under the training judge below this.",
    )


class EvaluateParams(RunForm):
    """What to evaluate and how; paths are relative to the working folder, then the data folder."""

    model_config = ConfigDict(extra="forbid")

    responses_dir: str = Field(
        default="aligned_outputs",
        description="Folder of MODEL/samples_epoch_XX_*.csv files (published responses); "
        "read when generated_files is empty.",
    )
    models: list[str] = Field(
        default_factory=list, description="Model folders to evaluate; empty means all."
    )
    generated_files: list[str] = Field(
        default_factory=list,
        description="Generated-dialogue CSVs of one policy, one per checkpoint (epoch 0 = the "
        "base); when set, these are evaluated instead of responses_dir.",
    )
    judge: Literal["recorded"] | JudgeConfig = Field(
        default="recorded",
        description="recorded: replay the ratings stored in each response file's "
        "likert_evaluation column (aligned_outputs); or a judge config (openai, hf, recorded, "
        "local) that rates every dialogue through the rating cache.",
    )
    questionnaire: str = Field(
        default="questionnaires/hal16q_published.json",
        description="Questionnaire the judge rates on (project JSON or published HAL16Q).",
    )
    reward: str = Field(
        default="hal16_weights_paper.json",
        description="Reward: a JSON file ({weights: {trait_id: w}, bias}, or the paper's {w, b}) "
        "or a registered reward model (models:/hal-reward@champion).",
    )
    second_judge: JudgeConfig | None = Field(
        default=None,
        description="An independent judge that rates the same dialogues (e.g. the other "
        "questionnaire's local judge), so that a gain only one judge sees is visible; a "
        "promotion needs its gain not to be negative.",
    )
    second_questionnaire: str | None = Field(
        default=None, description="The second judge's questionnaire; None = questionnaire."
    )
    second_reward: str | None = Field(
        default=None, description="The second judge's reward (file or model URI); None = reward."
    )
    cache_file: str | None = Field(
        default=None, description="SQLite rating cache; None = HAL_HOME/cache/ratings.sqlite."
    )
    retry_failures: Literal["none", "transient", "all"] = Field(
        default="transient", description="Which failures stored by earlier runs are asked again."
    )
    base_epoch: int = Field(default=0, ge=0, description="Epoch of the model before alignment.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Level of the mean's CI.")
    stored_score_column: str | None = Field(
        default="hal16_score",
        description="A score stored with the responses to check ours against (when present).",
    )
    guards: GuardThresholds = Field(
        default_factory=GuardThresholds,
        description="Limits against reward hacking (generated mode): length and turn drift, "
        "distinct-2, repeated lines, format failures.",
    )
    policy: PolicyRegistration = Field(
        default_factory=PolicyRegistration,
        description="Registration of the evaluated policy and the promotion rule.",
    )
    pairwise_csv: str | None = Field(
        default=None, description="Optional pairwise human judgements (win rate and Elo)."
    )
    elo_orderings: int = Field(default=1000, ge=1, description="Random game orders for Elo.")
    seed: int = Field(default=42, description="Seed of the Elo orderings.")
    parent_run_id: Internal[ParentRunId] = None
    run_name: Internal[RunName] = None

    @model_validator(mode="after")
    def _generated_mode_needs_a_judge(self) -> EvaluateParams:
        if self.generated_files and self.judge == "recorded":
            raise ValueError(
                "judge 'recorded' replays the likert_evaluation column of aligned_outputs "
                "files; generated_files need a judge config (e.g. {backend: local, model_path: "
                "...})"
            )
        if self.generated_files and self.policy.register_as and not self.policy.checkpoints_dir:
            raise ValueError(
                "policy.checkpoints_dir must name the folder of the evaluated checkpoints to "
                f"register them as {self.policy.register_as!r} (or set policy.register_as: null)"
            )
        return self


class EpochHL(BaseModel):
    """Mean HL of one epoch over its personas, with its confidence interval."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


class EvaluateResult(BaseModel):
    """What an evaluation found. A value that cannot be computed is None; ``notes`` says why."""

    run_id: str
    mode: Literal["responses", "generated"]
    best_epoch: dict[str, int] = Field(
        description="Per model, the reported epoch (generated mode: the candidate checkpoint)."
    )
    hl_by_epoch: dict[str, dict[int, EpochHL]] = Field(
        default_factory=dict, description="Per model and epoch: mean HL with its CI."
    )
    hl_gain: dict[str, float | None] = Field(description="Per model, the gain at best_epoch.")
    hl_gain_by_epoch: dict[str, dict[int, float | None]]
    p_value: dict[str, float | None] = Field(description="Per model, the p-value at best_epoch.")
    p_value_by_epoch: dict[str, dict[int, float | None]]
    hl_by_id_gain: dict[str, float | None] = Field(
        default_factory=dict,
        description="Paper weights on the published HAL16Q: the by-id corrected score's gain.",
    )
    second_judge_gain: dict[str, float | None] = Field(default_factory=dict)
    second_judge_gain_by_epoch: dict[str, dict[int, float | None]] = Field(default_factory=dict)
    guards_passed: bool | None = Field(default=None, description="None: no guard was checked.")
    failed_guards: list[str] = Field(default_factory=list)
    guards: GuardReport | None = Field(default=None, description="Each guard's value and limit.")
    examples: list[BeforeAfter] = Field(
        default_factory=list, description="The same persona's dialogue before and after."
    )
    promotion: PromotionDecision | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    rating_failures: int
    second_judge_rating_failures: int = 0
    degenerate: int = Field(default=0, description="Generated rows flagged degenerate.")
    notes: list[str] = Field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Scoring:
    """A judge's questionnaire and the reward that scores its ratings."""

    questionnaire: Questionnaire
    reward: EvaluationReward
    inputs: dict[str, Path]


@dataclasses.dataclass
class Judged:
    """One judge's view of the responses: ratings, HL per dialogue, the per-epoch report."""

    ratings: JudgedRatings
    scored: pd.DataFrame
    report: EvaluationReport
    metrics: dict[str, float]
    fingerprint: str | None
    scale: tuple[int, int]


@dataclasses.dataclass
class PolicyOutcome:
    """What generated mode adds: the candidate's guards, the decision, the registered version."""

    guards: GuardReport | None = None
    decision: PromotionDecision | None = None
    version: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def load_scoring(questionnaire: str, reward: str, settings: HalSettings, name: str = "") -> Scoring:
    """Read a questionnaire and its reward (file or registered model); name the input files."""
    questionnaire_path = settings.input_path(questionnaire)
    loaded = Questionnaire.load(questionnaire_path)
    inputs = {f"{name}questionnaire": questionnaire_path}
    if not reward.startswith(MLFLOW_SCHEMES):
        inputs[f"{name}reward"] = settings.input_path(reward)
    scored_by = load_evaluation_reward(reward, settings, loaded)
    missing = [t for t in scored_by.reward.trait_ids if t not in loaded.trait_ids]
    if missing:
        raise ValueError(
            f"{inputs.get(f'{name}reward', reward)}: the reward needs traits {missing} that "
            f"{questionnaire_path} does not ask (rule: a reward scores its judge's traits)"
        )
    return Scoring(loaded, scored_by, inputs)


def read_inputs(
    params: EvaluateParams, settings: HalSettings
) -> tuple[pd.DataFrame, dict[str, Path], list[Path]]:
    """The responses to evaluate, their files by input name, and the generated tables."""
    if params.generated_files:
        paths = [settings.input_path(name) for name in params.generated_files]
        responses = read_generated_files(paths, params.base_epoch)
        return responses, {f"generated.{k}.{p.name}": p for k, p in enumerate(paths)}, paths
    files = find_response_files(settings.input_path(params.responses_dir), params.models or None)
    inputs = {f"responses.{f.model}.e{f.epoch:02d}": f.path for f in files}
    return read_response_files(files), inputs, []


def judge_responses(
    responses: pd.DataFrame,
    judge: Literal["recorded"] | JudgeConfig,
    scoring: Scoring,
    params: EvaluateParams,
    settings: HalSettings,
    name: str = "the judge",
) -> Judged:
    """Rate every non-degenerate response (replayed, or asked through the rating cache), score
    it with the reward and summarize per epoch; stop, saying why, when nothing was rated."""
    rows = rated_rows(responses)
    metrics, fingerprint = {}, None
    if judge == "recorded":
        ratings = replayed_ratings(responses.loc[rows], scoring.questionnaire)
    else:
        cache_path = Path(params.cache_file or settings.home_dir / "cache" / "ratings.sqlite")
        run = rate_with_judge(
            responses.loc[rows, "dialogue"].tolist(),
            scoring.questionnaire,
            DOCTOR_VISIT,
            judge,
            cache_path,
            params.retry_failures,
            settings.data_dir,
        )
        metrics, fingerprint = rating_metrics(run, judge), run.fingerprint
        ratings = judged_ratings(run, scoring.questionnaire.trait_ids, rows)
    require_ratings(responses, ratings, params.base_epoch, name)
    scale = (scoring.questionnaire.scale.min, scoring.questionnaire.scale.max)
    scored = score_table(responses, ratings.ratings, scoring.reward.reward, scale)
    report = evaluate_scores(
        scored, scoring.questionnaire.trait_ids, params.base_epoch, params.confidence
    )
    return Judged(ratings, scored, report, metrics, fingerprint, scale)


def report_epochs(report: EvaluationReport, params: EvaluateParams) -> EvaluationReport:
    """Generated mode reports the candidate: ``policy.epoch``, else each model's best trained
    epoch (the base is what it is compared with). Published responses keep the best epoch."""
    if not params.generated_files:
        return report
    epochs = {m: report.candidate_epoch(m) for m in report.best_epoch}
    if params.policy.epoch is not None:
        known = set(report.summary["epoch"])
        if params.policy.epoch not in known - {params.base_epoch}:
            raise ValueError(
                f"policy.epoch {params.policy.epoch} is not a trained epoch of the generated "
                f"tables (epochs {sorted(known)}, base {params.base_epoch})"
            )
        epochs = dict.fromkeys(report.best_epoch, params.policy.epoch)
    chosen = {m: e for m, e in epochs.items() if e is not None}
    return dataclasses.replace(report, best_epoch=chosen or report.best_epoch)


def log_judge(run_id: str, prefix: str, judged: Judged, config: object) -> None:
    """A judge's settings, fingerprint and rating counts (absent when ratings were replayed)."""
    if judged.fingerprint is None:
        return
    params = judge_params(config, judged.fingerprint)
    log_params(run_id, {prefix + key.removeprefix("judge."): v for key, v in params.items()})
    metrics = {f"{prefix}{key}": value for key, value in judged.metrics.items()}
    log_metrics(run_id, metrics | {f"{prefix}rating.failed": len(judged.ratings.failures)})


def evaluate_policy(
    run_id: str,
    params: EvaluateParams,
    responses: pd.DataFrame,
    primary: Judged,
    report: EvaluationReport,
    second: Judged | None,
) -> PolicyOutcome:
    """Guards of every trained epoch; for the candidate the promotion decision, then its
    checkpoint registered (every run) and the alias moved (only when promoted)."""
    statistics = text_statistics(responses, DOCTOR_VISIT, primary.ratings.unreadable)
    model = str(responses[MODEL_COLUMN].iloc[0])
    trained = sorted(int(e) for e in set(responses["epoch"]) - {params.base_epoch})
    per_epoch = [
        check_guards(statistics, model, epoch, params.base_epoch, params.guards)
        for epoch in trained
    ]
    candidate = report.best_epoch[model] if trained else None
    guards = next((g for g in per_epoch if g.epoch == candidate), None)
    log_guards(run_id, statistics, per_epoch, guards)
    log_metrics(run_id, {"degenerate.n": float(statistics["n_degenerate"].sum())})
    if guards is None:
        return PolicyOutcome(notes=["no trained epoch was evaluated: nothing to register"])
    second_gain = second.report.value(model, candidate, "gain") if second else None
    decision = decide_champion(
        report.value(model, candidate, "gain"),
        report.value(model, candidate, "p"),
        second_gain,
        guards,
        has_second_judge=second is not None,
        significance=params.policy.significance,
    )
    log_metrics(run_id, {"promotion.promote": float(decision.promote)})
    version = None
    if params.policy.register_as:
        version = register_candidate(
            run_id, params, responses, report, candidate, second_gain, decision
        )
    return PolicyOutcome(guards, decision, version)


def register_candidate(
    run_id: str,
    params: EvaluateParams,
    responses: pd.DataFrame,
    report: EvaluationReport,
    epoch: int,
    second_gain: float | None,
    decision: PromotionDecision,
) -> str:
    """Register the candidate epoch's checkpoint folder with its evidence as tags."""
    model = str(responses[MODEL_COLUMN].iloc[0])
    checkpoint = checkpoint_of(responses, epoch)
    folder = get_settings().input_path(params.policy.checkpoints_dir) / checkpoint
    gain, p = report.value(model, epoch, "gain"), report.value(model, epoch, "p")
    tags = {
        "base_model": model,
        "epoch": epoch,
        "checkpoint": checkpoint,
        "hl_gain": gain,
        "p_value": p,
        "second_judge_gain": second_gain,
    }
    verdict = "promoted" if decision.promote else "not promoted"
    description = (
        f"Checkpoint {checkpoint} (epoch {epoch}) of a policy aligned from {model}: HL gain "
        f"{rounded(gain)} over the base (one-sided paired p = {rounded(p)}), second judge "
        f"gain {rounded(second_gain)}; {verdict} to @{params.policy.alias}."
    )
    return register_policy(
        run_id,
        folder,
        params.policy.register_as,
        params.policy.alias,
        decision,
        tags,
        description,
    )


def _nullable(table: dict[str, dict[int, float]]) -> dict[str, dict[int, float | None]]:
    return {m: {e: finite_or_none(v) for e, v in by.items()} for m, by in table.items()}


def _at(report: EvaluationReport, column: str, epochs: dict[str, int]) -> dict[str, float | None]:
    return {m: finite_or_none(report.value(m, e, column)) for m, e in epochs.items()}


def _null_notes(table: dict[str, dict[int, float | None]], what: str, why: str) -> list[str]:
    return [
        f"{what} of {model} at epoch {epoch} is null: {why}"
        for model, by_epoch in table.items()
        for epoch, value in by_epoch.items()
        if value is None
    ]


def evaluation_result(
    run_id: str,
    params: EvaluateParams,
    responses: pd.DataFrame,
    primary: Judged,
    report: EvaluationReport,
    by_id: EvaluationReport | None,
    second: Judged | None,
    policy: PolicyOutcome,
    examples: list[BeforeAfter],
) -> EvaluateResult:
    """The typed result; a value that cannot be computed is None, with a note saying why."""
    epochs = report.best_epoch
    gains = _nullable(report.by_epoch("gain"))
    p_values = {
        m: {e: p for e, p in by.items() if e != params.base_epoch}
        for m, by in _nullable(report.by_epoch("p")).items()
    }
    notes = [
        *policy.notes,
        *_null_notes(gains, "hl gain", "no persona rated at both epochs"),
        *_null_notes(
            p_values,
            "p-value",
            "fewer than two personas rated at both epochs, or identical differences",
        ),
    ]
    return EvaluateResult(
        run_id=run_id,
        mode="generated" if params.generated_files else "responses",
        best_epoch=report.best_epoch,
        hl_by_epoch={
            str(model): {
                int(row[EPOCH_COLUMN]): EpochHL(
                    mean=finite_or_none(row["mean"]),
                    ci_low=finite_or_none(row["ci_low"]),
                    ci_high=finite_or_none(row["ci_high"]),
                    n=int(row["n"]),
                )
                for _, row in part.iterrows()
            }
            for model, part in report.summary.groupby(MODEL_COLUMN)
        },
        hl_gain=_at(report, "gain", epochs),
        hl_gain_by_epoch=gains,
        p_value=_at(report, "p", epochs),
        p_value_by_epoch=p_values,
        hl_by_id_gain=_at(by_id, "gain", epochs) if by_id else {},
        second_judge_gain=_at(second.report, "gain", epochs) if second else {},
        second_judge_gain_by_epoch=_nullable(second.report.by_epoch("gain")) if second else {},
        guards_passed=policy.guards.passed if policy.guards else None,
        failed_guards=policy.guards.failed if policy.guards else [],
        guards=policy.guards,
        examples=examples,
        promotion=policy.decision,
        registered_model=params.policy.register_as if policy.version else None,
        registered_version=policy.version,
        rating_failures=len(primary.ratings.failures),
        second_judge_rating_failures=len(second.ratings.failures) if second else 0,
        degenerate=len(responses) - len(rated_rows(responses)),
        notes=notes,
    )


@flow(name="evaluate")
def evaluate(params: EvaluateParams = EvaluateParams()) -> EvaluateResult:  # noqa: B008
    """HL per epoch with CIs and paired t-tests against the base, trait shifts, the
    paper-compatible and by-id scores; for generated dialogues also guards, a second judge,
    registration and promotion."""
    settings = get_settings()
    per_model = not params.generated_files  # generated tables hold one policy
    primary = load_scoring(params.questionnaire, params.reward, settings)
    second_scoring = (
        load_scoring(
            params.second_questionnaire or params.questionnaire,
            params.second_reward or params.reward,
            settings,
            "second_judge.",
        )
        if params.second_judge is not None
        else None
    )
    responses, inputs, tables = read_inputs(params, settings)
    inputs |= primary.inputs | (second_scoring.inputs if second_scoring else {})

    with stage_run(
        "evaluate",
        settings.experiment_evaluation,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        log_params(
            run_id,
            params.model_dump(exclude={"parent_run_id"}, mode="json")
            | {
                "mode": "generated" if params.generated_files else "responses",
                "questionnaire.version": primary.questionnaire.version,
                "reward.version": primary.reward.reward.version,
            },
        )
        hashes = input_hashes(inputs)
        log_params(run_id, {f"input.{name}.sha256": digest for name, digest in hashes.items()})
        if tables:
            log_generated_tables(run_id, tables)

        # The training judge: HL per epoch, tests, trait shifts.
        judged = judge_responses(responses, params.judge, primary, params, settings)
        report = report_epochs(judged.report, params)
        log_judge(run_id, "judge.", judged, params.judge)
        log_scores(run_id, report, "hl", report.best_epoch, per_model)
        log_evaluation(run_id, report, judged.ratings.failures, per_model)
        ood = out_of_domain_fractions(judged.ratings, responses)
        log_out_of_domain(run_id, "judge.", ood, per_model)
        if params.stored_score_column and params.stored_score_column in responses.columns:
            check = stored_score_check(responses, judged.scored, params.stored_score_column)
            log_stored_score_check(run_id, check)

        # The paper's weights on the published HAL16Q: paper-compatible and by-id side by side.
        by_id = None
        if primary.reward.by_id is not None:
            log_scores(run_id, report, "hl.paper_compatible", report.best_epoch, per_model)
            by_id_scored = score_table(
                responses, judged.ratings.ratings, primary.reward.by_id, judged.scale
            )
            by_id = evaluate_scores(
                by_id_scored, primary.questionnaire.trait_ids, params.base_epoch, params.confidence
            )
            log_scores(run_id, by_id, "hl.by_id", report.best_epoch, per_model)

        # A second, independent judge on the same dialogues.
        second = None
        if second_scoring is not None:
            second = judge_responses(
                responses, params.second_judge, second_scoring, params, settings, "the second judge"
            )
            log_judge(run_id, "second_judge.", second, params.second_judge)
            log_scores(run_id, second.report, "second_judge.hl", report.best_epoch, per_model)
            ood = out_of_domain_fractions(second.ratings, responses)
            log_out_of_domain(run_id, "second_judge.", ood, per_model)

        # A trained policy: guards, decision, registration; before/after examples.
        policy = PolicyOutcome()
        if params.generated_files:
            policy = evaluate_policy(run_id, params, responses, judged, report, second)
        examples = before_after_examples(
            responses, judged.scored, report.best_epoch, params.base_epoch
        )
        log_examples(run_id, examples)

        result = evaluation_result(
            run_id, params, responses, judged, report, by_id, second, policy, examples
        )
        log_json_report(
            run_id,
            result.model_dump(mode="json")
            | {
                "base_epoch": params.base_epoch,
                "trait_ids": primary.questionnaire.trait_ids,
                "input_sha256": hashes,
                "failures": judged.ratings.failures,
                "second_judge_failures": second.ratings.failures if second else [],
                "guards": policy.guards.model_dump() if policy.guards else None,
                "score_explanation": primary.reward.explanation,
            },
            "evaluation/report.json",
        )
        intervals = trait_shift_intervals(
            judged.scored, primary.questionnaire.trait_ids, params.base_epoch, params.confidence
        )
        plots = log_evaluation_plots(run_id, report, primary.questionnaire, intervals)
        publish_evaluation(
            report,
            run_id,
            plots,
            judged.ratings.failures,
            by_id=by_id,
            explanation=primary.reward.explanation,
            second=second.report if second else None,
            guards=policy.guards,
            decision=policy.decision,
            registered=f"{params.policy.register_as} v{policy.version}" if policy.version else None,
            notes=result.notes,
            intervals=intervals,
            trait_texts=primary.questionnaire.texts(),
        )

        if params.pairwise_csv:
            judgements = read_judgements(settings.input_path(params.pairwise_csv))
            pairwise = evaluate_pairwise(judgements, params.elo_orderings, params.seed)
            log_pairwise(run_id, pairwise)
    return result
