"""Requests that cross providers, failover, passive health and weighted routing.

A client speaks one protocol (Bedrock, Vertex or the Anthropic API) and a route sends it to a
backend of another kind: the gateway translates the request (model ID from the catalog, path,
``anthropic_version``, ``anthropic-beta`` header vs body ``anthropic_beta``, ``stream``), drops the
betas the target does not take, signs or authorizes for the target, and translates the answer back
(SSE <-> Bedrock event-stream frames, token-count shapes, error bodies). The strict mocks check
the translated request; the real clients (boto3, the Anthropic SDK, Claude Code) check the answer."""
from __future__ import annotations

import base64
import json
import re
import uuid

import botocore.exceptions
import pytest

import mock_anthropic as ma
import mock_bedrock as mb
import mock_vertex as mv
from support import (GW_CREDENTIAL, SONNET, admin_get, anthropic_body, attempts_of, boto_client,
                     claude_anthropic_env, claude_bedrock_env, claude_failure_text, metric_sum, mock_backend,
                     request_log_entries, run_claude, vertex_backend, wait_request_logs)

VERTEX_SONNET = "claude-sonnet-4-5@20250929"
SONNET_1P = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "say hello"}]
BODY = json.dumps(anthropic_body()).encode()
BEDROCK_ID_RE = re.compile(r"((us|eu|apac|global|jp|au)\.)?anthropic\.claude-[a-z0-9.-]+(-v\d+(:\d+)?)?")
FIRST_PARTY_ONLY = set(ma.FIRST_PARTY_ONLY_BETAS) | {"claude-code-20250219", "oauth-2025-04-20"}


def route(*backends: str, models=("*",), front_doors=None, strategy=None, weights=None) -> str:
    lines = ["[[routes]]", "models = " + json.dumps(list(models))]
    if front_doors:
        lines.append("front_doors = " + json.dumps(list(front_doors)))
    lines.append("backends = " + json.dumps(list(backends)))
    if strategy:
        lines.append(f'strategy = "{strategy}"')
    if weights:
        lines.append("weights = " + json.dumps(list(weights)))
    return "\n".join(lines) + "\n"


@pytest.fixture
def sa_file(mock_vertex, tmp_path):
    return mock_vertex.write_service_account(tmp_path / "service-account.json")


def anthropic_client(gw, capture: list | None = None):
    import anthropic
    import httpx2

    hooks = {"request": [lambda req: capture.append((req.method, req.url.raw_path, dict(req.headers), req.read()))]} \
        if capture is not None else {}
    return anthropic.Anthropic(base_url=gw.url, api_key=GW_CREDENTIAL, max_retries=0,
                               http_client=httpx2.Client(event_hooks=hooks, timeout=30))


def bedrock_model_calls(mock) -> list:
    return [r for r in mock.snapshot() if r.operation.startswith(("invoke", "converse", "count"))]


def check_vertex_call(mock, rec) -> dict:
    assert rec.auth_ok and rec.verdict.mode == "bearer:jwt-bearer", f"{rec.verdict}\n{mock.describe()}"
    assert rec.path.startswith(f"/v1/projects/{mock.project}/locations/{mock.region}/publishers/anthropic/models/")
    assert rec.header("Host") == mock.authority
    assert rec.status == 200, mock.describe()
    assert not mock.leaked_credentials(), mock.leaked_credentials()
    return rec.json()


def check_bedrock_call(mock, rec) -> dict:
    assert rec.sig_ok, f"bad signature: {rec.verdict.error_type}: {rec.verdict.message}\n{mock.describe()}"
    assert rec.verdict.access_key == mb.TEST_ACCESS_KEY
    assert rec.status == 200, mock.describe()
    assert not mock.leaked_credentials(), mock.leaked_credentials()
    body = rec.json()
    if rec.operation.startswith("invoke"):
        assert body["anthropic_version"] == "bedrock-2023-05-31"
        assert "model" not in body and "stream" not in body
        assert not FIRST_PARTY_ONLY & set(body.get("anthropic_beta") or []), body.get("anthropic_beta")
    return body


def log_entry(gw, rid: str) -> dict:
    e = wait_request_logs(gw, lambda e: e.get("request_id") == rid)
    assert e, f"no request log line for {rid}:\n{gw.log()[-3000:]}"
    return e[0]


