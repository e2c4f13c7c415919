"""Validate a table against its data contract with Great Expectations; fail or quarantine.

Each check leaves its evidence beside the GX result JSON: a one-file HTML page that opens
offline (in MLflow's artifact viewer too) and a markdown table of every expectation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from hal_core.settings import HalSettings
from hal_core.tables import ROW_COLUMN, write_table
from hal_core.validation_report import (
    ExpectationOutcome,
    expectation_outcomes,
    expectations_markdown,
    validation_html,
)
from tasks import tracking
from tasks.contracts import DataContract, get_contract

Policy = Literal["fail", "quarantine"]


class DataContractError(ValueError):
    """A table broke its contract; the message names the file, rows and failed expectations."""


UNIQUE = "expect_column_values_to_be_unique"
KEEP_FIRST = "quarantine keeps the first occurrence of a repeated value, drops the later ones"


@dataclass(frozen=True)
class RuleFailure:
    """One failed expectation: the rows it names (``_row`` and the id) or, for a table-level
    rule, what GX observed and the rule's bounds."""

    expectation: str
    column: str | None
    rows: list[dict]
    unexpected_count: int
    table_level: bool
    observed: object = None
    bounds: dict = field(default_factory=dict)

    def _describe_row(self, row: dict) -> str:
        values = {k: v for k, v in row.items() if k not in (ROW_COLUMN, self.column)}
        values = values or {k: v for k, v in row.items() if k != ROW_COLUMN}
        ids = ", ".join(f"{k}={v}" for k, v in values.items())
        return f"row {row.get(ROW_COLUMN)}" + (f" ({ids})" if ids else "")

    def _describe_repeats(self, limit: int) -> str:
        rows_by_value: dict[str, list[int]] = {}
        for row in self.rows:
            rows_by_value.setdefault(str(row.get(self.column)), []).append(row[ROW_COLUMN])
        shown = [
            f"{self.column}={value} at rows {', '.join(map(str, sorted(rows)))}"
            for value, rows in list(rows_by_value.items())[:limit]
        ]
        more = len(rows_by_value) - len(shown)
        return "; ".join(shown) + (f" and {more} more values" if more > 0 else "")

    def describe(self, limit: int = 5) -> str:
        if self.table_level:
            bounds = ", ".join(f"{k}={v}" for k, v in self.bounds.items() if v is not None)
            return f"{self.expectation} on table: observed {self.observed!r} ({bounds})"
        where = f"column {self.column!r}"
        if self.expectation == UNIQUE and all(self.column in row for row in self.rows):
            return f"{UNIQUE} on {where}: {self._describe_repeats(limit)} ({KEEP_FIRST})"
        shown = ", ".join(self._describe_row(row) for row in self.rows[:limit])
        more = f" and {len(self.rows) - limit} more" if len(self.rows) > limit else ""
        detail = f": {shown}{more}" if shown else f" ({self.unexpected_count} unexpected)"
        return f"{self.expectation} on {where}{detail}"


@dataclass(frozen=True)
class ValidationReport:
    """What a contract check found and where its evidence lies: the GX result JSON, its HTML
    page (``docs_path``) and its markdown table of expectations (``table_path``)."""

    contract: str
    source: str
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    failures: list[RuleFailure]
    result_path: Path
    docs_path: Path
    table_path: Path
    outcomes: list[ExpectationOutcome]
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
                    observed=_to_builtin(details.get("observed_value")),
                    bounds={
                        key: config.kwargs.get(key)
                        for key in ("min_value", "max_value")
                        if key in config.kwargs
                    },
                )
            )
    return failures


def _run_checkpoint(frame: pd.DataFrame, contract: DataContract, project_root: Path):
    import great_expectations as gx

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # read by the context; no network
    context = gx.get_context(mode="file", project_root_dir=str(project_root))
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_or_update_pandas(name="hal")
    asset = source.add_dataframe_asset(name=contract.name)
    batch = asset.add_batch_definition_whole_dataframe("whole_table")
    suite = context.suites.add(
        gx.ExpectationSuite(name=contract.name, expectations=contract.suite_expectations())
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=contract.name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=contract.name,
            validation_definitions=[definition],
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": [ROW_COLUMN, contract.id_column],
            },
        )
    )
    return checkpoint.run(batch_parameters={"dataframe": frame})


