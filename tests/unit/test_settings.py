"""Settings: a HAL_HOME that cannot be written is named at once, not after MLflow retries."""

from __future__ import annotations

import os

import pytest

from hal_core.settings import HalSettings, HomeNotWritableError


def test_a_home_that_cannot_be_written_is_a_clear_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # else the home is never reached
    monkeypatch.delenv("HAL_TRACKING_URI", raising=False)
    with pytest.raises(HomeNotWritableError, match=r"HAL_HOME /proc/hal-home: cannot create it"):
        HalSettings(home="/proc/hal-home").resolved_tracking_uri()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the /proc case above stands for it
            with pytest.raises(HomeNotWritableError, match=rf"HAL_HOME {home} is not writable"):
                HalSettings(home=home).resolved_tracking_uri()
    finally:
        home.chmod(0o700)
