#!/usr/bin/env python3
"""A mock Amazon Bedrock (runtime + control plane) for the gateway's end-to-end tests.

An independent implementation, standard library only:

* verifies AWS SigV4 the way AWS does (own code, hashlib/hmac; not botocore's signer), or a
  Bedrock API key (``Authorization: Bearer ...``), or nothing (``auth="none"``, for pointing a
  client that does not sign straight at the mock);
* records every request exactly as it arrived on the wire (method, raw request target, headers,
  body bytes, signature verdict) in ``MockBedrock.requests`` for the tests to inspect;
* serves InvokeModel, InvokeModelWithResponseStream (AWS event-stream frames from its own
  encoder, deliberately split across HTTP chunks at odd offsets), Converse, ConverseStream,
  CountTokens, ListInferenceProfiles, GetInferenceProfile and ListFoundationModels;
* rejects, in InvokeModel bodies, a ``model`` or ``stream`` key and any ``anthropic_beta`` value
  Bedrock does not accept (``accepted_betas``), with Bedrock's ``ValidationException``;
* has behaviour switches selected by a marker inside the model id (see ``MARKERS`` below) and
  ``fail_with(status, count)`` (the next ``count`` model calls answer ``status``, for failover tests).

Standalone: ``python tests/mock_bedrock.py --port 18080 [--auth sigv4|bearer|none]``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import hmac
import json
import re
import select
import socket
import ssl
import string
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The test key pair the gateway is given (via its environment) and the mock expects.
TEST_ACCESS_KEY = "AKIDGATEWAYTEST"
TEST_SECRET_KEY = "gatewaytestsecret"
TEST_REGION = "us-east-1"
TEST_BEARER_TOKEN = "bedrock-api-key-test-0123456789"

# What a client of the gateway holds; none of it may ever reach the mock.
CLIENT_CREDENTIAL_MARKERS = ("sk-gw-test", "AKIDCLIENT", "clientsecret")

DEFAULT_ANSWER = "Hello from the mock Bedrock."

THROTTLE_ERRORTYPE = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
THROTTLE_MESSAGE = "Too many requests, please wait before trying again."

# Model-id markers (anywhere in the decoded model id):
#   mock-throttle          -> 429 ThrottlingException (exact Bedrock header and body)
#   mock-hang              -> read the request, never answer (records when the peer closed)
#   mock-slow-stream[-N]   -> invoke-with-response-stream: N text deltas (default 150), one every 200 ms
#                             (``MockBedrock(slow_stream_interval=...)`` or the attribute sets the pace)
#   mock-big-stream[-N]    -> invoke-with-response-stream: N text deltas (default 4000) of 16 KiB each,
#                             written as fast as the peer takes them (records when the peer closed)
#   mock-stream-error      -> stream a few events, then an exception frame (throttlingException)
#   mock-stall-stream      -> stream message_start, then send nothing more (records when the peer closed)
#   mock-fail-500          -> 500 InternalServerException
MARKERS = ("mock-throttle", "mock-hang", "mock-slow-stream", "mock-big-stream", "mock-stream-error")
SLOW_STREAM_INTERVAL = 0.2
SLOW_STREAM_DEFAULT_FRAMES = 150
BIG_STREAM_DEFAULT_DELTAS = 4000
BIG_STREAM_DELTA_BYTES = 16 * 1024

# Fixed, distinctive usage numbers so tests can find them in the gateway's logs.
USAGE_INPUT = 1117
USAGE_CACHE_READ = 4321
USAGE_CACHE_CREATION = 321
USAGE_OUTPUT = 42

MAX_CLOCK_SKEW = 300  # seconds, as AWS

# The anthropic_beta values Bedrock accepts in an InvokeModel body; anything else is a 400
# ValidationException "invalid beta flag". Bedrock reads betas from the body only: an
# ``anthropic-beta`` HTTP header is not part of its API and is not checked (Claude Code 2.1.332 in
# Bedrock mode sends ``anthropic-beta: claude-code-20250219,...`` as a header and its
# Bedrock-supported betas in the body), unless ``check_beta_header=True``.
ACCEPTED_BETAS = (
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14", "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
)
INVALID_BETA_MESSAGE = "invalid beta flag"

# fail_with(status): the error type and message Bedrock answers with.
FAILURES = {
    429: (THROTTLE_ERRORTYPE, THROTTLE_MESSAGE),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request. Try your request again."),
    424: ("ModelErrorException", "The model encountered an error processing the request."),
}

CLAUDE_PROFILES = [
    # (inference profile id, name, underlying foundation model id)
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "US Claude Sonnet 4.5", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "Global Claude Sonnet 4.5", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("us.anthropic.claude-opus-4-5-20251101-v1:0", "US Claude Opus 4.5", "anthropic.claude-opus-4-5-20251101-v1:0"),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", "US Claude Opus 4.1", "anthropic.claude-opus-4-1-20250805-v1:0"),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "US Claude Haiku 4.5", "anthropic.claude-haiku-4-5-20251001-v1:0"),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", "US Claude Sonnet 4", "anthropic.claude-sonnet-4-20250514-v1:0"),
    ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "US Claude 3.7 Sonnet", "anthropic.claude-3-7-sonnet-20250219-v1:0"),
    ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "US Claude 3.5 Haiku", "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ("us.amazon.nova-pro-v1:0", "US Nova Pro", "amazon.nova-pro-v1:0"),
]
ACCOUNT = "123456789012"


# ---------------------------------------------------------------------------------------------
# AWS event-stream encoding / decoding
# ---------------------------------------------------------------------------------------------

def _encode_headers(headers: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:
        n = name.encode()
        v = value.encode()
        out += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    return bytes(out)


def encode_frame(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One AWS event-stream message (string headers only)."""
    hdr = _encode_headers(headers)
    total = 12 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    msg = prelude + hdr + payload
    return msg + struct.pack(">I", zlib.crc32(msg) & 0xFFFFFFFF)


