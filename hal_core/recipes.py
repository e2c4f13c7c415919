"""Stage recipes: YAML that names only what differs from a parameter model's defaults.

A recipe is laid over the model's default instance mapping by mapping, so a nested section
(``generate: {persona_limit: 40}``) keeps every default it does not name, including the
defaults a parent model gives its sections. A section that picks another ``backend`` (a judge
of another kind) replaces the default instead of merging into it.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def overlay(defaults: Any, values: Any) -> Any:
    """``values`` laid over ``defaults`` (see the module docstring)."""
    if not isinstance(defaults, dict) or not isinstance(values, dict):
        return values
    if values.get("backend", defaults.get("backend")) != defaults.get("backend"):
        return values
    merged = dict(defaults)
    for key, value in values.items():
        merged[key] = overlay(defaults.get(key), value)
    return merged


def params_from_recipe(model: type[M], values: dict[str, Any]) -> M:
    """The model from recipe values over its defaults (raises pydantic's ValidationError)."""
    with contextlib.suppress(ValidationError):  # a model with required fields has no default
        values = overlay(model().model_dump(mode="json"), values)
    return model.model_validate(values)
