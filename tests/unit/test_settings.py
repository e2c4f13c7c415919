"""Settings: a HAL_HOME that cannot be written is named at once, not after MLflow retries;
each HAL_HOME keeps its own Prefect state; a store's first creation is serialised by a lock."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys

import pytest

from hal_core.settings import (
    DERIVED_PREFECT_HOME,
    HalSettings,
    HomeNotWritableError,
    derived_prefect_home,
    store_lock,
)


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


def test_prefect_state_goes_into_hal_home_and_two_homes_get_two_prefect_homes(tmp_path):
    user = tmp_path / "user"
    first = derived_prefect_home(HalSettings(home=tmp_path / "a"), {}, user)
    second = derived_prefect_home(HalSettings(home=tmp_path / "b"), {}, user)
    assert first == tmp_path / "a" / "prefect"
    assert second == tmp_path / "b" / "prefect"


def test_a_prefect_home_or_api_the_user_chose_is_left_alone(tmp_path):
    settings, user = HalSettings(home=tmp_path / "a"), tmp_path / "user"
    assert derived_prefect_home(settings, {"PREFECT_HOME": str(tmp_path / "mine")}, user) is None
    assert derived_prefect_home(settings, {"PREFECT_API_URL": "http://x:4200/api"}, user) is None


def test_a_prefect_home_hal_derived_for_another_home_is_derived_again(tmp_path):
    """A child process on another HAL_HOME gets its own, not its parent's."""
    parent = str(tmp_path / "a" / "prefect")
    environ = {"PREFECT_HOME": parent, DERIVED_PREFECT_HOME: parent}
    child = derived_prefect_home(HalSettings(home=tmp_path / "b"), environ, tmp_path / "user")
    assert child == tmp_path / "b" / "prefect"


def test_an_api_url_in_the_users_active_prefect_profile_keeps_their_prefect(tmp_path):
    user = tmp_path / "user"
    (user / ".prefect").mkdir(parents=True)
    (user / ".prefect" / "profiles.toml").write_text(
        'active = "cloud"\n'
        '[profiles.cloud]\nPREFECT_API_URL = "https://api.prefect.cloud/api/accounts/x"\n'
        '[profiles.local]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n'
    )
    settings = HalSettings(home=tmp_path / "a")
    assert derived_prefect_home(settings, {}, user) is None
    local = derived_prefect_home(settings, {"PREFECT_PROFILE": "local"}, user)
    assert local == tmp_path / "a" / "prefect"


def _prefect_home_of_a_hal_process(environ: dict[str, str]) -> str:
    script = (
        "from hal_core.settings import isolate_prefect_home\n"
        "isolate_prefect_home()\n"
        "from prefect.settings import get_current_settings\n"
        "print(get_current_settings().home)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_prefect_in_a_hal_process_reads_its_state_from_hal_home(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HAL_"))}
    environ |= {"HOME": str(tmp_path / "user"), "HAL_HOME": str(tmp_path / "a")}
    assert _prefect_home_of_a_hal_process(environ) == str(tmp_path / "a" / "prefect")
    environ["PREFECT_HOME"] = str(tmp_path / "mine")
    assert _prefect_home_of_a_hal_process(environ) == str(tmp_path / "mine")


def test_a_store_lock_keeps_out_every_other_holder_until_released(tmp_path):
    lock = tmp_path / "home" / "mlflow.db.lock"
    held = store_lock(tmp_path / "home" / "mlflow.db")
    with held, lock.open("a") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock.open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def test_a_lock_file_that_cannot_be_created_names_the_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")  # even root cannot create a folder in it
    store = tmp_path / "file" / "home" / "mlflow.db"
    expected = re.escape(f"{store}.lock: cannot open the lock file")
    with pytest.raises(OSError, match=expected), store_lock(store):
        pass