def decode_frames(buf: bytes) -> tuple[list[tuple[dict[str, Any], bytes]], bytes]:
    """Decode as many complete frames as ``buf`` holds; check both CRCs. Returns (frames, rest)."""
    frames = []
    while len(buf) >= 12:
        total, hlen, pcrc = struct.unpack(">III", buf[:12])
        if zlib.crc32(buf[:8]) & 0xFFFFFFFF != pcrc:
            raise ValueError("event-stream prelude CRC mismatch")
        if len(buf) < total:
            break
        msg = buf[:total]
        (mcrc,) = struct.unpack(">I", msg[-4:])
        if zlib.crc32(msg[:-4]) & 0xFFFFFFFF != mcrc:
            raise ValueError("event-stream message CRC mismatch")
        headers: dict[str, Any] = {}
        i = 12
        end = 12 + hlen
        while i < end:
            nl = msg[i]
            name = msg[i + 1:i + 1 + nl].decode()
            i += 1 + nl
            typ = msg[i]
            i += 1
            if typ in (0, 1):
                headers[name] = typ == 0
            elif typ == 2:
                headers[name] = struct.unpack(">b", msg[i:i + 1])[0]
                i += 1
            elif typ == 3:
                headers[name] = struct.unpack(">h", msg[i:i + 2])[0]
                i += 2
            elif typ == 4:
                headers[name] = struct.unpack(">i", msg[i:i + 4])[0]
                i += 4
            elif typ in (5, 8):
                headers[name] = struct.unpack(">q", msg[i:i + 8])[0]
                i += 8
            elif typ in (6, 7):
                (ln,) = struct.unpack(">H", msg[i:i + 2])
                raw = msg[i + 2:i + 2 + ln]
                headers[name] = raw.decode() if typ == 7 else raw
                i += 2 + ln
            elif typ == 9:
                headers[name] = msg[i:i + 16]
                i += 16
            else:
                raise ValueError(f"unknown event-stream header type {typ}")
        frames.append((headers, msg[end:-4]))
        buf = buf[total:]
    return frames, buf


def _padding(n: int) -> str:
    return (string.ascii_letters + string.digits)[: max(1, n % 62)]


def chunk_frame(event: dict[str, Any], seq: int) -> bytes:
    """An InvokeModelWithResponseStream ``chunk`` event wrapping one Anthropic streaming event."""
    raw = json.dumps(event, separators=(",", ":")).encode()
    payload = json.dumps({"bytes": base64.b64encode(raw).decode(), "p": _padding(seq * 7 + 3)},
                         separators=(",", ":")).encode()
    return encode_frame([(":event-type", "chunk"), (":content-type", "application/json"),
                         (":message-type", "event")], payload)


def converse_frame(event_type: str, body: dict[str, Any], seq: int) -> bytes:
    body = dict(body)
    body["p"] = _padding(seq * 5 + 11)
    return encode_frame([(":event-type", event_type), (":content-type", "application/json"),
                         (":message-type", "event")], json.dumps(body, separators=(",", ":")).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    return encode_frame([(":exception-type", exception_type), (":content-type", "application/json"),
                         (":message-type", "exception")], json.dumps({"message": message}).encode())


# ---------------------------------------------------------------------------------------------
# SigV4 verification (AWS rules for non-S3 services)
# ---------------------------------------------------------------------------------------------

_UNRESERVED = "-_.~"


def aws_uri_encode(s: str) -> str:
    """RFC 3986 encoding as SigV4 defines it: everything but A-Za-z0-9-_.~ becomes %XX (upper)."""
    return urllib.parse.quote(s, safe=_UNRESERVED)


def canonical_uri(raw_path: str) -> str:
    """The raw path as received, each segment URI-encoded once more (``%3A`` -> ``%253A``)."""
    if raw_path == "":
        return "/"
    return "/".join(aws_uri_encode(seg) for seg in raw_path.split("/"))


def canonical_query(raw_query: str) -> str:
    pairs = []
    if raw_query:
        for part in raw_query.split("&"):
            if part == "":
                continue
            k, _, v = part.partition("=")
            k = urllib.parse.unquote(k.replace("+", "%20"))
            v = urllib.parse.unquote(v.replace("+", "%20"))
            pairs.append((aws_uri_encode(k), aws_uri_encode(v)))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def _trim(value: str) -> str:
    return re.sub(r"\s+", " ", value.strip())


_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*SignedHeaders=(?P<sh>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-f]+)\s*$"
)


