"""The README's two commands are the ones that work: CI runs the second, people the first."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block, "README must open with a bash block of commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_demo_and_test_commands():
    assert readme_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert readme_commands()[1] in ci_lines


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("command", ["make demo", "make test"])
def test_commands_install_torch_first_then_the_project(command, tmp_path):
    """A dry run from a clean venv shows the install path each command takes."""
    target = command.split()[1]
    dry_run = subprocess.run(
        ["make", "--always-make", "--dry-run", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    steps = dry_run.splitlines()
    venv = next(i for i, s in enumerate(steps) if "-m venv" in s)
    torch = next(i for i, s in enumerate(steps) if "torch==2.13.0" in s)
    project = next(i for i, s in enumerate(steps) if "-e '.[dev]'" in s)
    assert venv < torch < project
    expected = "hal demo" if target == "demo" else "pytest"
    assert any(expected in step for step in steps[project:])


def test_installed_cli_exposes_the_documented_commands():
    hal = Path(shutil.which("hal") or ROOT / ".venv" / "bin" / "hal")
    assert hal.exists(), "the project is installed with its console script"
    listing = subprocess.run([str(hal), "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "validate", "fit-reward", "score"):
        assert command in listing.stdout