def usage_of(entry: dict) -> tuple:
    return tuple(entry.get(k) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))


VERTEX_USAGE = tuple(str(n) for n in (mv.USAGE_INPUT, mv.USAGE_OUTPUT, mv.USAGE_CACHE_READ, mv.USAGE_CACHE_CREATION))
BEDROCK_USAGE = tuple(str(n) for n in (mb.USAGE_INPUT, mb.USAGE_OUTPUT, mb.USAGE_CACHE_READ, mb.USAGE_CACHE_CREATION))


def with_request_id(client, rid: str):
    """Make a boto3 client send ``x-request-id: rid``."""
    client.meta.events.register("before-sign.*.*", lambda request, **_: request.headers.__setitem__("x-request-id", rid))
    return client


# ------------------------------------------------------------------------------------------------
# Anthropic door -> Bedrock backend
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def a2b(start_gateway, make_mock):
    """Anthropic front door routed to a Bedrock backend that also checks the anthropic-beta header."""
    bedrock = make_mock(check_beta_header=True)
    gw = start_gateway(backends=[mock_backend(bedrock)],
                       extra=route("mock-bedrock", front_doors=["anthropic"]))
    return gw, bedrock


@pytest.mark.claude_code
def test_claude_code_anthropic_mode_served_by_bedrock(a2b, tmp_path):
    gw, bedrock = a2b
    home = tmp_path / "claude-home"
    home.mkdir()
    p = run_claude(claude_anthropic_env(gw.url, home), "say hello", timeout=120)
    assert p.returncode == 0, claude_failure_text(p)
    assert mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)

    calls = bedrock_model_calls(bedrock)
    streams = [r for r in calls if r.operation == "invoke-with-response-stream"]
    assert streams, bedrock.describe()
    for rec in calls:
        assert not rec.rejected_betas, f"betas Bedrock refuses reached it: {rec.rejected_betas}"
        check_bedrock_call(bedrock, rec)
        assert BEDROCK_ID_RE.fullmatch(rec.model_id), rec.model_id
    rec = streams[-1]
    body = rec.json()
    assert body["tools"] and body["system"] and body["messages"]
    header_betas = {b.strip() for b in (rec.header("anthropic-beta") or "").split(",") if b.strip()}
    assert not FIRST_PARTY_ONLY & header_betas, header_betas
    session = rec.header("X-Claude-Code-Session-Id")
    assert session

    entries = wait_request_logs(gw, lambda e: e.get("session_id") == session and e.get("status") == "200")
    assert entries, gw.log()[-3000:]
    e = entries[-1]
    assert e.get("front_door") == "anthropic" and e.get("backend") == "mock-bedrock", e["_line"]
    assert usage_of(e) == BEDROCK_USAGE, e["_line"]
    assert "claude-code-20250219" in e.get("dropped_betas", ""), f"dropped betas not logged: {e['_line']}"


def test_anthropic_sdk_create_and_stream_served_by_bedrock(a2b):
    gw, bedrock = a2b
    client = anthropic_client(gw)
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES)
    assert msg.content[0].text == mb.DEFAULT_ANSWER
    assert msg.usage.cache_read_input_tokens == mb.USAGE_CACHE_READ
    rec = bedrock.by_operation("invoke")[-1]
    assert rec.model_id == SONNET
    body = check_bedrock_call(bedrock, rec)
    assert body["messages"] == MESSAGES and body["max_tokens"] == 64

    rid = f"a2b-stream-{uuid.uuid4()}"
    with client.messages.stream(model=SONNET_1P, max_tokens=64, messages=MESSAGES,
                                extra_headers={"x-request-id": rid,
                                               "anthropic-beta": "oauth-2025-04-20,context-1m-2025-08-07"}) as s:
        events = [ev.type for ev in s]
        final = s.get_final_message()
    assert final.content[0].text == mb.DEFAULT_ANSWER
    assert final.usage.output_tokens == mb.USAGE_OUTPUT and final.usage.input_tokens == mb.USAGE_INPUT
    assert events[0] == "message_start" and events[-1] == "message_stop"
    rec = bedrock.by_operation("invoke-with-response-stream")[-1]
    assert rec.model_id == SONNET
    body = check_bedrock_call(bedrock, rec)
    assert body["anthropic_beta"] == ["context-1m-2025-08-07"], "accepted betas go into the body"
    e = log_entry(gw, rid)
    assert usage_of(e) == BEDROCK_USAGE and "oauth-2025-04-20" in e.get("dropped_betas", ""), e["_line"]


