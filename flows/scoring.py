"""Scoring a ratings file with a reward given as JSON or as a registered MLflow model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hal_core.questionnaire import Questionnaire
from hal_core.reward import HLReward
from hal_core.settings import get_settings
from hal_core.tables import ratings_by_position, read_table
from tasks.tracking import configure_tracking


def score_file(
    ratings_path: Path,
    reward_ref: str,
    output: Path | None = None,
    list_column: str | None = None,
    questionnaire_path: Path | None = None,
) -> Path:
    """Write ``ratings_path`` with an ``hl`` column next to it (or to ``output``)."""
    table = read_table(ratings_path)
    if list_column:
        if questionnaire_path is None:
            raise ValueError("--list-column needs --questionnaire to map positions to trait ids")
        questionnaire = Questionnaire.load(questionnaire_path)
        features = ratings_by_position(table, list_column, questionnaire)
    else:
        features = table
    if reward_ref.startswith(("models:/", "runs:/")):
        import mlflow

        configure_tracking(get_settings())
        scores = mlflow.pyfunc.load_model(reward_ref).predict(features)
    else:
        scores = HLReward.load(reward_ref).score(features)
    table["hl"] = pd.Series(scores, index=table.index).to_numpy()
    output = output or ratings_path.with_name(f"{ratings_path.stem}.scored.csv")
    table.drop(columns=["_row"]).to_csv(output, index=False)
    return output
