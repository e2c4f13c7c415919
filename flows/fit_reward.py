"""Flow ``fit_reward``: load -> validate -> fit -> log -> register the HL reward."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.reward import RewardConfig
from hal_core.settings import get_settings
from hal_core.tables import witness_ratings
from tasks import tracking
from tasks.registry import REWARD_MODEL_NAME
from tasks.reward import (
    fit_reward_model,
    load_questionnaire,
    load_table,
    log_reward_fit,
    register_reward,
    save_reward,
)
from tasks.validation import Policy, validate_dataset


class FitRewardParams(BaseModel):
    """Parameters of the reward stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    ratings_file: str = Field(
        default="turing/ratings32_gpt-5.csv",
        description="Turing ratings table: absolute, relative to the working folder when it is "
        "there, else to the data folder.",
    )
    questionnaire_file: str = Field(
        default="questionnaires/hal32q.json",
        description="Questionnaire whose trait ids the rating lists follow, position by position.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Fit and CV settings.")
    validation_policy: Policy = Field(
        default="fail", description="Stop on bad rows, or quarantine them and go on."
    )
    register_as: str | None = Field(
        default=REWARD_MODEL_NAME, description="Registered model name; empty = don't register."
    )
    alias: str | None = Field(
        default="champion", description="Alias moved to the new version; empty = none."
    )
    parent_run_id: tracking.ParentRunId = None


class FitRewardResult(BaseModel):
    run_id: str
    reward_path: str
    reward_version: str
    selected_trait_ids: list[str]
    metrics: dict[str, float]
    model_version: str | None


@flow(name="fit_reward", log_prints=True)
def fit_reward(params: FitRewardParams = FitRewardParams()) -> FitRewardResult:  # noqa: B008
    """Fit the interpretable HL reward on trait ratings of human and AI witnesses."""
    settings = get_settings()
    ratings_path = settings.input_path(params.ratings_file)
    questionnaire_path = settings.input_path(params.questionnaire_file)
    with tracking.stage_run(
        "fit_reward", settings.experiment_reward, settings, params.parent_run_id
    ) as run:
        run_id = run.info.run_id
        tracking.log_inputs(run_id, {"ratings": ratings_path, "questionnaire": questionnaire_path})
        questionnaire = load_questionnaire(questionnaire_path)
        table = load_table(ratings_path)
        report = validate_dataset(
            table,
            f"turing_ratings{len(questionnaire.traits)}",
            params.validation_policy,
            settings,
            run_id,
        )
        witnesses = witness_ratings(report.valid, questionnaire)
        fit = fit_reward_model(witnesses, questionnaire, params.reward)
        log_reward_fit(run_id, fit, questionnaire, witnesses, params.reward)
        output_dir = settings.home_dir / "rewards" / run_id
        reward_path = save_reward(run_id, fit.reward, questionnaire, output_dir)
        model_version = None
        if params.register_as:
            model_version = register_reward(
                run_id, fit.reward, reward_path, params.register_as, params.alias or None
            )
        metrics = fit.metrics()
        figures = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        print(f"reward {fit.reward.version} ({' '.join(fit.selected_trait_ids)}): {figures}")
    return FitRewardResult(
        run_id=run_id,
        reward_path=str(reward_path),
        reward_version=fit.reward.version,
        selected_trait_ids=fit.selected_trait_ids,
        metrics=metrics,
        model_version=model_version,
    )
