"""Questionnaires: traits with stable ids, loaded and saved as versioned JSON."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TRAIT_ID_PATTERN = re.compile(r"^t\d{2,}$")


class Trait(BaseModel):
    """One statement a judge rates a speaker on, Likert 1-5."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(description="Stable id such as t01; travels with ratings and weights.")
    text: str = Field(min_length=1)
    group: str = ""

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not TRAIT_ID_PATTERN.match(value):
            raise ValueError(f"trait id {value!r} does not match {TRAIT_ID_PATTERN.pattern}")
        return value


class LikertScale(BaseModel):
    model_config = ConfigDict(frozen=True)

    min: int = 1
    max: int = 5


class Questionnaire(BaseModel):
    """An ordered set of traits; identity is by trait id, never by position."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    scale: LikertScale = LikertScale()
    traits: tuple[Trait, ...]

    @model_validator(mode="after")
    def _unique_ids(self) -> Questionnaire:
        ids = [trait.id for trait in self.traits]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"questionnaire {self.name!r} repeats trait ids {duplicated}")
        if not ids:
            raise ValueError(f"questionnaire {self.name!r} has no traits")
        return self

    @property
    def trait_ids(self) -> list[str]:
        return [trait.id for trait in self.traits]

    def trait(self, trait_id: str) -> Trait:
        for trait in self.traits:
            if trait.id == trait_id:
                return trait
        raise KeyError(f"trait {trait_id!r} is not in questionnaire {self.name!r}")

    def texts(self) -> dict[str, str]:
        return {trait.id: trait.text for trait in self.traits}

    def subset(self, trait_ids: list[str], name: str | None = None) -> Questionnaire:
        """The traits with the given ids, in that order."""
        return Questionnaire(
            name=name or f"{self.name}[{len(trait_ids)}]",
            scale=self.scale,
            traits=tuple(self.trait(trait_id) for trait_id in trait_ids),
        )

    @property
    def version(self) -> str:
        """Content hash over ids, texts and scale; independent of trait order and extras."""
        canonical = {
            "scale": [self.scale.min, self.scale.max],
            "traits": sorted([t.id, t.text] for t in self.traits),
        }
        blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> str:
        payload = self.model_dump(mode="json")
        payload["version"] = self.version
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Questionnaire:
        """A questionnaire JSON, or the published HAL16Q statements (under their HAL32Q ids)."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        if isinstance(payload, dict) and "statements_in_rating_order" in payload:
            from hal_core.paper import load_hal16q_published  # the paper's layout

            return load_hal16q_published(path)
        payload.pop("version", None)
        try:
            return cls.model_validate(payload)
        except ValueError as error:
            raise ValueError(f"{path}: not a questionnaire: {error}") from error