def test_anthropic_sdk_count_tokens_served_by_bedrock(a2b):
    gw, bedrock = a2b
    n = anthropic_client(gw).messages.count_tokens(model=SONNET_1P, messages=MESSAGES)
    assert n.input_tokens == max(1, len(json.dumps(MESSAGES) + json.dumps("")) // 4)
    rec = bedrock.by_operation("count-tokens")[-1]
    assert rec.model_id == SONNET
    check_bedrock_call(bedrock, rec)
    inner = json.loads(base64.b64decode(rec.json()["input"]["invokeModel"]["body"]))
    assert inner["anthropic_version"] == "bedrock-2023-05-31" and inner["messages"] == MESSAGES


def test_bedrock_error_reaches_an_anthropic_client_in_its_shape(a2b):
    import anthropic

    gw, bedrock = a2b
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client(gw).messages.create(model=SONNET_1P, max_tokens=0, messages=MESSAGES)
    assert e.value.status_code == 400
    body = e.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["message"] == ("Malformed input request: #/max_tokens: expected type: Integer, "
                                        "please reformat your input and try again."), body
    assert bedrock.by_operation("invoke")[-1].status == 400
    assert "x-amzn-errortype" not in e.value.response.headers


# ------------------------------------------------------------------------------------------------
# Bedrock door -> Vertex backend
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def b2v(start_gateway, mock_vertex, sa_file):
    """Bedrock front door routed to a Vertex backend (the only backend)."""
    return start_gateway(backends=[vertex_backend(mock_vertex, sa_file)],
                         extra=route("mock-vertex", front_doors=["bedrock"]))


@pytest.mark.claude_code
def test_claude_code_bedrock_mode_served_by_vertex(b2v, mock_vertex, tmp_path):
    home = tmp_path / "claude-home"
    home.mkdir()
    p = run_claude(claude_bedrock_env(b2v.base, home), "say hello", timeout=120)
    assert p.returncode == 0, claude_failure_text(p)
    assert mv.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)

    calls = mock_vertex.api_requests
    streams = [r for r in calls if r.json().get("stream") is True]
    assert streams, mock_vertex.describe()
    for rec in calls:
        check_vertex_call(mock_vertex, rec)
        assert mv.VERTEX_MODEL_RE.fullmatch(rec.model), rec.model
    rec = streams[-1]
    body = rec.json()
    assert body["anthropic_version"] == "vertex-2023-10-16"
    assert "anthropic_beta" not in body and "model" not in body
    assert body["tools"] and body["system"]
    header_betas = [b.strip() for b in (rec.header("anthropic-beta") or "").split(",") if b.strip()]
    assert header_betas and set(header_betas) <= set(mv.ACCEPTED_BETAS), header_betas
    session = rec.header("X-Claude-Code-Session-Id")
    assert session
    entries = wait_request_logs(b2v, lambda e: e.get("session_id") == session and e.get("status") == "200"
                                and e.get("backend") == "mock-vertex")
    assert entries and usage_of(entries[-1]) == VERTEX_USAGE, b2v.log()[-3000:]
    # Its start-up listing of inference profiles was answered from the catalog (no Bedrock
    # backend to ask), not refused.
    listed = wait_request_logs(b2v, lambda e: e.get("operation") == "control-plane")
    assert listed and all(e.get("status") == "200" for e in listed), b2v.log()[-3000:]


def test_inference_profiles_come_from_the_catalog_without_a_bedrock_backend(b2v):
    c = boto_client("bedrock", b2v.base)
    profiles = c.list_inference_profiles(typeEquals="SYSTEM_DEFINED")["inferenceProfileSummaries"]
    ids = {p["inferenceProfileId"] for p in profiles}
    assert SONNET in ids, ids
    assert all(p["status"] == "ACTIVE" and p["models"] for p in profiles)
    assert c.list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"] == []