@dataclass
class Verdict:
    ok: bool
    mode: str  # sigv4 | bearer | none
    error_type: str = ""
    message: str = ""
    canonical_request: str = ""
    signed_headers: list[str] = field(default_factory=list)
    access_key: str = ""
    region: str = ""
    service: str = ""


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def verify_sigv4(method: str, raw_target: str, headers: list[tuple[str, str]], body: bytes, *,
                 access_key: str, secret_key: str, region: str, service: str = "bedrock",
                 session_token: str | None = None, now: float | None = None) -> Verdict:
    """Check one request's SigV4 signature the way AWS does. ``raw_target`` is the request
    target exactly as it was on the wire (path and query)."""
    v = Verdict(ok=False, mode="sigv4")

    def fail(kind: str, msg: str) -> Verdict:
        v.error_type, v.message = kind, msg
        return v

    hmap: dict[str, list[str]] = {}
    for k, val in headers:
        hmap.setdefault(k.lower(), []).append(val)
    auth = hmap.get("authorization")
    if not auth:
        return fail("MissingAuthenticationTokenException", "Missing Authentication Token")
    if len(auth) != 1:
        return fail("IncompleteSignatureException", "More than one Authorization header.")
    m = _AUTH_RE.match(auth[0].strip())
    if not m:
        return fail("IncompleteSignatureException",
                    f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' "
                    f"parameters (AWS4-HMAC-SHA256). Authorization={auth[0][:40]}")
    cred = m.group("cred").split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        return fail("IncompleteSignatureException", f"Credential is malformed: {m.group('cred')}")
    ak, scope_date, scope_region, scope_service, _ = cred
    v.access_key, v.region, v.service = ak, scope_region, scope_service
    signed = m.group("sh").split(";")
    v.signed_headers = signed
    if signed != sorted(signed) or any(h != h.lower() for h in signed):
        return fail("InvalidSignatureException", "SignedHeaders must be lowercase and sorted.")
    if ak != access_key:
        return fail("UnrecognizedClientException", "The security token included in the request is invalid.")
    if scope_service != service:
        return fail("InvalidSignatureException",
                    f"Credential should be scoped to correct service: '{service}'.")
    if scope_region != region:
        return fail("InvalidSignatureException",
                    f"Credential should be scoped to a valid region. ")
    if "host" not in signed:
        return fail("InvalidSignatureException", "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
    amz_date = (hmap.get("x-amz-date") or [""])[0].strip()
    if not amz_date:
        return fail("IncompleteSignatureException", "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    if "x-amz-date" not in signed:
        return fail("InvalidSignatureException", "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.")
    try:
        when = _dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return fail("IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")
    now_ts = time.time() if now is None else now
    if abs(now_ts - when.timestamp()) > MAX_CLOCK_SKEW:
        now_s = _dt.datetime.fromtimestamp(now_ts, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return fail("InvalidSignatureException",
                    f"Signature expired: {amz_date} is now earlier than {now_s} - 5 min."
                    if when.timestamp() < now_ts else
                    f"Signature not yet current: {amz_date} is still later than {now_s} + 5 min.")
    if scope_date != amz_date[:8]:
        return fail("InvalidSignatureException", "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.")
    token = hmap.get("x-amz-security-token")
    if session_token is not None:
        if not token or token[0] != session_token:
            return fail("UnrecognizedClientException", "The security token included in the request is invalid.")
        if "x-amz-security-token" not in signed:
            return fail("InvalidSignatureException", "'X-Amz-Security-Token' must be a 'SignedHeader' when a session token is used.")
    elif token:
        return fail("UnrecognizedClientException", "The security token included in the request is invalid.")

    payload_hash = hashlib.sha256(body).hexdigest()
    declared = hmap.get("x-amz-content-sha256")
    if declared and declared[0].strip() != payload_hash:
        return fail("InvalidSignatureException",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.")

    path, _, query = raw_target.partition("?")
    canon_headers = ""
    for h in signed:
        if h not in hmap:
            return fail("InvalidSignatureException", f"The request signature we calculated does not match the signature you provided. (signed header '{h}' is missing)")
        canon_headers += f"{h}:{','.join(_trim(x) for x in hmap[h])}\n"
    creq = "\n".join([method, canonical_uri(path), canonical_query(query), canon_headers,
                      ";".join(signed), payload_hash])
    v.canonical_request = creq
    scope = f"{scope_date}/{scope_region}/{scope_service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    expected = hmac.new(signing_key(secret_key, scope_date, scope_region, scope_service), sts.encode(),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m.group("sig")):
        return fail("InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided. "
                    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
    v.ok = True
    return v


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------

@dataclass
class Recorded:
    method: str
    target: str            # raw request target as on the wire: path?query
    path: str              # raw path (no query)
    query: str             # raw query
    headers: list[tuple[str, str]]
    body: bytes
    verdict: Verdict
    received_at: float
    operation: str = ""    # invoke | invoke-with-response-stream | converse | converse-stream | count-tokens | list-inference-profiles | ...
    model_id_raw: str = ""  # the model-id path segment as on the wire
    model_id: str = ""      # percent-decoded
    status: int = 0
    chunked_request: bool = False
    stream_frames_sent: int = 0
    stream_completed: bool = False
    peer_closed_at: float | None = None   # set when the peer closed the connection while we were streaming / hanging
    response_finished_at: float | None = None
    injected_failure: bool = False        # answered by ``fail_with``
    rejected_betas: list[str] = field(default_factory=list)  # why a 400 "invalid beta flag" was given

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]

    @property
    def sig_ok(self) -> bool:
        return self.verdict.ok

    @property
    def colon_encoded(self) -> bool:
        return "%3A" in self.model_id_raw or "%3a" in self.model_id_raw

    def json(self) -> Any:
        return json.loads(self.body)

    def leaked_credentials(self, markers=CLIENT_CREDENTIAL_MARKERS) -> list[str]:
        """Client credentials found anywhere in this request (header names/values, path, body)."""
        found = []
        hay = [self.target] + [f"{k}: {v}" for k, v in self.headers]
        body = self.body.decode("latin-1")
        for m in markers:
            if any(m in h for h in hay) or m in body:
                found.append(m)
        if "x-api-key" in self.header_names():
            found.append("x-api-key header")
        return found


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    mock: "MockBedrock"


class BedrockError(Exception):
    def __init__(self, status: int, errortype: str, message: str):
        super().__init__(message)
        self.status, self.errortype, self.message = status, errortype, message


def _validation(msg: str) -> BedrockError:
    return BedrockError(400, "ValidationException", msg)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MockBedrock/1.0"
    sys_version = ""

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError, TimeoutError, ssl.SSLError):
            pass

    # quiet by default
    def log_message(self, fmt, *args):  # noqa: N802
        if self.server.mock.verbose:
            sys.stderr.write("mock-bedrock: " + (fmt % args) + "\n")

    @property
    def mock(self) -> "MockBedrock":
        return self.server.mock

    # ---- request body -----------------------------------------------------------------------
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

    # ---- responses --------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("Date", self.date_time_string())
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, err: BedrockError) -> None:
        self.rec.status = err.status
        self._send_json(err.status, {"message": err.message}, {"x-amzn-ErrorType": err.errortype})

    def _start_stream(self) -> None:
        self.rec.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.send_header("X-Amzn-Bedrock-Content-Type", "application/json")
        self.send_header("Date", self.date_time_string())
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # Odd chunk sizes so that HTTP chunk boundaries fall mid-prelude, mid-header, mid-payload.
    _SPLITS = (5, 13, 1, 47, 3, 101, 17, 2, 64, 9, 250, 7, 33, 11)

    def _write_split(self, data: bytes) -> None:
        i = 0
        k = self.mock._split_seed
        while i < len(data):
            n = self._SPLITS[k % len(self._SPLITS)]
            k += 1
            self._write_chunk(data[i:i + n])
            i += n
            if self.mock.split_delay:
                time.sleep(self.mock.split_delay)
        self.mock._split_seed = (self.mock._split_seed + 1) % len(self._SPLITS)

    def _peer_closed(self) -> bool:
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    # ---- dispatch ---------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802
        self._handle()

    def do_POST(self):  # noqa: N802
        self._handle()

    def do_PUT(self):  # noqa: N802
        self._handle()

    def do_DELETE(self):  # noqa: N802
        self._handle()

    def _handle(self) -> None:
        mock = self.mock
        body, chunked = self._read_body()
        target = self.path
        path, _, query = target.partition("?")
        headers = list(self.headers.items())
        verdict = mock.check_auth(self.command, target, headers, body)
        self.rec = Recorded(method=self.command, target=target, path=path, query=query, headers=headers,
                            body=body, verdict=verdict, received_at=time.time(), chunked_request=chunked)
        m = re.fullmatch(r"/model/([^/]+)/([a-z-]+)", path)
        if m:
            self.rec.model_id_raw = m.group(1)
            self.rec.model_id = urllib.parse.unquote(m.group(1))
        with mock._lock:
            mock.requests.append(self.rec)
        try:
            if not verdict.ok:
                raise BedrockError(403, verdict.error_type, verdict.message)
            self._route(path, query, body)
        except BedrockError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.rec.peer_closed_at = self.rec.peer_closed_at or time.time()
            self.close_connection = True
        self.rec.response_finished_at = time.time()

    def _route(self, path: str, query: str, body: bytes) -> None:
        mock = self.mock
        m = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|converse-stream|count-tokens)", path)
        if m and self.command == "POST":
            self.rec.operation = m.group(2)
            return self._model_op(self.rec.operation, self.rec.model_id, body)
        if path == "/inference-profiles" and self.command == "GET":
            self.rec.operation = "list-inference-profiles"
            return self._list_profiles(urllib.parse.parse_qs(query))
        m = re.fullmatch(r"/inference-profiles/([^/]+)", path)
        if m and self.command == "GET":
            self.rec.operation = "get-inference-profile"
            pid = urllib.parse.unquote(m.group(1))
            for p in mock.profiles():
                if pid in (p["inferenceProfileId"], p["inferenceProfileArn"]):
                    self.rec.status = 200
                    return self._send_json(200, p)
            raise BedrockError(404, "ResourceNotFoundException", "Inference profile not found.")
        if path == "/foundation-models" and self.command == "GET":
            self.rec.operation = "list-foundation-models"
            self.rec.status = 200
            return self._send_json(200, {"modelSummaries": mock.foundation_models()})
        raise BedrockError(404, "UnknownOperationException", "Unknown operation")

    # ---- model operations ---------------------------------------------------------------------
    def _model_op(self, op: str, model_id: str, body: bytes) -> None:
        mock = self.mock
        if mock._failure is not None and self._validate_body_first(op, body):
            failure = mock._take_failure()
            if failure:
                self.rec.injected_failure = True
                errortype, message = FAILURES.get(failure, ("InternalServerException", f"Injected failure ({failure})."))
                raise BedrockError(failure, errortype, message)
        if "mock-throttle" in model_id:
            self.rec.status = 429
            return self._send_json(429, {"message": THROTTLE_MESSAGE}, {"x-amzn-ErrorType": THROTTLE_ERRORTYPE})
        if "mock-hang" in model_id:
            return self._hang()
        if "mock-fail-500" in model_id:
            raise BedrockError(500, "InternalServerException", "The server encountered an internal error.")
        try:
            req = json.loads(body) if body else None
        except ValueError:
            raise _validation("Malformed input request, please reformat your input and try again.")
        if not isinstance(req, dict):
            raise _validation("Malformed input request, please reformat your input and try again.")
        if op in ("invoke", "invoke-with-response-stream"):
            self._validate_anthropic_body(req)
            if op == "invoke":
                return self._invoke(model_id, req)
            return self._invoke_stream(model_id, req)
        if op in ("converse", "converse-stream"):
            if not isinstance(req.get("messages"), list) or not req["messages"]:
                raise _validation("A conversation must start with a user message. Try again with a conversation that starts with a user message.")
            if "modelId" in req:
                raise _validation("Unexpected field modelId in body")
            return self._converse(model_id, req) if op == "converse" else self._converse_stream(model_id, req)
        if op == "count-tokens":
            return self._count_tokens(req)

    def _validate_body_first(self, op: str, body: bytes) -> bool:
        """Before an injected failure: is the request one Bedrock would have served? (An invalid
        InvokeModel body raises its ValidationException; other malformed bodies return False and
        get theirs from the normal path.)"""
        try:
            req = json.loads(body)
        except ValueError:
            return False
        if not isinstance(req, dict):
            return False
        if op in ("invoke", "invoke-with-response-stream"):
            self._validate_anthropic_body(req)
        return True

    def _validate_anthropic_body(self, req: dict) -> None:
        for key in ("model", "stream"):
            if key in req:
                raise _validation(f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again.")
        if "anthropic_version" not in req:
            raise _validation("Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.")
        if req["anthropic_version"] != "bedrock-2023-05-31":
            raise _validation("Invalid API version: " + str(req["anthropic_version"]))
        if "max_tokens" not in req:
            raise _validation("Malformed input request: #: required key [max_tokens] not found, please reformat your input and try again.")
        if not isinstance(req["max_tokens"], int) or req["max_tokens"] < 1:
            raise _validation("Malformed input request: #/max_tokens: expected type: Integer, please reformat your input and try again.")
        if not isinstance(req.get("messages"), list):
            raise _validation("Malformed input request: #: required key [messages] not found, please reformat your input and try again.")
        beta = req.get("anthropic_beta")
        if beta is not None and not (isinstance(beta, list) and all(isinstance(b, str) for b in beta)):
            raise _validation("Malformed input request: #/anthropic_beta: expected type: JSONArray, please reformat your input and try again.")
        betas = list(beta or [])
        if self.mock.check_beta_header:
            betas += [b.strip() for v in self.rec.headers if v[0].lower() == "anthropic-beta"
                      for b in v[1].split(",") if b.strip()]
        rejected = [b for b in betas if b not in self.mock.accepted_betas]
        if rejected:
            self.rec.rejected_betas = rejected
            raise _validation(INVALID_BETA_MESSAGE)

    def _answer_for(self, req: dict) -> str:
        return self.mock.answer

    def _invoke(self, model_id: str, req: dict) -> None:
        answer = self._answer_for(req)
        resp = {
            "id": "msg_bdrk_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": _base_model(model_id),
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": USAGE_INPUT, "cache_creation_input_tokens": USAGE_CACHE_CREATION,
                      "cache_read_input_tokens": USAGE_CACHE_READ, "output_tokens": USAGE_OUTPUT},
        }
        self.rec.status = 200
        self._send_json(200, resp, {
            "X-Amzn-Bedrock-Input-Token-Count": str(USAGE_INPUT),
            "X-Amzn-Bedrock-Output-Token-Count": str(USAGE_OUTPUT),
            "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": str(USAGE_CACHE_READ),
            "X-Amzn-Bedrock-Cache-Write-Input-Token-Count": str(USAGE_CACHE_CREATION),
            "X-Amzn-Bedrock-Invocation-Latency": "321",
        })

    @staticmethod
    def _pieces(text: str) -> list[str]:
        # split into several deltas of uneven sizes
        out, i, sizes, k = [], 0, (3, 7, 1, 5, 11, 2), 0
        while i < len(text):
            n = sizes[k % len(sizes)]
            out.append(text[i:i + n])
            i += n
            k += 1
        return out

    def _anthropic_events(self, model_id: str, pieces: list[str]) -> list[dict]:
        msg_id = "msg_bdrk_" + uuid.uuid4().hex[:24]
        return [
            {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": _base_model(model_id),
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": USAGE_INPUT, "cache_creation_input_tokens": USAGE_CACHE_CREATION,
                          "cache_read_input_tokens": USAGE_CACHE_READ, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *[{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces],
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": USAGE_OUTPUT}},
            {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": USAGE_INPUT, "outputTokenCount": USAGE_OUTPUT,
                "invocationLatency": 321, "firstByteLatency": 123,
                "cacheReadInputTokenCount": USAGE_CACHE_READ, "cacheWriteInputTokenCount": USAGE_CACHE_CREATION}},
        ]

    def _invoke_stream(self, model_id: str, req: dict) -> None:
        m = re.search(r"mock-slow-stream(?:-(\d+))?", model_id)
        if m:
            return self._slow_stream(model_id, int(m.group(1) or SLOW_STREAM_DEFAULT_FRAMES))
        m = re.search(r"mock-big-stream(?:-(\d+))?", model_id)
        if m:
            return self._big_stream(model_id, int(m.group(1) or BIG_STREAM_DEFAULT_DELTAS))
        if "mock-stall-stream" in model_id:
            self._start_stream()
            self._write_split(chunk_frame(self._anthropic_events(model_id, [])[0], 0))
            self.rec.stream_frames_sent = 1
            return self._hang()
        if "mock-stream-error" in model_id:
            events = self._anthropic_events(model_id, ["Partial "])[:3]
            data = b"".join(chunk_frame(e, i) for i, e in enumerate(events))
            data += exception_frame("throttlingException", THROTTLE_MESSAGE)
            self._start_stream()
            self._write_split(data)
            self._end_stream()
            self.rec.stream_frames_sent = len(events) + 1
            self.rec.stream_completed = True
            return
        events = self._anthropic_events(model_id, self._pieces(self._answer_for(req)))
        data = b"".join(chunk_frame(e, i) for i, e in enumerate(events))
        self._start_stream()
        self._write_split(data)
        self._end_stream()
        self.rec.stream_frames_sent = len(events)
        self.rec.stream_completed = True

    def _slow_stream(self, model_id: str, n: int) -> None:
        events = self._anthropic_events(model_id, [f"tick{i} " for i in range(n)])
        self._start_stream()
        try:
            for i, e in enumerate(events):
                if self.mock._stopping.is_set():
                    break
                if self._peer_closed():
                    raise BrokenPipeError
                frame = chunk_frame(e, i)
                # split each frame in two chunks: the half-frame sits in the gateway's buffer
                self._write_chunk(frame[:9])
                self._write_chunk(frame[9:])
                self.rec.stream_frames_sent += 1
                if e["type"] == "content_block_delta":
                    time.sleep(self.mock.slow_stream_interval)
            self._end_stream()
            self.rec.stream_completed = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.rec.peer_closed_at = time.time()
            self.close_connection = True

    def _big_stream(self, model_id: str, n: int) -> None:
        """``n`` deltas of ``BIG_STREAM_DELTA_BYTES`` each, one frame per HTTP chunk, without pause:
        a peer that stops reading soon blocks the writes (its buffers fill up)."""
        piece = ("0123456789abcdef" * (BIG_STREAM_DELTA_BYTES // 16))[:BIG_STREAM_DELTA_BYTES]
        events = self._anthropic_events(model_id, [piece] * n)
        self._start_stream()
        try:
            for i, e in enumerate(events):
                if self.mock._stopping.is_set():
                    break
                self._write_chunk(chunk_frame(e, i))
                self.rec.stream_frames_sent += 1
            self._end_stream()
            self.rec.stream_completed = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.rec.peer_closed_at = time.time()
            self.close_connection = True

    def _hang(self) -> None:
        """Never answer; note when the peer gives up on the connection."""
        self.close_connection = True
        while not self.mock._stopping.is_set():
            if self._peer_closed():
                self.rec.peer_closed_at = time.time()
                return
            time.sleep(0.05)

    def _converse(self, model_id: str, req: dict) -> None:
        answer = self._answer_for(req)
        self.rec.status = 200
        self._send_json(200, {
            "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": USAGE_INPUT, "outputTokens": USAGE_OUTPUT,
                      "totalTokens": USAGE_INPUT + USAGE_OUTPUT + USAGE_CACHE_READ + USAGE_CACHE_CREATION,
                      "cacheReadInputTokens": USAGE_CACHE_READ, "cacheWriteInputTokens": USAGE_CACHE_CREATION},
            "metrics": {"latencyMs": 321},
        })

    def _converse_stream(self, model_id: str, req: dict) -> None:
        answer = self._answer_for(req)
        events = [("messageStart", {"role": "assistant"})]
        events += [("contentBlockDelta", {"delta": {"text": p}, "contentBlockIndex": 0}) for p in self._pieces(answer)]
        events += [("contentBlockStop", {"contentBlockIndex": 0}),
                   ("messageStop", {"stopReason": "end_turn"}),
                   ("metadata", {"usage": {"inputTokens": USAGE_INPUT, "outputTokens": USAGE_OUTPUT,
                                           "totalTokens": USAGE_INPUT + USAGE_OUTPUT + USAGE_CACHE_READ + USAGE_CACHE_CREATION,
                                           "cacheReadInputTokens": USAGE_CACHE_READ,
                                           "cacheWriteInputTokens": USAGE_CACHE_CREATION},
                                 "metrics": {"latencyMs": 321}})]
        data = b"".join(converse_frame(t, b, i) for i, (t, b) in enumerate(events))
        self._start_stream()
        self._write_split(data)
        self._end_stream()
        self.rec.stream_frames_sent = len(events)
        self.rec.stream_completed = True

    def _count_tokens(self, req: dict) -> None:
        inp = req.get("input")
        if not isinstance(inp, dict) or len(inp) != 1:
            raise _validation("input must hold exactly one of invokeModel, converse")
        if "invokeModel" in inp:
            try:
                inner = json.loads(base64.b64decode(inp["invokeModel"]["body"], validate=True))
            except Exception:
                raise _validation("The provided request body is not valid base64-encoded JSON.")
            if not isinstance(inner, dict):
                raise _validation("Malformed input request, please reformat your input and try again.")
            self._validate_anthropic_body(inner)
            n = _estimate_tokens(json.dumps(inner.get("messages")) + json.dumps(inner.get("system", "")))
        elif "converse" in inp:
            conv = inp["converse"]
            if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
                raise _validation("converse.messages is required")
            n = _estimate_tokens(json.dumps(conv.get("messages")) + json.dumps(conv.get("system", "")))
        else:
            raise _validation("input must hold exactly one of invokeModel, converse")
        self.rec.status = 200
        self._send_json(200, {"inputTokens": n})

    # ---- control plane ------------------------------------------------------------------------
    def _list_profiles(self, q: dict[str, list[str]]) -> None:
        profiles = self.mock.profiles()
        typ = (q.get("type") or [None])[0]
        if typ not in (None, "SYSTEM_DEFINED", "APPLICATION"):
            raise _validation(f"1 validation error detected: Value '{typ}' at 'typeEquals' failed to satisfy constraint")
        if typ:
            profiles = [p for p in profiles if p["type"] == typ]
        try:
            start = int((q.get("nextToken") or ["0"])[0])
            size = int((q.get("maxResults") or ["1000"])[0])
        except ValueError:
            raise _validation("Invalid pagination parameters")
        if size < 1 or size > 1000:
            raise _validation("maxResults must be between 1 and 1000")
        page = profiles[start:start + size]
        out: dict[str, Any] = {"inferenceProfileSummaries": page}
        if start + size < len(profiles):
            out["nextToken"] = str(start + size)
        self.rec.status = 200
        self._send_json(200, out)


def _base_model(model_id: str) -> str:
    m = re.search(r"(claude-[a-z0-9-]+?)(?:-v\d+(?::\d+)?)?$", model_id)
    return m.group(1) if m else model_id


def _estimate_tokens(s: str) -> int:
    return max(1, len(s) // 4)


class MockBedrock:
    """In-process mock; ``start()`` binds 127.0.0.1 on a free port (or ``port``)."""

    def __init__(self, *, auth: str = "sigv4", access_key: str = TEST_ACCESS_KEY,
                 secret_key: str = TEST_SECRET_KEY, region: str = TEST_REGION,
                 session_token: str | None = None, bearer_token: str = TEST_BEARER_TOKEN,
                 answer: str = DEFAULT_ANSWER, port: int = 0, host: str = "127.0.0.1",
                 tls: tuple[str, str] | None = None, split_delay: float = 0.002, verbose: bool = False,
                 accepted_betas=ACCEPTED_BETAS, check_beta_header: bool = False,
                 slow_stream_interval: float = SLOW_STREAM_INTERVAL):
        assert auth in ("sigv4", "bearer", "none")
        self.slow_stream_interval = slow_stream_interval  # the pace of mock-slow-stream deltas
        self.accepted_betas = list(accepted_betas)
        self.check_beta_header = check_beta_header
        self._failure: tuple[int, int | None] | None = None
        self.auth, self.access_key, self.secret_key = auth, access_key, secret_key
        self.region, self.session_token, self.bearer_token = region, session_token, bearer_token
        self.answer, self.host, self._port, self.tls = answer, host, port, tls
        self.split_delay, self.verbose = split_delay, verbose
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._split_seed = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "MockBedrock":
        srv = _Server((self.host, self._port), _Handler)
        srv.mock = self
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="mock-bedrock", daemon=True)
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
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ---- failure injection -------------------------------------------------------------------
    def fail_with(self, status: int | None, count: int | None = None) -> None:
        """Answer the next ``count`` model calls (all of them if None) with ``status`` in Bedrock's
        shape (see ``FAILURES``), after the request passed every check. ``fail_with(None)`` clears."""
        with self._lock:
            self._failure = None if status is None else (status, count)

    def _take_failure(self) -> int | None:
        with self._lock:
            if self._failure is None:
                return None
            status, count = self._failure
            if count is not None:
                self._failure = (status, count - 1) if count > 1 else None
            return status

    # ---- auth ------------------------------------------------------------------------------
    def check_auth(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> Verdict:
        if self.auth == "none":
            return Verdict(ok=True, mode="none")
        if self.auth == "bearer":
            auth = [v for k, v in headers if k.lower() == "authorization"]
            if not auth:
                return Verdict(ok=False, mode="bearer", error_type="MissingAuthenticationTokenException",
                               message="Missing Authentication Token")
            if len(auth) != 1 or auth[0] != f"Bearer {self.bearer_token}":
                return Verdict(ok=False, mode="bearer", error_type="UnrecognizedClientException",
                               message="Invalid API Key format: Must start with pre-defined prefix"
                               if not auth[0].startswith("Bearer ") else
                               "The security token included in the request is invalid.")
            return Verdict(ok=True, mode="bearer")
        return verify_sigv4(method, target, headers, body, access_key=self.access_key,
                            secret_key=self.secret_key, region=self.region, service="bedrock",
                            session_token=self.session_token)

    # ---- catalog -------------------------------------------------------------------------------
    def profiles(self) -> list[dict]:
        out = []
        for pid, name, fm in CLAUDE_PROFILES:
            geo = pid.split(".")[0]
            regions = {"us": ["us-east-1", "us-east-2", "us-west-2"], "global": ["us-east-1", "eu-west-1", "ap-northeast-1"]}.get(geo, [self.region])
            out.append({
                "inferenceProfileName": name,
                "description": f"Routes requests to {name.split(' ', 1)[1]} in {geo.upper()} regions.",
                "createdAt": "2025-09-29T00:00:00Z",
                "updatedAt": "2025-09-29T00:00:00Z",
                "inferenceProfileArn": f"arn:aws:bedrock:{self.region}:{ACCOUNT}:inference-profile/{pid}",
                "models": [{"modelArn": f"arn:aws:bedrock:{r}::foundation-model/{fm}"} for r in regions],
                "inferenceProfileId": pid,
                "status": "ACTIVE",
                "type": "SYSTEM_DEFINED",
            })
        return out

    def foundation_models(self) -> list[dict]:
        seen, out = set(), []
        for _, name, fm in CLAUDE_PROFILES:
            if fm in seen:
                continue
            seen.add(fm)
            out.append({
                "modelArn": f"arn:aws:bedrock:{self.region}::foundation-model/{fm}",
                "modelId": fm,
                "modelName": name.split(" ", 1)[1],
                "providerName": "Anthropic" if "anthropic" in fm else "Amazon",
                "inputModalities": ["TEXT", "IMAGE"],
                "outputModalities": ["TEXT"],
                "responseStreamingSupported": True,
                "customizationsSupported": [],
                "inferenceTypesSupported": ["INFERENCE_PROFILE"],
                "modelLifecycle": {"status": "ACTIVE"},
            })
        return out

    # ---- inspection helpers ----------------------------------------------------------------------
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

    def wait_for(self, pred, timeout: float = 5.0, interval: float = 0.02):
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
            lines.append(f"{r.method} {r.target} -> {r.status} auth={r.verdict.mode}:{'ok' if r.verdict.ok else r.verdict.error_type + ' ' + r.verdict.message} "
                         f"body={len(r.body)}B op={r.operation or '-'}"
                         + (" (fail_with)" if r.injected_failure else "")
                         + (f" rejected_betas={r.rejected_betas}" if r.rejected_betas else ""))
        return "\n".join(lines) or "(no requests)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--auth", choices=["sigv4", "bearer", "none"], default="sigv4")
    ap.add_argument("--access-key", default=TEST_ACCESS_KEY)
    ap.add_argument("--secret-key", default=TEST_SECRET_KEY)
    ap.add_argument("--session-token", default=None)
    ap.add_argument("--bearer-token", default=TEST_BEARER_TOKEN)
    ap.add_argument("--region", default=TEST_REGION)
    ap.add_argument("--answer", default=DEFAULT_ANSWER)
    ap.add_argument("--dump-bodies", action="store_true", help="print each request body (truncated)")
    args = ap.parse_args(argv)
    mock = MockBedrock(auth=args.auth, access_key=args.access_key, secret_key=args.secret_key,
                       session_token=args.session_token, bearer_token=args.bearer_token,
                       region=args.region, answer=args.answer, port=args.port, host=args.host)
    mock.start()
    print(f"mock Bedrock on {mock.url} (auth={args.auth}, region={args.region}); Ctrl-C to stop", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            reqs = mock.snapshot()
            for r in reqs[seen:]:
                verdict = "ok" if r.verdict.ok else f"{r.verdict.error_type}: {r.verdict.message}"
                print(f"{time.strftime('%H:%M:%S')} {r.method} {r.target} status={r.status or '...'} auth={r.verdict.mode}:{verdict} body={len(r.body)}B", flush=True)
                if args.dump_bodies and r.body:
                    print("   ", r.body[:2000].decode("utf-8", "replace"), flush=True)
            seen = len(reqs)
    except KeyboardInterrupt:
        pass
    finally:
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
