"""Error paths, timeouts and streaming lifetimes, through the gateway."""
from __future__ import annotations

import json
import socket
import time

import botocore.exceptions
import pytest

import mock_bedrock as mb
from support import SONNET, SONNET_WIRE, anthropic_body, boto_client, free_port, raw_request, stream_text

BODY = json.dumps(anthropic_body()).encode()
BEDROCK_ERROR_TYPES = {"ValidationException", "AccessDeniedException", "ResourceNotFoundException",
                       "ModelTimeoutException", "ThrottlingException", "ServiceQuotaExceededException",
                       "ModelNotReadyException", "InternalServerException", "ServiceUnavailableException",
                       "ModelErrorException"}


def assert_bedrock_error(r, status: int | None, errortype: str | set[str] | None = None):
    assert r.status == status if status else r.status >= 400, (r.status, r.headers, r.body)
    et = r.errortype
    assert et, f"no x-amzn-errortype header: {r.headers}"
    name = et.split(":")[0]
    if isinstance(errortype, str):
        assert name == errortype, et
    else:
        assert name in (errortype or BEDROCK_ERROR_TYPES), et
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    msg = r.json().get("message")
    assert isinstance(msg, str) and msg, r.body


# ------------------------------------------------------------------------------------------------
# upstream errors pass through unmodified
# ------------------------------------------------------------------------------------------------

def test_upstream_throttling_reaches_boto3_unmodified(gateway, mock_bedrock):
    c = boto_client("bedrock-runtime", gateway.base)
    with pytest.raises(c.exceptions.ThrottlingException) as e:
        c.invoke_model(modelId="us.anthropic.mock-throttle-v1:0", body=BODY)
    assert e.value.response["Error"]["Message"] == mb.THROTTLE_MESSAGE
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # byte for byte: status, errortype header, body
    r = raw_request(gateway.url, "POST", "/bedrock/model/us.anthropic.mock-throttle-v1%3A0/invoke", BODY)
    assert r.status == 429
    assert r.errortype == mb.THROTTLE_ERRORTYPE
    assert r.body == json.dumps({"message": mb.THROTTLE_MESSAGE}).encode()
    assert len(mock_bedrock.by_operation("invoke")) == 2, "the gateway must not retry on its own here"


def test_upstream_500_passes_through(gateway):
    r = raw_request(gateway.url, "POST", "/bedrock/model/us.anthropic.mock-fail-500-v1%3A0/invoke", BODY)
    assert r.status == 500 and r.errortype == "InternalServerException"
    assert r.json() == {"message": "The server encountered an internal error."}


def test_upstream_validation_error_passes_through(gateway):
    bad = json.dumps(anthropic_body(model=SONNET)).encode()
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", bad)
    assert r.status == 400 and r.errortype == "ValidationException"
    assert "extraneous key [model]" in r.json()["message"]


def test_mid_stream_exception_frame_reaches_boto3(gateway):
    c = boto_client("bedrock-runtime", gateway.base)
    resp = c.invoke_model_with_response_stream(modelId="us.anthropic.mock-stream-error-v1:0", body=BODY)
    chunks = []
    with pytest.raises(botocore.exceptions.EventStreamError) as e:
        for ev in resp["body"]:
            chunks.append(ev)
    assert e.value.response["Error"]["Code"] == "throttlingException"
    assert e.value.response["Error"]["Message"] == mb.THROTTLE_MESSAGE
    assert len(chunks) == 3  # the events before the exception arrived first


# ------------------------------------------------------------------------------------------------
# errors the gateway decides itself
# ------------------------------------------------------------------------------------------------

def test_oversized_body_is_rejected_413_validation(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, max_request_body="2KiB")
    small = json.dumps(anthropic_body("x" * 1000)).encode()
    assert raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", small).status == 200
    big = json.dumps(anthropic_body("x" * 5000)).encode()
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", big)
    assert_bedrock_error(r, 413, "ValidationException")
    assert len(mock_bedrock.by_operation("invoke")) == 1, "the oversized body reached the upstream"


def test_oversized_chunked_body_is_rejected_413_validation(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, max_request_body="2KiB")
    big = json.dumps(anthropic_body("x" * 5000)).encode()
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke",
                    # an iterable body without a length: http.client sends it chunked
                    (big[i:i + 700] for i in range(0, len(big), 700)))
    assert_bedrock_error(r, 413, "ValidationException")
    assert not mock_bedrock.by_operation("invoke")


@pytest.mark.parametrize("path", [
    "/bedrock/model/../x/invoke",
    "/bedrock/model/%2E%2E/invoke",
    "/bedrock/model/%2e%2e/x/invoke",
    "/bedrock/model/./invoke",
    "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/not-an-operation",
    "/bedrock/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke/extra",
    "/bedrock/model//invoke",
])
def test_malformed_path_is_rejected_400_validation(gateway, mock_bedrock, path):
    r = raw_request(gateway.url, "POST", path, BODY)
    assert_bedrock_error(r, 400, "ValidationException")
    assert r.headers.get("x-request-id")
    assert not mock_bedrock.snapshot(), "a malformed path reached the upstream"


