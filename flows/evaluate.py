"""Flow ``evaluate``: rate each epoch's responses, score them with a reward, compare with base.

hal evaluate                                   # aligned_outputs/*, recorded ratings, paper w
hal evaluate --model Llama-3.2-1B-Instruct --pairwise-csv pairs.csv
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.evaluation import (
    evaluate_scores,
    load_rating_questionnaire,
    load_reward,
    score_table,
    stored_score_check,
)
from hal_core.pairwise import evaluate_pairwise, read_judgements
from hal_core.settings import get_settings
from tasks.evaluation import (
    find_response_files,
    log_evaluation,
    log_evaluation_plots,
    log_pairwise,
    log_stored_score_check,
    publish_evaluation,
    rate_responses,
    read_response_files,
)
from tasks.tracking import ParentRunId, input_hashes, log_params, stage_run


class EvaluateParams(BaseModel):
    """What to evaluate and how; paths are relative to the data folder unless absolute."""

    model_config = ConfigDict(extra="forbid")

    responses_dir: str = Field(
        default="aligned_outputs",
        description="Folder of <model>/samples_epoch_XX_*.csv files (generated responses).",
    )
    models: list[str] = Field(
        default_factory=list, description="Model folders to evaluate; empty means all."
    )
    judge: Literal["recorded"] = Field(
        default="recorded",
        description="recorded: replay the ratings stored in each file's likert_evaluation "
        "column, in the questionnaire's order.",
    )
    questionnaire: str = Field(
        default="questionnaires/hal16q_published.json",
        description="Questionnaire the responses are rated on (project JSON or published HAL16Q).",
    )
    reward: str = Field(
        default="hal16_weights_paper.json",
        description="Reward JSON: the paper's {w, b}, applied in the questionnaire's order, or "
        "{weights: {trait_id: w}, bias}.",
    )
    base_epoch: int = Field(default=0, ge=0, description="Epoch of the model before alignment.")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Level of the mean's CI.")
    stored_score_column: str | None = Field(
        default="hal16_score",
        description="A score stored with the responses to check ours against (when present).",
    )
    pairwise_csv: str | None = Field(
        default=None, description="Optional pairwise human judgements (win rate and Elo)."
    )
    elo_orderings: int = Field(default=1000, ge=1, description="Random game orders for Elo.")
    seed: int = Field(default=42, description="Seed of the Elo orderings.")
    parent_run_id: ParentRunId = None


@flow(name="evaluate")
def evaluate(params: EvaluateParams = EvaluateParams()) -> dict:  # noqa: B008
    """HL score per model and epoch with CIs, paired t-tests against the base, trait shifts."""
    settings = get_settings()
    questionnaire_path = settings.input_path(params.questionnaire)
    reward_path = settings.input_path(params.reward)
    questionnaire = load_rating_questionnaire(questionnaire_path)
    reward = load_reward(reward_path, questionnaire)
    files = find_response_files(settings.input_path(params.responses_dir), params.models or None)

    with stage_run(
        "evaluate", settings.experiment_evaluation, settings, params.parent_run_id
    ) as run:
        run_id = run.info.run_id
        log_params(
            run_id,
            params.model_dump(exclude={"parent_run_id"})
            | {"questionnaire.version": questionnaire.version, "reward.version": reward.version},
        )
        inputs = {"questionnaire": questionnaire_path, "reward": reward_path}
        inputs |= {f"responses.{f.model}.e{f.epoch:02d}": f.path for f in files}
        hashes = input_hashes(inputs)
        log_params(run_id, {f"input.{name}.sha256": digest for name, digest in hashes.items()})

        responses = read_response_files(files)
        ratings, failures = rate_responses(responses, questionnaire)
        scored = score_table(responses, ratings, reward)
        report = evaluate_scores(
            scored, questionnaire.trait_ids, params.base_epoch, params.confidence
        )
        log_evaluation(run_id, report, failures, hashes)
        if params.stored_score_column and params.stored_score_column in responses.columns:
            check = stored_score_check(responses, scored, params.stored_score_column)
            log_stored_score_check(run_id, check)
        plots = log_evaluation_plots(run_id, report, questionnaire)
        publish_evaluation(report, run_id, plots, failures)

        if params.pairwise_csv:
            judgements = read_judgements(settings.input_path(params.pairwise_csv))
            pairwise = evaluate_pairwise(judgements, params.elo_orderings, params.seed)
            log_pairwise(run_id, pairwise)

    return {
        "run_id": run_id,
        "best_epoch": report.best_epoch,
        "hl_gain": report.gains,
        "rating_failures": len(failures),
    }