@pytest.mark.parametrize("model_id", [SONNET, "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                      "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"])
def test_boto3_stream_served_by_vertex(b2v, mock_vertex, model_id):
    rid = f"b2v-stream-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", b2v.base), rid)
    resp = c.invoke_model_with_response_stream(modelId=model_id, body=BODY)
    events = []
    for ev in resp["body"]:
        assert "chunk" in ev, ev
        events.append(json.loads(ev["chunk"]["bytes"]))   # botocore decoded the base64
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == mv.DEFAULT_ANSWER
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[0]["message"]["usage"]["cache_read_input_tokens"] == mv.USAGE_CACHE_READ
    metrics = events[-1].get("amazon-bedrock-invocationMetrics")
    assert metrics, f"no invocationMetrics in the last event: {events[-1]}"
    assert metrics["inputTokenCount"] == mv.USAGE_INPUT and metrics["outputTokenCount"] == mv.USAGE_OUTPUT
    assert isinstance(metrics["invocationLatency"], int) and isinstance(metrics["firstByteLatency"], int)

    rec = mock_vertex.api_requests[-1]
    assert rec.model == VERTEX_SONNET
    body = check_vertex_call(mock_vertex, rec)
    assert body["anthropic_version"] == "vertex-2023-10-16" and body["stream"] is True
    assert body["messages"] == json.loads(BODY)["messages"] and body["max_tokens"] == 64
    e = log_entry(b2v, rid)
    assert (e.get("front_door"), e.get("backend"), e.get("status")) == ("bedrock", "mock-vertex", "200"), e["_line"]
    assert usage_of(e) == VERTEX_USAGE, e["_line"]


def test_raw_event_stream_frames_from_vertex_sse(b2v, mock_vertex):
    """On the wire: CRC-checked event-stream frames, each a base64 chunk of one Anthropic event."""
    from support import SONNET_WIRE, raw_request
    r = raw_request(b2v.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke-with-response-stream", BODY)
    assert r.status == 200, r.body[:500]
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    frames, rest = mb.decode_frames(r.body)
    assert frames and rest == b""
    events = []
    for headers, payload in frames:
        assert headers[":message-type"] == "event" and headers[":event-type"] == "chunk", headers
        events.append(json.loads(base64.b64decode(json.loads(payload)["bytes"], validate=True)))
    assert [e["type"] for e in events][0] == "message_start" and events[-1]["type"] == "message_stop"
    assert [e["type"] for e in events].count("content_block_delta") == len(mv.text_pieces(mv.DEFAULT_ANSWER))
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == mv.USAGE_OUTPUT


def test_boto3_invoke_served_by_vertex_with_betas_moved_to_the_header(b2v, mock_vertex):
    body = json.dumps(anthropic_body(anthropic_beta=["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]))
    c = boto_client("bedrock-runtime", b2v.base)
    resp = c.invoke_model(modelId=SONNET, body=body, contentType="application/json", accept="application/json")
    out = json.loads(resp["body"].read())
    assert out["content"][0]["text"] == mv.DEFAULT_ANSWER
    assert out["usage"]["input_tokens"] == mv.USAGE_INPUT
    rec = mock_vertex.api_requests[-1]
    assert rec.operation == "rawPredict" and rec.model == VERTEX_SONNET
    got = check_vertex_call(mock_vertex, rec)
    assert got["anthropic_version"] == "vertex-2023-10-16" and "anthropic_beta" not in got
    assert got.get("stream") in (None, False)
    assert [b.strip() for b in rec.header("anthropic-beta").split(",")] == ["context-1m-2025-08-07",
                                                                            "interleaved-thinking-2025-05-14"]


def test_boto3_count_tokens_served_by_vertex(b2v, mock_vertex):
    c = boto_client("bedrock-runtime", b2v.base)
    out = c.count_tokens(modelId=SONNET, input={"invokeModel": {"body": BODY}})
    assert out["inputTokens"] == max(1, len(json.dumps(json.loads(BODY)["messages"]) + json.dumps("")) // 4)
    rec = mock_vertex.by_operation("count-tokens")[-1]
    body = check_vertex_call(mock_vertex, rec)
    assert body["model"] == VERTEX_SONNET and body["messages"] == json.loads(BODY)["messages"]


def test_vertex_error_reaches_a_boto3_client_as_a_validation_exception(b2v, mock_vertex):
    rid = f"b2v-error-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", b2v.base), rid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(max_tokens=0)))
    err = e.value.response
    assert err["Error"]["Code"] == "ValidationException", err
    assert err["Error"]["Message"] == "max_tokens: Input should be a valid integer greater than or equal to 1", err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert mock_vertex.api_requests[-1].status == 400
    e = log_entry(b2v, rid)
    assert attempts_of(e) == ["mock-vertex:400"], e["_line"]


# ------------------------------------------------------------------------------------------------
# Failover, passive health, weighted
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def both(start_gateway, mock_bedrock, mock_vertex, sa_file):
    """Bedrock first, Vertex second, for every front door."""
    def start(extra: str = ""):
        return start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file)],
                             extra=route("mock-bedrock", "mock-vertex") + extra)
    return start


