"""Self-checks of the mock Anthropic API, with no gateway in between: the mock accepts what the API
accepts (the Anthropic SDK straight at it works) and rejects what the API rejects, so a passing
gateway test means something."""
from __future__ import annotations

import json
import socket

import pytest

import mock_anthropic as ma
from mock_http import parse_sse
from support import raw_request

SONNET = "claude-sonnet-4-5-20250929"


def body(**extra) -> dict:
    b = {"model": SONNET, "max_tokens": 64, "messages": [{"role": "user", "content": "say hello"}]}
    b.update(extra)
    return {k: v for k, v in b.items() if v is not None}


def call(mock, payload=None, path="/v1/messages", headers=None, method="POST", key=True):
    h = {"anthropic-version": "2023-06-01"}
    if key:
        h["x-api-key"] = mock.api_key
    h.update(headers or {})
    data = None if method == "GET" else (payload if isinstance(payload, bytes) else json.dumps(body() if payload is None else payload).encode())
    return raw_request(mock.url, method, path, data, h)


def assert_error(r, status: int, etype: str, needle: str = "") -> str:
    assert r.status == status, (r.status, r.body)
    out = r.json()
    assert out["type"] == "error" and out["error"]["type"] == etype, out
    assert needle in out["error"]["message"], out["error"]["message"]
    assert r.headers["request-id"].startswith("req_") and out["request_id"] == r.headers["request-id"]
    return out["error"]["message"]


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------

def test_valid_message_passes_with_usage(mock_anthropic):
    r = call(mock_anthropic)
    assert r.status == 200 and r.headers["content-type"] == "application/json" and r.headers["request-id"]
    out = r.json()
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == SONNET
    assert out["id"].startswith("msg_") and out["stop_reason"] == "end_turn"
    assert out["content"] == [{"type": "text", "text": ma.DEFAULT_ANSWER}]
    assert out["usage"] == {"input_tokens": 3117, "cache_creation_input_tokens": 521,
                            "cache_read_input_tokens": 6321, "output_tokens": 62}
    assert (ma.USAGE_INPUT, ma.USAGE_CACHE_READ, ma.USAGE_CACHE_CREATION, ma.USAGE_OUTPUT) == (3117, 6321, 521, 62)
    rec = mock_anthropic.snapshot()[-1]
    assert rec.auth_ok and rec.operation == "messages" and rec.model == SONNET
    assert mock_anthropic.leaked_credentials() == []


def test_x_api_key_must_be_the_upstream_key(mock_anthropic):
    assert_error(call(mock_anthropic, key=False), 401, "authentication_error", "x-api-key header is required")
    assert_error(call(mock_anthropic, key=False, headers={"x-api-key": "sk-gw-test"}), 401, "authentication_error",
                 "invalid x-api-key")
    leaks = mock_anthropic.leaked_credentials()
    assert leaks and "sk-gw-test" in leaks[0][1] and "x-api-key that is not the upstream key" in leaks[0][1]


def test_an_authorization_header_other_than_the_key_is_refused_and_recorded_as_a_leak(mock_anthropic):
    r = call(mock_anthropic, headers={"Authorization": "Bearer some-client-token"})
    assert_error(r, 401, "authentication_error", "Invalid bearer token")
    assert mock_anthropic.leaked_credentials() == [("/v1/messages", ["Authorization that is not the upstream key"])]
    r = call(mock_anthropic, key=False, headers={"Authorization": "Bearer sk-gw-test"})
    assert_error(r, 401, "authentication_error")
    assert "sk-gw-test" in mock_anthropic.leaked_credentials()[-1][1]


def test_the_upstream_key_as_a_bearer_token_passes(mock_anthropic):
    """The Python SDK 2.x sends its API key as ``Authorization: Bearer``."""
    r = call(mock_anthropic, key=False, headers={"Authorization": f"Bearer {mock_anthropic.api_key}"})
    assert r.status == 200, r.body
    assert mock_anthropic.snapshot()[-1].verdict.mode == "bearer"
    assert mock_anthropic.leaked_credentials() == []


def test_anthropic_version_header_is_required_and_checked(mock_anthropic):
    r = raw_request(mock_anthropic.url, "POST", "/v1/messages", json.dumps(body()).encode(),
                    {"x-api-key": mock_anthropic.api_key})
    assert_error(r, 400, "invalid_request_error", "anthropic-version: header is required")
    assert_error(call(mock_anthropic, headers={"anthropic-version": "vertex-2023-10-16"}), 400,
                 "invalid_request_error", "anthropic-version")
    for v in ma.ANTHROPIC_VERSIONS:
        assert call(mock_anthropic, headers={"anthropic-version": v}).status == 200


