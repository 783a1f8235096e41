"""The HTTP plumbing shared by the mock Vertex AI and the mock Anthropic API.

Standard library only, like ``mock_bedrock``: a threading HTTP/1.1 server bound to 127.0.0.1
(optionally TLS), a request handler that reads bodies (Content-Length or chunked), records every
request as it arrived on the wire (``Recorded``) before judging it, and writes streamed answers
with chunked transfer-encoding split at odd offsets, so that HTTP chunk boundaries fall inside
SSE lines and inside JSON; and ``MockUpstream``, the base of the mock classes (start / stop / url,
the request list and its inspection helpers, the ``fail_with`` switch).

The Anthropic Messages streaming events (``anthropic_events``) and their SSE framing live here
too, since both the Vertex and the first-party API speak them.
"""
from __future__ import annotations

import json
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from mock_bedrock import CLIENT_CREDENTIAL_MARKERS

# Model-id markers understood by both mocks (anywhere in the model id):
#   mock-stream-error      -> stream a few events, then an SSE ``error`` event (overloaded_error)
#   mock-hang              -> read the request, never answer (records when the peer closed)
#   mock-slow-stream[-N]   -> stream N text deltas (default 150), one every 200 ms
#   mock-stall-stream      -> stream message_start, then send nothing more
SLOW_STREAM_INTERVAL = 0.2
SLOW_STREAM_DEFAULT_DELTAS = 150
STREAM_ERROR_EVENT = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


@dataclass
class Verdict:
    """How a request's credentials were judged (``message`` says why, for reports)."""
    ok: bool
    mode: str                  # e.g. "bearer", "x-api-key", "none"
    error_type: str = ""
    message: str = ""


@dataclass
class Recorded:
    method: str
    target: str            # raw request target as on the wire: path?query
    path: str              # raw path (no query)
    query: str             # raw query
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float
    verdict: Verdict = field(default_factory=lambda: Verdict(ok=False, mode="unchecked"))
    operation: str = ""    # set by the mock: rawPredict | streamRawPredict | count-tokens | token | messages | ...
    model: str = ""        # the model id the request named (path or body), percent-decoded
    status: int = 0
    error: str = ""        # the error message the mock answered with, if any
    injected_failure: bool = False   # answered by ``fail_with``
    chunked_request: bool = False
    stream_events_sent: int = 0
    stream_completed: bool = False
    peer_closed_at: float | None = None
    response_finished_at: float | None = None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]

    @property
    def auth_ok(self) -> bool:
        return self.verdict.ok

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        """The body as a form (the token endpoint's requests)."""
        return dict(urllib.parse.parse_qsl(self.body.decode("latin-1"), keep_blank_values=True))

    def leaked_credentials(self, markers=CLIENT_CREDENTIAL_MARKERS) -> list[str]:
        """Client credentials found anywhere in this request (header names/values, path, body).
        Each mock's ``leaked_credentials`` adds the credential headers it did not expect."""
        found = []
        hay = [self.target] + [f"{k}: {v}" for k, v in self.headers]
        body = self.body.decode("latin-1")
        for m in markers:
            if any(m in h for h in hay) or m in body:
                found.append(m)
        return found


def parse_betas(values: list[str]) -> list[str]:
    """The ``anthropic-beta`` header values (repeated headers and comma lists) as one list."""
    return [b.strip() for v in values for b in v.split(",") if b.strip()]


def sse_event(event: dict[str, Any]) -> bytes:
    """One server-sent event as the Anthropic API and Vertex write them."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def text_pieces(text: str) -> list[str]:
    """Split an answer into several text deltas of uneven sizes."""
    out, i, sizes, k = [], 0, (3, 7, 1, 5, 11, 2), 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        out.append(text[i:i + n])
        i += n
        k += 1
    return out


def anthropic_message(msg_id: str, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
    """A non-streamed Messages answer."""
    return {
        "id": msg_id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": usage["input"], "cache_creation_input_tokens": usage["cache_creation"],
                  "cache_read_input_tokens": usage["cache_read"], "output_tokens": usage["output"]},
    }


def anthropic_events(msg_id: str, model: str, pieces: list[str], usage: dict[str, int]) -> list[dict[str, Any]]:
    """The Messages streaming events of one text answer: message_start (input and cache usage),
    content_block_start, a ping, the text deltas, content_block_stop, message_delta (stop reason,
    cumulative output tokens), message_stop."""
    return [
        {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage["input"], "cache_creation_input_tokens": usage["cache_creation"],
                      "cache_read_input_tokens": usage["cache_read"], "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *[{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces],
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": usage["output"]}},
        {"type": "message_stop"},
    ]


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) of every event in an SSE body; for the self-tests."""
    out = []
    for block in data.decode().replace("\r\n", "\n").split("\n\n"):
        name, lines = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].lstrip())
        if lines:
            out.append((name, json.loads("\n".join(lines))))
    return out


