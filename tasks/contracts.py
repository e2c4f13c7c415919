"""Data contracts: one Great Expectations suite per dataset of the HAL data and our artifacts.

Cells that hold lists are first normalized to canonical JSON in a derived ``<column>__json``
column (None when the cell is not a list), so plain GX expectations check them. Derived
boolean columns carry rules across columns (label consistency, chosen differs from rejected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import great_expectations as gx
import pandas as pd

from hal_core.tables import ROW_COLUMN, canonical_list_cell

EXPECTATIONS = gx.expectations
WITNESS_LINES = r"(?m)^\s*W\s*:"
PATIENT_LINES = (
    r"(?im)^[\s*#>\d.)-]*(?!(?:d|doctor|dr\.?(?:\s+[\w'-]+)?)\s*\**\s*:)[a-z][\w .'-]{0,39}\**\s*:"
)
"""A line spoken by someone other than the doctor (P:, Patient:, or the patient's name)."""


@dataclass(frozen=True)
class DataContract:
    """A dataset's rules: the id column, derived columns and the expectations on them.

    ``min_rows``: a table with fewer rows breaks the contract (a header-only file is no
    dataset); under quarantine, fewer valid rows than this left over is an error too.
    """

    name: str
    id_column: str
    expectations: Callable[[], list[gx.expectations.Expectation]]
    derive: Callable[[pd.DataFrame], pd.DataFrame] = lambda frame: frame
    description: str = ""
    min_rows: int = 1

    def suite_expectations(self) -> list[gx.expectations.Expectation]:
        """Every expectation of the contract: the row count first, then the dataset's own."""
        return [
            EXPECTATIONS.ExpectTableRowCountToBeBetween(min_value=self.min_rows),
            *self.expectations(),
        ]


def _list_json(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[f"{column}__json"] = frame[column].map(canonical_list_cell)
    return frame


def _ratings_schema(n_items: int) -> dict:
    return {
        "type": "array",
        "minItems": n_items,
        "maxItems": n_items,
        "items": {"type": "integer", "minimum": 1, "maximum": 5},
    }


def _required(
    column: str, unique: bool = False, regex: str | None = None, min_length: int | None = None
) -> list:
    """Rules of a column that must be filled in: not null, then the optional checks."""
    rules = [EXPECTATIONS.ExpectColumnValuesToNotBeNull(column=column)]
    if unique:
        rules.append(EXPECTATIONS.ExpectColumnValuesToBeUnique(column=column))
    if regex is not None:
        rules.append(EXPECTATIONS.ExpectColumnValuesToMatchRegex(column=column, regex=regex))
    if min_length is not None:
        rules.append(
            EXPECTATIONS.ExpectColumnValueLengthsToBeBetween(column=column, min_value=min_length)
        )
    return rules


def _list_rules(column: str, schema: dict) -> list:
    derived = f"{column}__json"
    return [
        *_required(column),
        EXPECTATIONS.ExpectColumnValuesToNotBeNull(column=derived, meta={"rule": "list cell"}),
        EXPECTATIONS.ExpectColumnValuesToMatchJsonSchema(column=derived, json_schema=schema),
    ]


def _game_rules() -> list:
    rules = [
        *_required("game_id", unique=True),
        EXPECTATIONS.ExpectColumnValuesToBeInSet(column="who_is_human", value_set=["A", "B"]),
        EXPECTATIONS.ExpectColumnValuesToBeInSet(column="_labels_consistent", value_set=[True]),
    ]
    for side in ("A", "B"):
        rules += [
            *_required(f"conversation_{side}_transcript", regex=WITNESS_LINES),
            *_required(f"label_{side}"),
        ]
    return rules


def _derive_games(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    human_a = frame["label_A"].astype(str).eq("Human")
    human_b = frame["label_B"].astype(str).eq("Human")
    who = frame["who_is_human"].astype(str)
    frame["_labels_consistent"] = (human_a == who.eq("A")) & (human_b == who.eq("B"))
    return frame


def ratings_contract(n_traits: int = 32) -> DataContract:
    def derive(frame: pd.DataFrame) -> pd.DataFrame:
        return _list_json(_derive_games(frame), ["likert_evaluation_A", "likert_evaluation_B"])

    return DataContract(
        name=f"turing_ratings{n_traits}",
        id_column="game_id",
        description=f"Turing games with {n_traits} Likert ratings per witness",
        derive=derive,
        expectations=lambda: (
            _game_rules()
            + _list_rules("likert_evaluation_A", _ratings_schema(n_traits))
            + _list_rules("likert_evaluation_B", _ratings_schema(n_traits))
        ),
    )


def _statements_rules() -> list:
    schema = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 1, "pattern": r"\S"},
    }
    return [
        *_game_rules(),
        *_list_rules("human_characteristics", schema),
        EXPECTATIONS.ExpectColumnValuesToBeInSet(column="aijudge_verdict", value_set=["A", "B"]),
    ]


def _dialogue_rules(id_column: str, text_column: str) -> list:
    return [*_required(id_column, unique=True), *_required(text_column, regex=PATIENT_LINES)]


def _scored16_rules(id_column: str) -> list:
    return [
        *_dialogue_rules(id_column, "dialogue"),
        *_list_rules("likert_evaluation", _ratings_schema(16)),
        *_required("hal16_score"),
    ]


def _derive_preferences(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["_chosen_differs"] = frame["chosen"].astype(str) != frame["rejected"].astype(str)
    return frame


def _preference_rules() -> list:
    rules = [EXPECTATIONS.ExpectColumnValuesToBeUnique(column="pair_id")]
    for column in ("prompt", "chosen", "rejected"):
        rules += _required(column, min_length=1)
    return [
        *rules,
        EXPECTATIONS.ExpectColumnValuesToBeInSet(column="_chosen_differs", value_set=[True]),
        EXPECTATIONS.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="chosen_score", column_B="rejected_score"
        ),
    ]


CONTRACTS: dict[str, DataContract] = {
    "turing_games": DataContract(
        name="turing_games",
        id_column="game_id",
        description="Three-party Turing games: one human and one AI witness",
        derive=_derive_games,
        expectations=_game_rules,
    ),
    "turing_ratings32": ratings_contract(32),
    "statements": DataContract(
        name="statements",
        id_column="game_id",
        description="Turing games with a judge's statements about the human witness",
        derive=lambda frame: _list_json(_derive_games(frame), ["human_characteristics"]),
        expectations=_statements_rules,
    ),
    "persona_prompts": DataContract(
        name="persona_prompts",
        id_column="persona_id",
        description="Doctor's-visit persona prompts",
        expectations=lambda: [
            *_required("persona_id", unique=True),
            *_required("prompt", min_length=20),
        ],
    ),
    "candidates": DataContract(
        name="candidates",
        id_column="dialogue_id",
        description="Candidate doctor's-visit dialogues (patient P is rated)",
        expectations=lambda: [
            *_dialogue_rules("dialogue_id", "dialogue"),
            *_required("persona_id"),
            *_required("model"),
        ],
    ),
    "scored_candidates16": DataContract(
        name="scored_candidates16",
        id_column="dialogue_id",
        description="Candidate dialogues with 16 published-order HAL16Q ratings",
        derive=lambda frame: _list_json(frame, ["likert_evaluation"]),
        expectations=lambda: _scored16_rules("dialogue_id"),
    ),
    "aligned_outputs16": DataContract(
        name="aligned_outputs16",
        id_column="dialogue_id",
        description="An aligned model's responses at one epoch, rated on HAL16Q",
        derive=lambda frame: _list_json(frame, ["likert_evaluation"]),
        expectations=lambda: [
            *_scored16_rules("dialogue_id"),
            *_required("prompt"),
        ],
    ),
    "preferences": DataContract(
        name="preferences",
        id_column="pair_id",
        description="DPO preference pairs: chosen scores above rejected",
        derive=_derive_preferences,
        expectations=_preference_rules,
    ),
}

DATASET_CONTRACTS: dict[str, str] = {
    "turing/games.csv": "turing_games",
    "turing/ratings32_gpt-5.csv": "turing_ratings32",
    "turing/ratings32_gpt-5-mini.csv": "turing_ratings32",
    "turing/statements_gpt-5.csv": "statements",
    "turing/statements_gpt-5-mini.csv": "statements",
    "synthlabs/prompts_train.csv": "persona_prompts",
    "synthlabs/prompts_test.csv": "persona_prompts",
    "synthlabs/candidates_test.csv": "candidates",
    "synthlabs/candidates_train_scored16_gpt-5-mini.csv": "scored_candidates16",
    "aligned_outputs/*/samples_epoch_*_scored_gpt-5.csv": "aligned_outputs16",
}
"""Which contract checks which file of the HAL data folder (glob patterns allowed)."""


def get_contract(name: str) -> DataContract:
    """A contract by name; ``turing_ratings<N>`` exists for any questionnaire length N."""
    prefix = "turing_ratings"
    if name not in CONTRACTS and name.startswith(prefix) and name[len(prefix) :].isdigit():
        return ratings_contract(int(name[len(prefix) :]))
    try:
        return CONTRACTS[name]
    except KeyError:
        raise KeyError(f"no data contract {name!r}; known: {sorted(CONTRACTS)}") from None


def row_key_columns(contract: DataContract) -> list[str]:
    return [ROW_COLUMN, contract.id_column]
