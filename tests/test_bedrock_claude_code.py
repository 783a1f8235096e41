"""The Claude Code CLI in Bedrock mode, through the gateway, to the mock."""
from __future__ import annotations

import pytest

import mock_bedrock as mb
from support import SONNET, claude_bedrock_env, claude_failure_text, run_claude

pytestmark = pytest.mark.claude_code


def test_claude_code_bedrock_mode_prints_the_answer_through_gateway(gateway, mock_bedrock, tmp_path, assert_no_leaks):
    p = run_claude(claude_bedrock_env(gateway.base, tmp_path), "say hello", timeout=120)
    assert p.returncode == 0, claude_failure_text(p)
    assert mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)

    # model discovery: GET /inference-profiles, sent unsigned by Claude Code, signed by the gateway
    profiles = mock_bedrock.by_operation("list-inference-profiles")
    assert profiles, mock_bedrock.describe()
    assert "type=SYSTEM_DEFINED" in profiles[0].query
    assert all(r.sig_ok for r in profiles), [r.verdict for r in profiles]

    streams = mock_bedrock.by_operation("invoke-with-response-stream")
    assert streams, mock_bedrock.describe()
    for r in streams:
        assert r.sig_ok, f"{r.verdict.error_type}: {r.verdict.message}"
        body = r.json()
        assert body["anthropic_version"] == "bedrock-2023-05-31" and "model" not in body
        assert isinstance(body["anthropic_beta"], list) and body["anthropic_beta"]
        assert body["tools"] and body["system"]
        assert r.header("x-claude-code-session-id")  # forwarded as is (not a credential)
    # nothing failed upstream and the gateway credential never got there
    assert all(r.sig_ok for r in mock_bedrock.snapshot()), mock_bedrock.describe()
    assert_no_leaks()
    assert all(r.header("authorization", ) is None or r.header("authorization").startswith("AWS4-HMAC-SHA256 ")
               for r in mock_bedrock.snapshot())


def test_claude_code_colon_model_id_is_forwarded_raw_and_signed(gateway, mock_bedrock, tmp_path, assert_no_leaks):
    env = claude_bedrock_env(gateway.base, tmp_path, ANTHROPIC_MODEL=SONNET)
    p = run_claude(env, "say hello", timeout=120)
    assert p.returncode == 0 and mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    calls = [r for r in mock_bedrock.snapshot() if r.model_id == SONNET]
    assert calls, mock_bedrock.describe()
    for r in calls:
        assert r.model_id_raw == SONNET, "Claude Code sends ':' raw; the gateway must keep it"
        assert r.sig_ok, f"{r.verdict.error_type}: {r.verdict.message}"
    assert_no_leaks()


def test_claude_code_shows_the_upstream_throttling_message_unmodified(gateway, mock_bedrock, tmp_path):
    env = claude_bedrock_env(gateway.base, tmp_path, ANTHROPIC_MODEL="us.anthropic.mock-throttle-v1:0",
                             CLAUDE_CODE_MAX_RETRIES="0")
    p = run_claude(env, "say hello", timeout=120)
    assert p.returncode != 0, claude_failure_text(p)
    assert "429" in p.stdout and mb.THROTTLE_MESSAGE in p.stdout, claude_failure_text(p)
    assert mock_bedrock.by_operation("invoke-with-response-stream")[-1].status == 429