def failovers(gw) -> float:
    return metric_sum(admin_get(gw, "/metrics"), "gateway_upstream_failovers_total", from_backend="mock-bedrock")


def test_bedrock_429_fails_over_to_vertex_for_boto3_and_the_anthropic_sdk(both, mock_bedrock, mock_vertex):
    gw = both()
    mock_bedrock.fail_with(429)
    assert failovers(gw) == 0

    rid = f"failover-boto3-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    events = [json.loads(ev["chunk"]["bytes"]) for ev in
              c.invoke_model_with_response_stream(modelId=SONNET, body=BODY)["body"]]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == mv.DEFAULT_ANSWER
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == mv.USAGE_INPUT
    e = log_entry(gw, rid)
    assert attempts_of(e) == ["mock-bedrock:429", "mock-vertex:200"], e["_line"]
    assert e.get("backend") == "mock-vertex" and e.get("status") == "200", e["_line"]

    rid = f"failover-sdk-{uuid.uuid4()}"
    with anthropic_client(gw).messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES,
                                              extra_headers={"x-request-id": rid}) as s:
        text = "".join(s.text_stream)
    assert text == mv.DEFAULT_ANSWER
    e = log_entry(gw, rid)
    assert attempts_of(e) == ["mock-bedrock:429", "mock-vertex:200"], e["_line"]
    assert usage_of(e) == VERTEX_USAGE, e["_line"]

    tried = bedrock_model_calls(mock_bedrock)
    assert len(tried) == 2 and all(r.injected_failure and r.status == 429 and r.sig_ok for r in tried), \
        mock_bedrock.describe()
    served = mock_vertex.api_requests
    assert len(served) == 2
    for rec in served:
        check_vertex_call(mock_vertex, rec)
    assert failovers(gw) == 2
    assert not mock_bedrock.leaked_credentials()


def test_when_every_backend_fails_the_client_gets_the_last_error_in_its_shape(both, mock_bedrock, mock_vertex):
    import anthropic

    gw = both()
    mock_bedrock.fail_with(429)
    mock_vertex.fail_with(429)
    quota = mv.QUOTA_MESSAGE.format(base="claude-sonnet-4-5")

    rid = f"all-fail-sdk-{uuid.uuid4()}"
    with pytest.raises(anthropic.RateLimitError) as e:
        anthropic_client(gw).messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES,
                                             extra_headers={"x-request-id": rid})
    assert e.value.status_code == 429
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error", e.value.body
    assert e.value.body["error"]["message"] == quota
    entry = log_entry(gw, rid)
    assert attempts_of(entry) == ["mock-bedrock:429", "mock-vertex:429"], entry["_line"]
    assert entry.get("status") == "429"

    rid = f"all-fail-boto3-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.invoke_model(modelId=SONNET, body=BODY)
    err = e.value.response
    assert err["Error"]["Code"] == "ThrottlingException", err
    assert err["Error"]["Message"] == quota
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert attempts_of(log_entry(gw, rid)) == ["mock-bedrock:429", "mock-vertex:429"]
    assert len(bedrock_model_calls(mock_bedrock)) == 2 and len(mock_vertex.api_requests) == 2


