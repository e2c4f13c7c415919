"""Named judges a person picks in a run form: the configs in ``infra/judges/*.yaml`` (by file
stem) and ``local``, the newest local judge trained under HAL_HOME/local_judges.

A :data:`JudgeChoice` field takes a preset name or a whole judge config (a mapping, or a
config model: what the CLI's ``--judge FILE`` and the pipeline pass). A name is resolved to its
config when the parameters are validated, in the flow's process, so the flow reads a typed
config; a config equal to a preset's is written back as the preset's name. The run form offers
the names only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, SerializationInfo, WrapSerializer
from pydantic.json_schema import WithJsonSchema

from hal_core.judges.config import (
    JudgeConfig,
    LocalJudgeConfig,
    load_judge_config,
    looks_like_secret,
)
from hal_core.settings import PROJECT_ROOT, get_settings

JUDGES_DIR = PROJECT_ROOT / "infra" / "judges"
LOCAL = "local"
"""The preset name of the newest local judge (trained by ``hal train-local-judge``)."""


def preset_names() -> list[str]:
    """``local`` first, then the stems of ``infra/judges/*.yaml``."""
    return [LOCAL, *sorted(path.stem for path in JUDGES_DIR.glob("*.yaml"))]


@lru_cache
def _shipped(name: str) -> BaseModel:
    return load_judge_config(JUDGES_DIR / f"{name}.yaml")


def local_judge_folder(home: Path | None = None) -> Path:
    """The newest folder under HAL_HOME/local_judges holding a saved local judge; the
    local_judges folder itself when none does (loading it then says no judge is there)."""
    from hal_core.local_judge import METADATA_FILE

    root = (home or Path(get_settings().home).resolve()) / "local_judges"
    saved = [meta.parent for meta in root.glob(f"*/{METADATA_FILE}")]
    return max(saved, key=lambda folder: folder.stat().st_mtime) if saved else root


def preset_config(name: str) -> BaseModel:
    """The judge config of a preset; a ValueError names the presets when ``name`` is none."""
    if name == LOCAL:
        return LocalJudgeConfig(model_path=str(local_judge_folder()))
    if name not in preset_names():
        shown = (
            "(a value shaped like a key, not repeated)" if looks_like_secret(name) else repr(name)
        )
        raise ValueError(f"unknown judge preset {shown}; presets: {', '.join(preset_names())}")
    return _shipped(name)


def _resolve(value: Any) -> Any:
    return preset_config(value) if isinstance(value, str) else value


def _as_name(value: Any, handler, info: SerializationInfo) -> Any:
    for name in preset_names():
        try:
            if value == preset_config(name):
                return name
        except ValueError:  # a shipped preset that no longer loads is no match
            continue
    return handler(value)


JudgeChoice = Annotated[
    JudgeConfig,
    BeforeValidator(_resolve),
    WrapSerializer(_as_name),
    WithJsonSchema({"type": "string", "enum": preset_names()}),
]
"""A judge field: a preset name (what forms offer) or a judge config, read as the config."""
