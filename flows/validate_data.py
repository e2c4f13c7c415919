"""Flow ``validate_data``: check every dataset of the HAL data folder against its contract."""

from __future__ import annotations

import glob
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from hal_core.forms import Internal, RunForm
from hal_core.settings import get_settings
from hal_core.validation_report import ExpectationOutcome, expectations_markdown
from tasks import tracking
from tasks.contracts import DATASET_CONTRACTS
from tasks.reward import load_table
from tasks.validation import Policy, validate_dataset


class ValidateDataParams(RunForm):
    """Which files to check and what to do with rows that break a contract."""

    model_config = ConfigDict(extra="forbid")

    datasets: dict[str, str] = Field(
        default_factory=lambda: dict(DATASET_CONTRACTS),
        description="File (glob, relative to the data folder) -> contract name.",
    )
    policy: Policy = Field(
        default="quarantine", description="Stop at the first bad file, or quarantine bad rows."
    )
    parent_run_id: Internal[tracking.ParentRunId] = None
    run_name: Internal[tracking.RunName] = None


class DatasetSummary(BaseModel):
    file: str
    contract: str
    rows: int
    valid_rows: int
    quarantined_rows: int
    failed_expectations: list[str]


class ValidateDataResult(BaseModel):
    """What the validation stage found, for the next stages to read."""

    run_id: str = Field(description="MLflow run of this stage.")
    datasets: list[DatasetSummary] = Field(description="One summary per file checked.")
    quarantined_rows: int = Field(description="Rows quarantined over every file.")


def _matching_files(data_dir: Path, pattern: str) -> list[Path]:
    """Files matching a glob relative to the data folder, or an absolute glob."""
    if Path(pattern).is_absolute():
        return sorted(Path(match) for match in glob.glob(pattern))
    return sorted(data_dir.glob(pattern))


def _label(path: Path, data_dir: Path) -> str:
    return str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)


@flow(name="validate_data", log_prints=True)
def validate_data(params: ValidateDataParams = ValidateDataParams()) -> ValidateDataResult:  # noqa: B008
    """Validate the data folder; every check's result JSON, offline HTML page and markdown
    table go to MLflow, with one markdown table of every file's expectations."""
    settings = get_settings()
    data_dir = settings.require_data_dir()
    files = {
        path: contract
        for pattern, contract in params.datasets.items()
        for path in _matching_files(data_dir, pattern)
    }
    if not files:
        raise FileNotFoundError(f"{data_dir}: no file matches {sorted(params.datasets)}")
    summaries: list[DatasetSummary] = []
    outcomes: list[ExpectationOutcome] = []
    with tracking.stage_run(
        "validate_data",
        settings.experiment_data,
        settings,
        params.parent_run_id,
        run_name=params.run_name,
    ) as run:
        tracking.log_inputs(run.info.run_id, {_label(p, data_dir): p for p in files})
        for path, contract in files.items():
            report = validate_dataset(
                load_table(path), contract, params.policy, settings, run.info.run_id
            )
            outcomes += report.outcomes
            summaries.append(
                DatasetSummary(
                    file=_label(path, data_dir),
                    contract=contract,
                    rows=report.n_rows,
                    valid_rows=len(report.valid),
                    quarantined_rows=len(report.quarantined),
                    failed_expectations=[failure.describe(3) for failure in report.failures],
                )
            )
        total_quarantined = sum(s.quarantined_rows for s in summaries)
        tracking.log_metrics(
            run.info.run_id,
            {
                "validation.quarantined_rows": total_quarantined,
                "validation.files": len(summaries),
                "validation.files_with_failures": sum(
                    bool(s.failed_expectations) for s in summaries
                ),
            },
        )
        tracking.log_json(run.info.run_id, [s.model_dump() for s in summaries], "summary.json")
        tracking.log_text(
            run.info.run_id,
            expectations_markdown(outcomes, f"Data contracts of {len(files)} files"),
            "validation/expectations.md",
        )
    create_table_artifact(
        key="data-validation",
        table=[s.model_dump(exclude={"failed_expectations"}) for s in summaries],
        description=f"Data contracts: {total_quarantined} rows quarantined",
    )
    for summary in summaries:
        print(f"{summary.file}: {summary.valid_rows}/{summary.rows} valid")
    return ValidateDataResult(
        run_id=run.info.run_id, datasets=summaries, quarantined_rows=total_quarantined
    )
