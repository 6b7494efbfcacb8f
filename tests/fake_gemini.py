"""A fake Gemini API speaking the REST wire format of docs/gemini.md section 3, for tests and benchmarks.

It answers ``POST /{v1|v1beta}/models/{model}:generateContent`` as Google does
(camelCase JSON, Google-style error bodies with ``RetryInfo``), checks the
``x-goog-api-key`` header, records every request and the peak of requests in
flight. By default it echoes the last user turn; tests script the next
responses (:meth:`FakeGemini.script`), and any process can pick a canned
behaviour by model name (``fake-500``, ``fake-429``, ``fake-blocked``, ...).

In a test::

    with FakeGemini(latency=0.3) as fake:
        settings.GEMINI_BASE_URL = fake.url

From a shell, for a shard or a benchmark in another process::

    python -m tests.fake_gemini --port 0 --latency 0.2   # prints {"url": ...}; GET /_stats for its counters

Standard library only, so it starts in any process without Django.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# How long a held response waits for its gate at most: a test that forgets to open it still ends.
HOLD_LIMIT = 60.0


# --- Responses ----------------------------------------------------------------------


@dataclass
class Response:
    """One scripted response: a status and JSON body (None: the echo answer), after a delay or a gate."""

    status: int = 200
    body: dict | None = None
    delay: float = 0.0
    gate: threading.Event | None = None


def candidate_body(candidate: dict, **extra) -> dict:
    return {
        "candidates": [{"index": 0, **candidate}],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "totalTokenCount": 10},
        "modelVersion": "fake",
        "responseId": "fake-response",
        **extra,
    }


def answer(text: str, *, delay: float = 0.0) -> Response:
    return Response(
        body=candidate_body({"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}),
        delay=delay,
    )


def error(status: int, message: str = "", *, retry_delay: str | None = None) -> Response:
    """A Google-style error; a 429 with ``retry_delay`` (e.g. ``"0.2s"``) carries QuotaFailure and RetryInfo."""
    details: list[dict] = []
    if retry_delay is not None:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ]
    name = STATUS_NAMES.get(status, "UNKNOWN")
    body = {"error": {"code": status, "message": message or f"fake {name}", "status": name, "details": details}}
    return Response(status=status, body=body)


def prompt_blocked(reason: str = "SAFETY") -> Response:
    return Response(body={"promptFeedback": {"blockReason": reason}, "modelVersion": "fake"})


def safety_stop() -> Response:
    rating = {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
    return Response(body=candidate_body({"finishReason": "SAFETY", "safetyRatings": [rating]}))


def empty_stop() -> Response:
    return Response(body=candidate_body({"content": {"role": "model"}, "finishReason": "STOP"}))


def max_tokens() -> Response:
    return Response(body=candidate_body({"content": {"role": "model"}, "finishReason": "MAX_TOKENS"}))


def slow(seconds: float) -> Response:
    """The echo answer, late (longer than the client's timeout, to test timeouts)."""
    return Response(delay=seconds)


def held(gate: threading.Event) -> Response:
    """The echo answer once ``gate`` is set: a test decides when the model "finishes"."""
    return Response(gate=gate)


# Canned behaviours by model name, for processes that cannot script the server.
MODELS = {
    "fake-429": lambda: error(429, "Resource has been exhausted (e.g. check quota).", retry_delay="30s"),
    "fake-500": lambda: error(500, "An internal error has occurred."),
    "fake-503": lambda: error(503, "The model is overloaded."),
    "fake-blocked": prompt_blocked,
    "fake-safety": safety_stop,
    "fake-empty": empty_stop,
    "fake-max-tokens": max_tokens,
    "fake-slow": lambda: slow(120),
}


# --- Recording ------------------------------------------------------------------------


@dataclass
class Recorded:
    """A request as it arrived."""

    path: str
    api_version: str
    model: str
    headers: dict[str, str]
    body: dict
    at: float = field(default_factory=time.monotonic)

    @property
    def system_instruction(self) -> str | None:
        instruction = self.body.get("systemInstruction")
        if not instruction:
            return None
        return "".join(part.get("text", "") for part in instruction.get("parts", []))

    @property
    def turns(self) -> list[tuple[str, str]]:
        """The conversation as (role, text) pairs."""
        return [
            (content.get("role", ""), "".join(part.get("text", "") for part in content.get("parts", [])))
            for content in self.body.get("contents", [])
        ]

    @property
    def generation_config(self) -> dict:
        return self.body.get("generationConfig", {})


def echo(recorded: Recorded) -> str:
    users = [text for role, text in recorded.turns if role == "user"]
    return f"echo: {users[-1] if users else ''}"


# --- The server -------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # The stdlib backlog of 5 refuses connections when 50 clients connect at once.
    request_queue_size = 256
    fake: FakeGemini

    def handle_error(self, request, client_address) -> None:
        # A client that went away (a killed shard, a timed-out call) is part of the tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without it each response waits for the client's delayed ACK (Nagle): 40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._closed(self.connection)

    def log_message(self, format: str, *args) -> None:
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            "Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(data)}\r\n"
            "\r\n"
        ).encode()
        # One write: status line, headers and body leave in one segment.
        self.wfile.write(head + data)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, self.server.fake.stats())
        else:
            self._send(404, error(404, "Not found.").body)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_reset":
            self.server.fake.reset()
            self._send(200, {})
            return
        status, body = self.server.fake._respond(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
        self._send(status, body)


class FakeGemini:
    def __init__(self, *, api_key: str = "test-key", latency: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.api_key = api_key
        self.latency = latency
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._script: collections.deque[Response] = collections.deque()
        self._lock = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._server = _Server((host, port), _Handler, bind_and_activate=True)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGemini:
        # A short poll interval: the default 0.5 s would be added to every shutdown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for response in self._script:
                if response.gate is not None:
                    response.gate.set()
            connections = list(self._connections)
        # Idle keep-alive connections hold a handler thread each: close them.
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what tests use ---

    def script(self, *responses: Response) -> None:
        """The next requests get these responses, in order; after them, the echo answer again."""
        with self._lock:
            self._script.extend(responses)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self.peak_in_flight = self.in_flight

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        """Block until at least ``count`` requests have arrived (not necessarily been answered)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"the fake Gemini got {len(self.requests)} requests, expected {count}")
            return list(self.requests)

    def stats(self) -> dict:
        with self._lock:
            return {"requests": len(self.requests), "peakInFlight": self.peak_in_flight, "inFlight": self.in_flight}

    # --- the server side ---

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _respond(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict]:
        match = PATH.match(path.split("?", 1)[0])
        if match is None:
            return 404, error(404, f"Path {path} not found.").body
        if headers.get("x-goog-api-key") != self.api_key:
            return 400, error(400, "API key not valid. Please pass a valid API key.").body
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, error(400, "Invalid JSON payload received.").body
        recorded = Recorded(path=path, api_version=match.group(1), model=match.group(2), headers=headers, body=body)
        with self._lock:
            self.requests.append(recorded)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            canned = MODELS.get(recorded.model)
            response = self._script.popleft() if self._script else (canned() if canned else Response())
            self._lock.notify_all()
        try:
            if response.gate is not None:
                response.gate.wait(HOLD_LIMIT)
            delay = response.delay + (self.latency if response.status == 200 else 0.0)
            if delay:
                time.sleep(delay)
            if response.body is None:
                return 200, answer(echo(recorded)).body
            return response.status, response.body
        finally:
            with self._lock:
                self.in_flight -= 1


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Gemini API on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--api-key", default="test-key")
    args = parser.parse_args()
    fake = FakeGemini(api_key=args.api_key, latency=args.latency, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fake.start()
    print(json.dumps({"url": fake.url}), flush=True)
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
