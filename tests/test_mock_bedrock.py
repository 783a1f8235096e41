"""Self-checks of the mock Bedrock, with no gateway in between: the mock accepts what AWS accepts
and rejects what AWS rejects, so a passing gateway test means something."""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import socket
import time

import botocore.auth
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import mock_bedrock as mb
from mock_bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY, MockBedrock, decode_frames
from support import (APP_PROFILE_ARN, APP_PROFILE_WIRE, SONNET, SONNET_WIRE, anthropic_body, boto_client,
                     claude_bedrock_env, claude_failure_text, raw_request, run_claude, stream_text)

BODY = json.dumps(anthropic_body()).encode()


def direct(mock, service="bedrock-runtime", **kw):
    kw.setdefault("access_key", TEST_ACCESS_KEY)
    kw.setdefault("secret_key", TEST_SECRET_KEY)
    return boto_client(service, mock.url, **kw)


def signed_raw(mock, method, path, body=b"", *, service="bedrock", region="us-east-1", secret=TEST_SECRET_KEY,
               access_key=TEST_ACCESS_KEY, token=None, headers=None):
    """Sign a request with botocore's signer (the reference), return (url path, headers)."""
    req = AWSRequest(method=method, url=mock.url + path, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key, secret, token), service, region).add_auth(req)
    return dict(req.headers.items())


# ------------------------------------------------------------------------------------------------
# valid requests pass
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", [SONNET, APP_PROFILE_ARN])
def test_boto3_direct_with_test_keys_passes_sigv4_on_every_operation(mock_bedrock, model_id):
    c = direct(mock_bedrock)
    out = json.loads(c.invoke_model(modelId=model_id, body=BODY)["body"].read())
    assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
    assert stream_text(c.invoke_model_with_response_stream(modelId=model_id, body=BODY)["body"]) == mb.DEFAULT_ANSWER
    conv = c.converse(modelId=model_id, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert conv["output"]["message"]["content"][0]["text"] == mb.DEFAULT_ANSWER
    cs = c.converse_stream(modelId=model_id, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in cs["stream"] if "contentBlockDelta" in e) == mb.DEFAULT_ANSWER
    assert c.count_tokens(modelId=model_id, input={"invokeModel": {"body": BODY}})["inputTokens"] > 0
    reqs = mock_bedrock.snapshot()
    assert [r.operation for r in reqs] == ["invoke", "invoke-with-response-stream", "converse", "converse-stream", "count-tokens"]
    wire = SONNET_WIRE if model_id == SONNET else APP_PROFILE_WIRE
    for r in reqs:
        assert r.sig_ok, r.verdict
        assert r.model_id_raw == wire and r.model_id == model_id


def test_boto3_control_plane_direct_passes_and_paginates(mock_bedrock):
    c = direct(mock_bedrock, service="bedrock")
    pages = list(c.get_paginator("list_inference_profiles").paginate(typeEquals="SYSTEM_DEFINED",
                                                                     PaginationConfig={"PageSize": 4}))
    ids = [p["inferenceProfileId"] for pg in pages for p in pg["inferenceProfileSummaries"]]
    assert SONNET in ids and any("opus" in i for i in ids) and any("haiku" in i for i in ids)
    assert len(pages) > 1
    assert c.list_foundation_models()["modelSummaries"]
    assert all(r.sig_ok for r in mock_bedrock.snapshot())


def test_session_token_must_be_present_and_signed(make_mock):
    m = make_mock(session_token="sessiontoken123")
    ok = direct(m, session_token="sessiontoken123")
    ok.invoke_model(modelId=SONNET, body=BODY)
    assert m.snapshot()[-1].sig_ok and "x-amz-security-token" in m.snapshot()[-1].verdict.signed_headers
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(m).invoke_model(modelId=SONNET, body=BODY)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError):
        direct(m, session_token="othertoken").invoke_model(modelId=SONNET, body=BODY)


