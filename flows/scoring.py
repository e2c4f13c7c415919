"""Flow ``score_ratings``: a ratings file and a reward -> the file with an ``hl`` column.

hal score ratings.csv                                      # models:/hal-reward@champion
hal score ratings.csv --reward reward.json
hal score rated.csv --list-column likert_evaluation --questionnaire questionnaires/hal32q.json
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from hal_core.scoring import HL_COLUMN, hl_scores, require_scores
from hal_core.settings import get_settings
from tasks.scoring import load_reward, read_ratings, save_scores


class ScoreParams(BaseModel):
    """What to score with which reward."""

    model_config = ConfigDict(extra="forbid")

    ratings_file: str = Field(description="CSV with one column per trait id (or a list column).")
    reward: str = Field(
        default="models:/hal-reward@champion",
        description="Reward JSON (weights by trait id), the paper's {w, b} file, or an MLflow "
        "model URI.",
    )
    list_column: str | None = Field(
        default=None, description="Column of rating lists to expand in the questionnaire's order."
    )
    questionnaire: str | None = Field(
        default=None, description="Questionnaire JSON that orders the list column's ratings."
    )
    output_file: str | None = Field(
        default=None, description="Scored CSV; default RATINGS.scored.csv beside the input."
    )


class ScoreResult(BaseModel):
    output_file: str
    rows: int
    scored: int
    hl_mean: float | None
    reward_version: str


@flow(name="score_ratings")
def score_ratings(params: ScoreParams) -> ScoreResult:
    """Score every rated row by trait id; a bad rating or status fails naming its row and
    column, and so does a file with rows of which none could be scored."""
    settings = get_settings()
    reward = load_reward(params.reward, settings)
    path = settings.input_path(params.ratings_file)
    questionnaire = settings.input_path(params.questionnaire) if params.questionnaire else None
    table, ratings = read_ratings(path, params.list_column, questionnaire)
    scores = hl_scores(ratings, reward)
    require_scores(scores, str(path))
    output = (
        settings.input_path(params.output_file)
        if params.output_file
        else (path.with_name(f"{path.stem}.scored.csv"))
    )
    written = save_scores(table, scores, output)
    hl = scores[HL_COLUMN].dropna()
    return ScoreResult(
        output_file=str(written),
        rows=len(scores),
        scored=len(hl),
        hl_mean=float(hl.mean()) if len(hl) else None,
        reward_version=reward.version,
    )
