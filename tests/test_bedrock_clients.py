"""Real AWS / Anthropic client libraries through the gateway's Bedrock front door to the mock.

Every test checks, at the mock: a valid SigV4 signature made by the gateway (with its own
credentials), the model-id path segment exactly as the client put it on the wire, and that no
client credential got through."""
from __future__ import annotations

import json

import pytest

import mock_bedrock as mb
from support import (APP_PROFILE_ARN, APP_PROFILE_WIRE, CLIENT_AK, CLIENT_SK, SONNET, SONNET_WIRE,
                     anthropic_body, boto_client, raw_request, stream_text)

MODEL_IDS = [pytest.param(SONNET, SONNET_WIRE, id="profile-id"),
             pytest.param(APP_PROFILE_ARN, APP_PROFILE_WIRE, id="app-profile-arn")]
BODY = json.dumps(anthropic_body()).encode()


class Sent:
    """Records what a boto3 client put on the wire (URL and body), via botocore's before-send."""

    def __init__(self, client):
        self.requests = []
        client.meta.events.register("before-send", self._hook)

    def _hook(self, request, **_):
        self.requests.append(request)

    @property
    def last_path(self) -> str:
        url = self.requests[-1].url
        return url[url.index("/", url.index("//") + 2):]


@pytest.fixture
def runtime(gateway):
    c = boto_client("bedrock-runtime", gateway.base)
    return c, Sent(c)


def check_upstream(mock, sent_path: str, operation: str, assert_no_leaks):
    """The last request of ``operation`` at the mock: signed right, same path bytes as the client's."""
    recs = mock.by_operation(operation)
    assert recs, f"the mock saw no {operation}:\n{mock.describe()}"
    r = recs[-1]
    assert r.sig_ok, f"bad signature at upstream: {r.verdict.error_type}: {r.verdict.message}\n{r.verdict.canonical_request}"
    assert sent_path.startswith("/bedrock/")
    assert r.target == sent_path[len("/bedrock"):], "the gateway changed the path bytes"
    assert r.verdict.access_key == mb.TEST_ACCESS_KEY
    assert_no_leaks()
    return r


@pytest.mark.parametrize("model_id,wire", MODEL_IDS)
def test_boto3_invoke_model_through_gateway(runtime, mock_bedrock, assert_no_leaks, model_id, wire):
    c, sent = runtime
    resp = c.invoke_model(modelId=model_id, body=BODY, contentType="application/json", accept="application/json")
    out = json.loads(resp["body"].read())
    assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
    assert out["usage"]["cache_read_input_tokens"] == mb.USAGE_CACHE_READ
    hdrs = resp["ResponseMetadata"]["HTTPHeaders"]
    assert hdrs.get("x-amzn-bedrock-input-token-count") == str(mb.USAGE_INPUT)
    assert hdrs.get("x-amzn-bedrock-output-token-count") == str(mb.USAGE_OUTPUT)
    assert sent.last_path == f"/bedrock/model/{wire}/invoke"
    r = check_upstream(mock_bedrock, sent.last_path, "invoke", assert_no_leaks)
    assert r.body == BODY
    assert r.model_id == model_id


@pytest.mark.parametrize("model_id,wire", MODEL_IDS)
def test_boto3_invoke_model_with_response_stream_assembles_full_text(runtime, mock_bedrock, assert_no_leaks, model_id, wire):
    c, sent = runtime
    resp = c.invoke_model_with_response_stream(modelId=model_id, body=BODY)
    assert resp["contentType"] == "application/json"
    events = []
    for ev in resp["body"]:
        assert "chunk" in ev, ev
        events.append(json.loads(ev["chunk"]["bytes"]))
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == mb.DEFAULT_ANSWER
    assert [e["type"] for e in events][0] == "message_start"
    assert events[-1]["type"] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == mb.USAGE_INPUT
    assert sent.last_path == f"/bedrock/model/{wire}/invoke-with-response-stream"
    r = check_upstream(mock_bedrock, sent.last_path, "invoke-with-response-stream", assert_no_leaks)
    assert r.body == BODY


@pytest.mark.parametrize("model_id,wire", MODEL_IDS)
def test_boto3_converse_through_gateway(runtime, mock_bedrock, assert_no_leaks, model_id, wire):
    c, sent = runtime
    out = c.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": "say hello"}]}],
                     inferenceConfig={"maxTokens": 64})
    assert out["output"]["message"]["content"][0]["text"] == mb.DEFAULT_ANSWER
    assert out["stopReason"] == "end_turn"
    assert out["usage"]["inputTokens"] == mb.USAGE_INPUT and out["usage"]["outputTokens"] == mb.USAGE_OUTPUT
    assert sent.last_path == f"/bedrock/model/{wire}/converse"
    check_upstream(mock_bedrock, sent.last_path, "converse", assert_no_leaks)