def test_host_must_be_the_mocks(mock_anthropic):
    assert_error(call(mock_anthropic, headers={"Host": "api.anthropic.com"}), 404, "not_found_error", "Host")


@pytest.mark.parametrize("change,status,etype,needle", [
    ({"anthropic_version": "bedrock-2023-05-31"}, 400, "invalid_request_error", "anthropic_version: Extra inputs are not permitted"),
    ({"anthropic_beta": ["context-1m-2025-08-07"]}, 400, "invalid_request_error", "anthropic_beta: Extra inputs are not permitted"),
    ({"model": None}, 400, "invalid_request_error", "model: Field required"),
    ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens: Field required"),
    ({"max_tokens": "64"}, 400, "invalid_request_error", "max_tokens"),
    ({"messages": None}, 400, "invalid_request_error", "messages: Field required"),
    ({"messages": []}, 400, "invalid_request_error", "messages: List should have at least 1 item"),
    ({"stream": "yes"}, 400, "invalid_request_error", "stream"),
    ({"model": "claude-sonnet-4-5@20250929"}, 404, "not_found_error", "model: claude-sonnet-4-5@20250929"),
    ({"model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"}, 404, "not_found_error", "model: us.anthropic."),
    ({"model": "anthropic.claude-sonnet-4-5-20250929-v1:0"}, 404, "not_found_error", "model: anthropic."),
    ({"model": "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"}, 404, "not_found_error", "model: arn:"),
])
def test_invalid_bodies_are_refused_like_the_api(mock_anthropic, change, status, etype, needle):
    assert_error(call(mock_anthropic, body(**change)), status, etype, needle)


def test_body_must_be_json(mock_anthropic):
    assert_error(call(mock_anthropic, b"{nope"), 400, "invalid_request_error", "JSON")


def test_every_beta_is_accepted_and_beta_query_allowed(mock_anthropic):
    betas = ",".join(ma.FIRST_PARTY_ONLY_BETAS + ("claude-code-20250219", "context-1m-2025-08-07", "made-up-2030-01-01"))
    r = call(mock_anthropic, path="/v1/messages?beta=true", headers={"anthropic-beta": betas})
    assert r.status == 200, r.body
    assert mock_anthropic.snapshot()[-1].query == "beta=true"


def test_unknown_paths_are_404(mock_anthropic):
    assert_error(call(mock_anthropic, path="/v1/complete"), 404, "not_found_error")
    assert_error(call(mock_anthropic, path="/model/x/invoke"), 404, "not_found_error")


# ------------------------------------------------------------------------------------------------
# answers
# ------------------------------------------------------------------------------------------------

def _read_chunked_raw(sock) -> tuple[bytes, list[bytes]]:
    f = sock.makefile("rb")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += f.read(1)
    chunks = []
    while True:
        size = int(f.readline().strip(), 16)
        if size == 0:
            f.readline()
            break
        chunks.append(f.read(size))
        f.readline()
    return head, chunks


def raw_stream(mock, payload) -> tuple[bytes, list[bytes]]:
    data = json.dumps(payload).encode()
    s = socket.create_connection(("127.0.0.1", mock.port))
    s.sendall(b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: %s\r\nx-api-key: %s\r\nanthropic-version: 2023-06-01\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (mock.authority.encode(), mock.api_key.encode(), len(data), data))
    try:
        return _read_chunked_raw(s)
    finally:
        s.close()


def test_stream_is_sse_split_across_http_chunks(mock_anthropic):
    head, chunks = raw_stream(mock_anthropic, body(stream=True))
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head and b"request-id: req_" in head
    data = b"".join(chunks)
    events = parse_sse(data)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(n == e["type"] for n, e in events)
    text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
    assert text == ma.DEFAULT_ANSWER
    assert events[0][1]["message"]["usage"] == {"input_tokens": 3117, "cache_creation_input_tokens": 521,
                                                "cache_read_input_tokens": 6321, "output_tokens": 1}
    assert events[-2][1]["usage"]["output_tokens"] == 62
    assert len(chunks) > 2 * len(events)
    ends, pos = [], 0
    for c in chunks[:-1]:
        pos += len(c)
        ends.append(pos)
    assert any(not data[:e].endswith(b"\n\n") for e in ends)