def test_raw_colon_path_is_canonicalised_as_aws_does(mock_bedrock):
    """A raw ':' on the wire canonicalises to %3A; %3A on the wire to %253A.  A signature made for
    one spelling must not pass for the other (so a gateway that re-encodes must re-sign)."""
    raw_path = f"/model/{SONNET}/invoke"
    assert mb.canonical_uri(raw_path) == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    assert mb.canonical_uri(f"/model/{SONNET_WIRE}/invoke") == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%253A0/invoke"
    # botocore signs the URL it is given; send raw ':' signed for raw ':'
    h = signed_raw(mock_bedrock, "POST", raw_path, BODY)
    assert raw_request(mock_bedrock.url, "POST", raw_path, BODY, h).status == 200
    # ... and the same headers with the path spelled %3A fail
    r = raw_request(mock_bedrock.url, "POST", f"/model/{SONNET_WIRE}/invoke", BODY, h)
    assert r.status == 403 and r.errortype == "InvalidSignatureException"
    first, second = mock_bedrock.snapshot()
    assert first.sig_ok and first.model_id_raw == SONNET and not first.colon_encoded
    assert not second.sig_ok and second.colon_encoded


def test_canonical_query_matches_botocore(mock_bedrock):
    path = "/inference-profiles?type=SYSTEM_DEFINED&maxResults=3&nextToken=a%2Fb%3D"
    h = signed_raw(mock_bedrock, "GET", path)
    r = raw_request(mock_bedrock.url, "GET", path, None, h)
    assert r.status in (200, 400)  # the token is not ours, but the signature must verify
    assert mock_bedrock.snapshot()[-1].sig_ok, mock_bedrock.snapshot()[-1].verdict


# ------------------------------------------------------------------------------------------------
# invalid requests fail with 403 in Bedrock's shape
# ------------------------------------------------------------------------------------------------

def _assert_403(exc_info, errortypes):
    resp = exc_info.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert resp["Error"]["Code"] in errortypes
    assert resp["Error"]["Message"]


def test_wrong_secret_is_rejected(mock_bedrock):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock, secret_key="wrong").invoke_model(modelId=SONNET, body=BODY)
    _assert_403(e, {"InvalidSignatureException"})
    assert "signature we calculated does not match" in e.value.response["Error"]["Message"]


def test_wrong_access_key_is_rejected(mock_bedrock):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock, access_key="AKIDCLIENT", secret_key="clientsecret").invoke_model(modelId=SONNET, body=BODY)
    _assert_403(e, {"UnrecognizedClientException"})


def test_wrong_region_is_rejected(mock_bedrock):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock, region="eu-west-1").invoke_model(modelId=SONNET, body=BODY)
    _assert_403(e, {"InvalidSignatureException"})
    assert "region" in e.value.response["Error"]["Message"]


def test_wrong_service_is_rejected(mock_bedrock):
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(mock_bedrock, "POST", path, BODY, service="bedrock-runtime")
    r = raw_request(mock_bedrock.url, "POST", path, BODY, h)
    assert r.status == 403 and r.errortype == "InvalidSignatureException"
    assert "service" in r.json()["message"]


def test_stale_date_is_rejected(mock_bedrock, monkeypatch):
    stale = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) - _dt.timedelta(minutes=6)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: stale)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock).invoke_model(modelId=SONNET, body=BODY)
    _assert_403(e, {"InvalidSignatureException"})
    assert "Signature expired" in e.value.response["Error"]["Message"]


def test_date_four_minutes_off_is_accepted(mock_bedrock, monkeypatch):
    off = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) - _dt.timedelta(minutes=4)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: off)
    direct(mock_bedrock).invoke_model(modelId=SONNET, body=BODY)


