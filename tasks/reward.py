"""Tasks of the reward stage: load witnesses, fit, compare, log to MLflow, register."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from hal_core import reward as reward_core
from hal_core.embedding import EMBEDDING_MODEL, EmbeddingCache
from hal_core.questionnaire import Questionnaire
from hal_core.reward_comparison import (
    SELECTION_FIXED,
    SELECTION_IN_FOLDS,
    SELECTION_NONE,
    Candidate,
    GradientBoostedTraits,
    compare_candidates,
)
from hal_core.reward_curves import HeldOutCurves
from hal_core.reward_inputs import RatingsSource, rated_witnesses
from hal_core.reward_promotion import RewardPromotion, decide_reward_promotion
from hal_core.settings import HalSettings
from hal_core.shape_reward import ShapeConfig, ShapeRewardRegression
from hal_core.stability import StabilityConfig, reward_weight_intervals, stability_table
from hal_core.tables import file_sha256, read_table, witness_ratings, write_table
from hal_core.trait_matching import (
    TraitMatching,
    embed_questionnaire,
    match_traits,
    matched_witnesses,
)
from hal_core.trait_shifts import trait_label
from tasks import tracking
from tasks.registry import CHALLENGER_ALIAS, alias_holder, log_reward_model, run_version
from tasks.retries import retry_unless_bad_input
from tasks.scoring import load_reward
from tasks.validation import Policy, validate_dataset

COMPARISON_ARTIFACT = "reward_comparison"
"""``reward_comparison.csv`` and ``.json`` at the root of a fit_reward run's artifacts."""


@task(name="load_questionnaire", cache_policy=NO_CACHE)
def load_questionnaire(path: Path) -> Questionnaire:
    """Read a questionnaire JSON."""
    return Questionnaire.load(path)


@task(
    name="load_table",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
)
def load_table(path: Path) -> pd.DataFrame:
    """Read a CSV table with row numbers for error messages."""
    return read_table(path)


def judge_label(path: str | Path) -> str:
    """A judge's name from its ratings file: ``ratings32_gpt-5.csv`` -> ``gpt-5``."""
    return re.sub(r"^ratings\d+_", "", Path(path).stem)


@dataclass
class JudgeWitnesses:
    """One judge's witnesses keyed by the reward's trait ids, and by HAL32Q ids when known."""

    judge: str
    witnesses: pd.DataFrame
    reference: pd.DataFrame | None
    counts: dict[str, int]


@task(name="match_questionnaire", cache_policy=NO_CACHE)
def match_questionnaire(
    derived: Questionnaire, reference: Questionnaire, threshold: float, settings: HalSettings
) -> TraitMatching:
    """Match derived traits to reference traits by MiniLM cosine (embeddings cached, offline)."""
    cache = EmbeddingCache(
        settings.home_dir / "cache" / "embeddings.sqlite", model_name=f"{EMBEDDING_MODEL}:single"
    )
    return match_traits(
        derived,
        reference,
        embed_questionnaire(derived, cache),
        embed_questionnaire(reference, cache),
        threshold,
    )


@task(name="load_witnesses", cache_policy=NO_CACHE)
def load_witnesses(
    ratings_path: Path,
    source: RatingsSource,
    questionnaire: Questionnaire,
    reference: Questionnaire,
    matching: TraitMatching | None,
    conversations_path: Path | None,
    conversation_id_column: str,
    policy: Policy,
    settings: HalSettings,
    run_id: str,
) -> JudgeWitnesses:
    """A judge's ratings as witnesses, read the way ``source`` says (validated on the way)."""
    table = read_table(ratings_path)
    judge = judge_label(ratings_path)
    if source == "rated":
        if conversations_path is None:
            raise ValueError("ratings_source 'rated' needs the rated conversations table")
        rated = rated_witnesses(
            table, read_table(conversations_path), questionnaire, conversation_id_column
        )
        return JudgeWitnesses(judge, rated.witnesses, None, rated.counts)
    lists = questionnaire if source == "recorded" else reference
    report = validate_dataset(table, f"turing_ratings{len(lists.traits)}", policy, settings, run_id)
    witnesses = witness_ratings(report.valid, lists)
    witnesses.attrs["source"] = str(ratings_path)
    counts = {"witnesses.rated": len(witnesses), "games.kept": int(witnesses.game_id.nunique())}
    if source == "recorded":
        same = questionnaire.version == reference.version
        return JudgeWitnesses(judge, witnesses, witnesses if same else None, counts)
    if matching is None:
        raise ValueError("ratings_source 'matched_to_hal32q' needs a trait matching")
    return JudgeWitnesses(judge, matched_witnesses(witnesses, matching), witnesses, counts)


