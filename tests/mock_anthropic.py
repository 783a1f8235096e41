#!/usr/bin/env python3
"""A mock Anthropic API (``https://api.anthropic.com``) for the gateway's end-to-end tests.

Standard library only:

* ``POST /v1/messages`` (``?beta=true`` allowed), ``POST /v1/messages/count_tokens``,
  ``GET /v1/models``;
* checks like the API does, answering in its error shape
  ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with a ``request-id`` header:
  the ``Host`` header is this mock's; the upstream API key comes in ``x-api-key`` (or, as the
  Python SDK 2.x sends it, ``Authorization: Bearer <key>``), and any other ``x-api-key`` or
  ``Authorization`` value is refused and recorded as a leak; ``anthropic-version`` is a version
  the API knows;
  the body holds ``model`` (a first-party ID: ``claude-...`` without ``@``; Bedrock and Vertex
  spellings are 404), ``max_tokens`` and ``messages``, and not ``anthropic_version`` or
  ``anthropic_beta`` (those are Bedrock/Vertex body fields). Every ``anthropic-beta`` is accepted;
* ``stream: true`` answers SSE (``message_start`` ... ``message_stop``) with chunked
  transfer-encoding split at odd offsets, otherwise one JSON message with ``usage``;
* records every request exactly as it arrived in ``MockAnthropic.requests``;
* behaviour switches: ``fail_with(status, count)`` and model-id markers (see ``mock_http``).

Standalone: ``python tests/mock_anthropic.py --port 18082``.
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
import urllib.parse
from typing import Any

from mock_bedrock import CLIENT_CREDENTIAL_MARKERS
from mock_http import (MockHandler, MockUpstream, UpstreamError, Verdict, anthropic_events, anthropic_message,
                       text_pieces)

TEST_API_KEY = "sk-ant-mock-upstream-key"
# anthropic-version values the API knows: Claude Code sends 2023-06-01; the Python SDK 2.x sends
# its own ANTHROPIC_API_VERSION (2026-10-21).
ANTHROPIC_VERSIONS = ("2023-01-01", "2023-06-01", "2026-10-21")

DEFAULT_ANSWER = "Hello from the mock Anthropic API."

# Fixed, distinctive usage numbers (mock_bedrock: 1117/4321/321/42, mock_vertex: 2117/5321/421/52).
USAGE_INPUT = 3117
USAGE_CACHE_READ = 6321
USAGE_CACHE_CREATION = 521
USAGE_OUTPUT = 62

# Betas only the first-party API takes (Bedrock and Vertex answer 400 to them); for tests. Claude
# Code 2.1.332 in Anthropic mode sends (observed) claude-code-20250219, interleaved-thinking-2025-05-14,
# context-management-2025-06-27, per-turn-control-2026-07-01, mid-conversation-tool-changes-2026-07-01,
# thinking-token-count-2026-05-13, advanced-tool-use-2025-11-20, effort-2025-11-24.
FIRST_PARTY_ONLY_BETAS = ("oauth-2025-04-20", "prompt-caching-scope-2026-01-05", "per-turn-control-2026-07-01",
                          "mid-conversation-tool-changes-2026-07-01", "advanced-tool-use-2025-11-20")

MODELS = [
    # (id, display name, created_at)
    ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14T00:00:00Z"),
]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}

RATE_LIMIT_MESSAGE = ("Number of request tokens has exceeded your per-minute rate limit "
                      "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. "
                      "Please reduce the prompt length or the maximum tokens requested, or try again later. "
                      "You may also contact sales at https://www.anthropic.com/contact-sales to discuss your "
                      "options for a rate limit increase.")
OVERLOADED_MESSAGE = "Overloaded"
API_ERROR_MESSAGE = "Internal server error"

FIRST_PARTY_MODEL_RE = re.compile(r"claude-[a-z0-9][a-z0-9.-]*")


def anthropic_error(status: int, message: str, error_type: str | None = None,
                    headers: dict[str, str] | None = None) -> UpstreamError:
    etype = error_type or ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": etype, "message": message}}
    return UpstreamError(status, body, headers, message=f"{etype}: {message}")


def _invalid(message: str) -> UpstreamError:
    return anthropic_error(400, message)


class _AnthropicHandler(MockHandler):
    server_version = "cloudflare"

    @property
    def mock(self) -> "MockAnthropic":
        return self.server.mock

    def extra_headers(self) -> dict[str, str]:
        rid = getattr(self, "_request_id", None)
        if rid is None:
            rid = self._request_id = "req_mock" + secrets.token_hex(10)
        return {"request-id": rid, "anthropic-organization-id": "00000000-0000-4000-8000-000000000000"}

    def send_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        if isinstance(obj, dict) and obj.get("type") == "error":
            obj = {**obj, "request_id": self.extra_headers()["request-id"]}
        super().send_json(status, obj, extra)

    def process(self) -> None:
        self._request_id = None
        rec = self.rec
        mock = self.mock
        routes = {("POST", "/v1/messages"): "messages", ("POST", "/v1/messages/count_tokens"): "count_tokens",
                  ("GET", "/v1/models"): "models"}
        op = routes.get((self.command, rec.path))
        if op is None:
            m = re.fullmatch(r"/v1/models/([^/]+)", rec.path)
            op = "model" if (m and self.command == "GET") else None
        if op is None:
            raise anthropic_error(404, "Not Found")
        rec.operation = op
        query = urllib.parse.parse_qs(rec.query, keep_blank_values=True)

        host = rec.header("Host")
        if host != mock.authority:
            raise anthropic_error(404, f"Host `{host}` is not served here (expected `{mock.authority}`).",
                                  "not_found_error")
        self._check_auth()
        versions = rec.header_all("anthropic-version")
        if not versions:
            raise _invalid("anthropic-version: header is required")
        if len(versions) != 1 or versions[0] not in ANTHROPIC_VERSIONS:
            raise _invalid(f"anthropic-version: invalid version {', '.join(versions)!r}")

        if op == "models":
            return self._list_models(query)
        if op == "model":
            mid = urllib.parse.unquote(rec.path.rsplit("/", 1)[1])
            for m in mock.models():
                if m["id"] == mid:
                    return self.send_json(200, m)
            raise anthropic_error(404, f"model: {mid}")

        ctype = (rec.header("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _invalid("Content-Type must be application/json")
        try:
            req = json.loads(rec.body)
        except ValueError:
            raise _invalid("There was an error parsing the body of your request as JSON.")
        if not isinstance(req, dict):
            raise _invalid("Input should be a valid dictionary")
        for k in ("anthropic_version", "anthropic_beta"):
            if k in req:
                raise _invalid(f"{k}: Extra inputs are not permitted")
        if "model" not in req:
            raise _invalid("model: Field required")
        model = req["model"]
        if not isinstance(model, str):
            raise _invalid("model: Input should be a valid string")
        rec.model = model
        if not FIRST_PARTY_MODEL_RE.fullmatch(model):
            raise anthropic_error(404, f"model: {model}")
        if "messages" not in req:
            raise _invalid("messages: Field required")
        if not isinstance(req["messages"], list):
            raise _invalid("messages: Input should be a valid list")
        if op == "messages":
            if not req["messages"]:
                raise _invalid("messages: List should have at least 1 item after validation, not 0")
            if "max_tokens" not in req:
                raise _invalid("max_tokens: Field required")
            mt = req["max_tokens"]
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
            if "stream" in req and not isinstance(req["stream"], bool):
                raise _invalid("stream: Input should be a valid boolean")

        failure = mock._take_failure()
        if failure:
            rec.injected_failure = True
            status, options = failure
            extra = {}
            if status == 429:
                extra["retry-after"] = str(options.get("retry_after", 1))
            message = options.get("message") or {429: RATE_LIMIT_MESSAGE, 529: OVERLOADED_MESSAGE,
                                                 500: API_ERROR_MESSAGE}.get(status, f"Injected failure ({status}).")
            raise anthropic_error(status, message, options.get("error_type"), extra)

        if op == "count_tokens":
            n = max(1, len(json.dumps(req.get("messages")) + json.dumps(req.get("system", ""))) // 4)
            return self.send_json(200, {"input_tokens": n})
        if "mock-hang" in model:
            return self.hang()
        msg_id = "msg_01Mock" + secrets.token_hex(10)
        usage = {"input": USAGE_INPUT, "cache_read": USAGE_CACHE_READ, "cache_creation": USAGE_CACHE_CREATION,
                 "output": USAGE_OUTPUT}
        if req.get("stream") is True:
            return self.stream_events(anthropic_events(msg_id, model, text_pieces(mock.answer), usage),
                                      marker_model=model)
        self.send_json(200, anthropic_message(msg_id, model, mock.answer, usage))

    def _check_auth(self) -> None:
        """The upstream key in ``x-api-key`` or ``Authorization: Bearer``; nothing else in either."""
        mock = self.mock
        rec = self.rec
        keys, auths = rec.header_all("x-api-key"), rec.header_all("Authorization")
        rec.verdict = Verdict(ok=False, mode="x-api-key" if keys or not auths else "bearer")

        def deny(reason: str, message: str) -> UpstreamError:
            rec.verdict.error_type, rec.verdict.message = "authentication_error", reason
            return anthropic_error(401, message)

        if auths and (len(auths) != 1 or auths[0] != f"Bearer {mock.api_key}"):
            raise deny("Authorization is not the upstream key", "Invalid bearer token")
        if keys and (len(keys) != 1 or keys[0] != mock.api_key):
            raise deny("wrong x-api-key", "invalid x-api-key")
        if not keys and not auths:
            raise deny("no x-api-key", "x-api-key header is required")
        rec.verdict.ok = True

    def _list_models(self, query: dict[str, list[str]]) -> None:
        models = self.mock.models()
        try:
            limit = int((query.get("limit") or ["20"])[0])
        except ValueError:
            raise _invalid("limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            raise _invalid("limit: Input should be between 1 and 1000")
        after = (query.get("after_id") or [None])[0]
        start = 0
        if after:
            ids = [m["id"] for m in models]
            if after not in ids:
                raise _invalid(f"after_id: {after} not found")
            start = ids.index(after) + 1
        page = models[start:start + limit]
        self.send_json(200, {"data": page, "has_more": start + limit < len(models),
                             "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None})


class MockAnthropic(MockUpstream):
    """In-process mock Anthropic API; ``start()`` binds 127.0.0.1 on a free port."""
    name = "mock-anthropic"
    handler = _AnthropicHandler

    def __init__(self, *, api_key: str = TEST_API_KEY, answer: str = DEFAULT_ANSWER, port: int = 0,
                 host: str = "127.0.0.1", tls: tuple[str, str] | None = None, split_delay: float = 0.002,
                 verbose: bool = False):
        super().__init__(port=port, host=host, tls=tls, split_delay=split_delay, verbose=verbose)
        self.api_key, self.answer = api_key, answer

    def models(self) -> list[dict[str, Any]]:
        return [{"type": "model", "id": mid, "display_name": name, "created_at": created}
                for mid, name, created in MODELS]

    def leaked_credentials(self, markers=CLIENT_CREDENTIAL_MARKERS) -> list[tuple[str, list[str]]]:
        """Client credentials that reached the mock: the markers anywhere, or an ``Authorization``
        or ``x-api-key`` header that is not the upstream key."""
        out = []
        for r in self.snapshot():
            found = r.leaked_credentials(markers)
            if any(a != f"Bearer {self.api_key}" for a in r.header_all("Authorization")):
                found.append("Authorization that is not the upstream key")
            if any(k != self.api_key for k in r.header_all("x-api-key")):
                found.append("x-api-key that is not the upstream key")
            if found:
                out.append((r.target, found))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18082)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api-key", default=TEST_API_KEY)
    ap.add_argument("--answer", default=DEFAULT_ANSWER)
    ap.add_argument("--dump-bodies", action="store_true", help="print each request body (truncated)")
    args = ap.parse_args(argv)
    mock = MockAnthropic(api_key=args.api_key, answer=args.answer, port=args.port, host=args.host)
    mock.start()
    print(f"mock Anthropic API on {mock.url} (x-api-key {mock.api_key}); Ctrl-C to stop", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            reqs = mock.snapshot()
            for r in reqs[seen:]:
                verdict = "ok" if r.verdict.ok else f"{r.verdict.error_type} {r.verdict.message}".strip()
                print(f"{time.strftime('%H:%M:%S')} {r.method} {r.target} status={r.status or '...'} "
                      f"auth={r.verdict.mode}:{verdict} body={len(r.body)}B {r.error[:200]}", flush=True)
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
