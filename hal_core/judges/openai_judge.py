"""A judge behind any OpenAI-compatible chat-completions endpoint, async and fault-tolerant.

Requests run concurrently up to ``concurrency``. A request that meets 429, 408, 409, a 5xx, a
timeout or a dropped connection is retried with exponential backoff and jitter, waiting at
least the server's ``Retry-After`` when it sends one. A reply that is not valid JSON, misses
a trait id or rates outside the scale gets exactly one repair request; if that fails too the
item is recorded as failed with the reason - a rating is never guessed. 401/403/404 stop the
run (every request would fail the same way), and so does a run in which
``stop_after_failures`` retried requests in a row failed the same way (refused, timed out, the
same HTTP error) before any succeeded: the endpoint is down or wrong, and retrying every item
with backoff would only take minutes to say so. A refused connection is reported as refused.
A prompt longer than ``max_input_chars`` is not sent (a failure of kind ``input``);
:meth:`OpenAIJudge.estimate_ratings` tells sizes, tokens and cost before a run. The API key
is held privately and scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2
import openai

from hal_core.dialogue import SpeakerTags
from hal_core.judges.asyncio_bridge import run_sync
from hal_core.judges.config import API_KEY_ENV, OpenAIJudgeConfig
from hal_core.judges.prompting import (
    EmptyDialogueError,
    rating_messages,
    render_dialogue,
    repair_messages,
    statement_messages,
)
from hal_core.judges.replies import (
    ReplyError,
    parse_rating_reply,
    parse_statements_reply,
    rating_reply_schema,
    response_format,
    statements_reply_schema,
)
from hal_core.judging import (
    CHARS_PER_TOKEN,
    Game,
    JudgeConfigurationError,
    JudgeError,
    JudgeUnreachableError,
    RateByStreaming,
    RatingResult,
    ResultCallback,
    StatementProposal,
    UsageEstimate,
    collect_streamed,
    item_ids_or_positions,
)
from hal_core.questionnaire import Questionnaire

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403, 404})
RATING_REPLY_CHARS = (16, 10)
"""Characters of a rating reply: fixed, and per trait (``"t01": 3, ``), for estimates."""
STATEMENTS_REPLY_CHARS = 600
"""Characters of a typical statements reply (a verdict and five short statements)."""


class _GaveUp(Exception):
    """Retries exhausted on transient faults."""


class _Rejected(Exception):
    """The endpoint refused the request (4xx other than the retryable and fatal ones)."""


@dataclass
class _Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, usage: dict | None) -> None:
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def report(self) -> dict[str, Any]:
        """Latency since creation, tokens and requests: the accounting fields of a result."""
        return {
            "latency_s": time.perf_counter() - self.started,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
        }


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``retry-after`` secs or date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: loading the CA bundle costs ~0.1 s per client."""
    return httpx2.create_ssl_context()


def _reply_text(payload: dict, usage: _Usage) -> str | None:
    """The assistant's text (or refusal) of a chat-completion JSON; counts its tokens."""
    usage.add(payload.get("usage"))
    choices = payload["choices"]
    if not choices:
        return None
    message = choices[0]["message"]
    content = message.get("content")
    return content if content is not None else message.get("refusal")


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def connection_failure(error: openai.APIError, host: str, timeout_s: float) -> tuple[str, str]:
    """(kind, reason) of a request that got no HTTP answer, from the root cause: the aiohttp
    transport reports a refused connection as a connect *timeout*."""
    for cause in _causes(error):
        if isinstance(cause, ConnectionRefusedError):
            return "refused", f"connection refused by {host}"
        if isinstance(cause, socket.gaierror):
            return "dns", f"host {host} not found ({cause.strerror or cause})"
        if isinstance(cause, ssl.SSLError):
            return "tls", f"TLS error with {host} ({cause.reason or type(cause).__name__})"
        if isinstance(cause, ConnectionResetError):
            return "reset", f"connection reset by {host}"
    if isinstance(error, openai.APITimeoutError):
        return "timeout", f"timed out after {timeout_s:g} s"
    return "connection", f"connection error ({type(error.__cause__ or error).__name__})"


