"""Build a judge from its typed config; backends are imported only when used.

Adding a backend: write a config model with a ``backend`` literal (hal_core/judges/config.py)
and register a builder ``(config, api_key=..., data_dir=...) -> Judge`` with
:func:`register_backend`.

The ``local`` hook: the local fast judge lives in ``hal_core/local_judge.py`` (written by its
own component). Its class ``LocalJudge`` must implement :class:`hal_core.judging.Judge` and
offer ``LocalJudge.from_path(model_path, **options)``. This module imports it lazily, by name
(``hal_core.local_judge:LocalJudge.from_path``), only when a ``backend: local`` config is
built, so nothing here depends on it existing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hal_core.judges.config import parse_judge_config
from hal_core.judging import Judge, JudgeConfigurationError

LOCAL_JUDGE_TARGET = "hal_core.local_judge:LocalJudge.from_path"

Builder = Callable[..., Judge]


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def _build_openai(config, *, api_key: str | None = None, data_dir: Path | None = None) -> Judge:
    from hal_core.judges.openai_judge import OpenAIJudge

    return OpenAIJudge(config, api_key=api_key)


def _build_hf(config, *, api_key: str | None = None, data_dir: Path | None = None) -> Judge:
    from hal_core.judges.hf_judge import HFJudge

    return HFJudge.from_config(config)


def _build_recorded(config, *, api_key: str | None = None, data_dir: Path | None = None) -> Judge:
    from hal_core.judges.recorded import RecordedJudge

    return RecordedJudge.from_config(config, data_dir=data_dir)


def _build_local(config, *, api_key: str | None = None, data_dir: Path | None = None) -> Judge:
    try:
        factory = _resolve(LOCAL_JUDGE_TARGET)
    except (ImportError, AttributeError) as error:
        raise JudgeConfigurationError(
            f"backend 'local' needs {LOCAL_JUDGE_TARGET} (hal_core/local_judge.py), which "
            f"cannot be loaded: {error}"
        ) from error
    judge = factory(config.model_path, **config.options)
    if not isinstance(judge, Judge):
        raise JudgeConfigurationError(
            f"{LOCAL_JUDGE_TARGET} returned {type(judge).__name__}, which lacks "
            "fingerprint()/rate() of hal_core.judging.Judge"
        )
    return judge


_BACKENDS: dict[str, Builder] = {
    "openai": _build_openai,
    "hf": _build_hf,
    "recorded": _build_recorded,
    "local": _build_local,
}


def register_backend(name: str, builder: Builder) -> None:
    """Make ``backend: <name>`` configs buildable (replaces an existing builder)."""
    _BACKENDS[name] = builder


def backends() -> list[str]:
    return sorted(_BACKENDS)


def build_judge(
    config: Any, *, api_key: str | None = None, data_dir: str | Path | None = None
) -> Judge:
    """The judge a config describes; ``api_key`` only matters to API backends."""
    config = parse_judge_config(config)
    try:
        builder = _BACKENDS[config.backend]
    except KeyError as error:
        raise JudgeConfigurationError(
            f"unknown judge backend {config.backend!r}; known: {backends()}"
        ) from error
    return builder(config, api_key=api_key, data_dir=Path(data_dir) if data_dir else None)