@pytest.mark.parametrize("model_id,wire", MODEL_IDS)
def test_boto3_converse_stream_through_gateway(runtime, mock_bedrock, assert_no_leaks, model_id, wire):
    c, sent = runtime
    out = c.converse_stream(modelId=model_id, messages=[{"role": "user", "content": [{"text": "say hello"}]}])
    events = list(out["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == mb.DEFAULT_ANSWER
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and "messageStop" in kinds and kinds[-1] == "metadata"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == mb.USAGE_OUTPUT
    assert sent.last_path == f"/bedrock/model/{wire}/converse-stream"
    check_upstream(mock_bedrock, sent.last_path, "converse-stream", assert_no_leaks)


@pytest.mark.parametrize("model_id,wire", MODEL_IDS)
def test_boto3_count_tokens_through_gateway(runtime, mock_bedrock, assert_no_leaks, model_id, wire):
    c, sent = runtime
    out = c.count_tokens(modelId=model_id, input={"invokeModel": {"body": BODY}})
    assert out["inputTokens"] > 0
    assert sent.last_path == f"/bedrock/model/{wire}/count-tokens"
    r = check_upstream(mock_bedrock, sent.last_path, "count-tokens", assert_no_leaks)
    assert json.loads(r.body) == json.loads(sent.requests[-1].body)


def test_boto3_control_plane_list_inference_profiles_through_gateway(gateway, mock_bedrock, assert_no_leaks):
    c = boto_client("bedrock", gateway.base)
    sent = Sent(c)
    pages = list(c.get_paginator("list_inference_profiles").paginate(
        typeEquals="SYSTEM_DEFINED", PaginationConfig={"PageSize": 3}))
    ids = [p["inferenceProfileId"] for pg in pages for p in pg["inferenceProfileSummaries"]]
    assert SONNET in ids and len(pages) > 1
    assert any("nextToken=" in r.url for r in sent.requests)
    recs = mock_bedrock.by_operation("list-inference-profiles")
    assert len(recs) == len(pages)
    for req, rec in zip(sent.requests, recs):
        path = req.url[req.url.index("/bedrock/"):]
        assert rec.target == path[len("/bedrock"):]
        assert rec.sig_ok, rec.verdict
    models = c.list_foundation_models()["modelSummaries"]
    assert any(m["modelId"].startswith("anthropic.claude") for m in models)
    assert mock_bedrock.by_operation("list-foundation-models")[-1].sig_ok
    assert_no_leaks()


def test_raw_colon_model_id_is_forwarded_raw_and_signed(gateway, mock_bedrock, assert_no_leaks):
    """Claude Code and the Anthropic SDK put ':' raw in the path; the gateway must sign what it sends."""
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET}/invoke", BODY)
    assert r.status == 200, r.body
    assert r.json()["content"][0]["text"] == mb.DEFAULT_ANSWER
    rec = check_upstream(mock_bedrock, f"/bedrock/model/{SONNET}/invoke", "invoke", assert_no_leaks)
    assert rec.model_id_raw == SONNET and not rec.colon_encoded


def test_client_credentials_and_aws_headers_are_stripped(gateway, mock_bedrock, assert_no_leaks):
    hdrs = {
        "Authorization": "Bearer sk-gw-test",
        "x-api-key": "sk-gw-test",
        "X-Amz-Security-Token": "client-session-token-sk-gw-test",
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Content-Sha256": "0" * 64,
        "X-Amz-Target": "client",
        "Proxy-Authorization": "Basic c2stZ3ctdGVzdDp4",
        "anthropic-beta": "context-1m-2025-08-07",
        "X-Claude-Code-Session-Id": "2b4c9a52-5d0c-4a32-8e43-6c0c9e1d7a11",
    }
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY, hdrs)
    assert r.status == 200, r.body
    rec = check_upstream(mock_bedrock, f"/bedrock/model/{SONNET_WIRE}/invoke", "invoke", assert_no_leaks)
    names = rec.header_names()
    assert "x-api-key" not in names and "proxy-authorization" not in names and "x-amz-target" not in names
    assert rec.header("x-amz-date") != "20200101T000000Z"
    assert rec.header("Authorization").startswith("AWS4-HMAC-SHA256 Credential=AKIDGATEWAYTEST/")
    assert rec.header("x-amz-security-token") is None
    assert rec.body == BODY


def test_headers_named_in_connection_are_not_forwarded(gateway, mock_bedrock):
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY,
                    {"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "hop-value", "Keep-Alive": "timeout=5",
                     "TE": "trailers", "Upgrade": "h2c"})
    assert r.status == 200, r.body
    rec = mock_bedrock.by_operation("invoke")[-1]
    assert rec.sig_ok
    names = rec.header_names()
    for h in ("x-hop-secret", "keep-alive", "te", "upgrade"):
        assert h not in names, f"hop-by-hop header {h} was forwarded: {rec.headers}"


# ------------------------------------------------------------------------------------------------
# The Anthropic Python SDK (AnthropicBedrock)
# ------------------------------------------------------------------------------------------------

# anthropic 2.x puts its first-party API version ("2026-10-21") into a Bedrock body by default;
# Bedrock (and the mock) want "bedrock-2023-05-31", so the tests say so explicitly.
BEDROCK_VERSION = {"anthropic_version": "bedrock-2023-05-31"}


