"""``hal score`` says why it scored nothing: a status outside the rule, or no rated row, is an
error naming the file (and the row and column), with a non-zero exit and no scored file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from hal_cli.commands import app
from hal_core.reward import HLReward
from hal_core.scoring import STATUSES

pytestmark = pytest.mark.integration


@pytest.fixture()
def reward_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HAL_HOME", str(tmp_path / "hal_home"))
    return HLReward(weights={"t01": 1.0, "t02": 2.0}, bias=0.5).save(tmp_path / "reward.json")


def _score(tmp_path: Path, reward_file: Path, rows: list[dict]):
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = CliRunner().invoke(app, ["score", str(path), "--reward", str(reward_file)])
    return path, result


def test_an_unknown_status_stops_hal_score_naming_file_row_column_and_rule(
    tmp_path, reward_file
) -> None:
    rows = [{"item_id": i, "t01": 3, "t02": 4, "status": "Rated", "error": None} for i in (1, 2)]
    path, result = _score(tmp_path, reward_file, rows)
    assert result.exit_code != 0
    allowed = ", ".join(repr(value) for value in STATUSES)
    assert (
        f"{path} row 1, column status: 'Rated' is not a status (and 1 more rows) "
        f"(rule: one of {allowed}; only 'rated' rows are scored)"
    ) in result.output
    assert not path.with_name("ratings.scored.csv").exists()


def test_a_file_of_only_failed_rows_stops_hal_score_saying_nothing_was_scored(
    tmp_path, reward_file
) -> None:
    rows = [
        {"item_id": 1, "t01": None, "t02": None, "status": "failed", "error": "timed out"},
        {"item_id": 2, "t01": None, "t02": None, "status": "failed", "error": "rejected: 400"},
    ]
    path, result = _score(tmp_path, reward_file, rows)
    assert result.exit_code != 0
    assert f"{path}: none of its 2 rows was scored (1 x 'timed out', 1 x 'rejected: 400'" in (
        result.output
    )
    assert "rule: a row is scored when its status is 'rated'" in result.output
    assert not path.with_name("ratings.scored.csv").exists()


def test_a_file_with_one_rated_row_is_scored_and_keeps_the_failures_reasons(
    tmp_path, reward_file
) -> None:
    rows = [
        {"item_id": 1, "t01": 3, "t02": 4, "status": "rated", "error": None},
        {"item_id": 2, "t01": None, "t02": None, "status": "failed", "error": "timed out"},
    ]
    path, result = _score(tmp_path, reward_file, rows)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["scored"]) == (2, 1)
    assert summary["hl_mean"] == pytest.approx(3 * 1.0 + 4 * 2.0 + 0.5)
    assert Path(summary["output_file"]) == path.with_name("ratings.scored.csv")
    scored = pd.read_csv(summary["output_file"])
    assert scored["hl"].tolist()[0] == pytest.approx(11.5)
    assert scored["score_error"].tolist()[1] == "timed out"
