"""Tasks of the reward stage: load inputs, fit, log to MLflow, register."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from prefect import task

from hal_core import reward as reward_core
from hal_core.questionnaire import Questionnaire
from hal_core.tables import read_table
from tasks import tracking
from tasks.registry import log_reward_model
from tasks.retries import retry_unless_bad_input


@task(name="load_questionnaire")
def load_questionnaire(path: Path) -> Questionnaire:
    """Read a questionnaire JSON."""
    return Questionnaire.load(path)


@task(
    name="load_table",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_bad_input,
)
def load_table(path: Path) -> pd.DataFrame:
    """Read a CSV table with row numbers for error messages."""
    return read_table(path)


@task(name="fit_reward_model")
def fit_reward_model(
    witnesses: pd.DataFrame, questionnaire: Questionnaire, config: reward_core.RewardConfig
) -> reward_core.RewardFit:
    """Fit the L1 logistic reward and evaluate it three ways."""
    return reward_core.fit_reward(witnesses, questionnaire.trait_ids, config)


def _weights_figure(fit: reward_core.RewardFit, questionnaire: Questionnaire):
    trait_ids = list(fit.full_weights)
    weights = np.array([fit.full_weights[t] for t in trait_ids])
    labels = [f"{t}  {questionnaire.trait(t).text[:70]}" for t in trait_ids]
    colors = ["tab:blue" if t in fit.selected_trait_ids else "lightgray" for t in trait_ids]
    figure, axis = plt.subplots(figsize=(10, 0.3 * len(trait_ids) + 1.5))
    axis.barh(labels, weights, color=colors)
    axis.invert_yaxis()
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_xlabel("weight (all-trait L1 model); blue = selected")
    axis.set_title("HL reward: trait weights")
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


@task(name="log_reward_fit")
def log_reward_fit(
    run_id: str,
    fit: reward_core.RewardFit,
    questionnaire: Questionnaire,
    witnesses: pd.DataFrame,
    config: reward_core.RewardConfig,
) -> None:
    """Log params, every trait weight, metrics, plots and the scored witnesses."""
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
            "reward.version": fit.reward.version,
        },
    )
    metrics = dict(fit.metrics())
    metrics.update({f"weight.full.{t}": w for t, w in fit.full_weights.items()})
    metrics.update({f"weight.selected.{t}": w for t, w in fit.reward.weights.items()})
    metrics["bias.full"] = fit.full_bias
    metrics["bias.selected"] = fit.reward.bias
    tracking.log_metrics(run_id, metrics)
    for step, accuracy in enumerate(fit.paper_cv_accuracies):
        tracking.log_metrics(run_id, {"cv.accuracy.per_seed": accuracy}, step=step)
    is_human = witnesses["is_human"].to_numpy()
    tracking.log_figure(run_id, _weights_figure(fit, questionnaire), "plots/trait_weights.png")
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
    with tempfile.TemporaryDirectory() as folder:
        scored.to_csv(Path(folder, "witness_scores.csv"), index=False)
        pd.DataFrame(
            {"trait_id": list(fit.full_weights), "weight_full": list(fit.full_weights.values())}
        ).assign(
            weight_selected=lambda f: f.trait_id.map(fit.reward.weights),
            text=lambda f: f.trait_id.map(questionnaire.texts()),
        ).to_csv(Path(folder, "trait_weights.csv"), index=False)
        tracking.log_file(run_id, Path(folder, "witness_scores.csv"), "tables")
        tracking.log_file(run_id, Path(folder, "trait_weights.csv"), "tables")


@task(name="save_reward")
def save_reward(
    run_id: str, reward: reward_core.HLReward, questionnaire: Questionnaire, output_dir: Path
) -> Path:
    """Write the reward and its questionnaire as versioned JSON and log both."""
    reward_path = reward.save(output_dir / "reward.json")
    questionnaire_path = questionnaire.save(output_dir / "questionnaire.json")
    tracking.log_file(run_id, reward_path)
    tracking.log_file(run_id, questionnaire_path)
    return reward_path


@task(name="register_reward", retries=2, retry_delay_seconds=2)
def register_reward(
    run_id: str, reward: reward_core.HLReward, reward_path: Path, name: str, alias: str | None
) -> str | None:
    """Log the reward as a pyfunc model in the run and register it under ``name@alias``."""
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        return log_reward_model(reward, str(reward_path), name, alias)
