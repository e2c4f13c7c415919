"""Flow ``fit_reward``: witnesses -> L1 and glass-box rewards, stability across judges, one
comparison table -> log -> register the chosen reward.

    hal fit-reward                                                  # HAL32Q, recorded ratings
    hal fit-reward --recipe infra/recipes/fit_reward_glass_box.yaml     # the glass-box reward
    # a derived questionnaire, offline: its traits borrow their nearest HAL32Q trait's ratings
    #   questionnaire_file: .hal/derivation/<run>/questionnaire.json
    #   ratings_source: matched_to_hal32q
    # a derived questionnaire rated live (hal rate turing/conversations_full.csv
    #   --text-column conversation --id-column conversation_id --questionnaire <derived>):
    #   ratings_source: rated, ratings_file: <that table>
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.forms import Internal, RunForm
from hal_core.reward import PAPER_HAL16_TRAIT_IDS, RewardConfig
from hal_core.reward_inputs import RatingsSource
from hal_core.reward_promotion import RewardPromotion
from hal_core.settings import get_settings
from hal_core.shape_reward import ShapeConfig
from hal_core.stability import StabilityConfig, stable_set
from hal_core.trait_matching import DEFAULT_MATCH_THRESHOLD
from tasks import tracking
from tasks.registry import REWARD_MODEL_NAME
from tasks.reward import (
    bootstrap_reward_weights,
    check_reward,
    compare_rewards,
    fit_reward_model,
    fit_shape_reward,
    headline_metrics,
    judge_label,
    load_questionnaire,
    load_witnesses,
    log_matching,
    log_reward_comparison,
    log_reward_fit,
    log_shape_reward,
    log_stability,
    match_questionnaire,
    promote_reward,
    register_reward,
    save_reward,
    select_stable_traits,
)
from tasks.validation import Policy

RewardKind = Literal["linear", "shape"]


class FitRewardParams(RunForm):
    """Parameters of the reward stage (the Prefect UI renders them as a form)."""

    model_config = ConfigDict(extra="forbid")

    ratings_file: str = Field(
        default="turing/ratings32_gpt-5.csv",
        description="The judge's ratings the reward is fitted on (format: see ratings_source): "
        "absolute, relative to the working folder when it is there, else to the data folder.",
    )
    ratings_source: RatingsSource = Field(
        default="recorded",
        description="How ratings become witnesses x trait ids. recorded: Turing ratings whose "
        "rating lists follow questionnaire_file position by position. matched_to_hal32q: "
        "recorded HAL32Q ratings; each trait of questionnaire_file takes its nearest HAL32Q "
        "trait's ratings (cosine >= match_threshold), unmatched traits are left out and listed. "
        "rated: a `hal rate` table (item_id, one column per trait id, status) on the "
        "conversations of conversations_file.",
    )
    questionnaire_file: str = Field(
        default="questionnaires/hal32q.json",
        description="Questionnaire the reward is fitted on (HAL32Q or a derived one).",
    )
    trait_ids: list[str] | None = Field(
        default=None,
        description="Fit on these traits of questionnaire_file only, by id (e.g. the traits "
        "a judge rates); None = every trait.",
    )
    reference_questionnaire_file: str = Field(
        default="questionnaires/hal32q.json",
        description="HAL32Q: what recorded rating lists follow for matched_to_hal32q, and the "
        "trait set of the HAL32Q rows of the comparison.",
    )
    match_threshold: float = Field(
        default=DEFAULT_MATCH_THRESHOLD,
        gt=0,
        le=1,
        description="matched_to_hal32q: MiniLM cosine at or above which a trait is matched.",
    )
    conversations_file: str = Field(
        default="turing/conversations_full.csv",
        description="rated: the rated conversations, with game_id and is_human per id.",
    )
    conversation_id_column: str = Field(
        default="conversation_id", description="rated: the id column `hal rate` was given."
    )
    cross_judge_files: list[str] = Field(
        default_factory=lambda: ["turing/ratings32_gpt-5-mini.csv"],
        description="Other judges' ratings, in the format of ratings_file: stability selection "
        "and the comparison run on every judge.",
    )
    reward_kind: RewardKind = Field(
        default="linear",
        description="Which fitted reward is saved as reward.json and registered: linear (the "
        "paper's L1 logistic) or shape (the glass-box GAM).",
    )
    reward: RewardConfig = Field(
        default_factory=RewardConfig,
        description="L1 fit and CV settings (CV folds and seed are shared by the comparison).",
    )
    shape: ShapeConfig = Field(default_factory=ShapeConfig, description="Glass-box settings.")
    stability: StabilityConfig = Field(
        default_factory=StabilityConfig, description="Stability selection settings."
    )
    validation_policy: Policy = Field(
        default="fail", description="Stop on bad rows, or quarantine them and go on."
    )
    register_as: str | None = Field(
        default=REWARD_MODEL_NAME, description="Registered model name; empty = don't register."
    )
    alias: str | None = Field(
        default="champion",
        description="Alias the new version takes only when it is at least as good as the "
        "current holder on check_ratings_file. The check runs first; the version is "
        "registered (as challenger, win or lose) only once it has. Empty = no check.",
    )
    check_ratings_file: str = Field(
        default="turing/ratings32_gpt-5-mini.csv",
        description="The fixed check set of guarded promotion: Turing ratings in the layout "
        "of reference_questionnaire_file, versioned by its sha256.",
    )
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None


class FitRewardResult(BaseModel):
    """What the reward stage hands on: the chosen reward and how every candidate scored."""

    run_id: str
    reward_path: str = Field(description="reward.json: the chosen reward (reward_kind).")
    reward_version: str
    reward_kind: RewardKind
    registered_version: str | None = Field(description="Model registry version, if registered.")
    promotion: RewardPromotion | None = Field(
        default=None, description="Whether the registered version took the alias, and why."
    )
    ratings_source: RatingsSource
    trait_ids: list[str] = Field(description="Traits the chosen reward scores, by id.")
    selected_trait_ids: list[str] = Field(description="Traits the L1 reward selected.")
    stable_trait_ids: list[str] = Field(description="Traits stable across every judge.")
    unmatched_trait_ids: list[str] = Field(
        default_factory=list, description="matched_to_hal32q: traits left out, no HAL32Q match."
    )
    comparison: list[dict] = Field(description="Rows of reward_comparison.csv.")
    metrics: dict[str, float]


def judge_files(paths: list[Path]) -> list[Path]:
    """The judges' ratings files, the fitted one first, each once; names must differ."""
    unique = list(dict.fromkeys(path.resolve() for path in paths))
    labels = [judge_label(path) for path in unique]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"judges {repeated} come from more than one ratings file ({unique}): the judge "
            "name is the file name without its ratings<N>_ prefix, and must be unique"
        )
    return unique