def test_passive_health_skips_a_failing_backend_during_its_cooldown(both, mock_bedrock, mock_vertex):
    gw = both('\n[health]\nfailure_threshold = 1\ncooldown = "30s"\n')
    mock_bedrock.fail_with(429)
    c = boto_client("bedrock-runtime", gw.base)
    for i in range(4):
        out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
        assert out["content"][0]["text"] == mv.DEFAULT_ANSWER, i
    assert len(bedrock_model_calls(mock_bedrock)) == 1, f"a cooling-down backend was tried:\n{mock_bedrock.describe()}"
    assert len(mock_vertex.api_requests) == 4
    entries = wait_request_logs(gw, lambda e: e.get("front_door") == "bedrock", count=4)
    assert [attempts_of(e) for e in entries] == [["mock-bedrock:429", "mock-vertex:200"]] + [["mock-vertex:200"]] * 3, \
        [e["_line"] for e in entries]


def test_cooling_down_backend_is_still_tried_last(both, mock_bedrock, mock_vertex):
    gw = both('\n[health]\nfailure_threshold = 1\ncooldown = "30s"\n')
    mock_bedrock.fail_with(429, count=1)
    c = boto_client("bedrock-runtime", gw.base)
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"][0]["text"] == mv.DEFAULT_ANSWER
    # Bedrock now cools down; Vertex fails: Bedrock is tried after it and answers
    mock_vertex.fail_with(503, count=1)
    out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
    assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
    entries = wait_request_logs(gw, lambda e: e.get("front_door") == "bedrock", count=2)
    assert attempts_of(entries[1]) == ["mock-vertex:503", "mock-bedrock:200"], entries[1]["_line"]


@pytest.mark.parametrize("weights", [(1, 1), (3, 1)])
def test_weighted_strategy_spreads_requests_by_weight(start_gateway, mock_bedrock, mock_vertex, sa_file, weights):
    gw = start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file)],
                       extra=route("mock-bedrock", "mock-vertex", strategy="weighted", weights=weights))
    c = boto_client("bedrock-runtime", gw.base)
    n = 40
    for _ in range(n):
        out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
        assert out["content"][0]["text"] in (mb.DEFAULT_ANSWER, mv.DEFAULT_ANSWER)
    to_bedrock, to_vertex = len(bedrock_model_calls(mock_bedrock)), len(mock_vertex.api_requests)
    assert to_bedrock + to_vertex == n, (to_bedrock, to_vertex)
    if weights == (1, 1):
        assert to_bedrock >= 8 and to_vertex >= 8, (to_bedrock, to_vertex)
    else:
        assert to_bedrock > to_vertex >= 1, (to_bedrock, to_vertex)
    assert all(r.sig_ok for r in bedrock_model_calls(mock_bedrock))
    assert all(r.auth_ok and r.status == 200 for r in mock_vertex.api_requests)
    # A request's log line is written just after its answer: wait for all of them.
    entries = wait_request_logs(gw, lambda e: e.get("operation") == "invoke", count=n)
    assert sum(e.get("backend") == "mock-vertex" for e in entries) == to_vertex


def test_connect_failure_fails_over(start_gateway, mock_vertex, sa_file):
    from support import free_port
    dead = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    gw = start_gateway(backends=[mock_backend(dead), vertex_backend(mock_vertex, sa_file)],
                       extra=route("mock-bedrock", "mock-vertex"))
    rid = f"connect-fail-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
    assert out["content"][0]["text"] == mv.DEFAULT_ANSWER
    a = attempts_of(log_entry(gw, rid))
    # one space-separated "backend:outcome" token per attempt (e.g. mock-bedrock:connect-error)
    assert len(a) == 2 and re.fullmatch(r"mock-bedrock:\S+", a[0]) and a[1] == "mock-vertex:200", \
        f"attempts is not one backend:outcome token per attempt: {a}"
    assert failovers(gw) == 1


