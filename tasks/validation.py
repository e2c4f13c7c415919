"""Validate a table against its data contract with Great Expectations; fail or quarantine."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import task

from hal_core.settings import HalSettings
from hal_core.tables import ROW_COLUMN
from tasks import tracking
from tasks.contracts import DataContract, get_contract

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

Policy = Literal["fail", "quarantine"]


class DataContractError(ValueError):
    """A table broke its contract; the message names the file, rows and failed expectations."""


@dataclass(frozen=True)
class RuleFailure:
    expectation: str
    column: str | None
    rows: list[dict]
    unexpected_count: int
    table_level: bool

    def _describe_row(self, row: dict) -> str:
        ids = ", ".join(f"{k}={v}" for k, v in row.items() if k not in (ROW_COLUMN, self.column))
        return f"row {row.get(ROW_COLUMN)} ({ids})"

    def describe(self, limit: int = 5) -> str:
        where = f"column {self.column!r}" if self.column else "table"
        shown = ", ".join(self._describe_row(row) for row in self.rows[:limit])
        more = f" and {len(self.rows) - limit} more" if len(self.rows) > limit else ""
        detail = f": {shown}{more}" if shown else f" ({self.unexpected_count} unexpected)"
        return f"{self.expectation} on {where}{detail}"


@dataclass(frozen=True)
class ValidationReport:
    """What a contract check found and where its evidence lies."""

    contract: str
    source: str
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    failures: list[RuleFailure]
    result_path: Path
    docs_path: Path
    quarantine_path: Path | None
    error: str | None

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def n_rows(self) -> int:
        return len(self.valid) + len(self.quarantined)

    def summary(self) -> dict[str, float]:
        return {
            "rows": self.n_rows,
            "valid_rows": len(self.valid),
            "quarantined_rows": len(self.quarantined),
            "failed_expectations": len(self.failures),
            "success": float(self.success),
        }


def _to_builtin(value):
    return value.item() if hasattr(value, "item") else value


def _failures(result, contract: DataContract) -> list[RuleFailure]:
    failures = []
    for run_result in result.run_results.values():
        for outcome in run_result.results:
            if outcome.success:
                continue
            config = outcome.expectation_config
            details = outcome.result or {}
            rows = [
                {k: _to_builtin(v) for k, v in row.items()}
                for row in details.get("unexpected_index_list") or []
                if isinstance(row, dict)
            ]
            failures.append(
                RuleFailure(
                    expectation=config.type,
                    column=config.kwargs.get("column") or config.kwargs.get("column_A"),
                    rows=rows,
                    unexpected_count=int(details.get("unexpected_count") or 0),
                    table_level="unexpected_index_list" not in details,
                )
            )
    return failures


def _run_checkpoint(frame: pd.DataFrame, contract: DataContract, project_root: Path):
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(project_root))
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_or_update_pandas(name="hal")
    asset = source.add_dataframe_asset(name=contract.name)
    batch = asset.add_batch_definition_whole_dataframe("whole_table")
    suite = context.suites.add(
        gx.ExpectationSuite(name=contract.name, expectations=contract.expectations())
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=contract.name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=contract.name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [ROW_COLUMN, contract.id_column],
            },
        )
    )
    return checkpoint.run(batch_parameters={"dataframe": frame})


def check_contract(
    frame: pd.DataFrame,
    contract_name: str,
    policy: Policy,
    output_dir: Path,
) -> ValidationReport:
    """Validate ``frame``; write the result JSON, Data Docs and, in quarantine, failing rows.

    Row-level failures are quarantined under ``quarantine``; under ``fail`` (or for table-level
    failures, which no row can be blamed for) nothing passes and ``report.error`` says why.
    """
    contract = get_contract(contract_name)
    source = frame.attrs.get("source", "<table>")
    missing = [c for c in (ROW_COLUMN, contract.id_column) if c not in frame]
    if missing:
        raise DataContractError(f"{source}: contract {contract.name}: missing columns {missing}")
    output_dir.mkdir(parents=True, exist_ok=True)
    docs_path = output_dir / "data_docs"
    with tempfile.TemporaryDirectory() as scratch:
        result = _run_checkpoint(contract.derive(frame), contract, Path(scratch))
        shutil.rmtree(docs_path, ignore_errors=True)
        shutil.copytree(Path(scratch, "gx", "uncommitted", "data_docs", "local_site"), docs_path)
    result_path = output_dir / "validation_result.json"
    result_path.write_text(json.dumps(result.describe_dict(), indent=2, default=str))
    failures = _failures(result, contract)
    stale_quarantine = output_dir / "quarantine.csv"
    stale_quarantine.unlink(missing_ok=True)
    if not failures:
        return ValidationReport(
            contract.name, source, frame, frame.iloc[0:0], [], result_path, docs_path, None, None
        )

    error = f"{source}: data contract {contract.name} failed:\n" + "\n".join(
        f"  - {failure.describe()}" for failure in failures
    )
    if policy == "fail" or any(failure.table_level for failure in failures):
        return ValidationReport(
            contract.name,
            source,
            frame.iloc[0:0],
            frame,
            failures,
            result_path,
            docs_path,
            None,
            error,
        )
    failed_rules: dict[int, list[str]] = {}
    for failure in failures:
        for row in failure.rows:
            failed_rules.setdefault(int(row[ROW_COLUMN]), []).append(
                f"{failure.expectation}({failure.column})"
            )
    is_failed = frame[ROW_COLUMN].isin(failed_rules)
    quarantined = frame[is_failed].copy()
    quarantined["_failed_rules"] = quarantined[ROW_COLUMN].map(lambda r: "; ".join(failed_rules[r]))
    quarantined.to_csv(stale_quarantine, index=False)
    valid = frame[~is_failed].copy()
    valid.attrs.update(frame.attrs)
    return ValidationReport(
        contract.name,
        source,
        valid,
        quarantined,
        failures,
        result_path,
        docs_path,
        stale_quarantine,
        None,
    )


def dataset_name(source: str | None, contract_name: str, settings: HalSettings) -> str:
    """Where a table's validation evidence is filed: its path inside the data folder without
    the suffix (``turing/ratings32_gpt-5``), so files that share a name in different folders
    (the epochs of every ``aligned_outputs/<model>``) keep apart; else the file's stem."""
    if not source:
        return contract_name
    path = Path(source)
    if settings.data_dir is not None:
        try:
            return (
                path.resolve()
                .relative_to(Path(settings.data_dir).resolve())
                .with_suffix("")
                .as_posix()
            )
        except ValueError:
            pass
    return path.stem


@task(name="validate_dataset", task_run_name="validate-{contract_name}")
def validate_dataset(
    frame: pd.DataFrame,
    contract_name: str,
    policy: Policy,
    settings: HalSettings,
    run_id: str | None = None,
) -> ValidationReport:
    """Check a table against its contract, log the evidence, and stop on a ``fail`` breach."""
    name = dataset_name(frame.attrs.get("source"), contract_name, settings)
    output_dir = settings.home_dir / "validation" / name
    report = check_contract(frame, contract_name, policy, output_dir)
    if run_id:
        prefix = f"validation/{name}"
        tracking.log_file(run_id, report.result_path, prefix)
        tracking.log_file(run_id, report.docs_path, f"{prefix}/data_docs")
        if report.quarantine_path is not None:
            tracking.log_file(run_id, report.quarantine_path, prefix)
        tracking.log_metrics(
            run_id, {f"validation.{name}.{k}": v for k, v in report.summary().items()}
        )
    if report.error:
        raise DataContractError(report.error)
    return report
