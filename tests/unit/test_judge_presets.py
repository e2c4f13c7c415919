"""Judge presets: the names a run form offers resolve to configs, and configs back to names."""

from __future__ import annotations

import os
import time

import pytest

from flows.rate_dialogues import RateDialoguesParams
from hal_core.judges import LocalJudgeConfig
from hal_core.judges.presets import JUDGES_DIR, LOCAL, preset_config, preset_names

KEY = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 2


def test_every_shipped_judge_config_is_a_preset_stored_by_its_name() -> None:
    shipped = sorted(path.stem for path in JUDGES_DIR.glob("*.yaml"))
    assert preset_names() == [LOCAL, *shipped] and shipped
    for name in preset_names():
        params = RateDialoguesParams(input_file="d.csv", judge=name)
        assert params.judge == preset_config(name)
        assert params.model_dump(mode="json")["judge"] == name
        assert RateDialoguesParams.model_validate(params.model_dump(mode="json")) == params


def test_local_is_the_newest_judge_trained_under_hal_home(tmp_path, monkeypatch) -> None:
    from hal_core.local_judge import METADATA_FILE

    monkeypatch.setenv("HAL_HOME", str(tmp_path))
    assert preset_config(LOCAL) == LocalJudgeConfig(model_path=str(tmp_path / "local_judges"))
    for age, run in ((100, "older"), (0, "newer")):
        folder = tmp_path / "local_judges" / run
        folder.mkdir(parents=True)
        (folder / METADATA_FILE).write_text("{}")
        os.utime(folder, (time.time() - age, time.time() - age))
    assert preset_config(LOCAL).model_path == str(tmp_path / "local_judges" / "newer")
    assert RateDialoguesParams(input_file="d.csv").judge == preset_config(LOCAL)


def test_an_unknown_preset_names_the_presets_and_never_repeats_a_key() -> None:
    with pytest.raises(ValueError, match="presets: local, ") as caught:
        RateDialoguesParams(input_file="d.csv", judge=KEY)
    assert KEY not in str(caught.value) and KEY[:12] not in str(caught.value)