def test_first_byte_timeout_fails_over(start_gateway, mock_bedrock, mock_vertex, sa_file):
    """A backend that takes the request and never answers: after first_byte the next one serves it,
    and the hanging upstream connection is closed."""
    hang = "us.anthropic.claude-mock-hang-v1:0"
    extra = f"""
[[models]]
name = "claude-mock-hang"
bedrock = "{hang}"
vertex = "{VERTEX_SONNET}"
""" + route("mock-bedrock", "mock-vertex")
    gw = start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file)], extra=extra,
                       first_byte="2s")
    rid = f"ttfb-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    out = json.loads(c.invoke_model(modelId=hang, body=BODY)["body"].read())
    assert out["content"][0]["text"] == mv.DEFAULT_ANSWER
    a = attempts_of(log_entry(gw, rid))
    # one space-separated "backend:outcome" token per attempt (e.g. mock-bedrock:connect-error)
    assert len(a) == 2 and re.fullmatch(r"mock-bedrock:\S+", a[0]) and a[1] == "mock-vertex:200", \
        f"attempts is not one backend:outcome token per attempt: {a}"
    hung = mock_bedrock.by_operation("invoke")
    assert len(hung) == 1
    assert mock_bedrock.wait_for(lambda _: hung[0].peer_closed_at), "the gateway kept the hanging upstream open"
    assert mock_vertex.api_requests[-1].model == VERTEX_SONNET


def test_a_4xx_other_than_429_does_not_fail_over(both, mock_bedrock, mock_vertex):
    gw = both()
    rid = f"no-failover-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(max_tokens=0)))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert mock_vertex.api_requests == []
    assert attempts_of(log_entry(gw, rid)) == ["mock-bedrock:400"]
    assert failovers(gw) == 0


def test_after_the_cooldown_the_backend_is_tried_first_again(both, mock_bedrock, mock_vertex):
    import time
    gw = both('\n[health]\nfailure_threshold = 1\ncooldown = "1s"\n')
    mock_bedrock.fail_with(429, count=1)
    c = boto_client("bedrock-runtime", gw.base)
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"][0]["text"] == mv.DEFAULT_ANSWER
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"][0]["text"] == mv.DEFAULT_ANSWER
    time.sleep(1.5)
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"][0]["text"] == mb.DEFAULT_ANSWER
    entries = wait_request_logs(gw, lambda e: e.get("front_door") == "bedrock", count=3)
    assert [attempts_of(e) for e in entries] == [["mock-bedrock:429", "mock-vertex:200"], ["mock-vertex:200"],
                                                 ["mock-bedrock:200"]], [e["_line"] for e in entries]


def test_converse_is_served_by_a_bedrock_backend_even_when_the_route_lists_vertex_first(
        start_gateway, mock_bedrock, mock_vertex, sa_file):
    gw = start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file)],
                       extra=route("mock-vertex", "mock-bedrock"))
    c = boto_client("bedrock-runtime", gw.base)
    out = c.converse(modelId=SONNET, messages=[{"role": "user", "content": [{"text": "say hello"}]}])
    assert out["output"]["message"]["content"][0]["text"] == mb.DEFAULT_ANSWER
    assert mock_bedrock.by_operation("converse")[-1].sig_ok
    # model calls of the invoke kind follow the route: Vertex first
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"][0]["text"] == mv.DEFAULT_ANSWER
    assert mock_vertex.api_requests and not mock_bedrock.by_operation("invoke")


# ------------------------------------------------------------------------------------------------
# The other crossings: Anthropic door -> Vertex, Vertex door -> Anthropic API and -> Bedrock
# ------------------------------------------------------------------------------------------------

def test_anthropic_sdk_served_by_vertex(start_gateway, mock_vertex, sa_file):
    gw = start_gateway(backends=[vertex_backend(mock_vertex, sa_file)],
                       extra=route("mock-vertex", front_doors=["anthropic"]))
    client = anthropic_client(gw)
    rid = f"a2v-{uuid.uuid4()}"
    with client.messages.stream(model=SONNET_1P, max_tokens=64, messages=MESSAGES,
                                extra_headers={"x-request-id": rid,
                                               "anthropic-beta": "claude-code-20250219,oauth-2025-04-20"}) as s:
        text = "".join(s.text_stream)
    assert text == mv.DEFAULT_ANSWER
    rec = mock_vertex.api_requests[-1]
    assert rec.model == VERTEX_SONNET
    body = check_vertex_call(mock_vertex, rec)
    assert body["anthropic_version"] == "vertex-2023-10-16" and body["stream"] is True and "model" not in body
    assert rec.header("anthropic-beta") == "claude-code-20250219", "Vertex takes claude-code-*, not oauth-*"
    e = log_entry(gw, rid)
    assert usage_of(e) == VERTEX_USAGE and "oauth-2025-04-20" in e.get("dropped_betas", ""), e["_line"]
    msg = client.messages.create(model=SONNET_1P, max_tokens=64, messages=MESSAGES)
    assert msg.content[0].text == mv.DEFAULT_ANSWER
    assert mock_vertex.api_requests[-1].operation == "rawPredict"
    assert client.messages.count_tokens(model=SONNET_1P, messages=MESSAGES).input_tokens > 0
    assert mock_vertex.api_requests[-1].json()["model"] == VERTEX_SONNET


