"""Tasks that score: load a reward by reference, read ratings, write scores."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from hal_core.paper import is_paper_weights, load_paper_weights
from hal_core.questionnaire import Questionnaire
from hal_core.reward import HLReward
from hal_core.settings import HalSettings
from hal_core.tables import ROW_COLUMN, ratings_by_position, read_table, write_table
from tasks.tracking import configure_tracking

MLFLOW_SCHEMES = ("models:/", "runs:/")


@task(name="load_reward", cache_policy=NO_CACHE)
def load_reward(reference: str, settings: HalSettings) -> HLReward:
    """A reward from a JSON file (weights by trait id, or the paper's ``{w, b}`` keyed by the
    traits the weights were fitted on) or an MLflow model URI (``models:/hal-reward@champion``)."""
    if reference.startswith(MLFLOW_SCHEMES):
        import mlflow

        configure_tracking(settings)
        return mlflow.pyfunc.load_model(reference).unwrap_python_model().reward
    path = settings.input_path(reference)
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a reward JSON file ({error})") from error
    if is_paper_weights(payload):
        paper = load_paper_weights(path)
        return HLReward(
            weights=paper.weights("fitted"), bias=paper.b, metadata={"source": str(path)}
        )
    return HLReward.from_dict(payload, source=str(path))


@task(name="read_ratings", cache_policy=NO_CACHE)
def read_ratings(
    path: Path, list_column: str | None = None, questionnaire_path: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the table as read, its ratings with one column per trait id): ``list_column``, when
    given, holds rating lists in the questionnaire's order."""
    table = read_table(path)
    if list_column is None:
        return table, table
    if questionnaire_path is None:
        raise ValueError(f"{path}: a list column needs the questionnaire that orders its ratings")
    expanded = ratings_by_position(table, list_column, Questionnaire.load(questionnaire_path))
    ratings = pd.concat([table[[ROW_COLUMN]], expanded], axis=1)
    ratings.attrs = table.attrs
    return table, ratings


@task(name="save_scores", cache_policy=NO_CACHE)
def save_scores(table: pd.DataFrame, scores: pd.DataFrame, output: Path) -> Path:
    """The input rows with ``hl`` and ``score_error`` columns."""
    scored = pd.concat([table.drop(columns=[ROW_COLUMN], errors="ignore"), scores], axis=1)
    return write_table(scored, output)