@task(name="fit_reward_model", cache_policy=NO_CACHE)
def fit_reward_model(
    witnesses: pd.DataFrame, questionnaire: Questionnaire, config: reward_core.RewardConfig
) -> reward_core.RewardFit:
    """Fit the L1 logistic reward and evaluate it three ways."""
    scale = (questionnaire.scale.min, questionnaire.scale.max)
    fit = reward_core.fit_reward(witnesses, questionnaire.trait_ids, config, scale)
    # which questionnaire the ids belong to: a derived one numbers its traits t01.. too
    source = {"questionnaire": questionnaire.name, "questionnaire_version": questionnaire.version}
    return dataclasses.replace(fit, reward=dataclasses.replace(fit.reward, metadata=source))


@task(name="bootstrap_reward_weights", cache_policy=NO_CACHE)
def bootstrap_reward_weights(
    witnesses: pd.DataFrame,
    fit: reward_core.RewardFit,
    reward_config: reward_core.RewardConfig,
    stability_config: StabilityConfig,
) -> pd.DataFrame:
    """95% intervals of the reward's weights over game-level bootstraps (stability's draws)."""
    return reward_weight_intervals(
        witnesses,
        list(fit.full_weights),
        fit.selected_trait_ids,
        stability_config.n_bootstraps,
        stability_config.seed,
        reward_config.C,
    )


@task(name="fit_shape_reward", cache_policy=NO_CACHE)
def fit_shape_reward(
    witnesses: pd.DataFrame, questionnaire: Questionnaire, config: ShapeConfig
) -> ShapeRewardRegression:
    """Fit the glass-box reward (a shape per trait) on every witness."""
    scale = (questionnaire.scale.min, questionnaire.scale.max)
    model = ShapeRewardRegression.from_config(config, scale)
    return model.fit(
        witnesses[questionnaire.trait_ids],
        witnesses["is_human"].to_numpy(int),
        groups=witnesses["game_id"].to_numpy(),
    )


@task(name="select_stable_traits", cache_policy=NO_CACHE)
def select_stable_traits(
    judges: list[JudgeWitnesses], trait_ids: list[str], config: StabilityConfig
) -> pd.DataFrame:
    """Selection probability of every trait (rows) under every judge's ratings (columns)."""
    return stability_table({j.judge: j.witnesses for j in judges}, trait_ids, config)


