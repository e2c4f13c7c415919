"""The caching rule of tasks/__init__.py, and no side effects at import."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task

import flows
import tasks

STAGE_RUNNER = "run_stage"


def every_task() -> dict[str, Task]:
    found = {}
    for package in (tasks, flows):
        for module in pkgutil.iter_modules(package.__path__):
            loaded = importlib.import_module(f"{package.__name__}.{module.name}")
            for name, value in vars(loaded).items():
                if isinstance(value, Task) and value.__module__ == loaded.__name__:
                    found[f"{loaded.__name__}.{name}"] = value
    return found


def test_every_task_but_the_stage_runner_skips_prefects_result_cache():
    found = every_task()
    assert len(found) > 20
    cached = [
        name
        for name, task in found.items()
        if task.cache_policy is not NO_CACHE and task.name != STAGE_RUNNER
    ]
    assert not cached, f"tasks that must declare cache_policy=NO_CACHE: {cached}"


def test_importing_the_packages_changes_no_environment_variable():
    code = (
        "import os, json; before = dict(os.environ)\n"
        "import hal_core, tasks, flows, hal_cli.commands\n"
        "import flows.pipeline, flows.align, flows.evaluate\n"
        "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFECT_", "GX_"))}
    changed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    assert changed == "[]", changed
