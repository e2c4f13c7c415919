"""The validate_data flow logs, beside each result JSON, a page that opens offline inside MLflow
and a markdown table of every expectation; MLflow gives them back as logged."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.validate_data import ValidateDataParams, validate_data
from tasks.contracts import get_contract
from tasks.validation import UNIQUE
from tests.unit.test_validation_report import markdown_rows, read_offline_page

pytestmark = pytest.mark.integration


def test_validate_data_logs_an_offline_page_and_a_table_of_every_expectation(
    settings, tmp_path
) -> None:
    games = pd.read_csv(settings.data_path("turing/games.csv")).head(30)
    games.loc[7, "game_id"] = games.loc[2, "game_id"]  # rows 3 and 8 share a game id
    path = tmp_path / "games_small.csv"
    games.to_csv(path, index=False)

    result = validate_data(
        ValidateDataParams(datasets={str(path): "turing_games"}, policy="quarantine")
    )

    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    folder = "validation/games_small"
    listed = {item.path for item in client.list_artifacts(result.run_id, folder)}
    assert listed == {
        f"{folder}/{name}"
        for name in (
            "validation_result.json",
            "validation_result.html",
            "validation_result.md",
            "quarantine.csv",
            "summary.json",
        )
    }
    local = Path(client.download_artifacts(result.run_id, folder))
    suite = [e.expectation_type for e in get_contract("turing_games").suite_expectations()]

    page = read_offline_page((local / "validation_result.html").read_text())
    text = " ".join(page.text)
    assert f"FAILED: {len(suite) - 1} of {len(suite)} expectations met" in text
    assert all(name in text for name in suite)
    assert "2 of 30 unexpected (rows 3, 8)" in text

    combined = Path(client.download_artifacts(result.run_id, "validation/expectations.md"))
    for markdown in (local / "validation_result.md", combined):
        rows = markdown_rows(markdown.read_text())
        assert [row["expectation"].strip("`") for row in rows] == suite
        assert {row["table"] for row in rows} == {"games_small"}
        failed = [
            (r["expectation"], r["column"], r["success"]) for r in rows if r["success"] != "yes"
        ]
        assert failed == [(f"`{UNIQUE}`", "game_id", "**no**")]