@flow(name="fit_reward", log_prints=True)
def fit_reward(params: FitRewardParams = FitRewardParams()) -> FitRewardResult:  # noqa: B008
    """Fit the interpretable HL rewards on trait ratings of human and AI witnesses."""
    settings = get_settings()
    ratings_paths = judge_files(
        [settings.input_path(f) for f in [params.ratings_file, *params.cross_judge_files]]
    )
    questionnaire_path = settings.input_path(params.questionnaire_file)
    reference_path = settings.input_path(params.reference_questionnaire_file)
    conversations_path = (
        settings.input_path(params.conversations_file) if params.ratings_source == "rated" else None
    )
    with tracking.stage_run(
        "fit_reward",
        settings.experiment_reward,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        run_id = run.info.run_id
        inputs = {
            "ratings": ratings_paths[0],
            "questionnaire": questionnaire_path,
            "reference_questionnaire": reference_path,
        }
        inputs.update({f"ratings.{i}": path for i, path in enumerate(ratings_paths[1:], 1)})
        if conversations_path is not None:
            inputs["conversations"] = conversations_path
        tracking.log_inputs(run_id, inputs)
        tracking.log_params(
            run_id, {"ratings_source": params.ratings_source, "reward.kind": params.reward_kind}
        )
        questionnaire = load_questionnaire(questionnaire_path)
        reference = load_questionnaire(reference_path)
        tracking.tag_run(
            run_id,
            {
                "hal.questionnaire": f"{questionnaire.name}@{questionnaire.version[:12]}",
                "hal.ratings_source": params.ratings_source,
                "hal.reward_kind": params.reward_kind,
            },
        )
        matching = None
        if params.ratings_source == "matched_to_hal32q":
            matching = match_questionnaire(
                questionnaire, reference, params.match_threshold, settings
            )
            log_matching(run_id, matching)
            questionnaire = questionnaire.subset(matching.matched_ids, name=questionnaire.name)
        judges = [
            load_witnesses(
                path,
                params.ratings_source,
                questionnaire,
                reference,
                matching,
                conversations_path,
                params.conversation_id_column,
                params.validation_policy,
                settings,
                run_id,
            )
            for path in ratings_paths
        ]
        if params.trait_ids is not None:
            questionnaire = questionnaire.subset(params.trait_ids, name=questionnaire.name)
            tracking.log_params(run_id, {"trait_ids": params.trait_ids})
        main = judges[0]
        tracking.log_metrics(run_id, {f"input.{k}": v for k, v in main.counts.items()})

        fit = fit_reward_model(main.witnesses, questionnaire, params.reward)
        intervals = bootstrap_reward_weights(main.witnesses, fit, params.reward, params.stability)
        log_reward_fit(run_id, fit, questionnaire, main.witnesses, params.reward, intervals)
        shape = fit_shape_reward(main.witnesses, questionnaire, params.shape)
        log_shape_reward(run_id, shape, questionnaire, main.witnesses)

        stability = select_stable_traits(judges, questionnaire.trait_ids, params.stability)
        stable = stable_set(stability, params.stability.threshold)
        log_stability(run_id, stability, stable, params.stability, questionnaire)
        comparison = compare_rewards(
            judges,
            questionnaire,
            reference,
            stable,
            list(PAPER_HAL16_TRAIT_IDS),
            params.reward,
            params.shape,
        )
        log_reward_comparison(run_id, comparison)

        rewards = {
            "linear": fit.reward,
            "shape": shape.to_reward(
                questionnaire=questionnaire.name, questionnaire_version=questionnaire.version
            ),
        }
        chosen = rewards[params.reward_kind]
        output_dir = settings.home_dir / "rewards" / run_id
        reward_path = save_reward(run_id, rewards, params.reward_kind, questionnaire, output_dir)
        tracking.log_params(run_id, {"reward.version": chosen.version})
        metrics = headline_metrics(fit, comparison, main.judge, stable)
        tracking.log_metrics(run_id, metrics)
        print(f"reward {params.reward_kind} {chosen.version} ({' '.join(chosen.trait_ids)})")
        print(comparison.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        # The check runs before anything is registered: a check that fails leaves the
        # registry as it was (no new version, @challenger where it was).
        registered, promotion = None, None
        if params.register_as and params.alias:
            promotion = check_reward(
                chosen,
                params.register_as,
                params.alias,
                settings.input_path(params.check_ratings_file),
                reference,
                settings,
            )
        if params.register_as:
            registered = register_reward(run_id, chosen, reward_path, params.register_as)
        if promotion is not None:
            promote_reward(run_id, params.register_as, registered, params.alias, promotion)
            print(f"promotion: {promotion.reason}")
    return FitRewardResult(
        run_id=run_id,
        reward_path=str(reward_path),
        reward_version=chosen.version,
        reward_kind=params.reward_kind,
        registered_version=registered,
        promotion=promotion,
        ratings_source=params.ratings_source,
        trait_ids=chosen.trait_ids,
        selected_trait_ids=fit.selected_trait_ids,
        stable_trait_ids=stable,
        unmatched_trait_ids=matching.unmatched_ids if matching else [],
        comparison=comparison.to_dict(orient="records"),
        metrics=metrics,
    )