def test_upstream_down_gives_503_service_unavailable(start_gateway):
    closed = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(closed, connect="1s")
    t0 = time.time()
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY, timeout=30)
    assert_bedrock_error(r, 503, "ServiceUnavailableException")
    assert time.time() - t0 < 10
    c = boto_client("bedrock-runtime", gw.base)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.invoke_model(modelId=SONNET, body=BODY)
    assert e.value.response["Error"]["Code"] == "ServiceUnavailableException"


def test_hanging_upstream_times_out_in_bedrock_shape(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, first_byte="1s")
    t0 = time.time()
    r = raw_request(gw.url, "POST", "/bedrock/model/us.anthropic.mock-hang-v1%3A0/invoke", BODY, timeout=30)
    elapsed = time.time() - t0
    assert elapsed < 6, f"took {elapsed:.1f}s with first_byte = 1s"
    assert elapsed >= 0.9
    assert_bedrock_error(r, None, {"ModelTimeoutException", "ServiceUnavailableException", "InternalServerException"})
    assert r.status in (408, 500, 503, 504)


def test_hanging_upstream_connection_is_closed_after_timeout(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, first_byte="1s")
    raw_request(gw.url, "POST", "/bedrock/model/us.anthropic.mock-hang-v1%3A0/invoke", BODY, timeout=30)
    done = time.time()
    rec = mock_bedrock.wait_for(lambda rs: rs and rs[-1].peer_closed_at and rs[-1], timeout=5)
    assert rec, "the gateway kept the timed-out upstream connection open"
    assert rec.peer_closed_at - done < 3


# ------------------------------------------------------------------------------------------------
# x-request-id
# ------------------------------------------------------------------------------------------------

def test_request_id_is_kept_when_the_client_sends_one(gateway):
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY, {"x-request-id": "client-rid-42"})
    assert r.status == 200 and r.headers.get("x-request-id") == "client-rid-42"
    r = raw_request(gateway.url, "POST", "/bedrock/model/%2E%2E/invoke", BODY, {"x-request-id": "client-rid-43"})
    assert r.status == 400 and r.headers.get("x-request-id") == "client-rid-43"


def test_request_id_is_generated_when_the_client_sends_none(gateway):
    ids = set()
    for path in (f"/bedrock/model/{SONNET_WIRE}/invoke", f"/bedrock/model/{SONNET_WIRE}/invoke", "/bedrock/model/%2E%2E/invoke"):
        r = raw_request(gateway.url, "POST", path, BODY)
        rid = r.headers.get("x-request-id")
        assert rid and len(rid) >= 8, r.headers
        ids.add(rid)
    assert len(ids) == 3, "request ids must be unique"


def test_request_id_on_streaming_response(gateway):
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke-with-response-stream", BODY,
                    {"x-request-id": "client-rid-stream"})
    assert r.status == 200 and r.headers.get("x-request-id") == "client-rid-stream"
    assert r.headers.get("content-type") == "application/vnd.amazon.eventstream"
    frames, rest = mb.decode_frames(r.body)
    assert frames and rest == b""


# ------------------------------------------------------------------------------------------------
# streaming lifetimes
# ------------------------------------------------------------------------------------------------

def _open_stream(gw, model_id_wire: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"POST /bedrock/model/%s/invoke-with-response-stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (model_id_wire.encode(), len(BODY), BODY))
    return s


def test_client_disconnect_mid_stream_drops_upstream_promptly(gateway, mock_bedrock):
    s = _open_stream(gateway, "us.anthropic.mock-slow-stream-v1%3A0")
    got = b""
    while b"\r\n\r\n" not in got or len(got) < 600:  # headers and a few frames
        data = s.recv(4096)
        assert data, got
        got += data
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    s.close()
    closed = time.time()
    rec = mock_bedrock.wait_for(lambda rs: rs and rs[-1].peer_closed_at and rs[-1], timeout=6)
    assert rec, "the gateway did not drop the upstream stream after the client left"
    assert rec.peer_closed_at - closed < 2.0, f"upstream closed {rec.peer_closed_at - closed:.1f}s after the client"
    assert not rec.stream_completed


def test_stream_flowing_longer_than_idle_timeout_is_not_cut(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, idle="1s", first_byte="5s")
    c = boto_client("bedrock-runtime", gw.base)
    t0 = time.time()
    text = stream_text(c.invoke_model_with_response_stream(modelId="us.anthropic.mock-slow-stream-20-v1:0",
                                                           body=BODY)["body"])
    elapsed = time.time() - t0
    assert text == "".join(f"tick{i} " for i in range(20))
    assert elapsed > 3.5
    # The mock marks the stream complete just after writing its last bytes, which the client
    # may already have read.
    assert mock_bedrock.wait_for(lambda rs: rs and rs[-1].stream_completed, timeout=5)


def test_stalled_stream_is_cut_after_idle_timeout(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, idle="1s", first_byte="5s")
    s = _open_stream(gw, "us.anthropic.mock-stall-stream-v1%3A0")
    s.settimeout(15)
    t0 = time.time()
    got = b""
    while True:
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            break
        if not data or data.endswith(b"0\r\n\r\n"):
            break
        got += data
    elapsed = time.time() - t0
    s.close()
    assert got.startswith(b"HTTP/1.1 200")
    assert elapsed < 6, f"a stalled stream stayed open {elapsed:.1f}s with idle = 1s"
    rec = mock_bedrock.wait_for(lambda rs: rs and rs[-1].peer_closed_at and rs[-1], timeout=5)
    assert rec, "the gateway kept the stalled upstream connection open"
