"""The Anthropic API front door (``/v1/messages``, ``/v1/messages/count_tokens``, ``/v1/models`` at the
gateway's root): the ``Anthropic`` SDK and Claude Code in ``ANTHROPIC_BASE_URL`` mode, through the
gateway, to the strict mock Anthropic API.

The client holds only the gateway credential; at the mock every call must carry the backend's own
API key (``x-api-key``) and nothing of the client's. ``GET /v1/models`` is answered by the gateway
from its model catalog (Claude Code's gateway model discovery lists what it answers)."""
from __future__ import annotations

import json
import uuid

import pytest

import mock_anthropic as ma
from support import (GW_CREDENTIAL, anthropic_backend, claude_anthropic_env, claude_failure_text, raw_request,
                     run_claude, wait_request_logs)

SONNET_1P = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "say hello"}]
# Catalog models every Anthropic backend can serve (README of the issue: built-in entries).
CATALOG = ("claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4",
           "claude-opus-4", "claude-3-7-sonnet", "claude-3-5-haiku", "claude-opus-5-5", "claude-sonnet-5-5",
           "claude-opus-4-8")


@pytest.fixture
def agw(start_gateway, mock_anthropic):
    """A gateway whose only backend is the mock Anthropic API."""
    return start_gateway(backends=[anthropic_backend(mock_anthropic)])


def anthropic_client(gw, capture: list | None = None, **kw):
    """``anthropic.Anthropic`` at the gateway's root with the gateway credential (the SDK 2.x sends
    it as ``Authorization: Bearer``); ``capture`` collects (method, raw path, headers, body)."""
    import anthropic
    import httpx2

    hooks = {"request": [lambda req: capture.append((req.method, req.url.raw_path, dict(req.headers), req.read()))]} \
        if capture is not None else {}
    return anthropic.Anthropic(base_url=gw.url, api_key=GW_CREDENTIAL, max_retries=0,
                               http_client=httpx2.Client(event_hooks=hooks, timeout=30), **kw)


def check_anthropic_call(mock, rec):
    """One call at the mock: accepted, with the backend's key in ``x-api-key`` and nothing of the client's."""
    assert rec.auth_ok, f"mock refused the gateway's key: {rec.verdict}\n{mock.describe()}"
    assert rec.header_all("x-api-key") == [mock.api_key]
    assert rec.header("Authorization") is None, "the client's Authorization must not go upstream"
    assert rec.header("Host") == mock.authority
    assert rec.status == 200, mock.describe()
    assert not mock.leaked_credentials(), f"client credentials reached the upstream: {mock.leaked_credentials()}"


