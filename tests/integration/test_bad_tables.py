"""Bad input files stop a flow with one clear error, tried once; outputs are spreadsheet-safe."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import tasks.reward
from flows.fit_reward import FitRewardParams, fit_reward
from flows.validate_data import ValidateDataParams, validate_data
from hal_core.tables import TableError
from tasks.validation import DataContractError

pytestmark = pytest.mark.integration

RATINGS = "turing/ratings32_gpt-5.csv"


@pytest.fixture()
def counted_reads(monkeypatch):
    """Every path the reward stage's load_table task reads, in order."""
    reads = []
    original = tasks.reward.read_table

    def read_table(path, *args, **kwargs):
        reads.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(tasks.reward, "read_table", read_table)
    return reads


def test_non_utf8_ratings_stop_fit_reward_at_once_naming_row_column_and_byte(
    settings, tmp_path, counted_reads
) -> None:
    table = pd.read_csv(settings.data_path(RATINGS)).head(20)
    path = tmp_path / "ratings_latin1.csv"
    table.to_csv(path, index=False)
    raw = path.read_bytes()
    reason = table["reason"][6].encode()
    offset = raw.index(reason)
    path.write_bytes(raw[:offset] + b"\xe9" + raw[offset + 1 :])  # a Latin-1 byte in row 7

    with pytest.raises(TableError) as caught:
        fit_reward(FitRewardParams(ratings_file=str(path), register_as=None))
    message = str(caught.value)
    assert message.startswith(f"{path} row 7, column 'reason', line ")
    assert f"byte {offset}: bytes b'\\xe9' are not UTF-8" in message
    assert counted_reads == [path]  # a retry cannot fix the bytes: read once, not three times


def test_header_only_ratings_break_the_contract_not_the_fit(settings, tmp_path) -> None:
    path = tmp_path / "ratings_header_only.csv"
    pd.read_csv(settings.data_path(RATINGS)).head(0).to_csv(path, index=False)
    with pytest.raises(DataContractError) as caught:
        fit_reward(FitRewardParams(ratings_file=str(path), register_as=None))
    message = str(caught.value)
    assert "expect_table_row_count_to_be_between on table: observed 0 (min_value=1)" in message
    assert "sample" not in message


def test_validate_keeps_the_first_of_a_repeated_id_and_writes_formula_cells_inert(
    settings, tmp_path
) -> None:
    games = pd.read_csv(settings.data_path("turing/games.csv"))
    repeated = games.loc[9, "game_id"]
    games.loc[10, "game_id"] = repeated
    games.loc[10, "reason"] = "=cmd|' /C calc'!A0"
    path = tmp_path / "games_repeated.csv"
    games.to_csv(path, index=False)

    (summary,) = validate_data(
        ValidateDataParams(datasets={str(path): "turing_games"}, policy="quarantine")
    ).datasets
    assert (summary.rows, summary.valid_rows, summary.quarantined_rows) == (557, 556, 1)
    (failure,) = summary.failed_expectations
    assert failure.startswith(
        f"expect_column_values_to_be_unique on column 'game_id': game_id={repeated} at rows "
        "10, 11 (quarantine keeps the first occurrence"
    )

    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.experiment_data)
    run = client.search_runs(
        [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
    )[0]
    folder = client.download_artifacts(run.info.run_id, "validation/games_repeated")
    quarantined = pd.read_csv(f"{folder}/quarantine.csv")
    assert quarantined["_row"].tolist() == [11]
    assert quarantined["reason"].tolist() == ["'=cmd|' /C calc'!A0"]
    assert quarantined["_failed_rules"].tolist() == [
        f"expect_column_values_to_be_unique(game_id): game_id={repeated} is first at row 10, "
        "which is kept"
    ]


def test_an_id_a_spreadsheet_would_run_stops_validation_at_once_naming_row_and_column(
    settings, tmp_path, counted_reads
) -> None:
    games = pd.read_csv(settings.data_path("turing/games.csv"))
    games["game_id"] = games["game_id"].astype(str)
    games.loc[10, "game_id"] = '=HYPERLINK("http://x","3034")'
    path = tmp_path / "games_formula_id.csv"
    games.to_csv(path, index=False)

    with pytest.raises(TableError) as caught:
        validate_data(ValidateDataParams(datasets={str(path): "turing_games"}, policy="quarantine"))
    message = str(caught.value)
    assert message.startswith(f"{path} row 11, column 'game_id': id '=HYPERLINK(")
    assert "(rule: ids are kept as given, so outputs join to their inputs" in message
    assert counted_reads == [path]  # bad input is not retried