def test_tampered_body_is_rejected(mock_bedrock):
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(mock_bedrock, "POST", path, BODY)
    tampered = BODY.replace(b"say hello", b"say HELLO")
    r = raw_request(mock_bedrock.url, "POST", path, tampered, h)
    assert r.status == 403 and r.errortype == "InvalidSignatureException"
    # a declared payload hash that does not match the body is caught too
    h2 = dict(h, **{"X-Amz-Content-SHA256": hashlib.sha256(BODY).hexdigest()})
    r = raw_request(mock_bedrock.url, "POST", path, tampered, h2)
    assert r.status == 403


def test_tampered_signed_header_is_rejected(mock_bedrock):
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(mock_bedrock, "POST", path, BODY, headers={"X-Custom": "a"})
    auth = h["Authorization"]
    assert "x-custom" in auth
    h["X-Custom"] = "b"
    assert raw_request(mock_bedrock.url, "POST", path, BODY, h).status == 403


def test_host_not_signed_is_rejected(mock_bedrock):
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(mock_bedrock, "POST", path, BODY)
    cred = h["Authorization"].split("Credential=")[1].split(",")[0]
    h["Authorization"] = f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=x-amz-date, Signature={'0' * 64}"
    r = raw_request(mock_bedrock.url, "POST", path, BODY, h)
    assert r.status == 403 and "Host" in r.json()["message"]


def test_missing_authorization_is_rejected(mock_bedrock):
    r = raw_request(mock_bedrock.url, "POST", f"/model/{SONNET_WIRE}/invoke", BODY)
    assert r.status == 403 and r.errortype and r.json()["message"]


def test_bearer_mode_accepts_only_the_api_key(make_mock):
    m = make_mock(auth="bearer")
    path = f"/model/{SONNET_WIRE}/invoke"
    assert raw_request(m.url, "POST", path, BODY, {"Authorization": f"Bearer {mb.TEST_BEARER_TOKEN}"}).status == 200
    assert raw_request(m.url, "POST", path, BODY, {"Authorization": "Bearer sk-gw-test"}).status == 403
    assert raw_request(m.url, "POST", path, BODY).status == 403
    with pytest.raises(botocore.exceptions.ClientError):
        direct(m).invoke_model(modelId=SONNET, body=BODY)


# ------------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,needle", [
    ({"model": SONNET}, "extraneous key [model]"),
    ({"anthropic_version": "2023-06-01"}, "Invalid API version"),
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": None}, "messages"),
])
def test_invalid_invoke_body_is_a_validation_exception(mock_bedrock, change, needle):
    body = anthropic_body()
    for k, v in change.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock).invoke_model(modelId=SONNET, body=json.dumps(body))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert needle in e.value.response["Error"]["Message"]


def test_throttle_marker_gives_bedrock_throttling(mock_bedrock):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock).invoke_model(modelId="us.anthropic.mock-throttle-v1:0", body=BODY)
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["Error"]["Message"] == mb.THROTTLE_MESSAGE
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_stream_error_marker_gives_exception_frame(mock_bedrock):
    r = direct(mock_bedrock).invoke_model_with_response_stream(modelId="us.anthropic.mock-stream-error-v1:0", body=BODY)
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for _ in r["body"]:
            pass
    assert e.value.response["Error"]["Code"] == "throttlingException"


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


