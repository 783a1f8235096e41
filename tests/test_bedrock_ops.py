"""Upstream credentials (session token, Bedrock API key), configuration, admin endpoints, logs,
shutdown."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request

import pytest

import mock_bedrock as mb
from support import (SONNET, SONNET_WIRE, anthropic_body, boto_client, gateway_config, minimal_env, mock_backend,
                     raw_request, stream_text)

BODY = json.dumps(anthropic_body()).encode()


def test_gateway_signs_with_session_token_from_its_environment(start_gateway, make_mock, assert_no_leaks):
    m = make_mock(session_token="gateway-session-token-xyz")
    gw = start_gateway(m, env={"AWS_SESSION_TOKEN": "gateway-session-token-xyz"})
    c = boto_client("bedrock-runtime", gw.base, session_token="client-session-token")
    assert stream_text(c.invoke_model_with_response_stream(modelId=SONNET, body=BODY)["body"]) == mb.DEFAULT_ANSWER
    rec = m.snapshot()[-1]
    assert rec.sig_ok, rec.verdict
    assert rec.header("x-amz-security-token") == "gateway-session-token-xyz"
    assert "x-amz-security-token" in rec.verdict.signed_headers
    assert_no_leaks(m)
    assert "client-session-token" not in json.dumps(rec.headers)


def test_bearer_token_backend_sends_the_bedrock_api_key(start_gateway, make_mock, assert_no_leaks):
    m = make_mock(auth="bearer")
    gw = start_gateway(m, backend={"bearer_token": "${GW_TEST_BEDROCK_KEY}"}, aws_keys=False,
                       env={"GW_TEST_BEDROCK_KEY": mb.TEST_BEARER_TOKEN})
    c = boto_client("bedrock-runtime", gw.base)
    out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
    assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET}/invoke", BODY,
                    {"Authorization": "Bearer sk-gw-test"})
    assert r.status == 200, r.body
    for rec in m.snapshot():
        assert rec.sig_ok and rec.verdict.mode == "bearer", rec.verdict
        assert rec.header("authorization") == f"Bearer {mb.TEST_BEARER_TOKEN}"
        assert rec.header("x-amz-date") is None, "no SigV4 with a Bedrock API key"
    assert_no_leaks(m)


def test_config_default_expansion_is_used_when_the_variable_is_unset(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, backend={"region": "${GW_TEST_UNSET_REGION:-us-east-1}"})
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY)
    assert r.status == 200, r.body
    assert mock_bedrock.snapshot()[-1].verdict.region == "us-east-1"


def test_wrong_backend_region_is_refused_by_bedrock_and_passed_through(start_gateway, mock_bedrock):
    """The gateway signs for its backend's region; a mismatch is Bedrock's 403, passed through."""
    gw = start_gateway(mock_bedrock, backend={"region": "eu-west-1"})
    r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY)
    assert r.status == 403 and r.errortype == "InvalidSignatureException"
    assert mock_bedrock.snapshot()[-1].verdict.region == "eu-west-1"


def _check(gateway_bin, tmp_path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "check.toml"
    cfg.write_text(text)
    return subprocess.run([str(gateway_bin), "check", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=30, env=minimal_env(tmp_path), stdin=subprocess.DEVNULL)


def test_gateway_check_accepts_a_good_config(gateway_bin, tmp_path):
    text = gateway_config(port=18081, admin_port=19901, backends=[mock_backend("http://127.0.0.1:18080")])
    p = _check(gateway_bin, tmp_path, text)
    assert p.returncode == 0, p.stdout + p.stderr


def test_gateway_check_reports_a_bad_value_with_its_key_path(gateway_bin, tmp_path):
    text = gateway_config(port=18081, admin_port=19901, backends=[mock_backend("http://127.0.0.1:18080")],
                          first_byte="soon")
    p = _check(gateway_bin, tmp_path, text)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "timeouts.first_byte" in out, out


def test_gateway_check_reports_each_problem_with_its_key_path(gateway_bin, tmp_path):
    text = gateway_config(port=18081, admin_port=18081,
                          backends=[mock_backend("not a url", region=""),
                                    mock_backend("http://127.0.0.1:18080")])
    p = _check(gateway_bin, tmp_path, text)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    for key in ("server.admin_listen", "backends[0].region", "backends[0].endpoint", "backends[1].name"):
        assert key in out, f"{key} not reported:\n{out}"


def test_healthz_and_readyz(gateway):
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(gateway.admin + path, timeout=5) as r:
            assert r.status == 200


def test_log_line_has_request_id_session_model_status_and_usage(gateway):
    session = "6f1c2e0a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    rid = "log-check-rid-7731"
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke-with-response-stream", BODY,
                    {"x-request-id": rid, "X-Claude-Code-Session-Id": session})
    assert r.status == 200
    line = gateway.wait_log(lambda t: next((l for l in t.splitlines() if rid in l), None))
    assert line, f"no log line with the request id:\n{gateway.log()[-3000:]}"
    assert session in line
    assert "claude-sonnet-4-5-20250929" in line
    assert re.search(r"\b200\b", line)
    for n in (mb.USAGE_INPUT, mb.USAGE_OUTPUT, mb.USAGE_CACHE_READ, mb.USAGE_CACHE_CREATION):
        assert re.search(rf"\b{n}\b", line), f"usage number {n} missing from: {line}"


def test_log_line_for_non_streaming_invoke_has_usage(gateway):
    rid = "log-check-rid-invoke-8842"
    r = raw_request(gateway.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", BODY, {"x-request-id": rid})
    assert r.status == 200
    line = gateway.wait_log(lambda t: next((l for l in t.splitlines() if rid in l), None))
    assert line, gateway.log()[-3000:]
    for n in (mb.USAGE_INPUT, mb.USAGE_OUTPUT):
        assert re.search(rf"\b{n}\b", line), f"usage number {n} missing from: {line}"


def test_sigterm_stops_the_gateway_promptly(gateway):
    t0 = time.time()
    gateway.proc.send_signal(signal.SIGTERM)
    rc = gateway.proc.wait(timeout=15)
    assert time.time() - t0 < 10
    assert rc == 0, f"exit code {rc}\n{gateway.log()[-2000:]}"
