"""The live path: a `hal rate` table of Turing witnesses becomes the reward's witness table."""

import pandas as pd
import pytest

from hal_core.questionnaire import Questionnaire, Trait
from hal_core.reward import RatingsError
from hal_core.reward_inputs import rated_witnesses
from hal_core.tables import TableError, read_table

QUESTIONNAIRE = Questionnaire(
    name="derived", traits=(Trait(id="t02", text="b"), Trait(id="t01", text="a"))
)


def _tables(tmp_path, ratings_rows, conversations_rows):
    ratings_path = tmp_path / "ratings.csv"
    conversations_path = tmp_path / "conversations.csv"
    pd.DataFrame(ratings_rows).to_csv(ratings_path, index=False)
    pd.DataFrame(conversations_rows).to_csv(conversations_path, index=False)
    return read_table(ratings_path), read_table(conversations_path)


CONVERSATIONS = [
    {"conversation_id": 11, "game_id": 1, "is_human": True, "conversation": "W: hi"},
    {"conversation_id": 12, "game_id": 1, "is_human": False, "conversation": "W: hello"},
    {"conversation_id": 21, "game_id": 2, "is_human": False, "conversation": "W: yo"},
    {"conversation_id": 22, "game_id": 2, "is_human": True, "conversation": "W: sup"},
    {"conversation_id": 31, "game_id": 3, "is_human": True, "conversation": "W: hey"},
    {"conversation_id": 32, "game_id": 3, "is_human": False, "conversation": "W: hey"},
]


def _rated(item_id, t01, t02, status="rated"):
    return {"item_id": item_id, "t01": t01, "t02": t02, "status": status, "error_kind": None}


def test_rated_witnesses_join_by_id_and_keep_whole_games(tmp_path):
    ratings, conversations = _tables(
        tmp_path,
        [
            _rated(11, 5, 1),
            _rated(12, 1, 4),
            _rated(21, 2, 2),
            _rated(22, 4, 3),
            _rated(31, 3, 3),
            _rated(32, None, None, status="failed"),
        ],
        CONVERSATIONS,
    )
    result = rated_witnesses(ratings, conversations, QUESTIONNAIRE)
    frame = result.witnesses
    assert frame["game_id"].tolist() == [1, 1, 2, 2]
    assert frame["is_human"].tolist() == [1, 0, 0, 1]
    assert frame["witness"].tolist() == ["11", "12", "21", "22"]
    assert frame["t01"].tolist() == [5.0, 1.0, 2.0, 4.0]
    assert result.counts == {
        "witnesses.rated": 5,
        "witnesses.not_rated": 1,
        "games.kept": 2,
        "games.incomplete": 1,
    }


def test_rated_table_breaking_a_rule_names_file_rows_and_rule(tmp_path):
    ratings, conversations = _tables(tmp_path, [_rated(11, 5, 1), _rated(99, 1, 4)], CONVERSATIONS)
    with pytest.raises(TableError, match=r"ratings.csv rows \[2\]: item_id not found"):
        rated_witnesses(ratings, conversations, QUESTIONNAIRE)
    ratings, conversations = _tables(tmp_path, [_rated(11, 5, 1), _rated(12, 6, 4)], CONVERSATIONS)
    with pytest.raises(RatingsError, match=r"row 2 column t01: 6 is off the rating scale 1-5"):
        rated_witnesses(ratings, conversations, QUESTIONNAIRE)
    ratings, conversations = _tables(tmp_path, [{"item_id": 11, "t01": 3}], CONVERSATIONS)
    with pytest.raises(TableError, match=r"lacks columns \['t02'\]"):
        rated_witnesses(ratings, conversations, QUESTIONNAIRE)
    ratings, conversations = _tables(
        tmp_path, [_rated(11, 5, 1)], [{"conversation_id": 11, "game_id": 1}]
    )
    with pytest.raises(TableError, match=r"conversations.csv: lacks columns \['is_human'\]"):
        rated_witnesses(ratings, conversations, QUESTIONNAIRE)
    ratings, conversations = _tables(
        tmp_path, [_rated(31, 3, 3), _rated(32, 2, 2, status="failed")], CONVERSATIONS
    )
    with pytest.raises(RatingsError, match="no game has one human and one AI witness rated"):
        rated_witnesses(ratings, conversations, QUESTIONNAIRE)
