"""The versioned doctor script: shipped file, seeded variants, rules with clear errors."""

from __future__ import annotations

import pytest

from hal_core.doctor_script import DoctorScript, DoctorScriptError
from hal_core.settings import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "infra" / "doctor_scripts" / "visit-v1.yaml"


def test_shipped_script_loads_and_fills_the_patients_name():
    script = DoctorScript.load(SHIPPED)
    assert script.version == "visit-v1" and len(script.turns) >= 4
    lines = script.lines(4, choice_seed=1, first_name="Ana", name="Ana Lima")
    assert len(lines) == 4 and all(line.strip() for line in lines)
    assert "{" not in " ".join(lines)
    assert script.fingerprint.startswith("visit-v1@")


def test_variants_follow_the_seed():
    script = DoctorScript.load(SHIPPED)
    same = [script.lines(4, 7, "Ana", "Ana Lima") for _ in range(2)]
    assert same[0] == same[1]
    seen = {tuple(script.lines(4, seed, "Ana", "Ana Lima")) for seed in range(40)}
    assert len(seen) > 10


def test_an_edit_changes_the_fingerprint_and_bad_scripts_name_the_turn(tmp_path):
    script = DoctorScript(version="v", turns=(("Hello {first_name}.",), ("How long?",)))
    edited = DoctorScript(version="v", turns=(("Hello {first_name}.",), ("Since when?",)))
    assert script.fingerprint != edited.fingerprint
    with pytest.raises(DoctorScriptError, match="2 turns; 3 were asked"):
        script.lines(3, 0, "Ana", "Ana Lima")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v\nturns:\n  - [Hello]\n  - ['Hi {surname}']\n")
    with pytest.raises(DoctorScriptError, match=r"(?s)bad\.yaml.*turn 2: unknown placeholder"):
        DoctorScript.load(bad)
    bad.write_text("version: v\nturns:\n  - []\n")
    with pytest.raises(DoctorScriptError, match="turn 1 has no variants"):
        DoctorScript.load(bad)
