"""Candidate responses for persona prompts: from a local model, an endpoint, or a file.

Every source yields the same table, one row per candidate: ``prompt_id``, ``prompt``,
``candidate_id``, ``response``, ``model`` (and ``error`` when a generation failed; failed
candidates stay in the table with an empty response so that pairing records them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hal_core.tables import read_table

CANDIDATE_TABLE_COLUMNS = ("prompt_id", "prompt", "candidate_id", "response", "model")

Completer = Callable[[str], str]
"""Answers one user prompt with one response (an OpenAI-compatible endpoint, a stub server)."""


class SamplingSettings(BaseModel):
    """How candidates are sampled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_candidates: int = Field(default=4, ge=1, description="Candidates per prompt.")
    max_new_tokens: int = Field(default=1024, ge=1, description="Length limit of a response.")
    temperature: float = Field(default=1.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate call.")
    seed: int = Field(default=0)


def load_candidates(candidates_path: str | Path, prompts_path: str | Path) -> pd.DataFrame:
    """``synthlabs/candidates_*.csv`` joined with its prompts by ``persona_id``.

    Raises when a candidate's persona has no prompt, naming the file and row.
    """
    candidates = read_table(candidates_path)
    prompts = read_table(prompts_path)
    for column, table, path in (
        ("persona_id", candidates, candidates_path),
        ("dialogue_id", candidates, candidates_path),
        ("dialogue", candidates, candidates_path),
        ("persona_id", prompts, prompts_path),
        ("prompt", prompts, prompts_path),
    ):
        if column not in table.columns:
            raise ValueError(f"{path}: missing column {column!r}")
    duplicated = prompts["persona_id"].duplicated()
    if duplicated.any():
        row = prompts.loc[duplicated, "_row"].iloc[0]
        raise ValueError(f"{prompts_path} row {row}: persona_id is not unique")
    by_persona = prompts.set_index("persona_id")["prompt"]
    missing = ~candidates["persona_id"].isin(by_persona.index)
    if missing.any():
        row = candidates.loc[missing, "_row"].iloc[0]
        persona = candidates.loc[missing, "persona_id"].iloc[0]
        raise ValueError(
            f"{candidates_path} row {row}: persona_id {persona} has no prompt in {prompts_path}"
        )
    table = pd.DataFrame(
        {
            "_row": candidates["_row"],
            "prompt_id": candidates["persona_id"].astype(str),
            "prompt": candidates["persona_id"].map(by_persona).astype(str),
            "candidate_id": candidates["dialogue_id"].astype(str),
            "response": candidates["dialogue"].fillna("").astype(str),
            "model": candidates["model"].astype(str) if "model" in candidates else "unknown",
        }
    )
    table.attrs["source"] = str(candidates_path)
    return table


def load_prompts(prompts_path: str | Path, limit: int | None = None) -> pd.DataFrame:
    """Persona prompts as ``prompt_id``, ``prompt`` (first ``limit`` rows)."""
    prompts = read_table(prompts_path)
    table = pd.DataFrame(
        {"prompt_id": prompts["persona_id"].astype(str), "prompt": prompts["prompt"].astype(str)}
    )
    return table if limit is None else table.head(limit).reset_index(drop=True)


def _candidate_rows(
    prompts: pd.DataFrame, responses: Sequence[Sequence[str]], model_name: str
) -> pd.DataFrame:
    rows = []
    for (prompt_id, prompt), answers in zip(
        prompts[["prompt_id", "prompt"]].itertuples(index=False), responses, strict=True
    ):
        for number, answer in enumerate(answers):
            rows.append(
                {
                    "prompt_id": str(prompt_id),
                    "prompt": prompt,
                    "candidate_id": f"{prompt_id}-{model_name}-{number}",
                    "response": answer,
                    "model": model_name,
                }
            )
    return pd.DataFrame(rows, columns=list(CANDIDATE_TABLE_COLUMNS))


def render_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Prompts as the model sees them: through its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            for prompt in prompts
        ]
    return list(prompts)


def generate_local(
    model, tokenizer, prompts: Sequence[str], settings: SamplingSettings
) -> list[list[str]]:
    """``n_candidates`` sampled responses per prompt from a transformers causal LM, batched."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rendered = render_prompts(tokenizer, prompts)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    outputs: list[list[str]] = [[] for _ in prompts]
    model.eval()
    torch.manual_seed(settings.seed)
    device = next(model.parameters()).device
    for start in range(0, len(rendered), settings.batch_size):
        batch = rendered[start : start + settings.batch_size]
        encoded = tokenizer(
            batch, return_tensors="pt", padding=True, add_special_tokens=not has_template
        ).to(device)
        sample = settings.temperature > 0
        with torch.no_grad():
            generated = model.generate(
                **encoded,
                max_new_tokens=settings.max_new_tokens,
                do_sample=sample,
                temperature=settings.temperature if sample else None,
                top_p=settings.top_p if sample else None,
                num_return_sequences=settings.n_candidates,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for offset, text in enumerate(texts):
            outputs[start + offset // settings.n_candidates].append(text.strip())
    return outputs


def load_causal_lm(name_or_path: str):
    """Model and tokenizer from a local folder or a hub id (offline runs need a local folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path)
    return model, tokenizer


def generate_candidates_local(
    prompts: pd.DataFrame, model, tokenizer, settings: SamplingSettings, model_name: str
) -> pd.DataFrame:
    """The candidates table from a local model."""
    responses = generate_local(model, tokenizer, prompts["prompt"].tolist(), settings)
    return _candidate_rows(prompts, responses, model_name)


def generate_candidates_remote(
    prompts: pd.DataFrame, complete: Completer, settings: SamplingSettings, model_name: str
) -> pd.DataFrame:
    """The candidates table from a completion callable; a failed call is kept with its error."""
    responses: list[list[str]] = []
    errors: list[str | None] = []
    for prompt in prompts["prompt"]:
        answers = []
        for _ in range(settings.n_candidates):
            try:
                answers.append(complete(prompt))
                errors.append(None)
            except (OSError, RuntimeError, ValueError) as error:
                answers.append("")
                errors.append(f"{type(error).__name__}: {error}")
        responses.append(answers)
    table = _candidate_rows(prompts, responses, model_name)
    table["error"] = errors
    return table


def openai_completer(
    model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: SamplingSettings | None = None,
    timeout_s: float = 120.0,
) -> Completer:
    """A :data:`Completer` backed by an OpenAI-compatible chat-completions endpoint."""
    from openai import OpenAI, OpenAIError

    settings = settings or SamplingSettings()
    client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout_s)

    def complete(prompt: str) -> str:
        try:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
            )
        except OpenAIError as error:
            raise RuntimeError(f"{model} at {base_url}: {error}") from error
        return (reply.choices[0].message.content or "").strip()

    return complete
