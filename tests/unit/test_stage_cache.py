"""The stage cache writes results atomically, with the mode the umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tasks.stages import StageCache


def test_stage_results_are_written_with_the_umask_mode_and_read_back(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        cache = StageCache(tmp_path)
        cache.write("fit_reward-abc", {"reward_path": "r.json", "n": 3})
        cache.write("fit_reward-abc", {"reward_path": "r2.json", "n": 4})
    finally:
        os.umask(old)
    path = tmp_path / "stage-cache" / "fit_reward-abc.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert cache.read("fit_reward-abc") == {"reward_path": "r2.json", "n": 4}
    assert cache.read("missing") is None
    assert [p.name for p in (tmp_path / "stage-cache").iterdir()] == ["fit_reward-abc.json"]