def anthropic_client(gateway, capture: list | None = None):
    import httpx2
    from anthropic import AnthropicBedrock

    hooks = {"request": [lambda req: capture.append((req.method, req.url.raw_path, req.read()))]} if capture is not None else {}
    return AnthropicBedrock(base_url=gateway.base, aws_access_key=CLIENT_AK, aws_secret_key=CLIENT_SK,
                            aws_region="us-east-1", max_retries=0,
                            http_client=httpx2.Client(event_hooks=hooks, timeout=30))


def test_anthropic_sdk_messages_create_through_gateway(gateway, mock_bedrock, assert_no_leaks):
    sent = []
    client = anthropic_client(gateway, sent)
    msg = client.messages.create(model=SONNET, max_tokens=64, messages=[{"role": "user", "content": "say hello"}],
                                 extra_body=BEDROCK_VERSION)
    assert msg.content[0].text == mb.DEFAULT_ANSWER
    assert msg.usage.cache_read_input_tokens == mb.USAGE_CACHE_READ
    _, path, body = sent[-1]
    assert path.decode() == f"/bedrock/model/{SONNET}/invoke"  # the SDK keeps ':' raw
    rec = check_upstream(mock_bedrock, path.decode(), "invoke", assert_no_leaks)
    assert rec.body == body


def test_anthropic_sdk_messages_stream_through_gateway(gateway, mock_bedrock, assert_no_leaks):
    sent = []
    client = anthropic_client(gateway, sent)
    with client.messages.stream(model=APP_PROFILE_ARN, max_tokens=64, extra_body=BEDROCK_VERSION,
                                messages=[{"role": "user", "content": "say hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mb.DEFAULT_ANSWER
    assert final.usage.output_tokens == mb.USAGE_OUTPUT
    _, path, body = sent[-1]
    assert path.decode().endswith("/invoke-with-response-stream")
    assert "%2F" in path.decode()  # the ARN's '/' is encoded, its ':' raw
    rec = check_upstream(mock_bedrock, path.decode(), "invoke-with-response-stream", assert_no_leaks)
    assert rec.model_id == APP_PROFILE_ARN
    assert rec.body == body


def test_anthropic_sdk_extra_fields_and_betas_reach_bedrock_byte_for_byte(gateway, mock_bedrock, assert_no_leaks):
    sent = []
    client = anthropic_client(gateway, sent)
    extra = dict(BEDROCK_VERSION)
    extra.update({
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "output_config": {"effort": "medium"},
        "x_unknown_future_field": {"nested": [1, "two", {"three": None}], "unicode": "h\u00e9llo \u2603"},
    })
    msg = client.messages.create(
        model=SONNET, max_tokens=64, system="You are terse.",
        messages=[{"role": "user", "content": "say hello"}],
        metadata={"user_id": "user-123"},
        extra_headers={"anthropic-beta": "context-1m-2025-08-07,interleaved-thinking-2025-05-14"},
        extra_body=extra)
    assert msg.content[0].text == mb.DEFAULT_ANSWER
    _, path, body = sent[-1]
    rec = check_upstream(mock_bedrock, path.decode(), "invoke", assert_no_leaks)
    assert rec.body == body, "the gateway changed the body bytes"
    got = json.loads(rec.body)
    assert got["anthropic_beta"] == ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
    assert got["x_unknown_future_field"]["unicode"] == "h\u00e9llo \u2603"
    assert list(got) == list(json.loads(body))  # key order too


def test_large_body_is_forwarded_byte_for_byte(gateway, mock_bedrock, assert_no_leaks):
    """Claude Code's bodies are 50-80 KB and grow; try ~2.7 MB with non-ASCII text."""
    big = json.dumps(anthropic_body("h\u00e9llo w\u00f6rld \u2603 " * 150_000), ensure_ascii=False).encode()
    assert len(big) > 2_500_000
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", big, timeout=60)
    assert r.status == 200, r.body[:500]
    rec = check_upstream(mock_bedrock, f"/bedrock/model/{SONNET_WIRE}/invoke", "invoke", assert_no_leaks)
    assert rec.body == big


def test_concurrent_streams_all_complete_and_are_signed(gateway, mock_bedrock, assert_no_leaks):
    from concurrent.futures import ThreadPoolExecutor

    c = boto_client("bedrock-runtime", gateway.base)

    def one(i):
        body = json.dumps(anthropic_body(f"request {i}")).encode()
        return stream_text(c.invoke_model_with_response_stream(modelId=SONNET, body=body)["body"])

    with ThreadPoolExecutor(8) as ex:
        texts = list(ex.map(one, range(24)))
    assert texts == [mb.DEFAULT_ANSWER] * 24
    recs = mock_bedrock.by_operation("invoke-with-response-stream")
    assert len(recs) == 24 and all(r.sig_ok for r in recs)
    assert sorted(json.loads(r.body)["messages"][0]["content"] for r in recs) == sorted(f"request {i}" for i in range(24))
    assert_no_leaks()
