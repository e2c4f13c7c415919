"""Witness tables for the reward: one row per Turing witness, one column per trait id.

Three sources, named by ``RatingsSource`` so a run says which one it took:

- ``recorded``: a Turing ratings table whose ``likert_evaluation_A/B`` lists follow the
  questionnaire position by position (the paper's ``ratings32_*.csv``);
- ``matched_to_hal32q``: recorded HAL32Q ratings, carried over to a derived questionnaire by
  :mod:`hal_core.trait_matching` (offline, no API);
- ``rated``: the table ``hal rate`` writes when a judge rates the witnesses' conversations on
  any questionnaire (``item_id``, one column per trait id, ``status``), joined by id to the
  conversations table that says each witness's game and whether it is human.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from hal_core.questionnaire import Questionnaire
from hal_core.reward import RatingsError, check_rating_columns
from hal_core.scoring import ID_COLUMN, checked_statuses
from hal_core.tables import ROW_COLUMN, TableError

RatingsSource = Literal["recorded", "matched_to_hal32q", "rated"]

CONVERSATION_COLUMNS = ("game_id", "is_human")
"""What the conversations table must hold besides its id column."""


@dataclass(frozen=True)
class RatedWitnesses:
    """Witnesses fit for the reward, and what was left out and why (never silently)."""

    witnesses: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)


def rated_witnesses(
    ratings: pd.DataFrame,
    conversations: pd.DataFrame,
    questionnaire: Questionnaire,
    id_column: str = "conversation_id",
) -> RatedWitnesses:
    """Join a ``hal rate`` table to the rated conversations; keep whole games.

    Rules (each breach names the file and rows): the ratings table has ``item_id`` and every
    trait id; every item id is a conversation id; a rated row's ratings are numbers on the
    questionnaire's scale. Rows whose ``status`` is not ``rated`` are left out, then games
    that no longer have exactly one human and one AI witness; both are counted.
    """
    source = ratings.attrs.get("source", "<ratings>")
    conversations_source = conversations.attrs.get("source", "<conversations>")
    missing = [c for c in (ID_COLUMN, *questionnaire.trait_ids) if c not in ratings.columns]
    if missing:
        raise TableError(
            f"{source}: lacks columns {missing} (rule: a table written by `hal rate` on "
            f"questionnaire {questionnaire.name!r}: item_id and one column per trait id)"
        )
    missing = [c for c in (id_column, *CONVERSATION_COLUMNS) if c not in conversations.columns]
    if missing:
        raise TableError(
            f"{conversations_source}: lacks columns {missing} (rule: the rated conversations "
            f"with {id_column}, game_id and is_human)"
        )
    keys = conversations[id_column].astype(str)
    repeated = keys[keys.duplicated()].tolist()
    if repeated:
        raise TableError(f"{conversations_source}: {id_column} repeats {repeated[:5]}")
    ids = ratings[ID_COLUMN].astype(str)
    unknown = ~ids.isin(set(keys))
    if unknown.any():
        rows = _rows(ratings, unknown)
        raise TableError(
            f"{source} rows {rows[:10]}: item_id not found as {id_column} in "
            f"{conversations_source} (rule: ratings join the conversations by id)"
        )
    rated = checked_statuses(ratings)
    kept = ratings[rated.to_numpy()]
    values = check_rating_columns(kept, questionnaire.trait_ids, _scale(questionnaire))
    info = conversations.set_index(keys)[list(CONVERSATION_COLUMNS)]
    joined = info.loc[kept[ID_COLUMN].astype(str)]
    frame = pd.DataFrame(
        {
            "game_id": joined["game_id"].to_numpy(),
            "witness": kept[ID_COLUMN].astype(str).to_numpy(),
            "is_human": _as_label(joined["is_human"], conversations_source),
            ROW_COLUMN: kept[ROW_COLUMN].to_numpy() if ROW_COLUMN in kept else kept.index,
        }
    )
    frame = pd.concat([frame, values.reset_index(drop=True)], axis=1)
    per_game = frame.groupby("game_id")["is_human"].agg(["size", "sum"])
    whole = per_game.index[(per_game["size"] == 2) & (per_game["sum"] == 1)]
    complete = frame["game_id"].isin(whole).to_numpy()
    counts = {
        "witnesses.rated": int(rated.sum()),
        "witnesses.not_rated": int((~rated).sum()),
        "games.kept": len(whole),
        "games.incomplete": int(per_game.shape[0] - len(whole)),
    }
    if not complete.any():
        raise RatingsError(
            f"{source}: no game has one human and one AI witness rated (rule: the reward "
            "learns from whole games)"
        )
    witnesses = frame[complete].reset_index(drop=True)
    witnesses.attrs["source"] = source
    return RatedWitnesses(witnesses=witnesses, counts=counts)


def _scale(questionnaire: Questionnaire) -> tuple[int, int]:
    return questionnaire.scale.min, questionnaire.scale.max


def _rows(frame: pd.DataFrame, mask: pd.Series) -> list:
    if ROW_COLUMN in frame.columns:
        return frame.loc[mask.to_numpy(), ROW_COLUMN].tolist()
    return frame.index[mask.to_numpy()].tolist()


def _as_label(values: pd.Series, source: str) -> np.ndarray:
    """``is_human`` as 0/1 from booleans, 0/1 or the strings true/false (any case)."""
    text = values.astype(str).str.strip().str.lower()
    mapping = {"true": 1, "false": 0, "1": 1, "0": 0, "1.0": 1, "0.0": 0}
    bad = sorted(set(text[~text.isin(set(mapping))]))
    if bad:
        raise TableError(f"{source}: is_human holds {bad[:5]} (rule: true/false or 1/0)")
    return text.map(mapping).to_numpy(int)