def test_stream_frames_are_split_across_http_chunks_at_odd_offsets(mock_bedrock):
    mock_bedrock.auth = "none"
    s = socket.create_connection(("127.0.0.1", mock_bedrock.port))
    s.sendall(b"POST /model/%s/invoke-with-response-stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (SONNET_WIRE.encode(), len(BODY), BODY))
    head, chunks = _read_chunked_raw(s)
    s.close()
    assert b"application/vnd.amazon.eventstream" in head and b"chunked" in head.lower()
    data = b"".join(chunks)
    frames, rest = decode_frames(data)
    assert rest == b""
    # frame boundaries vs chunk boundaries: some chunk ends inside a prelude, some inside a payload
    bounds, pos = set(), 0
    for h, p in frames:
        bounds.add(pos)
        pos += 16 + len(p) + len(mb._encode_headers([(k, v) for k, v in h.items()]))
    chunk_ends, pos = [], 0
    for c in chunks:
        pos += len(c)
        chunk_ends.append(pos)
    assert any(0 < (e - b) < 12 for e in chunk_ends for b in bounds), "no chunk boundary inside a prelude"
    assert len(chunks) > 3 * len(frames)
    events = [json.loads(base64.b64decode(json.loads(p)["bytes"])) for h, p in frames]
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-1]["type"] == "message_stop" and "amazon-bedrock-invocationMetrics" in events[-1]
    assert events[0]["message"]["usage"]["cache_read_input_tokens"] == mb.USAGE_CACHE_READ
    assert all(h[":event-type"] == "chunk" and h[":message-type"] == "event" for h, _ in frames)


def test_slow_stream_records_peer_close(mock_bedrock):
    mock_bedrock.auth = "none"
    s = socket.create_connection(("127.0.0.1", mock_bedrock.port))
    s.sendall(b"POST /model/us.anthropic.mock-slow-stream-v1%%3A0/invoke-with-response-stream HTTP/1.1\r\n"
              b"Host: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    s.close()
    closed = time.time()
    rec = mock_bedrock.wait_for(lambda rs: rs and rs[0].peer_closed_at and rs[0], timeout=3)
    assert rec, "mock did not notice the closed connection"
    assert rec.peer_closed_at - closed < 1.0
    assert not rec.stream_completed


def test_anthropic_sdk_direct_signs_raw_colon_and_passes(mock_bedrock):
    from anthropic import AnthropicBedrock
    client = AnthropicBedrock(base_url=mock_bedrock.url, aws_access_key=TEST_ACCESS_KEY,
                              aws_secret_key=TEST_SECRET_KEY, aws_region="us-east-1", max_retries=0)
    msg = client.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}],
                                 # anthropic 2.x puts its first-party API version ("2026-10-21") into
                                 # the Bedrock body unless told otherwise; Bedrock wants this one:
                                 extra_body={"anthropic_version": "bedrock-2023-05-31"})
    assert msg.content[0].text == mb.DEFAULT_ANSWER
    r = mock_bedrock.snapshot()[-1]
    assert r.sig_ok and r.model_id_raw == SONNET  # the SDK keeps ':' raw


@pytest.mark.claude_code
def test_claude_code_direct_against_mock_without_auth(make_mock, tmp_path):
    """What Claude Code sends when pointed straight at Bedrock with CLAUDE_CODE_SKIP_BEDROCK_AUTH."""
    m = make_mock(auth="none")
    p = run_claude(claude_bedrock_env(m.url, tmp_path), timeout=120)
    assert p.returncode == 0 and mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    reqs = m.snapshot()
    assert any(r.operation == "list-inference-profiles" and "type=SYSTEM_DEFINED" in r.query for r in reqs)
    inv = [r for r in reqs if r.operation == "invoke-with-response-stream"]
    assert inv, m.describe()
    r = inv[0]
    assert r.header("Authorization") == "Bearer sk-gw-test"  # what the gateway must strip
    assert r.header("X-Claude-Code-Session-Id")
    body = r.json()
    assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body
    assert isinstance(body.get("anthropic_beta"), list)


# ------------------------------------------------------------------------------------------------
# betas, extraneous keys, fail_with
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("betas", [["oauth-2025-04-20"], ["context-1m-2025-08-07", "claude-code-20250219"],
                                   ["prompt-caching-scope-2026-01-05"], ["thinking-token-count-2026-05-13"]])
def test_body_betas_bedrock_does_not_accept_are_a_validation_exception(mock_bedrock, betas):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock).invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(anthropic_beta=betas)))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["Error"]["Message"] == mb.INVALID_BETA_MESSAGE == "invalid beta flag"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    rec = mock_bedrock.snapshot()[-1]
    assert rec.rejected_betas and set(rec.rejected_betas) <= set(betas)