class _EarlyStop:
    """Stops a run whose requests all fail the same way before any succeeds, with an error
    naming the endpoint and the cause: ``limit`` retries in a row (a first attempt's fault is
    common under load and is what retries are for; a retry failing like the ones before it,
    with nothing answered yet, is an endpoint that is down or wrong). Any answered request
    disarms it: then the endpoint works, and each item's own retries deal with faults."""

    def __init__(self, limit: int, where: str) -> None:
        self.limit, self.where = limit, where
        self.answered = False
        self.kind: str | None = None
        self.count = 0

    def succeeded(self) -> None:
        self.answered = True

    def failed(self, kind: str, reason: str, attempt: int) -> None:
        if self.answered or not self.limit or attempt == 0:
            return
        if kind != self.kind:
            self.kind, self.count = kind, 0
        self.count += 1
        if self.count >= self.limit:
            raise JudgeUnreachableError(
                f"{self.where}: {self.count} retried requests in a row failed ({reason}) and "
                f"none has succeeded, so the run stopped early (stop_after_failures="
                f"{self.limit}); answers already received are kept. Is the server running, and "
                "is base_url right?"
            )


def _prompt_chars(messages: list[dict]) -> int:
    return sum(len(str(message.get("content") or "")) for message in messages)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first real error inside a task group's exception group (a config error first)."""
    errors = list(group.exceptions)
    while any(isinstance(error, BaseExceptionGroup) for error in errors):
        errors = [
            inner
            for error in errors
            for inner in (error.exceptions if isinstance(error, BaseExceptionGroup) else [error])
        ]
    configuration = [e for e in errors if isinstance(e, JudgeConfigurationError)]
    return (configuration or errors)[0]


