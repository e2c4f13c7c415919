"""Typed judge configurations, one model per backend, selected by the ``backend`` field.

Secrets never live here: the OpenAI-compatible backend names *where* its key comes from (an
environment variable or a Prefect Secret block); the task layer resolves it at run time. A
config is logged to MLflow and, inside a stage's parameters, stored by Prefect as the flow
run's parameters, so a key written into one - under ``api_key``, inside ``base_url``
(``http://user:key@host``, ``?api_key=``, ``/v1/sk-.../``, ``#token``) or in any other
field - is refused. It is refused rather than moved aside because Prefect serializes the
parameters model to run a deployment elsewhere: a key kept in it would be stored in plain
text, or masked and lost on the worker. The refusal never repeats the secret (pydantic's
errors quote inputs; the offending value is redacted first).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from hal_core.judges.prompting import PROMPT_VERSION, canonical_json

_FROZEN = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

API_KEY_ENV = "HAL_JUDGE_API_KEY"
"""Environment variable with the judge's API key, tried before a config's ``api_key_env``."""

WHERE_KEYS_GO = (
    f"a judge config only names where its key comes from: set {API_KEY_ENV}, name an "
    "environment variable in api_key_env, or a Prefect Secret block in api_key_secret_block"
)
_SECRET_NAME = re.compile(
    r"(?i)^(api[_-]?key|key|secret|token|access[_-]?token|password|passwd|authorization)$"
)
_SECRET_VALUE = re.compile(
    r"^(?:bearer\s+)?(?:"
    r"(?:sk|rk|gsk|xai|hf|ghp|gho|ghs|ghu|ghr|github_pat|glpat|pplx|nvapi|r8|fw|tgp)[-_]"
    r"[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r")$",
    re.IGNORECASE,
)


def looks_like_secret(value: str) -> bool:
    """Whether a string has the shape of an API key or bearer token (known vendor prefixes,
    JWTs); model names, URLs and variable names do not."""
    return bool(_SECRET_VALUE.match(value.strip()))


REDACTED = "<redacted secret"
"""What a secret found in a raw config becomes before validation (so no error repeats it)."""

MASK = "***"
"""What a credential inside a URL becomes when the URL is shown."""

_RANDOM_CHUNK = re.compile(r"[A-Za-z0-9]{16,}")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_PIECES = re.compile(r"[\s=:;,+]+")


def _random_token(value: str) -> bool:
    """Whether ``value`` is a long random token: 24+ characters of letters, digits, ``-`` and
    ``_``, with a run of 16+ letters and digits that mixes both and reads as no words (its
    average word, split at case and digit changes, is under 3 characters).

    Model names and paths are words and versions between separators
    (``Meta-Llama-3-70B-Instruct-Turbo``, ``gpt-4o-mini``, ``v1``). Hexadecimal runs of up to
    40 digits pass too: they are the account ids, UUIDs and digests that endpoints put in their
    paths (Cloudflare's ``/accounts/<32 hex>/ai/v1``), at the price of missing a key of that
    shape (Azure's are headers, not paths).
    """
    if len(value) < 24 or not re.fullmatch(r"[A-Za-z0-9_\-]+", value):
        return False
    for chunk in _RANDOM_CHUNK.findall(value):
        mixed = re.search(r"[A-Za-z]", chunk) and re.search(r"[0-9]", chunk)
        an_id = len(chunk) <= 40 and re.fullmatch(r"[0-9a-f]+|[0-9A-F]+", chunk)
        if mixed and not an_id and 3 * len(_WORDS.findall(chunk)) > len(chunk):
            return True
    return False


def _credential_piece(text: str) -> bool:
    """Whether one part of a URL's path or fragment holds a credential: a key by its vendor
    prefix, a JWT, a random token, or whatever follows ``Bearer``/``Basic`` or a secret's name
    (``token=...``)."""
    pieces = [piece for piece in _PIECES.split(unquote(text)) if piece]
    for before, piece in zip([None, *pieces], pieces, strict=False):
        if looks_like_secret(piece) or _random_token(piece):
            return True
        if before and (before.lower() in ("bearer", "basic") or _SECRET_NAME.match(before)):
            return True
    return False


def _secret_query_value(name: str, value: str) -> bool:
    return bool(_SECRET_NAME.match(name)) or looks_like_secret(value)


def redact_url(url: str) -> str:
    """``url`` without a password, key or token: userinfo becomes ``***@``, and secret-looking
    query values, path segments and fragment parts ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(
            f"{name}={MASK if _secret_query_value(name, value) else value}"
            for name, value in parse_qsl(query, keep_blank_values=True)
        )
    path = "/".join(MASK if _credential_piece(s) else s for s in parts.path.split("/"))
    fragment = "&".join(MASK if _credential_piece(p) else p for p in parts.fragment.split("&"))
    return urlunsplit((parts.scheme, netloc, path, query, fragment))


URL_RULES = {
    "userinfo": "no user:password@ before the host",
    "query": "no key in the query (api_key=..., or a value with a key's shape)",
    "path": "no key in the path (no segment with a known key prefix: sk-, sk-proj-, sk-ant-, "
    "hf_, gsk_, xai-, AIza, ghp_, AKIA, a JWT...; none after Bearer, Basic or token=; none of "
    "24+ random letters and digits)",
    "fragment": "no key in the fragment (the shapes refused in the path)",
}
"""Where a base_url may carry no credential, and the rule for each place."""


def url_credential_places(url: str) -> list[str]:
    """The places of ``url`` (:data:`URL_RULES` keys) that hold a credential."""
    parts = urlsplit(url)
    found = {
        "userinfo": "@" in parts.netloc,
        "query": any(
            _secret_query_value(name, value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ),
        "path": any(_credential_piece(segment) for segment in parts.path.split("/")),
        "fragment": any(_credential_piece(part) for part in parts.fragment.split("&")),
    }
    return [place for place, holds in found.items() if holds]


def _holds_secret(value: Any) -> bool:
    if isinstance(value, str):
        return looks_like_secret(value)
    if isinstance(value, dict):
        return any(_SECRET_NAME.match(str(k)) or _holds_secret(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_secret(v) for v in value)
    return False


def _redacted_secrets(data: Any) -> Any:
    """The raw config with every value that is or holds a secret replaced by a
    :data:`REDACTED` marker, so that no error message (pydantic's quote inputs) repeats it."""
    if not isinstance(data, dict):
        return data
    clean = {}
    for name, value in data.items():
        if isinstance(value, str) and value.startswith(REDACTED):
            pass  # redacted already (parse_judge_config redacts before the union picks a model)
        elif _SECRET_NAME.match(str(name)) or _holds_secret(value):
            value = f"{REDACTED}>"
        elif isinstance(value, str) and name == "base_url" and url_credential_places(value):
            places = " ".join(url_credential_places(value))
            value = f"{REDACTED} in {places}: {redact_url(value)}>"
        clean[name] = value
    return clean


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:32]


class _JudgeConfig(BaseModel):
    """What every judge config shares: frozen, no unknown keys, and no secrets anywhere."""

    model_config = _FROZEN

    @model_validator(mode="before")
    @classmethod
    def _hide_secrets(cls, data: Any) -> Any:
        return _redacted_secrets(data)

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_secrets(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value.startswith(REDACTED):
            places, _, shown = value[len(REDACTED) : -1].removeprefix(" in ").partition(": ")
            if info.field_name == "base_url" and shown:
                rules = "; ".join(URL_RULES[place] for place in places.split())
                raise ValueError(
                    f"base_url {shown} carries a credential (rule: {rules}), which would be "
                    f"stored with the run's parameters, in MLflow and in its summaries; "
                    f"{WHERE_KEYS_GO}"
                )
            if _SECRET_NAME.match(info.field_name):
                raise ValueError(f"a secret never goes in a config; {WHERE_KEYS_GO}")
            raise ValueError(f"{info.field_name} holds what looks like a secret; {WHERE_KEYS_GO}")
        return value


class OpenAIJudgeConfig(_JudgeConfig):
    """An LLM behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama...)."""

    backend: Literal["openai"] = "openai"
    model: str = Field(default="gpt-5-mini", description="Model name sent to the endpoint.")
    base_url: str | None = Field(
        default=None,
        description="Endpoint, e.g. http://localhost:8000/v1 for vLLM; None = api.openai.com.",
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Name of the environment variable holding the API key (HAL_JUDGE_API_KEY "
        "is tried first). The key itself is never part of a config, a log or a run.",
    )
    api_key_secret_block: str | None = Field(
        default=None,
        description="Name of a Prefect Secret block holding the key; wins over api_key_env.",
    )
    api_key: SkipJsonSchema[str | None] = Field(
        default=None,
        exclude=True,
        repr=False,
        description="Never set: a key written here is refused with the rule for keys (this "
        "field exists only to say so, and is neither shown in forms nor serialized).",
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
    stop_after_failures: int = Field(
        default=8,
        ge=0,
        description="Stop the run, with an error naming the endpoint and the cause, once this "
        "many retried requests in a row failed the same way (refused, timed out, the same "
        "HTTP error) before any request succeeded; 0 = never stop early.",
    )
    max_input_chars: int | None = Field(
        default=100_000,
        ge=1,
        description="Longest prompt sent for one item (a dialogue to rate, a game to read), in "
        "characters (about 4 a token): a longer item fails as kind 'input' with its size, "
        "without a request; None = no cap.",
    )
    price_prompt_per_mtok: float = Field(
        default=0.0,
        ge=0,
        description="USD per million prompt tokens: the cost logged before a run (an "
        "estimate) and after it (from the tokens counted); 0 with the completion price = none.",
    )
    price_completion_per_mtok: float = Field(
        default=0.0, ge=0, description="USD per million completion tokens (cost estimates)."
    )
    cache_namespace: str = Field(
        default="", description="Separates cached ratings of endpoints serving one model name."
    )

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, value: str) -> str:
        if value.startswith(REDACTED):
            raise ValueError(f"api_key_env holds what looks like a key; {WHERE_KEYS_GO}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                "api_key_env names an environment variable (letters, digits and _, e.g. "
                "OPENAI_API_KEY), not the key itself"
            )
        return value

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

    @property
    def has_prices(self) -> bool:
        return bool(self.price_prompt_per_mtok or self.price_completion_per_mtok)

    @property
    def endpoint(self) -> str:
        """Where requests go (never with a credential: configs refuse those)."""
        return self.base_url or "https://api.openai.com/v1"

    def estimated_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.price_prompt_per_mtok
            + completion_tokens * self.price_completion_per_mtok
        ) / 1e6


class HFJudgeConfig(_JudgeConfig):
    """A local transformers causal LM: per trait, the next-token probabilities of the digits."""

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


class RecordedColumns(_JudgeConfig):
    """Which column holds a dialogue and which its recorded ratings."""

    text: str = Field(default="dialogue", description="Column with the dialogue text.")
    ratings: str | None = Field(
        default="likert_evaluation",
        description="Column with a list of ratings by position; None = one column per trait id.",
    )


class RecordedJudgeConfig(_JudgeConfig):
    """Replays recorded ratings, matched by the sha256 of the dialogue text."""

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


class LocalJudgeConfig(_JudgeConfig):
    """The project's fast local judge (``hal_core.local_judge.LocalJudge``)."""

    backend: Literal["local"] = "local"
    model_path: str = Field(description="Folder written by the local-judge trainer.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for LocalJudge.from_path."
    )


def choice_of_models(schema: dict[str, Any]) -> None:
    """Render the union in a run form (Prefect's) as a choice between its models.

    Prefect's form shows ``anyOf`` as a selector with the chosen model's own fields, but
    ``oneOf`` (what pydantic writes for a discriminated union) as an empty JSON editor.
    Validation is unchanged: pydantic still picks the model by its discriminator.
    """
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
        schema.pop("discriminator", None)


JudgeConfig = Annotated[
    OpenAIJudgeConfig | HFJudgeConfig | RecordedJudgeConfig | LocalJudgeConfig,
    Field(discriminator="backend", json_schema_extra=choice_of_models),
]
"""Any judge configuration; the ``backend`` field selects the model."""

_ADAPTER: TypeAdapter = TypeAdapter(JudgeConfig)


def validation_message(error: ValidationError) -> str:
    """A validation error's problems, one a line, without the inputs (which may be secrets);
    an unknown key named like a secret gets the rule for keys."""
    lines = []
    for problem in error.errors(include_url=False, include_context=False, include_input=False):
        where = ".".join(str(part) for part in problem["loc"]) or "config"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden" and _SECRET_NAME.match(str(problem["loc"][-1])):
            message = f"a secret never goes in a config; {WHERE_KEYS_GO}"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def parse_judge_config(payload: dict[str, Any] | BaseModel) -> BaseModel:
    """A typed judge config from a mapping (``backend`` picks the model; defaults: openai).

    Raises ValueError naming each bad field, never quoting a value.
    """
    if isinstance(payload, BaseModel):
        return payload
    payload = dict(payload)
    payload.setdefault("backend", "openai")
    try:
        return _ADAPTER.validate_python(_redacted_secrets(payload))
    except ValidationError as error:
        raise ValueError(f"not a judge config: {validation_message(error)}") from None


def load_judge_config(path: str | Path) -> BaseModel:
    """A judge config from a YAML (or JSON) file."""
    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:  # its message quotes the line, which may hold a key
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: a judge config must be a mapping, got {type(payload).__name__}")
    try:
        return parse_judge_config(payload)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