class UpstreamError(Exception):
    """An error answer, already in the upstream's shape."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                 message: str = ""):
        super().__init__(message or json.dumps(body))
        self.status, self.body, self.headers = status, body, dict(headers or {})
        self.message = message or json.dumps(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    mock: "MockUpstream"


class MockHandler(BaseHTTPRequestHandler):
    """Reads and records a request, hands it to ``process`` and turns an ``UpstreamError`` into
    its answer. Subclasses implement ``process`` and may add ``extra_headers``."""
    protocol_version = "HTTP/1.1"
    sys_version = ""
    rec: Recorded

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError, TimeoutError, ssl.SSLError):
            pass

    def log_message(self, fmt, *args):  # noqa: N802
        if self.server.mock.verbose:
            sys.stderr.write(f"{self.server.mock.name}: " + (fmt % args) + "\n")

    @property
    def mock(self) -> "MockUpstream":
        return self.server.mock

    # ---- hooks -------------------------------------------------------------------------------
    def process(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_headers(self) -> dict[str, str]:
        """Headers on every answer (a request id, say)."""
        return {}

    # ---- request body ------------------------------------------------------------------------
    def _read_body(self) -> tuple[bytes, bool]:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out), True
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        n = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(n) if n else b""), False

    # ---- responses ---------------------------------------------------------------------------
    def send_body(self, status: int, data: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Date", self.date_time_string())
        for k, v in {**self.extra_headers(), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def send_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json", extra)

    def start_stream(self, content_type: str = "text/event-stream; charset=utf-8",
                     extra: dict[str, str] | None = None) -> None:
        self.rec.status = 200
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Date", self.date_time_string())
        for k, v in {**self.extra_headers(), **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # Odd chunk sizes so that HTTP chunk boundaries fall mid-line, mid-JSON, mid-"event:".
    _SPLITS = (5, 13, 1, 47, 3, 101, 17, 2, 64, 9, 250, 7, 33, 11)

    def write_split(self, data: bytes) -> None:
        i = 0
        k = self.mock._split_seed
        while i < len(data):
            n = self._SPLITS[k % len(self._SPLITS)]
            k += 1
            self.write_chunk(data[i:i + n])
            i += n
            if self.mock.split_delay:
                time.sleep(self.mock.split_delay)
        self.mock._split_seed = (self.mock._split_seed + 1) % len(self._SPLITS)

    def peer_closed(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def hang(self) -> None:
        """Never answer; note when the peer gives up on the connection."""
        self.close_connection = True
        while not self.mock._stopping.is_set():
            if self.peer_closed():
                self.rec.peer_closed_at = time.time()
                return
            time.sleep(0.05)

    # ---- streaming the Messages events ------------------------------------------------------
    def stream_events(self, events: list[dict[str, Any]], *, marker_model: str = "") -> None:
        """Stream SSE events (split across chunks), honouring the stream markers in ``marker_model``."""
        m = re.search(r"mock-slow-stream(?:-(\d+))?", marker_model)
        if m:
            return self._slow_stream(events, int(m.group(1) or SLOW_STREAM_DEFAULT_DELTAS))
        if "mock-stall-stream" in marker_model:
            self.start_stream()
            self.write_split(sse_event(events[0]))
            self.rec.stream_events_sent = 1
            return self.hang()
        if "mock-stream-error" in marker_model:
            events = events[:4] + [STREAM_ERROR_EVENT]
        self.start_stream()
        self.write_split(b"".join(sse_event(e) for e in events))
        self.end_stream()
        self.rec.stream_events_sent = len(events)
        self.rec.stream_completed = True

    def _slow_stream(self, events: list[dict[str, Any]], n: int) -> None:
        head = [e for e in events if e["type"] in ("message_start", "content_block_start")]
        tail = [e for e in events if e["type"] in ("content_block_stop", "message_delta", "message_stop")]
        deltas = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"tick{i} "}}
                  for i in range(n)]
        self.start_stream()
        try:
            for e in head + deltas + tail:
                if self.mock._stopping.is_set():
                    break
                if self.peer_closed():
                    raise BrokenPipeError
                data = sse_event(e)
                # each event in two chunks: the half-event sits in the reader's buffer
                self.write_chunk(data[:9])
                self.write_chunk(data[9:])
                self.rec.stream_events_sent += 1
                if e["type"] == "content_block_delta":
                    time.sleep(SLOW_STREAM_INTERVAL)
            self.end_stream()
            self.rec.stream_completed = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.rec.peer_closed_at = time.time()
            self.close_connection = True

    # ---- dispatch ----------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802
        self._handle()

    def do_POST(self):  # noqa: N802
        self._handle()

    def do_PUT(self):  # noqa: N802
        self._handle()

    def do_DELETE(self):  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        body, chunked = self._read_body()
        target = self.path
        path, _, query = target.partition("?")
        self.rec = Recorded(method=self.command, target=target, path=path, query=query,
                            headers=list(self.headers.items()), body=body, received_at=time.time(),
                            chunked_request=chunked)
        with self.mock._lock:
            self.mock.requests.append(self.rec)
        try:
            self.process()
        except UpstreamError as e:
            self.rec.error = e.message
            self.send_json(e.status, e.body, e.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.rec.peer_closed_at = self.rec.peer_closed_at or time.time()
            self.close_connection = True
        self.rec.response_finished_at = time.time()


class MockUpstream:
    """Base of the mock classes: ``start()`` binds ``host`` on a free port (or ``port``)."""
    name = "mock"
    handler: type[MockHandler] = MockHandler

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1", tls: tuple[str, str] | None = None,
                 split_delay: float = 0.002, verbose: bool = False):
        self.host, self._port, self.tls = host, port, tls
        self.split_delay, self.verbose = split_delay, verbose
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._split_seed = 0
        self._failure: tuple[int, int | None, dict[str, Any]] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self):
        srv = _Server((self.host, self._port), self.handler)
        srv.mock = self
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def authority(self) -> str:
        """``host:port``, what the ``Host`` header of a request to ``url`` must say."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"

    # ---- failure injection -------------------------------------------------------------------
    def fail_with(self, status: int | None, count: int | None = None, **options: Any) -> None:
        """Answer the next ``count`` API calls (all of them if None) with ``status`` in the
        upstream's error shape, after the request passed every check. ``fail_with(None)`` clears."""
        with self._lock:
            self._failure = None if status is None else (status, count, options)

    def _take_failure(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            if self._failure is None:
                return None
            status, count, options = self._failure
            if count is not None:
                count -= 1
                self._failure = (status, count, options) if count > 0 else None
            return status, options

    # ---- inspection --------------------------------------------------------------------------
    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def by_operation(self, op: str) -> list[Recorded]:
        return [r for r in self.snapshot() if r.operation == op]

    def leaked_credentials(self, markers=CLIENT_CREDENTIAL_MARKERS) -> list[tuple[str, list[str]]]:
        return [(r.target, r.leaked_credentials(markers)) for r in self.snapshot() if r.leaked_credentials(markers)]

    def wait_for(self, pred: Callable[[list[Recorded]], Any], timeout: float = 5.0, interval: float = 0.02):
        """Poll until ``pred(requests)`` is truthy; return its value (or the last falsy one)."""
        deadline = time.time() + timeout
        while True:
            v = pred(self.snapshot())
            if v or time.time() >= deadline:
                return v
            time.sleep(interval)

    def describe(self) -> str:
        lines = []
        for r in self.snapshot():
            auth = f"{r.verdict.mode}:{'ok' if r.verdict.ok else (r.verdict.error_type + ' ' + r.verdict.message).strip()}"
            line = (f"{r.method} {r.target} -> {r.status} auth={auth} body={len(r.body)}B "
                    f"op={r.operation or '-'}")
            if r.model:
                line += f" model={r.model}"
            if r.injected_failure:
                line += " (fail_with)"
            if r.error:
                line += f" error={r.error[:200]}"
            lines.append(line)
        return "\n".join(lines) or "(no requests)"