def comparison_candidates(
    judge: JudgeWitnesses,
    questionnaire: Questionnaire,
    reference: Questionnaire,
    stable_ids: list[str],
    paper_ids: list[str],
    reward_config: reward_core.RewardConfig,
    shape_config: ShapeConfig,
) -> dict[str, list[Candidate]]:
    """What the comparison evaluates for one judge, by witness table (reward or reference)."""
    C, threshold = reward_config.C, reward_config.selection_threshold
    scale = (questionnaire.scale.min, questionnaire.scale.max)
    own = "hal32q" if questionnaire.version == reference.version else "derived"
    ids = tuple(questionnaire.trait_ids)

    def l1(selection: float | None):
        return lambda: reward_core.TraitLogisticRegression(C=C, selection_threshold=selection)

    by_table: dict[str, list[Candidate]] = {"reward": [], "reference": []}
    if judge.reference is not None:
        by_table["reference"] += [
            Candidate(
                "l1", "hal32q", tuple(reference.trait_ids), l1(threshold), SELECTION_IN_FOLDS
            ),
            Candidate("l1", "paper16", tuple(paper_ids), l1(None), SELECTION_FIXED),
        ]
    if own == "derived":
        by_table["reward"].append(
            Candidate("l1", "derived", ids, l1(threshold), SELECTION_IN_FOLDS)
        )
    if stable_ids:
        by_table["reward"].append(
            Candidate("l1", f"stable_{own}", tuple(stable_ids), l1(None), SELECTION_FIXED)
        )
    by_table["reward"] += [
        Candidate(
            "shape",
            own,
            ids,
            lambda: ShapeRewardRegression.from_config(shape_config, scale),
            SELECTION_NONE,
        ),
        Candidate("hgb", own, ids, GradientBoostedTraits, SELECTION_NONE),
    ]
    return by_table


@task(name="compare_rewards", cache_policy=NO_CACHE)
def compare_rewards(
    judges: list[JudgeWitnesses],
    questionnaire: Questionnaire,
    reference: Questionnaire,
    stable_ids: list[str],
    paper_ids: list[str],
    reward_config: reward_core.RewardConfig,
    shape_config: ShapeConfig,
) -> pd.DataFrame:
    """Every candidate on every judge, on the same game-grouped folds per judge."""
    parts = []
    for judge in judges:
        candidates = comparison_candidates(
            judge, questionnaire, reference, stable_ids, paper_ids, reward_config, shape_config
        )
        tables = {"reward": judge.witnesses, "reference": judge.reference}
        for name, listed in candidates.items():
            if listed:
                parts.append(
                    compare_candidates(
                        {judge.judge: tables[name]},
                        {judge.judge: listed},
                        reward_config.cv_folds,
                        reward_config.grouped_cv_seed,
                    )
                )
    table = pd.concat(parts, ignore_index=True)
    order = {"hal32q": 0, "paper16": 1, "derived": 2}
    table["_order"] = [order.get(t, 3) for t in table.trait_set]
    model_order = {"l1": 0, "shape": 1, "hgb": 2}
    table["_model"] = table.model.map(model_order)
    table = table.sort_values(["judge", "_model", "_order"], kind="stable")
    return table.drop(columns=["_order", "_model"]).reset_index(drop=True)


def headline_metrics(
    fit: reward_core.RewardFit, comparison: pd.DataFrame, judge: str, stable: list[str]
) -> dict[str, float]:
    """The L1 reward's metrics plus the glass box's and the black box's on the fitted judge."""
    metrics = fit.metrics()
    rows = comparison[comparison.judge == judge]
    for model in ("shape", "hgb"):
        row = rows[rows.model == model].iloc[0]
        metrics[f"{model}.cv_grouped.accuracy"] = float(row.cv_grouped_accuracy)
        metrics[f"{model}.paired.accuracy"] = float(row.paired_accuracy)
    metrics["stability.n_stable"] = float(len(stable))
    return metrics


# ------------------------------------------------------------------------------- logging


LABEL_WIDTH = 52
"""Characters per line of a trait's label on a plot (wrapped at spaces, never mid-word)."""


def _trait_labels(trait_ids: list[str], texts: dict[str, str]) -> list[str]:
    return [trait_label(t, texts.get(t, ""), LABEL_WIDTH) for t in trait_ids]


def _row_height(labels: list[str], per_line: float = 0.17) -> float:
    """Inches per plot row, enough for the longest wrapped label."""
    return per_line * max(label.count("\n") + 1 for label in labels) + 0.08


