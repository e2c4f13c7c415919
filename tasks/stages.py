"""Running a stage flow as a cached task: unchanged inputs, recipe and code skip the stage."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel

from hal_core.settings import PROJECT_ROOT, HalSettings

SOURCE_PACKAGES = ("hal_core", "tasks", "flows")


def folder_fingerprint(folder: Path, pattern: str = "**/*") -> str:
    """sha256 over the relative paths and bytes of every file under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def code_fingerprint() -> str:
    """Hash of the project's Python sources and recipes: a code change reruns every stage."""
    parts = [folder_fingerprint(PROJECT_ROOT / package, "**/*.py") for package in SOURCE_PACKAGES]
    parts.append(folder_fingerprint(PROJECT_ROOT / "infra", "**/*.y*ml"))
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Stage name + parameters (parent run excluded) + input and code fingerprints."""
    stage_params = {k: v for k, v in parameters["params"].items() if k != "parent_run_id"}
    payload = {
        "stage": parameters["stage"],
        "params": stage_params,
        "inputs": parameters["input_fingerprint"],
        "upstream": parameters["upstream"],
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{parameters['stage']}-{hashlib.sha256(blob).hexdigest()}"


def load_flow(entrypoint: str):
    """``module:function`` -> the flow object."""
    module_name, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module_name), name)


@task(name="run_stage", task_run_name="stage-{stage}", cache_key_fn=stage_cache_key)
def run_stage(
    stage: str,
    entrypoint: str,
    params_class: str,
    params: dict[str, Any],
    input_fingerprint: str,
    upstream: dict[str, Any],
) -> dict[str, Any]:
    """Run one stage flow with its typed parameters; cached by its inputs' fingerprint."""
    model: type[BaseModel] = load_flow(params_class)
    result = load_flow(entrypoint)(model.model_validate(params))
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, dict):
        return result
    if isinstance(result, list):
        return {"items": [r.model_dump(mode="json") if isinstance(r, BaseModel) else r
                          for r in result]}  # fmt: skip
    return {"result": result}


def cached_stage_runner(settings: HalSettings):
    """``run_stage`` with results (and so cache records) persisted under HAL_HOME."""
    return run_stage.with_options(
        result_storage=settings.home_dir / "stage-cache", persist_result=True
    )