def usage_in(entry: dict) -> None:
    got = tuple(entry.get(k) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
    want = (ma.USAGE_INPUT, ma.USAGE_OUTPUT, ma.USAGE_CACHE_READ, ma.USAGE_CACHE_CREATION)
    assert got == tuple(str(n) for n in want), entry["_line"]


def assert_anthropic_error(r, status: int, etype: str) -> str:
    assert r.status == status, (r.status, r.body)
    body = r.json()
    assert body.get("type") == "error" and body["error"]["type"] == etype, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert "x-amzn-errortype" not in r.headers
    return body["error"]["message"]


# ------------------------------------------------------------------------------------------------
# The Anthropic SDK
# ------------------------------------------------------------------------------------------------

def test_anthropic_sdk_create_served_by_anthropic_backend(agw, mock_anthropic):
    sent = []
    rid = f"anth-create-{uuid.uuid4()}"
    msg = anthropic_client(agw, sent).messages.create(model=SONNET_1P, max_tokens=64, messages=MESSAGES,
                                                      extra_headers={"x-request-id": rid})
    assert msg.content[0].text == ma.DEFAULT_ANSWER
    assert msg.usage.cache_read_input_tokens == ma.USAGE_CACHE_READ
    _, path, headers, body = sent[-1]
    assert path == b"/v1/messages" and headers["authorization"] == f"Bearer {GW_CREDENTIAL}"
    rec = mock_anthropic.by_operation("messages")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.path == "/v1/messages"
    assert rec.body == body, "same protocol: the body must reach the API byte for byte"
    assert rec.header("anthropic-version") == headers["anthropic-version"]
    e = wait_request_logs(agw, lambda e: e.get("request_id") == rid)
    assert e, agw.log()[-3000:]
    assert (e[0].get("front_door"), e[0].get("backend"), e[0].get("status")) == ("anthropic", "mock-anthropic", "200"), \
        e[0]["_line"]
    usage_in(e[0])


def test_anthropic_sdk_stream_served_by_anthropic_backend(agw, mock_anthropic):
    sent = []
    rid = f"anth-stream-{uuid.uuid4()}"
    with anthropic_client(agw, sent).messages.stream(model=SONNET_1P, max_tokens=64, messages=MESSAGES,
                                                     extra_headers={"x-request-id": rid}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == ma.DEFAULT_ANSWER
    assert final.usage.output_tokens == ma.USAGE_OUTPUT
    rec = mock_anthropic.by_operation("messages")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.body == sent[-1][3]
    assert mock_anthropic.wait_for(lambda _: rec.stream_completed), "the mock did not finish its stream"
    e = wait_request_logs(agw, lambda e: e.get("request_id") == rid)
    assert e and e[0].get("status") == "200", agw.log()[-3000:]
    usage_in(e[0])


def test_beta_messages_keep_the_beta_query_header_and_every_beta(agw, mock_anthropic):
    """The Anthropic backend accepts every beta: nothing is dropped, first-party-only ones included."""
    sent = []
    rid = f"anth-beta-{uuid.uuid4()}"
    betas = ["context-1m-2025-08-07", "oauth-2025-04-20", "prompt-caching-scope-2026-01-05"]
    msg = anthropic_client(agw, sent).beta.messages.create(model=SONNET_1P, max_tokens=64, messages=MESSAGES,
                                                           betas=betas, extra_headers={"x-request-id": rid})
    assert msg.content[0].text == ma.DEFAULT_ANSWER
    rec = mock_anthropic.by_operation("messages")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.header("anthropic-beta") == ",".join(betas)
    assert rec.body == sent[-1][3]
    e = wait_request_logs(agw, lambda e: e.get("request_id") == rid)
    assert e and e[0].get("dropped_betas", "") in ("", "-"), e[0]["_line"] if e else agw.log()[-3000:]


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", SONNET_1P])
def test_same_provider_requests_go_upstream_byte_exact(agw, mock_anthropic, model):
    """Anthropic door -> Anthropic backend: the client's body, with its key order, spacing and model
    alias, reaches the upstream unchanged (no parse and re-serialize)."""
    body = ('{ "stream":false,"model" : "%s",\n  "messages":[{"role":"user","content":"say hello"}],'
            '"max_tokens":64,  "metadata":{"user_id":"u-1"} }' % model).encode()
    r = raw_request(agw.url, "POST", "/v1/messages", body,
                    {"x-api-key": GW_CREDENTIAL, "anthropic-version": "2023-06-01"})
    assert r.status == 200, (r.status, r.body)
    rec = mock_anthropic.by_operation("messages")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.body == body, f"the body changed on its way:\n sent {body!r}\n got  {rec.body!r}"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages?beta=true"])
def test_x_api_key_client_credential_is_replaced(agw, mock_anthropic, path):
    """Claude Code's ``?beta=true`` marker and a client ``x-api-key`` (as with ANTHROPIC_API_KEY)."""
    body = json.dumps({"model": SONNET_1P, "max_tokens": 16, "messages": MESSAGES}).encode()
    r = raw_request(agw.url, "POST", path, body,
                    {"x-api-key": GW_CREDENTIAL, "anthropic-version": "2023-06-01", "Cookie": f"k={GW_CREDENTIAL}",
                     "anthropic-beta": "claude-code-20250219,oauth-2025-04-20"})
    assert r.status == 200, r.body
    assert r.json()["content"][0]["text"] == ma.DEFAULT_ANSWER
    rec = mock_anthropic.by_operation("messages")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.path == "/v1/messages" and rec.body == body
    assert rec.header("anthropic-version") == "2023-06-01" and rec.header("Cookie") is None
    assert rec.header("anthropic-beta") == "claude-code-20250219,oauth-2025-04-20"


def test_count_tokens_through_the_anthropic_door(agw, mock_anthropic):
    sent = []
    n = anthropic_client(agw, sent).messages.count_tokens(model=SONNET_1P, messages=MESSAGES)
    assert n.input_tokens == max(1, len(json.dumps(MESSAGES) + json.dumps("")) // 4)
    rec = mock_anthropic.by_operation("count_tokens")[-1]
    check_anthropic_call(mock_anthropic, rec)
    assert rec.path == "/v1/messages/count_tokens" and rec.body == sent[-1][3]


def test_same_protocol_upstream_error_passes_unmodified(agw, mock_anthropic):
    import anthropic

    mock_anthropic.fail_with(429, count=1)
    with pytest.raises(anthropic.RateLimitError) as e:
        anthropic_client(agw).messages.create(model=SONNET_1P, max_tokens=64, messages=MESSAGES)
    assert e.value.status_code == 429
    body = e.value.body
    assert body["type"] == "error" and body["error"] == {"type": "rate_limit_error", "message": ma.RATE_LIMIT_MESSAGE}
    assert body["request_id"].startswith("req_mock"), "the upstream body must pass unmodified"
    assert e.value.response.headers.get("retry-after") == "1"


def test_unknown_path_is_404_in_anthropic_shape(agw, mock_anthropic):
    for method, path in (("POST", "/v1/nothing"), ("GET", "/v2/models"), ("POST", "/v1/messages/batches/x")):
        r = raw_request(agw.url, method, path, b"{}", {"x-api-key": GW_CREDENTIAL})
        assert_anthropic_error(r, 404, "not_found_error")
    assert mock_anthropic.snapshot() == []


# ------------------------------------------------------------------------------------------------
# GET /v1/models from the catalog
# ------------------------------------------------------------------------------------------------

def test_models_are_listed_from_the_catalog(agw, mock_anthropic):
    client = anthropic_client(agw)
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert ids and all(i.startswith("claude") for i in ids), ids
    assert set(CATALOG) <= set(ids), f"catalog models missing: {set(CATALOG) - set(ids)}"
    assert len(ids) == len(set(ids))
    for m in models:
        assert m.type == "model" and m.display_name and m.created_at, m

    r = raw_request(agw.url, "GET", "/v1/models?limit=1000", headers={"x-api-key": GW_CREDENTIAL,
                                                                       "anthropic-version": "2023-06-01"})
    assert r.status == 200, r.body
    page = r.json()
    assert [m["id"] for m in page["data"]] == ids
    assert page["has_more"] is False and page["first_id"] == ids[0] and page["last_id"] == ids[-1]
    assert all(set(m) >= {"type", "id", "display_name", "created_at"} for m in page["data"])

    one = client.models.retrieve("claude-sonnet-4-5")
    assert one.id == "claude-sonnet-4-5" and one.type == "model" and one.display_name
    r = raw_request(agw.url, "GET", "/v1/models/claude-no-such-model-1", headers={"x-api-key": GW_CREDENTIAL})
    assert_anthropic_error(r, 404, "not_found_error")

    assert mock_anthropic.snapshot() == [], "the gateway answers /v1/models itself"
    entries = wait_request_logs(agw, lambda e: e.get("operation") == "list-models", count=3)
    assert [e.get("status") for e in entries][:2] == ["200", "200"], [e["_line"] for e in entries]


def test_models_list_only_what_a_backend_can_serve_to_the_door(start_gateway, mock_anthropic):
    extra = """
[[models]]
name = "claude-house-model"
anthropic = "claude-house-model-20990101"
display_name = "House Model"

[[models]]
name = "claude-vertex-only-9"
vertex = "claude-vertex-only-9@20990101"
"""
    gw = start_gateway(backends=[anthropic_backend(mock_anthropic)], extra=extra)
    models = {m.id: m for m in anthropic_client(gw).models.list()}
    assert "claude-house-model" in models and models["claude-house-model"].display_name == "House Model"
    assert "claude-vertex-only-9" not in models, "no backend of this gateway can serve it to the Anthropic door"
    assert "claude-sonnet-4-5" in models


# ------------------------------------------------------------------------------------------------
# Claude Code in ANTHROPIC_BASE_URL mode
# ------------------------------------------------------------------------------------------------

@pytest.mark.claude_code
def test_claude_code_anthropic_mode_served_by_anthropic_backend(agw, mock_anthropic, tmp_path):
    home = tmp_path / "claude-home"
    home.mkdir()
    p = run_claude(claude_anthropic_env(agw.url, home), "say hello", timeout=120)
    assert p.returncode == 0, claude_failure_text(p)
    assert ma.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    calls = mock_anthropic.by_operation("messages")
    assert calls, mock_anthropic.describe()
    for rec in calls:
        check_anthropic_call(mock_anthropic, rec)
    rec = calls[-1]
    body = rec.json()
    assert body["stream"] is True and body["model"].startswith("claude-") and body["tools"] and body["system"]
    assert "claude-code-20250219" in rec.header("anthropic-beta")
    assert rec.header("anthropic-version") == "2023-06-01"
    session = rec.header("X-Claude-Code-Session-Id")
    assert session
    e = wait_request_logs(agw, lambda e: e.get("session_id") == session and e.get("status") == "200")
    assert e and e[-1].get("front_door") == "anthropic" and e[-1].get("backend") == "mock-anthropic", agw.log()[-3000:]
    usage_in(e[-1])


@pytest.mark.claude_code
def test_claude_code_gateway_model_discovery_is_answered_by_the_gateway(agw, mock_anthropic, tmp_path):
    home = tmp_path / "claude-home"
    home.mkdir()
    env = claude_anthropic_env(agw.url, home, CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY="1")
    p = run_claude(env, "say hello", timeout=120)
    assert p.returncode == 0 and ma.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)

    listed = wait_request_logs(agw, lambda e: e.get("operation") == "list-models")
    assert listed, f"Claude Code's GET /v1/models did not reach the gateway:\n{agw.log()[-3000:]}"
    assert listed[0].get("status") == "200" and listed[0].get("front_door") == "anthropic", listed[0]["_line"]
    assert mock_anthropic.by_operation("models") == [], "the gateway answers /v1/models itself"
    assert not mock_anthropic.leaked_credentials()

    # What Claude Code put in its /model picker: its cache of the gateway's answer.
    cache = home / ".claude" / "cache" / "gateway-models.json"
    assert cache.exists(), f"no model-discovery cache in {home}:\n{claude_failure_text(p)}"
    picked = json.loads(cache.read_text())
    assert picked["baseUrl"].rstrip("/") == agw.url
    ids = [m["id"] for m in picked["models"]]
    assert set(CATALOG) <= set(ids), f"picker lacks catalog models: {set(CATALOG) - set(ids)} (has {ids})"
    assert all(i.startswith("claude") for i in ids)
    assert all(m.get("display_name") for m in picked["models"])
