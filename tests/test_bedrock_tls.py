"""The gateway's data plane over HTTPS (tls_cert / tls_key), with a test CA made here."""
from __future__ import annotations

import json

import pytest

import mock_bedrock as mb
from support import (SONNET, anthropic_body, boto_client, claude_bedrock_env, claude_failure_text,
                     make_test_pki, raw_request, run_claude, stream_text)


@pytest.fixture
def pki(tmp_path):
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
def tls_gateway(start_gateway, mock_bedrock, pki):
    gw = start_gateway(mock_bedrock, tls=(pki["cert"], pki["key"]))
    assert gw.base.startswith("https://127.0.0.1:")
    return gw


def test_boto3_over_https_with_test_ca(tls_gateway, mock_bedrock, pki, assert_no_leaks):
    c = boto_client("bedrock-runtime", tls_gateway.base, verify=pki["ca"])
    body = json.dumps(anthropic_body())
    out = json.loads(c.invoke_model(modelId=SONNET, body=body)["body"].read())
    assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
    assert stream_text(c.invoke_model_with_response_stream(modelId=SONNET, body=body)["body"]) == mb.DEFAULT_ANSWER
    assert all(r.sig_ok for r in mock_bedrock.snapshot())
    assert_no_leaks()


def test_https_certificate_is_the_configured_one(tls_gateway, pki):
    # verifies against our CA and for 127.0.0.1 (the SAN)
    r = raw_request(tls_gateway.url, "GET", "/bedrock/inference-profiles?type=SYSTEM_DEFINED", cafile=pki["ca"])
    assert r.status == 200
    # and an untrusting client is refused by the TLS handshake
    import ssl
    with pytest.raises(ssl.SSLError):
        raw_request(tls_gateway.url, "GET", "/bedrock/inference-profiles", cafile=None)


@pytest.mark.claude_code
def test_claude_code_over_https_with_node_extra_ca_certs(tls_gateway, mock_bedrock, pki, tmp_path, assert_no_leaks):
    env = claude_bedrock_env(tls_gateway.base, tmp_path, NODE_EXTRA_CA_CERTS=pki["ca"])
    p = run_claude(env, "say hello", timeout=120)
    assert p.returncode == 0 and mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    assert mock_bedrock.by_operation("invoke-with-response-stream")
    assert all(r.sig_ok for r in mock_bedrock.snapshot())
    assert_no_leaks()