PASSED_MARKER = "passed.key"
"""Beside a passing result: the key of what passed (rows and contract), so the same table is
not checked twice (the pipeline validates every file first, and stages check their inputs)."""


def _check_key(frame: pd.DataFrame, contract: DataContract) -> str:
    """Hash of a table's columns and values and of the contract's rules (the derived columns'
    code is covered by the derived table itself)."""
    rules = (contract.name, contract.id_column, contract.min_rows, contract.suite_expectations())
    digest = hashlib.sha256(repr(rules).encode())
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


REPORT_JSON, REPORT_HTML, REPORT_MARKDOWN = (
    f"validation_result.{suffix}" for suffix in ("json", "html", "md")
)


def _write_evidence(
    result: dict, output_dir: Path, table: str, facts: dict[str, str]
) -> list[ExpectationOutcome]:
    """The HTML page and markdown table of a result, beside its JSON."""
    outcomes = expectation_outcomes(result, table)
    title = f"Data contract {facts['contract']}: {table}"
    (output_dir / REPORT_HTML).write_text(validation_html(outcomes, title, facts))
    (output_dir / REPORT_MARKDOWN).write_text(expectations_markdown(outcomes, title))
    return outcomes


def check_contract(
    frame: pd.DataFrame,
    contract_name: str,
    policy: Policy,
    output_dir: Path,
    min_rows: int | None = None,
    table: str | None = None,
) -> ValidationReport:
    """Validate ``frame``; write the result JSON, its HTML page and markdown table and, in
    quarantine, the failing rows.

    ``min_rows`` overrides the contract's (0: an empty table may pass, e.g. an output whose
    caller reports emptiness itself). ``table`` names the table in the reports (default: the
    source file's name).

    Row-level failures are quarantined under ``quarantine``; under ``fail`` (or for table-level
    failures, which no row can be blamed for) nothing passes and ``report.error`` says why.
    """
    contract = get_contract(contract_name)
    if min_rows is not None:
        contract = replace(contract, min_rows=min_rows)
    source = frame.attrs.get("source", "<table>")
    table = table or Path(str(source)).name
    missing = [c for c in (ROW_COLUMN, contract.id_column) if c not in frame]
    if missing:
        raise DataContractError(f"{source}: contract {contract.name}: missing columns {missing}")
    output_dir.mkdir(parents=True, exist_ok=True)
    result_path, docs_path, table_path = (
        output_dir / name for name in (REPORT_JSON, REPORT_HTML, REPORT_MARKDOWN)
    )
    derived = contract.derive(frame)
    passed_marker, key = output_dir / PASSED_MARKER, _check_key(derived, contract)
    passed = ValidationReport(
        contract=contract.name,
        source=source,
        valid=frame,
        quarantined=frame.iloc[0:0],
        failures=[],
        result_path=result_path,
        docs_path=docs_path,
        table_path=table_path,
        outcomes=[],
        quarantine_path=None,
        error=None,
    )
    evidence = (passed_marker, result_path, docs_path, table_path)
    if all(path.is_file() for path in evidence) and passed_marker.read_text() == key:
        # the same rows passed the same contract before: its evidence still stands
        cached = json.loads(result_path.read_text())
        return replace(passed, outcomes=expectation_outcomes(cached, table))
    passed_marker.unlink(missing_ok=True)
    shutil.rmtree(output_dir / "data_docs", ignore_errors=True)  # GX's site, before this page
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint_result = _run_checkpoint(derived, contract, Path(scratch))
    result = checkpoint_result.describe_dict()
    result_path.write_text(json.dumps(result, indent=2, default=str))
    facts = {
        "contract": contract.name,
        "source": str(source),
        "rows": str(len(frame)),
        "rows and contract sha256": key,
        "great_expectations": version("great_expectations"),
    }
    passed = replace(passed, outcomes=_write_evidence(result, output_dir, table, facts))
    failures = _failures(checkpoint_result, contract)
    stale_quarantine = output_dir / "quarantine.csv"
    stale_quarantine.unlink(missing_ok=True)
    if not failures:
        passed_marker.write_text(key)
        return passed

    error = f"{source}: data contract {contract.name} failed:\n" + "\n".join(
        f"  - {failure.describe()}" for failure in failures
    )
    if policy == "fail" or any(failure.table_level for failure in failures):
        return replace(
            passed, valid=frame.iloc[0:0], quarantined=frame, failures=failures, error=error
        )
    failed_rules = quarantine_rules(frame, failures)
    is_failed = frame[ROW_COLUMN].isin(failed_rules)
    quarantined = frame[is_failed].copy()
    quarantined["_failed_rules"] = quarantined[ROW_COLUMN].map(lambda r: "; ".join(failed_rules[r]))
    write_table(quarantined, stale_quarantine)
    valid = frame[~is_failed].copy()
    valid.attrs.update(frame.attrs)
    too_few = None
    if len(valid) < contract.min_rows:
        too_few = (
            f"{error}\n  quarantine left {len(valid)} of {len(frame)} rows valid; the contract "
            f"needs at least {contract.min_rows}"
        )
    return replace(
        passed,
        valid=valid,
        quarantined=quarantined,
        failures=failures,
        quarantine_path=stale_quarantine,
        error=too_few,
    )