def _weights_figure(
    fit: reward_core.RewardFit,
    intervals: pd.DataFrame,
    questionnaire: Questionnaire,
    threshold: float,
):
    """Every trait's weight in the all-trait fit, and the reward's refit weight of each
    selected trait, with their bootstrap intervals; full labels, one row per trait."""
    trait_ids = list(fit.full_weights)
    labels = _trait_labels(trait_ids, questionnaire.texts())
    rows = np.arange(len(trait_ids))
    figure, axis = plt.subplots(figsize=(11, _row_height(labels) * len(trait_ids) + 1.6))
    full = intervals.loc[trait_ids]
    selected = np.array([t in fit.reward.weights for t in trait_ids])

    def draw(frame: pd.DataFrame, prefix: str, y: np.ndarray, marker: str, color: str, name: str):
        # drawn from its ends: a percentile interval of few bootstraps may miss the estimate
        axis.hlines(y, frame[f"{prefix}_ci_low"], frame[f"{prefix}_ci_high"], color=color)
        axis.plot(frame[f"{prefix}_weight"], y, marker, color=color, markersize=4, label=name)

    draw(full[~selected], "full", rows[~selected] - 0.15, "o", "darkgray",
         "all-trait fit, not selected")  # fmt: skip
    draw(full[selected], "full", rows[selected] - 0.15, "o", "tab:blue", "all-trait fit, selected")
    draw(full[selected], "selected", rows[selected] + 0.15, "D", "tab:orange",
         "reward (refit on the selected traits)")  # fmt: skip
    axis.axvline(0, color="black", linewidth=0.8)
    for side in (-threshold, threshold):
        axis.axvline(side, color="gray", linewidth=0.8, linestyle="--")
    axis.set_yticks(rows, labels, fontsize=8)
    axis.set_ylim(len(trait_ids) - 0.5, -0.5)
    axis.grid(axis="x", alpha=0.3)
    axis.set_xlabel(
        f"weight per rating point, 95% bootstrap interval over games; dashed: |w| = {threshold:g}"
    )
    axis.set_title("HL reward: trait weights")
    axis.legend(loc="lower right", fontsize=8)
    return figure


def _roc_figure(curves: HeldOutCurves, title: str):
    figure, axis = plt.subplots(figsize=(5, 5))
    roc = curves.roc
    axis.plot(roc.false_positive_rate, roc.true_positive_rate, label=f"AUC {curves.auc:.3f}")
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8, label="chance")
    axis.set_xlabel("false positive rate (AI scored as human)")
    axis.set_ylabel("true positive rate (humans scored as human)")
    axis.set_aspect("equal")
    axis.set_title(title)
    axis.legend(loc="lower right")
    return figure


def _calibration_figure(curves: HeldOutCurves, title: str):
    """Reliability diagram over the witnesses per probability bin."""
    figure, (axis, counts) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    table = curves.calibration
    filled = table[table.n > 0]
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=0.8, label="calibrated")
    axis.plot(filled.mean_predicted, filled.fraction_human, "o-", label="reward")
    axis.set_ylabel("share of humans among the bin's witnesses")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"{title}\nBrier {curves.brier:.3f}, ECE {curves.ece:.3f}")
    axis.legend(loc="upper left")
    counts.bar(table.bin_low, table.n, width=table.bin_high - table.bin_low, align="edge",
               color="lightgray", edgecolor="gray")  # fmt: skip
    counts.set_xlabel("predicted probability of human, sigmoid(HL)")
    counts.set_ylabel("witnesses")
    return figure


def _score_histogram(scores: np.ndarray, is_human: np.ndarray, title: str):
    figure, axis = plt.subplots(figsize=(7, 4))
    bins = np.linspace(scores.min(), scores.max(), 40)
    axis.hist(scores[is_human == 1], bins=bins, alpha=0.6, label="human")
    axis.hist(scores[is_human == 0], bins=bins, alpha=0.6, label="AI")
    axis.set_xlabel("HL score")
    axis.set_ylabel("witnesses")
    axis.set_title(title)
    axis.legend()
    return figure