def test_accepted_body_betas_pass_and_the_header_is_not_read_by_default(mock_bedrock):
    body = json.dumps(anthropic_body(anthropic_beta=list(mb.ACCEPTED_BETAS))).encode()
    c = direct(mock_bedrock)
    assert json.loads(c.invoke_model(modelId=SONNET, body=body)["body"].read())["content"]
    assert stream_text(c.invoke_model_with_response_stream(modelId=SONNET, body=body)["body"]) == mb.DEFAULT_ANSWER
    # Claude Code sends claude-code-20250219 in an anthropic-beta header to Bedrock; Bedrock reads the body
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(mock_bedrock, "POST", path, BODY, headers={"anthropic-beta": "claude-code-20250219"})
    assert raw_request(mock_bedrock.url, "POST", path, BODY, h).status == 200


def test_beta_header_is_checked_when_asked(make_mock):
    m = make_mock(check_beta_header=True)
    path = f"/model/{SONNET_WIRE}/invoke"
    h = signed_raw(m, "POST", path, BODY, headers={"anthropic-beta": "context-1m-2025-08-07,oauth-2025-04-20"})
    r = raw_request(m.url, "POST", path, BODY, h)
    assert r.status == 400 and r.errortype == "ValidationException" and r.json()["message"] == "invalid beta flag"
    assert m.snapshot()[-1].rejected_betas == ["oauth-2025-04-20"]


def test_accepted_betas_are_configurable(make_mock):
    m = make_mock(accepted_betas=["oauth-2025-04-20"])
    direct(m).invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(anthropic_beta=["oauth-2025-04-20"])))
    with pytest.raises(botocore.exceptions.ClientError):
        direct(m).invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(anthropic_beta=["context-1m-2025-08-07"])))


@pytest.mark.parametrize("key,value", [("model", SONNET), ("stream", True), ("stream", False)])
def test_model_and_stream_keys_are_extraneous(mock_bedrock, key, value):
    for op in ("invoke_model", "invoke_model_with_response_stream"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            getattr(direct(mock_bedrock), op)(modelId=SONNET, body=json.dumps(anthropic_body(**{key: value})))
        assert e.value.response["Error"]["Code"] == "ValidationException"
        assert e.value.response["Error"]["Message"] == (
            f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input and try again.")


@pytest.mark.parametrize("status,code,message", [
    (429, "ThrottlingException", mb.THROTTLE_MESSAGE),
    (500, "InternalServerException", "The server encountered an internal error."),
    (503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
])
def test_fail_with_answers_bedrock_errors_then_recovers(mock_bedrock, status, code, message):
    c = direct(mock_bedrock)
    mock_bedrock.fail_with(status, count=2)
    for call in (lambda: c.invoke_model(modelId=SONNET, body=BODY),
                 lambda: c.invoke_model_with_response_stream(modelId=SONNET, body=BODY)):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == code and e.value.response["Error"]["Message"] == message
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())["content"]
    assert [r.injected_failure for r in mock_bedrock.snapshot()] == [True, True, False]
    assert [r.status for r in mock_bedrock.snapshot()] == [status, status, 200]


def test_fail_with_until_cleared_and_only_for_valid_requests(mock_bedrock):
    c = direct(mock_bedrock)
    mock_bedrock.fail_with(503)
    for _ in range(3):
        with pytest.raises(botocore.exceptions.ClientError):
            c.invoke_model(modelId=SONNET, body=BODY)
    # an invalid body still gets its own ValidationException; a bad signature its 403
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(model=SONNET)))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct(mock_bedrock, secret_key="wrong").invoke_model(modelId=SONNET, body=BODY)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    mock_bedrock.fail_with(None)
    c.invoke_model(modelId=SONNET, body=BODY)
