"""The registered policy as a text generator: the loader module of ``hal-policy``'s pyfunc
flavour (MLflow imports it by name; nothing here imports MLflow).

A version's folder is the evaluated checkpoint itself (a PEFT adapter, or a full checkpoint)
with an ``MLmodel`` beside it, so ``mlflow.pyfunc.load_model("models:/hal-policy@champion")``
loads the base named in ``adapter_config.json`` with the adapter merged, and ``predict`` reads
a ``prompt`` column (one user message each) and returns a ``text`` column (one reply each).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hal_core.generation import SamplingSettings, generate_local, load_policy

PROMPT_COLUMN = "prompt"
TEXT_COLUMN = "text"
GENERATION_PARAMS: dict[str, int | float] = {
    "max_new_tokens": 256,
    "temperature": 1.0,
    "top_p": 0.95,
    "seed": 0,
}
"""What a caller may set per request (``predict(..., params={...})``), with the defaults."""


def base_model_of(folder: str | Path) -> str | None:
    """The base model an adapter folder was trained from; None for a full checkpoint."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config}: no base_model_name_or_path (rule: an adapter names its base)")
    return str(base)


class PolicyGenerator:
    """A loaded policy that answers each prompt with one sampled reply."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        base = base_model_of(folder)
        if base is None:
            self.model, self.tokenizer = load_policy(str(folder))
        else:
            self.model, self.tokenizer = load_policy(base, adapter=str(folder))

    def predict(
        self, model_input: pd.DataFrame, params: Mapping[str, object] | None = None
    ) -> pd.DataFrame:
        if PROMPT_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a {PROMPT_COLUMN!r} column: {list(model_input)}")
        chosen = GENERATION_PARAMS | dict(params or {})
        settings = SamplingSettings(n_candidates=1, **chosen)
        prompts = model_input[PROMPT_COLUMN].astype(str).tolist()
        replies = generate_local(self.model, self.tokenizer, prompts, settings)
        return pd.DataFrame({TEXT_COLUMN: [r[0] for r in replies]}, index=model_input.index)


def _load_pyfunc(path: str) -> PolicyGenerator:
    """MLflow's entry point: ``path`` is the version's folder (the checkpoint)."""
    return PolicyGenerator(path)