def quarantine_rules(frame: pd.DataFrame, failures: list[RuleFailure]) -> dict[int, list[str]]:
    """Row number -> the rules that quarantine it.

    A uniqueness rule quarantines only the later occurrences of a repeated value: the first
    (lowest row) stays valid unless another rule fails it.
    """
    failed_rules: dict[int, list[str]] = {}
    for failure in failures:
        rows = [int(row[ROW_COLUMN]) for row in failure.rows]
        reasons = {row: f"{failure.expectation}({failure.column})" for row in rows}
        if failure.expectation == UNIQUE and failure.column in frame:
            flagged = frame[frame[ROW_COLUMN].isin(rows)]
            values = flagged[failure.column].astype(str)
            first = flagged.groupby(values)[ROW_COLUMN].transform("min")
            reasons = {
                int(row): f"{UNIQUE}({failure.column}): {failure.column}={value} is first at "
                f"row {int(earliest)}, which is kept"
                for row, value, earliest in zip(flagged[ROW_COLUMN], values, first, strict=True)
                if row != earliest
            }
        for row, reason in reasons.items():
            failed_rules.setdefault(row, []).append(reason)
    return failed_rules


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


@task(name="validate_dataset", task_run_name="validate-{contract_name}", cache_policy=NO_CACHE)
def validate_dataset(
    frame: pd.DataFrame,
    contract_name: str,
    policy: Policy,
    settings: HalSettings,
    run_id: str | None = None,
    min_rows: int | None = None,
) -> ValidationReport:
    """Check a table against its contract, log the evidence, and stop on a ``fail`` breach
    (``min_rows``: see :func:`check_contract`)."""
    name = dataset_name(frame.attrs.get("source"), contract_name, settings)
    output_dir = settings.home_dir / "validation" / name
    report = check_contract(frame, contract_name, policy, output_dir, min_rows, table=name)
    if run_id:
        prefix = f"validation/{name}"
        for path in (report.result_path, report.docs_path, report.table_path):
            tracking.log_file(run_id, path, prefix)
        if report.quarantine_path is not None:
            tracking.log_file(run_id, report.quarantine_path, prefix)
        # one JSON per table, not five metrics per table: a run that checks 48 files would
        # otherwise show 240 one-point charts
        tracking.log_json(run_id, report.summary(), f"{prefix}/summary.json")
    if report.error:
        raise DataContractError(report.error)
    return report