def test_anthropic_vertex_served_by_the_anthropic_api(start_gateway, mock_anthropic, sa_file, mock_vertex):
    from anthropic import AnthropicVertex
    from support import anthropic_backend
    gw = start_gateway(backends=[anthropic_backend(mock_anthropic)],
                       extra=route("mock-anthropic", front_doors=["vertex"]))
    client = AnthropicVertex(region="us-east5", project_id="client-project", base_url=gw.url + "/vertex/v1",
                             access_token=GW_CREDENTIAL, max_retries=0)
    extra = {"anthropic_version": "vertex-2023-10-16"}
    msg = client.messages.create(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES, extra_body=extra)
    assert msg.content[0].text == ma.DEFAULT_ANSWER
    with client.messages.stream(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES, extra_body=extra) as s:
        assert "".join(s.text_stream) == ma.DEFAULT_ANSWER
    calls = mock_anthropic.by_operation("messages")
    assert len(calls) == 2, mock_anthropic.describe()
    for rec in calls:
        assert rec.auth_ok and rec.status == 200 and rec.header("x-api-key") == mock_anthropic.api_key
        body = rec.json()
        assert body["model"] == SONNET_1P and "anthropic_version" not in body
        assert rec.header("anthropic-version") == "2023-06-01"
    assert calls[1].json()["stream"] is True
    assert not mock_anthropic.leaked_credentials()


def test_anthropic_vertex_stream_served_by_bedrock(start_gateway, mock_bedrock):
    from anthropic import AnthropicVertex
    gw = start_gateway(backends=[mock_backend(mock_bedrock)], extra=route("mock-bedrock", front_doors=["vertex"]))
    client = AnthropicVertex(region="us-east5", project_id="client-project", base_url=gw.url + "/vertex/v1",
                             access_token=GW_CREDENTIAL, max_retries=0)
    with client.messages.stream(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES,
                                extra_body={"anthropic_version": "vertex-2023-10-16"}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == mb.DEFAULT_ANSWER and final.usage.output_tokens == mb.USAGE_OUTPUT
    rec = mock_bedrock.by_operation("invoke-with-response-stream")[-1]
    assert rec.model_id == SONNET
    check_bedrock_call(mock_bedrock, rec)


def test_failover_attempts_reach_the_audit_record(start_gateway, mock_bedrock, mock_vertex, sa_file, tmp_path):
    from support import plugin_path
    audit = tmp_path / "audit.log"
    extra = route("mock-bedrock", "mock-vertex") + f"""
[audit]
path = "{audit}"
fsync = "always"

[[plugins]]
name = "audit-log"
path = "{plugin_path('audit-log')}"
on_error = "allow"
cpu_limit = "250ms"
"""
    gw = start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file)], extra=extra)
    mock_bedrock.fail_with(429)
    rid = f"audit-attempts-{uuid.uuid4()}"
    c = with_request_id(boto_client("bedrock-runtime", gw.base), rid)
    c.invoke_model(modelId=SONNET, body=BODY)
    import time
    deadline = time.time() + 10
    record = None
    while time.time() < deadline and record is None:
        lines = audit.read_text().splitlines() if audit.exists() else []
        record = next((json.loads(line) for line in lines if rid in line), None)
        time.sleep(0.05)
    assert record is not None, gw.log()[-3000:]
    assert record["attempts"] == "mock-bedrock:429 mock-vertex:200", record
    assert record["backend"] == "mock-vertex" and record["status"] == 200, record
    assert record["input_tokens"] == mv.USAGE_INPUT, record