class OpenAIJudge(RateByStreaming):
    """Rates dialogues through chat completions; implements Judge, StreamingJudge and
    StatementProposer."""

    def __init__(
        self,
        config: OpenAIJudgeConfig,
        api_key: str | None = None,
        client_factory: Callable[[], openai.AsyncOpenAI] | None = None,
    ) -> None:
        self.config = config
        # Callers pass the key (tasks/rating.py resolves env and Prefect Secret blocks); when
        # none is passed, the environment is read here, as the openai client itself would.
        self.__api_key = (
            api_key or os.environ.get(API_KEY_ENV) or os.environ.get(config.api_key_env) or None
        )
        self._client_factory = client_factory
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.config.model!r}, endpoint={self.config.endpoint!r})"

    def fingerprint(self) -> str:
        return self.config.fingerprint()

    # -- public API -------------------------------------------------------------------------

    def rate_streaming(
        self,
        dialogues: Sequence[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        item_ids: Sequence[str] | None,
        on_result: ResultCallback,
    ) -> None:
        ids = item_ids_or_positions(dialogues, item_ids)
        run_sync(self._rate_all(list(dialogues), ids, questionnaire, tags, on_result))

    def propose_statements(
        self, games: Sequence[Game], tags: SpeakerTags
    ) -> list[StatementProposal]:
        return collect_streamed(len(games), lambda keep: self.propose_streaming(games, tags, keep))

    def propose_streaming(
        self,
        games: Sequence[Game],
        tags: SpeakerTags,
        on_result: Callable[[int, StatementProposal], None],
    ) -> None:
        run_sync(self._propose_all(list(games), tags, on_result))

    def complete(self, prompt: str) -> str:
        """The model's reply to one free-form prompt (no reply schema), with the judge's
        retries: a text model for the llm consolidator of trait derivation."""
        return run_sync(self._complete_text(prompt))

    def estimate_ratings(
        self, dialogues: Sequence[str], questionnaire: Questionnaire, tags: SpeakerTags
    ) -> UsageEstimate:
        """Tokens and cost of rating ``dialogues`` (first requests; repairs and reasoning
        tokens not counted), and which are over ``max_input_chars``: no request is made.

        A dialogue's prompt is the instructions plus the dialogue as rendered, which is never
        much longer than its text; only a dialogue whose text comes near the cap is rendered
        here, to decide exactly (a whole run is estimated before its first request).
        """
        instructions = _prompt_chars(rating_messages("", questionnaire, tags))
        cap = self.config.max_input_chars
        sizes: list[int | None] = []
        for text in dialogues:
            bound = instructions + len(text) + len(text) // 4 + 64  # ": " per short turn
            if cap is None or bound <= cap:
                sizes.append(instructions + len(text))
                continue
            try:
                rendered = render_dialogue(text, tags, self.config.include_other_speakers)
            except EmptyDialogueError:
                sizes.append(None)  # failed by the judge as kind input, without a request
                continue
            sizes.append(_prompt_chars(rating_messages(rendered, questionnaire, tags)))
        fixed, per_trait = RATING_REPLY_CHARS
        return self._estimate(sizes, fixed + per_trait * len(questionnaire.traits))

    def estimate_statements(self, games: Sequence[Game], tags: SpeakerTags) -> UsageEstimate:
        """Tokens and cost of proposing statements for ``games``, as :meth:`estimate_ratings`."""
        sizes = [
            _prompt_chars(statement_messages(game.transcript_a, game.transcript_b, tags))
            for game in games
        ]
        return self._estimate(sizes, STATEMENTS_REPLY_CHARS)

    def _estimate(self, sizes: Sequence[int | None], reply_chars: int) -> UsageEstimate:
        config = self.config
        refused = {}
        prompt_chars = sent = 0
        for position, size in enumerate(sizes):
            if size is None:
                continue
            problem = self._too_long(size)
            if problem is not None:
                refused[position] = problem
                continue
            prompt_chars += size
            sent += 1
        reply_tokens = reply_chars // CHARS_PER_TOKEN
        if config.max_completion_tokens is not None:
            reply_tokens = min(reply_tokens, config.max_completion_tokens)
        prompt_tokens, completion_tokens = prompt_chars // CHARS_PER_TOKEN, sent * reply_tokens
        cost = (
            config.estimated_cost(prompt_tokens, completion_tokens) if config.has_prices else None
        )
        return UsageEstimate(sent, prompt_tokens, completion_tokens, cost, refused)

    def _too_long(self, chars: int) -> str | None:
        """Why a prompt of ``chars`` characters is not sent, or None."""
        cap = self.config.max_input_chars
        if cap is None or chars <= cap:
            return None
        return (
            f"the prompt has {chars:,} characters (~{chars // CHARS_PER_TOKEN:,} tokens), over "
            f"this judge's max_input_chars={cap:,}: not sent"
        )

    # -- internals ---------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.config.model} at {self.config.endpoint}"

    async def _complete_text(self, prompt: str) -> str:
        client = self._client()
        where = self._where()
        messages = [{"role": "user", "content": prompt}]  # one prompt: not held to the cap
        stop = _EarlyStop(self.config.stop_after_failures, where)
        try:
            reply = await self._complete(client, messages, self._request_body(None), _Usage(), stop)
        except (_GaveUp, _Rejected) as error:
            raise JudgeError(f"{where}: {self._scrub(str(error))}") from None
        finally:
            await client.close()
        if not reply:
            raise JudgeError(f"{where}: empty reply")
        return reply

    def _scrub(self, text: str) -> str:
        key = self.__api_key
        return text.replace(key, "***") if key else text

    def _client(self) -> openai.AsyncOpenAI:
        if self._client_factory is not None:
            return self._client_factory()
        key = self.__api_key
        if not key:
            if self.config.base_url is None:
                raise JudgeConfigurationError(
                    f"no API key for {self.config.model}: set {self.config.api_key_env} or "
                    "name a Prefect Secret block in api_key_secret_block"
                )
            key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) often take none
        connections = max(64, 2 * self.config.concurrency)
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        if self.config.http_transport == "aiohttp":
            # less client CPU per request than the httpx transport (bench/judge_throughput.py)
            http_client = openai.DefaultAioHttpClient(limits=limits, verify=_tls_context())
        else:
            transport = httpx2.AsyncHTTPTransport(
                verify=_tls_context(),
                # headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed
                # ACK can stall every keep-alive request by ~40 ms
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                limits=limits,
            )
            http_client = openai.DefaultAsyncHttpxClient(transport=transport)
        return openai.AsyncOpenAI(
            api_key=key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,  # retries are ours: backoff with jitter, Retry-After, accounting
            http_client=http_client,
        )

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _request_body(self, fmt: dict | None) -> Callable[[list[dict]], bytes]:
        """Request bytes for given messages; the rest of the body is serialized once per run."""
        config = self.config
        fixed: dict[str, Any] = {"model": config.model}
        if fmt is not None:
            fixed["response_format"] = fmt
        for name in ("temperature", "max_completion_tokens", "reasoning_effort", "seed"):
            value = getattr(config, name)
            if value is not None:
                fixed[name] = value
        head = json.dumps(fixed, ensure_ascii=False, separators=(",", ":"))[:-1]
        prefix = f'{head},"messages":'.encode()

        def body(messages: list[dict]) -> bytes:
            return prefix + json.dumps(messages, ensure_ascii=False).encode() + b"}"

        return body

    async def _complete(
        self,
        client: openai.AsyncOpenAI,
        messages: list[dict],
        body: Callable[[list[dict]], bytes],
        usage: _Usage,
        stop: _EarlyStop,
    ) -> str | None:
        """One completion's text, retried on transient faults; ``stop`` hears every
        attempt's outcome and ends the run when all have failed alike."""
        config = self.config
        content = body(messages)  # the same bytes for every attempt
        # Absolute: spares the client re-parsing and re-joining its base URL per request.
        url = f"{client.base_url}chat/completions"
        host = urlsplit(config.endpoint).netloc
        last = "no attempt"
        for attempt in range(config.max_retries + 1):
            usage.requests += 1
            wait: float | None = None
            try:
                # The client's generic post: same transport, auth, timeouts and typed errors
                # as chat.completions.create, minus per-request costs we do not need: the
                # typed parameter transform and JSON encoding of a body we already hold as
                # bytes, and a typed ChatCompletion (we read three fields of the JSON).
                raw = await client.post(
                    url,
                    cast_to=bytes,
                    content=content,
                    options={"timeout": config.timeout_s},
                )
            except (openai.APITimeoutError, openai.APIConnectionError) as error:
                kind, last = connection_failure(error, host, config.timeout_s)
                stop.failed(kind, last, attempt)
            except openai.APIStatusError as error:
                status = error.status_code
                message = self._scrub(str(error.message))[:300]
                if status in FATAL_STATUS:
                    raise JudgeConfigurationError(
                        f"HTTP {status} from {config.endpoint} for model {config.model}: {message}"
                    ) from None
                if status not in RETRYABLE_STATUS:  # 429 & co. say "slow down", not "down"
                    stop.failed(f"HTTP {status}", f"HTTP {status}: {message}", attempt)
                if status not in RETRYABLE_STATUS and status < 500:
                    raise _Rejected(f"HTTP {status}: {message}") from None
                last = f"HTTP {status}"
                wait = retry_after_seconds(error.response.headers)
            except openai.APIError as error:
                last = f"{type(error).__name__}: {self._scrub(str(error))[:200]}"
                stop.failed(type(error).__name__, last, attempt)
            else:
                try:
                    text = _reply_text(json.loads(raw), usage)
                except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                    last = "HTTP 200 with a body that is not a chat completion"
                    stop.failed("not a chat completion", last, attempt)
                else:
                    stop.succeeded()
                    return text
            if attempt == config.max_retries:
                break
            if wait is not None:
                delay = min(wait, config.max_retry_after_s) + self._random.uniform(0, 0.1 * wait)
            else:
                delay = self._backoff(attempt)
            await asyncio.sleep(delay)
        raise _GaveUp(f"{last}; gave up after {config.max_retries + 1} attempts")

    async def _ask(
        self,
        client: openai.AsyncOpenAI,
        messages: list[dict],
        body: Callable[[list[dict]], bytes],
        parse: Callable[[str | None], Any],
        usage: _Usage,
        stop: _EarlyStop,
    ) -> tuple[Any, tuple[str, str] | None]:
        """(parsed reply, None) or (None, (error kind, reason)); one repair when malformed;
        (None, ("input", why)) without a request when the prompt is over the cap."""
        problem = self._too_long(_prompt_chars(messages))
        if problem is not None:
            return None, ("input", problem)
        try:
            reply = await self._complete(client, messages, body, usage, stop)
            try:
                return parse(reply), None
            except ReplyError as error:
                if not self.config.repair:
                    return None, ("invalid", f"invalid reply: {error}")
                first = error
            repaired = repair_messages(messages, reply or "", first.problems)
            reply = await self._complete(client, repaired, body, usage, stop)
            try:
                return parse(reply), None
            except ReplyError as error:
                return None, (
                    "invalid",
                    f"invalid reply after one repair request: {error} (first reply: {first})",
                )
        except _GaveUp as error:
            return None, ("transient", str(error))
        except _Rejected as error:
            return None, ("rejected", str(error))

    async def _rate_one(
        self,
        client: openai.AsyncOpenAI,
        text: str,
        item_id: str,
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        body: Callable[[list[dict]], bytes],
        stop: _EarlyStop,
    ) -> RatingResult:
        try:
            rendered = render_dialogue(text, tags, self.config.include_other_speakers)
        except EmptyDialogueError as error:
            return RatingResult(item_id=item_id, error=str(error), error_kind="input")
        usage = _Usage()
        messages = rating_messages(rendered, questionnaire, tags)
        ratings, failure = await self._ask(
            client,
            messages,
            body,
            lambda reply: parse_rating_reply(reply, questionnaire),
            usage,
            stop,
        )
        common = {"item_id": item_id, **usage.report()}
        if failure is not None:
            kind, reason = failure
            return RatingResult(error=self._scrub(reason), error_kind=kind, **common)
        return RatingResult(ratings={k: float(v) for k, v in ratings.items()}, **common)

    async def _each(
        self,
        count: int,
        work: Callable[[openai.AsyncOpenAI, int, _EarlyStop], Awaitable[T]],
        on_result: Callable[[int, T], None],
    ) -> None:
        """``work(client, position, stop)`` for every position, ``concurrency`` at a time; each
        result goes to ``on_result`` as soon as it exists. A configuration error stops all,
        and so does ``stop`` when every request so far failed alike."""
        semaphore = asyncio.Semaphore(self.config.concurrency)
        client = self._client()
        stop = _EarlyStop(self.config.stop_after_failures, self._where())

        async def one(position: int) -> None:
            async with semaphore:
                result = await work(client, position, stop)
            on_result(position, result)

        try:
            async with asyncio.TaskGroup() as group:
                for position in range(count):
                    group.create_task(one(position))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            await client.close()

    async def _rate_all(
        self,
        dialogues: list[str],
        ids: list[str],
        questionnaire: Questionnaire,
        tags: SpeakerTags,
        on_result: ResultCallback,
    ) -> None:
        body = self._request_body(
            response_format(
                rating_reply_schema(questionnaire), "ratings", self.config.response_mode
            )
        )

        async def rate(client: openai.AsyncOpenAI, position: int, stop) -> RatingResult:
            return await self._rate_one(
                client, dialogues[position], ids[position], questionnaire, tags, body, stop
            )

        await self._each(len(dialogues), rate, on_result)

    async def _propose_all(
        self,
        games: list[Game],
        tags: SpeakerTags,
        on_result: Callable[[int, StatementProposal], None],
    ) -> None:
        body = self._request_body(
            response_format(statements_reply_schema(), "statements", self.config.response_mode)
        )

        async def propose(client: openai.AsyncOpenAI, position: int, stop) -> StatementProposal:
            game = games[position]
            usage = _Usage()
            messages = statement_messages(game.transcript_a, game.transcript_b, tags)
            parsed, failure = await self._ask(
                client, messages, body, parse_statements_reply, usage, stop
            )
            common = {"game_id": game.game_id, **usage.report()}
            if failure is not None:
                kind, reason = failure
                return StatementProposal(error=self._scrub(reason), error_kind=kind, **common)
            verdict, statements = parsed
            return StatementProposal(verdict=verdict, statements=statements, **common)

        await self._each(len(games), propose, on_result)
