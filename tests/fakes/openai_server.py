"""A local OpenAI-compatible chat-completions server with configurable latency and faults.

It listens on 127.0.0.1 on a free port and answers ``POST /v1/chat/completions`` like a
judge would: ``{"ratings": {trait_id: 1..5}}`` for every trait id the request asks for (a
game's statements, or one trait per cluster for a consolidation prompt),
deterministic per request (so runs can be compared). A :class:`FaultPlan` makes a chosen
fraction of *first answers* faulty - 429 with Retry-After, 500, a hang past the client's
timeout, a body that is not JSON, a reply that is not valid JSON, ratings of 0 or 6, missing
trait ids - or makes every answer for some
items invalid (they must end as recorded failures), or answers every request with one HTTP
error (an endpoint that is down). Items are told apart by the sha256 of the
request's first user message (the same for retries and the repair request).

Run standalone (used by bench/judge_throughput.py)::

    python -m tests.fakes.openai_server --latency 0.1   # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIRST_ANSWER_FAULTS = (
    "rate_limit",
    "server_error",
    "hang",
    "broken_body",
    "invalid_json",
    "out_of_range",
    "missing_ids",
)
_TRAIT_LINE = re.compile(r"^- (t\d{2,}): ", re.MULTILINE)
_CLUSTER = re.compile(r"\[(c\d+)\] size \d+\nrepresentative: (.*)")


@dataclass(frozen=True)
class FaultPlan:
    """Fractions of items whose first answer is faulty, by kind; chosen by item hash."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    hang: float = 0.0
    broken_body: float = 0.0
    invalid_json: float = 0.0
    out_of_range: float = 0.0
    missing_ids: float = 0.0
    persistent_invalid: float = 0.0
    always_status: int = 0
    """Every request answered with this HTTP status (0: off): an endpoint that is down."""
    retry_after_s: float = 0.2
    hang_s: float = 2.0
    seed: int = 0

    def kind_for(self, key: str) -> str | None:
        """The fault assigned to an item (None: a clean item)."""
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()
        position = int(digest[:13], 16) / 16**13
        boundary = 0.0
        for kind in (*FIRST_ANSWER_FAULTS, "persistent_invalid"):
            boundary += getattr(self, kind)
            if position < boundary:
                return kind
        return None

    def fault(self, key: str, attempt: int) -> str | None:
        """The fault of the ``attempt``-th request (1-based) for an item."""
        kind = self.kind_for(key)
        if kind == "persistent_invalid":  # the same bad answer every time: a recorded failure
            return "out_of_range"
        return kind if attempt == 1 else None


@dataclass(frozen=True)
class RequestRecord:
    key: str
    attempt: int
    fault: str | None
    status: int
    started: float
    finished: float


def item_key(messages: list[dict]) -> str:
    """The id of the item a request is about: sha256 of its first user message."""
    for message in messages:
        if message.get("role") == "user":
            return hashlib.sha256(str(message.get("content", "")).encode("utf-8")).hexdigest()
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()


def expected_rating(key: str, trait_id: str) -> int:
    """The rating this server gives an item on a trait when it answers cleanly."""
    return int(hashlib.sha256(f"{key}:{trait_id}".encode()).hexdigest()[:8], 16) % 5 + 1


def _trait_ids(payload: dict) -> list[str]:
    fmt = payload.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") or {}
    required = ((schema.get("properties") or {}).get("ratings") or {}).get("required")
    if required:
        return list(required)
    for message in payload.get("messages", []):
        if message.get("role") == "user":
            return _TRAIT_LINE.findall(str(message.get("content", "")))
    return []


