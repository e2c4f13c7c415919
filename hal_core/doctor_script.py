"""A versioned doctor script: the doctor's side of a role-played visit, line by line.

A script is YAML (``infra/doctor_scripts/*.yaml``): ``version``, ``description`` and ``turns``,
a list whose items are the variants of one doctor line. :meth:`DoctorScript.lines` picks one
variant per turn from a seed: personas meet slightly different doctors, the samples of one
persona the same doctor (so they pair for DPO), and a dialogue is reproducible.
:attr:`DoctorScript.fingerprint` (version + content hash) keys the generation cache, so an
edited script never serves stale dialogues.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PLACEHOLDERS = frozenset({"first_name", "name"})


class DoctorScriptError(ValueError):
    """A script that breaks a rule; the message names the file, turn and rule."""


class DoctorScript(BaseModel):
    """The doctor's lines of a visit; each turn holds one or more variants."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1, description="Explicit version, bumped on every edit.")
    description: str = Field(default="", description="What kind of visit the script plays.")
    turns: tuple[tuple[str, ...], ...] = Field(
        min_length=1, description="Doctor lines in order; each turn lists its variants."
    )

    @field_validator("turns")
    @classmethod
    def _lines_are_usable(cls, turns: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for number, variants in enumerate(turns, start=1):
            if not variants:
                raise ValueError(f"turn {number} has no variants (rule: at least one line)")
            for line in variants:
                if not line.strip() or "\n" in line:
                    raise ValueError(f"turn {number}: {line!r} (rule: one non-empty line)")
                names = {name for _, name, _, _ in string.Formatter().parse(line) if name}
                unknown = names - PLACEHOLDERS
                if unknown:
                    raise ValueError(
                        f"turn {number}: unknown placeholder {sorted(unknown)} in {line!r} "
                        f"(rule: only {sorted(PLACEHOLDERS)})"
                    )
        return turns

    @classmethod
    def load(cls, path: str | Path) -> DoctorScript:
        path = Path(path)
        try:
            payload = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise DoctorScriptError(f"{path}: cannot be read as YAML ({error})") from error
        try:
            return cls.model_validate(payload)
        except ValidationError as error:
            raise DoctorScriptError(f"{path}: {error}") from error

    @property
    def content_sha256(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def fingerprint(self) -> str:
        """``<version>@<content hash[:8]>``: what the generated table records."""
        return f"{self.version}@{self.content_sha256[:8]}"

    def lines(self, n_turns: int, choice_seed: int, first_name: str, name: str) -> list[str]:
        """The first ``n_turns`` doctor lines, one variant each, chosen from ``choice_seed``."""
        if n_turns > len(self.turns):
            raise DoctorScriptError(
                f"doctor script {self.version} has {len(self.turns)} turns; {n_turns} were asked "
                "for (rule: n_turns <= turns in the script)"
            )
        chosen = []
        for number, variants in enumerate(self.turns[:n_turns]):
            digest = hashlib.sha256(f"{choice_seed}:{number}".encode()).digest()
            line = variants[int.from_bytes(digest[:8], "big") % len(variants)]
            chosen.append(line.format(first_name=first_name, name=name))
        return chosen