def _log_tables(run_id: str, tables: dict[str, pd.DataFrame], folder: str | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for name, table in tables.items():
            write_table(table, Path(directory, name))
            tracking.log_file(run_id, Path(directory, name), folder)


@task(name="log_reward_fit", cache_policy=NO_CACHE)
def log_reward_fit(
    run_id: str,
    fit: reward_core.RewardFit,
    questionnaire: Questionnaire,
    witnesses: pd.DataFrame,
    config: reward_core.RewardConfig,
    intervals: pd.DataFrame,
) -> None:
    """Log params, the headline metrics and the reward's weights; every trait's weights with
    intervals, the per-seed accuracies and the held-out curves go to tables and plots."""
    tracking.log_params(
        run_id,
        {
            "C": config.C,
            "selection_threshold": config.selection_threshold,
            "cv_folds": config.cv_folds,
            "paper_cv_seeds": list(config.paper_cv_seeds),
            "refit_cv_seed": config.refit_cv_seed,
            "grouped_cv_seed": config.grouped_cv_seed,
            "questionnaire.name": questionnaire.name,
            "questionnaire.version": questionnaire.version,
            "selected_trait_ids": " ".join(fit.selected_trait_ids),
            "reward.linear.version": fit.reward.version,
        },
    )
    # Metrics are what a chart across runs is for: the headline figures and the reward's own
    # weights. Everything per trait, per seed or per bin goes to tables/ (one chart per
    # metric key made the MLflow UI unreadable).
    metrics = dict(fit.metrics())
    metrics.update({f"weight.selected.{t}": w for t, w in fit.reward.weights.items()})
    metrics["bias.selected"] = fit.reward.bias
    tracking.log_metrics(run_id, metrics)
    is_human = witnesses["is_human"].to_numpy()
    tracking.log_figure(
        run_id,
        _weights_figure(fit, intervals, questionnaire, config.selection_threshold),
        "plots/trait_weights.png",
    )
    tracking.log_figure(
        run_id,
        _roc_figure(fit.grouped_curves, "ROC, game-grouped out of fold"),
        "plots/roc_grouped_cv.png",
    )
    tracking.log_figure(
        run_id,
        _calibration_figure(fit.grouped_curves, "Calibration, game-grouped out of fold"),
        "plots/calibration_grouped_cv.png",
    )
    tracking.log_figure(
        run_id,
        _score_histogram(fit.train_scores, is_human, "HL score, fitted on all games"),
        "plots/hl_histogram_train.png",
    )
    tracking.log_figure(
        run_id,
        _score_histogram(fit.grouped_scores, is_human, "HL score, game-grouped out of fold"),
        "plots/hl_histogram_grouped_cv.png",
    )
    scored = witnesses[["_row", "game_id", "witness", "is_human"]].assign(
        hl=fit.train_scores, hl_grouped_cv=fit.grouped_scores
    )
    ranges = fit.reward.contribution_ranges()
    weights = pd.DataFrame(
        {"trait_id": list(fit.full_weights), "weight_full": list(fit.full_weights.values())}
    ).assign(
        weight_full_ci_low=lambda f: f.trait_id.map(intervals.full_ci_low),
        weight_full_ci_high=lambda f: f.trait_id.map(intervals.full_ci_high),
        selected=lambda f: f.trait_id.isin(fit.selected_trait_ids),
        weight_selected=lambda f: f.trait_id.map(fit.reward.weights),
        weight_selected_ci_low=lambda f: f.trait_id.map(intervals.selected_ci_low),
        weight_selected_ci_high=lambda f: f.trait_id.map(intervals.selected_ci_high),
        contribution_range=lambda f: f.trait_id.map(ranges),
        text=lambda f: f.trait_id.map(questionnaire.texts()),
    )
    per_seed = pd.DataFrame(
        {
            "repeat": range(len(fit.paper_cv_accuracies)),
            "seed": list(config.paper_cv_seeds),
            "accuracy": fit.paper_cv_accuracies,
        }
    )
    curves = fit.grouped_curves
    _log_tables(
        run_id,
        {
            "witness_scores.csv": scored,
            "trait_weights.csv": weights,
            "cv_accuracy_per_seed.csv": per_seed,
            "roc_grouped_cv.csv": curves.roc,
            "calibration_grouped_cv.csv": curves.calibration,
        },
        "tables",
    )
    # the JSON twin carries the two biases, which are not rows of a per-trait table
    tracking.log_json(
        run_id,
        {
            "bias_full": fit.full_bias,
            "bias_selected": fit.reward.bias,
            "interval": "95% percentile over the game-level bootstraps of stability.*",
            "traits": weights.astype(object).where(weights.notna(), None).to_dict("records"),
        },
        "tables/trait_weights.json",
    )


def _contribution_plots(
    shapes: pd.DataFrame, texts: dict[str, str], witnesses: pd.DataFrame, folder: Path
) -> None:
    """``<trait id>.png`` per trait: its contribution per rating level, over how many human
    and AI witnesses gave each level. One figure is redrawn for every trait (it is faster)."""
    levels = shapes.columns.to_numpy(int)
    is_human = witnesses["is_human"].to_numpy(int)
    low, high = float(shapes.to_numpy().min()), float(shapes.to_numpy().max())
    margin = 0.05 * (high - low or 1.0)
    figure, axis = plt.subplots(figsize=(5, 3.4))
    figure.subplots_adjust(left=0.16, right=0.84, bottom=0.15, top=0.86)  # 2-line titles
    counts = axis.twinx()
    for trait_id in shapes.index:
        axis.clear()
        counts.clear()
        counts.yaxis.tick_right()
        counts.yaxis.set_label_position("right")
        ratings = witnesses[trait_id].to_numpy()
        for offset, label, mask, color in (
            (-0.19, "human", is_human == 1, "tab:green"),
            (0.19, "AI", is_human == 0, "tab:red"),
        ):
            count = [(ratings[mask] == level).sum() for level in levels]
            counts.bar(levels + offset, count, 0.38, color=color, alpha=0.25, label=label)
        counts.set_ylabel("witnesses at this rating")
        counts.legend(loc="upper left", fontsize=7, frameon=False)
        axis.plot(levels, shapes.loc[trait_id].to_numpy(), "o-", color="tab:blue", zorder=3)
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_ylim(low - margin, high + margin)  # one scale: plots compare at a glance
        axis.set_zorder(counts.get_zorder() + 1)
        axis.patch.set_visible(False)
        axis.set_xticks(levels)
        axis.set_xlabel("rating")
        axis.set_ylabel("contribution to HL")
        axis.set_title(trait_label(trait_id, texts[trait_id], 64), fontsize=8)
        figure.savefig(folder / f"{trait_id}.png", dpi=80)
    plt.close(figure)


@task(name="log_shape_reward", cache_policy=NO_CACHE)
def log_shape_reward(
    run_id: str,
    model: ShapeRewardRegression,
    questionnaire: Questionnaire,
    witnesses: pd.DataFrame,
) -> None:
    """Every trait's shape as a table (its bias and C in the JSON twin) and one contribution
    plot per trait; its accuracies are headline metrics (``shape.*``, see headline_metrics)."""
    reward = model.to_reward()
    shapes = model.shapes_
    ranges = reward.contribution_ranges()
    tracking.log_params(run_id, {"reward.shape.version": reward.version})
    texts = questionnaire.texts()
    table = shapes.copy()
    table.columns = [f"level_{c}" for c in shapes.columns]
    table = table.assign(
        contribution_range=table.index.map(ranges), text=table.index.map(texts)
    ).rename_axis("trait_id")
    _log_tables(run_id, {"trait_shapes.csv": table.reset_index()}, "tables")
    tracking.log_json(
        run_id,
        {"bias": reward.bias, "C": model.C_, "traits": table.reset_index().to_dict("records")},
        "tables/trait_shapes.json",
    )
    with tempfile.TemporaryDirectory() as directory:
        _contribution_plots(shapes, texts, witnesses, Path(directory))
        tracking.log_file(run_id, directory, "plots/contributions")


def _heatmap(table: pd.DataFrame, threshold: float, stable: list[str], texts: dict[str, str]):
    labels = [
        f"{label} *" if t in stable else label
        for t, label in zip(table.index, _trait_labels(list(table.index), texts), strict=True)
    ]
    height = _row_height(labels, per_line=0.15) * len(table) + 1.5
    figure, axis = plt.subplots(figsize=(1.6 * table.shape[1] + 6, height))
    image = axis.imshow(table.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.set_xticks(range(table.shape[1]), table.columns)
    axis.set_yticks(range(len(table)), labels, fontsize=7)
    for (row, column), value in np.ndenumerate(table.to_numpy()):
        axis.text(
            column,
            row,
            f"{value:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value < 0.6 else "black",
        )
    axis.set_title(f"selection probability (* = stable: >= {threshold:g} for every judge)")
    figure.colorbar(image, ax=axis, fraction=0.05)
    return figure


@task(name="log_stability", cache_policy=NO_CACHE)
def log_stability(
    run_id: str,
    table: pd.DataFrame,
    stable: list[str],
    config: StabilityConfig,
    questionnaire: Questionnaire,
) -> None:
    """The selection-probability table (trait x judge), its heatmap and the stable set."""
    tracking.log_params(
        run_id,
        {
            "stability.n_bootstraps": config.n_bootstraps,
            "stability.seed": config.seed,
            "stability.threshold": config.threshold,
            "stability.judges": list(table.columns),
            "stable_trait_ids": " ".join(stable),
        },
    )
    # one probability per trait and judge is a table, not 64 charts
    tracking.log_metrics(run_id, {"stability.n_stable": float(len(stable))})
    texts = questionnaire.texts()
    frame = table.reset_index().assign(
        stable=lambda f: f.trait_id.isin(stable), text=lambda f: f.trait_id.map(texts)
    )
    _log_tables(run_id, {"selection_probability.csv": frame}, "tables")
    tracking.log_json(run_id, frame.to_dict(orient="records"), "tables/selection_probability.json")
    tracking.log_figure(
        run_id,
        _heatmap(table, config.threshold, stable, texts),
        "plots/selection_probability.png",
    )


@task(name="log_matching", cache_policy=NO_CACHE)
def log_matching(run_id: str, matching: TraitMatching) -> None:
    """Which derived trait took which HAL32Q trait's ratings, and which were left out."""
    tracking.log_params(
        run_id,
        {
            "matching.threshold": matching.threshold,
            "matching.unmatched_ids": " ".join(matching.unmatched_ids),
        },
    )
    tracking.log_metrics(
        run_id,
        {
            "matching.n_matched": float(len(matching.matched_ids)),
            "matching.n_unmatched": float(len(matching.unmatched_ids)),
        },
    )
    _log_tables(run_id, {"trait_matching.csv": matching.table}, "tables")


@task(name="log_reward_comparison", cache_policy=NO_CACHE)
def log_reward_comparison(run_id: str, table: pd.DataFrame) -> None:
    """``reward_comparison.csv`` + ``.json`` (what `hal compare --reward-run` prints); the
    fitted judge's glass-box and black-box accuracies are headline metrics of the run."""
    _log_tables(run_id, {f"{COMPARISON_ARTIFACT}.csv": table}, None)
    tracking.log_json(run_id, table.to_dict(orient="records"), f"{COMPARISON_ARTIFACT}.json")


def latest_reward_comparison_run(experiments: list[str], scan: int = 50) -> Run | None:
    """The newest finished ``fit_reward`` run of these experiments (by name) that logged the
    comparison table; runs without it (failed, or from before the table) are passed over."""
    client = MlflowClient()
    ids = [e.experiment_id for e in map(client.get_experiment_by_name, experiments) if e]
    if not ids:
        return None
    runs = client.search_runs(
        ids,
        filter_string="tags.`hal.stage` = 'fit_reward' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=scan,
    )
    name = f"{COMPARISON_ARTIFACT}.json"
    return next(
        (r for r in runs if name in {a.path for a in client.list_artifacts(r.info.run_id)}), None
    )


def load_reward_comparison(run_id: str) -> pd.DataFrame:
    """The comparison table a fit_reward run logged (tracking must already be configured)."""
    with tempfile.TemporaryDirectory() as directory:
        path = MlflowClient().download_artifacts(run_id, f"{COMPARISON_ARTIFACT}.json", directory)
        return pd.DataFrame(json.loads(Path(path).read_text()))


@task(name="save_reward", cache_policy=NO_CACHE)
def save_reward(
    run_id: str,
    rewards: dict[str, reward_core.HLReward],
    chosen: str,
    questionnaire: Questionnaire,
    output_dir: Path,
) -> Path:
    """Write every fitted reward (``reward_<kind>.json``), the chosen one as ``reward.json``,
    and the questionnaire, as versioned JSON; log them all."""
    for kind, reward in rewards.items():
        tracking.log_file(run_id, reward.save(output_dir / f"reward_{kind}.json"), "rewards")
    reward_path = rewards[chosen].save(output_dir / "reward.json")
    questionnaire_path = questionnaire.save(output_dir / "questionnaire.json")
    tracking.log_file(run_id, reward_path)
    tracking.log_file(run_id, questionnaire_path)
    return reward_path


@task(
    name="check_reward",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def check_reward(
    reward: reward_core.HLReward,
    name: str,
    alias: str,
    check_path: Path,
    reference: Questionnaire,
    settings: HalSettings,
) -> RewardPromotion:
    """Score ``reward`` and the holder of ``name@alias`` on the check set, and decide whether
    the reward takes the alias (reads only: the registry is left as it was)."""
    champion_version = alias_holder(name, alias)
    champion = (
        load_reward.fn(f"models:/{name}/{champion_version}", settings)
        if champion_version is not None
        else None
    )
    witnesses = witness_ratings(read_table(check_path), reference)
    return decide_reward_promotion(
        reward,
        champion,
        witnesses,
        check_set=check_path.name,
        check_version=file_sha256(check_path)[:12],
        champion_version=champion_version,
    )


@task(name="register_reward", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_reward(run_id: str, reward: reward_core.HLReward, reward_path: Path, name: str) -> str:
    """Log the reward as a pyfunc model in the run and register it as ``name@challenger``.

    A retry after a partial success reuses the version this run already registered: one run,
    one version."""
    version = run_version(name, run_id)
    if version is None:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            version = log_reward_model(reward, str(reward_path), name, None)
    client = MlflowClient()
    client.set_model_version_tag(name, version, "reward_version", reward.version)
    client.set_model_version_tag(name, version, "reward_kind", reward.kind)
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
    client.update_model_version(
        name,
        version,
        description=f"{reward.kind} HL reward over {len(reward.trait_ids)} traits "
        f"({', '.join(reward.trait_ids)}), reward version {reward.version}, run {run_id}",
    )
    return version


@task(name="promote_reward", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def promote_reward(
    run_id: str, name: str, version: str, alias: str, decision: RewardPromotion
) -> str:
    """Move ``name@alias`` to ``version`` when the check promoted it, and record the decision
    (version tag, run tag, ``promotion.json``, a Prefect artifact); returns the verdict."""
    client = MlflowClient()
    if decision.promote:
        client.set_registered_model_alias(name, alias, version)
        verdict = f"promoted to @{alias}"
    else:
        verdict = f"kept v{decision.champion_version} as @{alias}"
    client.set_model_version_tag(name, version, "promotion", f"{verdict}: {decision.reason}")
    client.set_tag(run_id, "hal.promotion", f"{name} v{version} {verdict}")
    tracking.log_json(
        run_id, {"version": version, **decision.model_dump(mode="json")}, "promotion.json"
    )
    create_markdown_artifact(
        key="reward-promotion",
        markdown=f"**{name} v{version}**: {verdict}\n\n{decision.reason}",
        description=f"{name} v{version}: {verdict}",
    )
    return verdict