@dataclass
class _State:
    latency_s: float
    faults: FaultPlan
    api_key: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    attempts: dict[str, int] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    last_request: tuple[dict, dict] | None = None  # (headers, JSON body)
    in_flight: int = 0
    max_in_flight: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive connections
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return

    def _send(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a hang past its timeout): nothing to answer

    def do_GET(self) -> None:
        state = self.server.state
        if self.path.rstrip("/").endswith("/_stats"):
            with state.lock:
                payload = {
                    "requests": len(state.records),
                    "items": len(state.attempts),
                    "max_in_flight": state.max_in_flight,
                }
            self._send(200, payload)
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        if state.api_key is not None and self.headers.get("Authorization") != (
            f"Bearer {state.api_key}"
        ):
            self._send(401, {"error": {"message": "invalid api key", "type": "auth_error"}})
            return
        payload = json.loads(raw)
        messages = payload.get("messages", [])
        key = item_key(messages)
        started = time.monotonic()
        with state.lock:
            state.last_request = (dict(self.headers), payload)
            attempt = state.attempts.get(key, 0) + 1
            state.attempts[key] = attempt
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        fault = state.faults.fault(key, attempt)
        try:
            status = self._answer(payload, messages, key, fault, state)
        finally:
            with state.lock:
                state.in_flight -= 1
                state.records.append(
                    RequestRecord(key, attempt, fault, status, started, time.monotonic())
                )

    def _answer(
        self, payload: dict, messages: list[dict], key: str, fault: str | None, state: _State
    ) -> int:
        if state.latency_s:
            time.sleep(state.latency_s)
        if state.faults.always_status:
            status = state.faults.always_status
            self._send(status, {"error": {"message": "service unavailable", "type": "down"}})
            return status
        if fault == "rate_limit":
            self._send(
                429,
                {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                {"Retry-After": f"{state.faults.retry_after_s:g}"},
            )
            return 429
        if fault == "server_error":
            self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
            return 500
        if fault == "broken_body":  # a 200 whose body is not JSON at all
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [')
            return 200
        if fault == "hang":
            time.sleep(state.faults.hang_s)
        content = self._content(payload, messages, key, fault)
        prompt_tokens = len(json.dumps(messages)) // 4
        completion = {
            "id": f"chatcmpl-{key[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content) // 4,
                "total_tokens": prompt_tokens + len(content) // 4,
            },
        }
        self._send(200, completion)
        return 200

    @staticmethod
    def _content(payload: dict, messages: list[dict], key: str, fault: str | None) -> str:
        fmt = payload.get("response_format") or {}
        name = (fmt.get("json_schema") or {}).get("name")
        first_user = next((m for m in messages if m.get("role") == "user"), {})
        if name == "statements" or "\n<<<CONVERSATION A " in str(first_user.get("content", "")):
            if fault in ("invalid_json", "out_of_range", "missing_ids"):
                return '{"verdict": "C", "statements": ['
            return json.dumps(
                {
                    "verdict": "AB"[int(key[0], 16) % 2],
                    "statements": [
                        f"Statement {i} about the human ({key[:6]})." for i in (1, 2, 3)
                    ],
                }
            )
        clusters = _CLUSTER.findall(str(first_user.get("content", "")))
        if clusters:  # trait consolidation: one trait per cluster, its representative reworded
            traits = [
                {"text": f"The speaker: {text}", "group": "Echo", "clusters": [cluster]}
                for cluster, text in clusters
            ]
            return json.dumps({"traits": traits, "dropped": []})
        trait_ids = _trait_ids(payload)
        ratings = {trait_id: expected_rating(key, trait_id) for trait_id in trait_ids}
        if fault == "invalid_json":
            return "Sure! Here are my ratings: {'ratings': {" + ", ".join(trait_ids[:2]) + ","
        if fault == "out_of_range" and ratings:
            first = trait_ids[0]
            ratings[first] = 0 if ratings[first] % 2 else 6
        if fault == "missing_ids":
            for trait_id in trait_ids[:2]:
                ratings.pop(trait_id, None)
        return json.dumps({"ratings": ratings})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        super().__init__(address, _Handler)
        self.state = state


class FakeOpenAIServer:
    """Start with ``with FakeOpenAIServer(...) as server:``; point clients at ``base_url``."""

    def __init__(
        self,
        latency_s: float = 0.0,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        port: int = 0,
    ) -> None:
        self._state = _State(latency_s=latency_s, faults=faults or FaultPlan(), api_key=api_key)
        self._server = _Server(("127.0.0.1", port), self._state)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def faults(self) -> FaultPlan:
        return self._state.faults

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no request is being answered (hung ones included)."""
        deadline = time.monotonic() + timeout_s
        while self._state.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def last_request(self) -> tuple[dict, dict] | None:
        """Headers and JSON body of the latest chat-completions request."""
        with self._state.lock:
            return self._state.last_request

    @property
    def records(self) -> list[RequestRecord]:
        """Every request answered so far, in the order they started."""
        with self._state.lock:
            return sorted(self._state.records, key=lambda record: record.started)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def attempts(self) -> dict[str, int]:
        with self._state.lock:
            return dict(self._state.attempts)

    def answered_keys(self) -> set[str]:
        """Items that got at least one clean 200 answer."""
        return {r.key for r in self.records if r.status == 200 and r.fault is None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--faults", default="{}", help="FaultPlan fields as JSON")
    args = parser.parse_args()
    # Its own process (the benchmark): a thread waking from its latency sleep takes the GIL
    # within 0.5 ms instead of up to the default 5 ms, so replies come close to ``latency``.
    sys.setswitchinterval(0.0005)
    server = FakeOpenAIServer(
        latency_s=args.latency, faults=FaultPlan(**json.loads(args.faults)), api_key=args.api_key
    )
    print(f"READY {server.port} {json.dumps(asdict(server.faults))}", flush=True)
    try:
        server._server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()


if __name__ == "__main__":
    main()
