"""Typed judge configurations, one model per backend, selected by the ``backend`` field.

Secrets never live here: the OpenAI-compatible backend names *where* its key comes from (an
environment variable or a Prefect Secret block); the task layer resolves it at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from hal_core.judges.prompting import PROMPT_VERSION, canonical_json

_FROZEN = ConfigDict(extra="forbid", frozen=True)

API_KEY_ENV = "HAL_JUDGE_API_KEY"
"""Environment variable with the judge's API key, tried before a config's ``api_key_env``."""


def _digest(payload: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:32]


class OpenAIJudgeConfig(BaseModel):
    """An LLM behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama...)."""

    model_config = _FROZEN

    backend: Literal["openai"] = "openai"
    model: str = Field(default="gpt-5-mini", description="Model name sent to the endpoint.")
    base_url: str | None = Field(
        default=None,
        description="Endpoint, e.g. http://localhost:8000/v1 for vLLM; None = api.openai.com.",
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Environment variable holding the API key (HAL_JUDGE_API_KEY is tried "
        "first). The key itself is never part of a config, a log or a run.",
    )
    api_key_secret_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the key; wins over api_key_env.",
    )
    response_mode: Literal["json_schema", "json_object", "prompt"] = Field(
        default="json_schema",
        description="json_schema: strict structured output; json_object: JSON mode; "
        "prompt: ask for JSON in words only (servers without response_format).",
    )
    temperature: float | None = Field(default=None, description="None = endpoint default.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Reply limit.")
    reasoning_effort: str | None = Field(default=None, description="For reasoning models.")
    seed: int | None = Field(default=None, description="Sampling seed where supported.")
    include_other_speakers: bool = Field(
        default=True, description="Show the other speakers' lines as context (rated: never)."
    )
    concurrency: int = Field(default=16, ge=1, le=4096, description="Requests in flight.")
    http_transport: Literal["aiohttp", "httpx"] = Field(
        default="aiohttp",
        description="HTTP stack under the official openai client (aiohttp: less CPU per call).",
    )
    timeout_s: float = Field(default=180.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        default=6, ge=0, description="Retries per request on 429/408/409/5xx/timeouts."
    )
    backoff_base_s: float = Field(default=1.0, ge=0, description="First backoff delay.")
    backoff_max_s: float = Field(default=60.0, ge=0, description="Backoff cap.")
    max_retry_after_s: float = Field(
        default=300.0, ge=0, description="Longest Retry-After honoured as given (capped above)."
    )
    repair: bool = Field(
        default=True, description="Send one repair request after a malformed reply."
    )
    price_prompt_per_mtok: float = Field(
        default=0.0, ge=0, description="USD per million prompt tokens (cost estimate)."
    )
    price_completion_per_mtok: float = Field(
        default=0.0, ge=0, description="USD per million completion tokens (cost estimate)."
    )
    cache_namespace: str = Field(
        default="", description="Separates cached ratings of endpoints serving one model name."
    )

    def fingerprint(self) -> str:
        """Hash of every field that can change an answer (not speed, retries, prices, keys)."""
        return _digest(
            {
                "backend": self.backend,
                "model": self.model,
                "response_mode": self.response_mode,
                "temperature": self.temperature,
                "max_completion_tokens": self.max_completion_tokens,
                "reasoning_effort": self.reasoning_effort,
                "seed": self.seed,
                "include_other_speakers": self.include_other_speakers,
                "repair": self.repair,
                "prompt": PROMPT_VERSION,
                "namespace": self.cache_namespace,
            }
        )

    def estimated_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.price_prompt_per_mtok
            + completion_tokens * self.price_completion_per_mtok
        ) / 1e6


class HFJudgeConfig(BaseModel):
    """A local transformers causal LM: per trait, the next-token probabilities of the digits."""

    model_config = _FROZEN

    backend: Literal["hf"] = "hf"
    model_path: str = Field(description="Local folder with config, weights and tokenizer.")
    batch_size: int = Field(default=8, ge=1, description="Prompts per forward pass.")
    max_length: int | None = Field(
        default=None, ge=32, description="Prompt token limit; None = the model's own limit."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(default="float32")
    device: str = Field(default="cpu", description="torch device, e.g. cpu or cuda:0.")
    use_chat_template: bool | None = Field(
        default=None, description="None = use the tokenizer's chat template when it has one."
    )
    include_other_speakers: bool = Field(default=True, description="Show other speakers.")
    seed: int = Field(default=0, description="torch seed set before rating.")
    max_new_tokens: int = Field(
        default=256, ge=1, description="Reply limit when proposing statements."
    )
    share_prefix: bool = Field(
        default=True,
        description="Encode a dialogue once and reuse its key/value cache for every trait's "
        "question (4x faster on CPU; float32 gives the same ratings, bfloat16 rounds "
        "differently, so near-tied ratings can flip); off = one full forward pass per "
        "(dialogue, trait).",
    )


class RecordedColumns(BaseModel):
    """Which column holds a dialogue and which its recorded ratings."""

    model_config = _FROZEN

    text: str = Field(default="dialogue", description="Column with the dialogue text.")
    ratings: str | None = Field(
        default="likert_evaluation",
        description="Column with a list of ratings by position; None = one column per trait id.",
    )


class RecordedJudgeConfig(BaseModel):
    """Replays recorded ratings, matched by the sha256 of the dialogue text."""

    model_config = _FROZEN

    backend: Literal["recorded"] = "recorded"
    paths: list[Path] = Field(
        default_factory=list,
        description="CSV files with recorded ratings (relative: to HAL_DATA_DIR).",
    )
    columns: list[RecordedColumns] = Field(
        default_factory=lambda: [RecordedColumns()],
        min_length=1,
        description="Text/ratings column pairs, e.g. conversation_A_transcript + "
        "likert_evaluation_A and the same for B.",
    )
    order_questionnaire: Path | None = Field(
        default=None,
        description="Questionnaire whose trait order the rating lists follow; None = the "
        "questionnaire being rated (same length required).",
    )
    on_conflict: Literal["error", "first"] = Field(
        default="error",
        description="Same dialogue recorded twice with different ratings: stop, or keep the "
        "first file's.",
    )
    strict: bool = Field(
        default=False,
        description="A dialogue without a recording stops the run (else it is a recorded "
        "failure of kind 'missing'; never a default rating).",
    )
    statements_paths: list[Path] = Field(
        default_factory=list,
        description="Files with aijudge_verdict + human_characteristics per game.",
    )

    @model_validator(mode="after")
    def _replays_something(self) -> RecordedJudgeConfig:
        if not self.paths and not self.statements_paths:
            raise ValueError("a recorded judge needs paths (ratings) or statements_paths")
        return self


class LocalJudgeConfig(BaseModel):
    """The project's fast local judge (``hal_core.local_judge.LocalJudge``)."""

    model_config = _FROZEN

    backend: Literal["local"] = "local"
    model_path: str = Field(description="Folder written by the local-judge trainer.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for LocalJudge.from_path."
    )


JudgeConfig = Annotated[
    OpenAIJudgeConfig | HFJudgeConfig | RecordedJudgeConfig | LocalJudgeConfig,
    Field(discriminator="backend"),
]
"""Any judge configuration; the ``backend`` field selects the model."""

_ADAPTER: TypeAdapter = TypeAdapter(JudgeConfig)


def parse_judge_config(payload: dict[str, Any] | BaseModel) -> BaseModel:
    """A typed judge config from a mapping (``backend`` picks the model; defaults: openai)."""
    if isinstance(payload, BaseModel):
        return payload
    payload = dict(payload)
    payload.setdefault("backend", "openai")
    return _ADAPTER.validate_python(payload)


def load_judge_config(path: str | Path) -> BaseModel:
    """A judge config from a YAML (or JSON) file."""
    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: a judge config must be a mapping, got {type(payload).__name__}")
    try:
        return parse_judge_config(payload)
    except ValueError as error:
        raise ValueError(f"{path}: not a judge config: {error}") from error