def test_stream_error_marker_ends_with_an_error_event(mock_anthropic):
    _, chunks = raw_stream(mock_anthropic, body(model="claude-mock-stream-error", stream=True))
    events = parse_sse(b"".join(chunks))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_count_tokens_and_models(mock_anthropic):
    r = call(mock_anthropic, {"model": SONNET, "messages": [{"role": "user", "content": "hello " * 40}]},
             path="/v1/messages/count_tokens")
    assert r.status == 200 and r.json()["input_tokens"] > 10
    assert_error(call(mock_anthropic, {"messages": [{"role": "user", "content": "x"}]}, path="/v1/messages/count_tokens"),
                 400, "invalid_request_error", "model: Field required")
    r = call(mock_anthropic, method="GET", path="/v1/models")
    assert r.status == 200
    out = r.json()
    assert [m["id"] for m in out["data"]] == [m[0] for m in ma.MODELS] and out["has_more"] is False
    assert all(m["type"] == "model" and m["display_name"] for m in out["data"])
    page = call(mock_anthropic, method="GET", path="/v1/models?limit=2").json()
    assert len(page["data"]) == 2 and page["has_more"] and page["last_id"] == ma.MODELS[1][0]
    nxt = call(mock_anthropic, method="GET", path=f"/v1/models?limit=2&after_id={page['last_id']}").json()
    assert nxt["first_id"] == ma.MODELS[2][0]
    assert call(mock_anthropic, method="GET", path=f"/v1/models/{SONNET}").json()["id"] == SONNET
    assert_error(call(mock_anthropic, method="GET", path="/v1/models", key=False), 401, "authentication_error")


def test_fail_with_answers_api_errors_then_recovers(mock_anthropic):
    mock_anthropic.fail_with(429, count=2)
    for _ in range(2):
        r = call(mock_anthropic)
        assert_error(r, 429, "rate_limit_error", "rate limit")
        assert r.headers["retry-after"] == "1"
    assert call(mock_anthropic).status == 200
    mock_anthropic.fail_with(529)
    assert_error(call(mock_anthropic), 529, "overloaded_error", "Overloaded")
    assert_error(call(mock_anthropic, body(stream=True)), 529, "overloaded_error")
    # a request the mock would refuse anyway still gets its own error
    assert_error(call(mock_anthropic, key=False), 401, "authentication_error")
    mock_anthropic.fail_with(500)
    assert_error(call(mock_anthropic), 500, "api_error")
    mock_anthropic.fail_with(429, retry_after=7)
    assert call(mock_anthropic).headers["retry-after"] == "7"
    mock_anthropic.fail_with(None)
    assert call(mock_anthropic).status == 200
    assert sum(r.injected_failure for r in mock_anthropic.snapshot()) == 6


# ------------------------------------------------------------------------------------------------
# the Anthropic SDK straight at the mock
# ------------------------------------------------------------------------------------------------

def test_anthropic_sdk_direct_create_stream_count_and_models(mock_anthropic):
    import anthropic
    client = anthropic.Anthropic(base_url=mock_anthropic.url, api_key=mock_anthropic.api_key, max_retries=0)
    msg = client.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == ma.DEFAULT_ANSWER and msg.usage.cache_creation_input_tokens == ma.USAGE_CACHE_CREATION
    with client.messages.stream(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == ma.DEFAULT_ANSWER and final.usage.output_tokens == ma.USAGE_OUTPUT
    beta = client.beta.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}],
                                       betas=["context-1m-2025-08-07", "oauth-2025-04-20"])
    assert beta.content[0].text == ma.DEFAULT_ANSWER
    assert client.messages.count_tokens(model=SONNET, messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
    assert [m.id for m in client.models.list()] == [m[0] for m in ma.MODELS]
    reqs = mock_anthropic.snapshot()
    assert all(r.auth_ok and r.status == 200 for r in reqs), mock_anthropic.describe()
    assert reqs[2].header("anthropic-beta") == "context-1m-2025-08-07,oauth-2025-04-20"
    assert mock_anthropic.leaked_credentials() == []
    mock_anthropic.fail_with(529, count=1)
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.claude_code
def test_claude_code_direct_against_mock_anthropic(mock_anthropic, tmp_path):
    from support import claude_anthropic_env, claude_failure_text, run_claude
    env = claude_anthropic_env(mock_anthropic.url, tmp_path, ANTHROPIC_AUTH_TOKEN=None,
                               ANTHROPIC_API_KEY=mock_anthropic.api_key)
    p = run_claude(env, timeout=120)
    assert p.returncode == 0 and ma.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    calls = mock_anthropic.by_operation("messages")
    assert calls and all(r.status == 200 for r in calls), mock_anthropic.describe()
    r = calls[-1]
    assert r.query == "beta=true" and r.header("x-api-key") == mock_anthropic.api_key
    assert r.header("anthropic-version") == "2023-06-01" and "claude-code-20250219" in r.header("anthropic-beta")
    body = r.json()
    assert body["stream"] is True and body["model"].startswith("claude-") and "anthropic_version" not in body
    assert mock_anthropic.leaked_credentials() == []
