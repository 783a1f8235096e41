"""The four stock plugins (audit-log, auth, model-rewrite, rate-limit) through the real gateway,
driven by Claude Code and boto3 against the strict mock Bedrock.

Every test ends by checking the audit file: each request the gateway logged has exactly one
audit record, and the token counts of answered requests are the mock's."""
from __future__ import annotations

import hashlib
import json
import re
import time

import botocore.exceptions
import pytest

import mock_bedrock as mb
from support import (GW_CREDENTIAL, SONNET, anthropic_body, boto_client, claude_bedrock_env,
                     claude_failure_text, plugin_path, run_claude)

INTERN_KEY = "sk-gw-intern-ivy"
LIMITED_KEY = "sk-gw-limited-lee"
TOKENS_KEY = "sk-gw-tokens-tom"
SONNET_5_5 = "us.anthropic.claude-sonnet-5-5"

# The tests run a debug build of the gateway on a shared 2-core machine; generous CPU limits
# keep them about behaviour, not speed (limits are tested in gateway/tests/plugin_runtime.rs).
LIMITS = 'cpu_limit = "250ms"'


def stock_pipeline(audit_path) -> str:
    return f"""
[audit]
path = "{audit_path}"
fsync = "always"

[[plugins]]
name = "audit-log"
path = "{plugin_path('audit-log')}"
on_error = "allow"
{LIMITS}
[plugins.config.prices]
"*opus*" = {{ input = 15.0, output = 75.0, cache_read = 1.5, cache_write = 18.75 }}
"*sonnet*" = {{ input = 3.0, output = 15.0 }}

[[plugins]]
name = "auth"
path = "{plugin_path('auth')}"
{LIMITS}
[plugins.config]
header = "authorization"
keys = [{{ key = "{GW_CREDENTIAL}", principal = "dev", team = "research" }},
        {{ key = "{INTERN_KEY}", principal = "ivy", team = "interns" }},
        {{ key_sha256 = "{hashlib.sha256(LIMITED_KEY.encode()).hexdigest()}", principal = "lee", team = "limited" }},
        {{ key = "{TOKENS_KEY}", principal = "tom", team = "tokens" }}]

[[plugins]]
name = "model-rewrite"
path = "{plugin_path('model-rewrite')}"
{LIMITS}
[[plugins.config.rules]]
match = {{ model = "*opus*", team = "interns" }}
rewrite_to = "{SONNET_5_5}"
[[plugins.config.rules]]
match = {{ model = "*", team = "contractors" }}
deny = true

[[plugins]]
name = "rate-limit"
path = "{plugin_path('rate-limit')}"
{LIMITS}
[[plugins.config.rules]]
match = {{ team = "limited" }}
per = "team"
requests_per_minute = 1
[[plugins.config.rules]]
match = {{ team = "tokens" }}
per = "team"
tokens_per_minute = 2000
[plugins.config.prices]
"*opus*" = {{ input = 15.0, output = 75.0, cache_read = 1.5, cache_write = 18.75 }}
"*sonnet*" = {{ input = 3.0, output = 15.0 }}
"""


@pytest.fixture
def stock(start_gateway, mock_bedrock, tmp_path):
    audit = tmp_path / "audit.log"
    gw = start_gateway(mock_bedrock, extra=stock_pipeline(audit))
    gw.audit_path = audit
    return gw


def audit_records(gw, expect_at_least: int = 1, timeout: float = 10.0) -> list[dict]:
    """The audit file's records, once every request in the gateway log has one (on-complete runs
    off the client's path, so records land just after the answers)."""
    deadline = time.time() + timeout
    while True:
        text = gw.audit_path.read_text() if gw.audit_path.exists() else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        logged = set(re.findall(r'request_id=([0-9a-f-]{36})', gw.log()))
        if len(records) >= expect_at_least and logged <= {r["request_id"] for r in records}:
            return records
        if time.time() > deadline:
            return records
        time.sleep(0.1)


def check_one_record_per_request(gw, records):
    # A request's log line is written just after its answer and its record just after that
    # (off the client's path): a line may land after `records` was read, so read both again
    # until they settle.
    deadline = time.time() + 10
    while True:
        ids = [r["request_id"] for r in records]
        logged = set(re.findall(r'request_id=([0-9a-f-]{36})', gw.log()))
        if logged == set(ids) or time.time() > deadline:
            break
        time.sleep(0.1)
        records = audit_records(gw, expect_at_least=len(records), timeout=1.0)
    assert len(ids) == len(set(ids)), f"duplicate audit records: {ids}"
    assert logged == set(ids), f"requests without a record: {logged - set(ids)}; records without a request: {set(ids) - logged}"
    for r in records:
        if r["status"] == 200 and r["outcome"] == "ok" and r["operation"] in ("invoke", "stream"):
            assert (r["input_tokens"], r["output_tokens"], r["cache_read_tokens"], r["cache_write_tokens"]) == \
                (mb.USAGE_INPUT, mb.USAGE_OUTPUT, mb.USAGE_CACHE_READ, mb.USAGE_CACHE_CREATION), r


def model_calls(mock):
    return [r for r in mock.snapshot() if r.operation.startswith(("invoke", "converse", "count"))]


def test_claude_code_with_a_gateway_key_gets_its_answer(stock, mock_bedrock, tmp_path, assert_no_leaks):
    p = run_claude(claude_bedrock_env(stock.base, tmp_path), "say hello")
    assert p.returncode == 0, claude_failure_text(p)
    assert mb.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    assert model_calls(mock_bedrock) and all(r.sig_ok for r in mock_bedrock.snapshot())
    assert_no_leaks()
    records = audit_records(stock)
    check_one_record_per_request(stock, records)
    answered = [r for r in records if r["operation"] == "stream" and r["status"] == 200]
    assert answered, records
    for r in answered:
        assert (r["principal"], r["team"]) == ("dev", "research")
        assert r["session_id"], "Claude Code's X-Claude-Code-Session-Id is in the record"
        assert r["cost_usd"] > 0
        assert r["config_generation"] == 1


def test_a_wrong_key_gets_401_and_the_upstream_sees_nothing(stock, mock_bedrock, tmp_path):
    env = claude_bedrock_env(stock.base, tmp_path, ANTHROPIC_AUTH_TOKEN="sk-gw-not-a-key", CLAUDE_CODE_MAX_RETRIES="0")
    p = run_claude(env, "say hello")
    assert p.returncode != 0, claude_failure_text(p)
    assert "401" in p.stdout + p.stderr, claude_failure_text(p)
    assert model_calls(mock_bedrock) == [], mock_bedrock.describe()

    # boto3 without a gateway key: its own SigV4 header is not a gateway credential.
    client = boto_client("bedrock-runtime", stock.base)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert model_calls(mock_bedrock) == []
    records = audit_records(stock, expect_at_least=2)
    check_one_record_per_request(stock, records)
    assert all(r["outcome"] == "denied" and r["denied_by"] == "auth" for r in records if r["status"] == 401)


def with_key(client, key):
    def add(request, **_):
        request.headers["x-api-key"] = key
    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def test_a_team_over_its_request_limit_gets_429_and_claude_code_says_so(stock, mock_bedrock, tmp_path):
    client = with_key(boto_client("bedrock-runtime", stock.base), LIMITED_KEY)
    client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))  # the one request of the minute
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert int(e.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1
    calls_before = len(model_calls(mock_bedrock))

    env = claude_bedrock_env(stock.base, tmp_path, ANTHROPIC_AUTH_TOKEN=LIMITED_KEY, CLAUDE_CODE_MAX_RETRIES="0")
    p = run_claude(env, "say hello")
    assert p.returncode != 0, claude_failure_text(p)
    out = p.stdout + p.stderr
    assert "429" in out and "limit" in out.lower(), claude_failure_text(p)
    assert len(model_calls(mock_bedrock)) == calls_before, "a throttled request never reaches the upstream"
    check_one_record_per_request(stock, audit_records(stock, expect_at_least=3))


def test_a_team_over_its_token_limit_gets_429(stock, mock_bedrock):
    client = with_key(boto_client("bedrock-runtime", stock.base), TOKENS_KEY)
    statuses = []
    for _ in range(4):
        try:
            client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(max_tokens=100)))
            statuses.append(200)
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "ThrottlingException", e.response
            assert "token" in e.response["Error"]["Message"].lower()
            statuses.append(429)
    # The mock reports 1117 input + 42 output tokens per answer; the limit is 2000 a minute.
    assert statuses[0] == 200 and 429 in statuses, statuses
    assert len(model_calls(mock_bedrock)) == statuses.count(200)
    check_one_record_per_request(stock, audit_records(stock, expect_at_least=4))


def test_an_interns_opus_request_reaches_the_upstream_as_the_configured_model(stock, mock_bedrock, tmp_path):
    env = claude_bedrock_env(stock.base, tmp_path, ANTHROPIC_AUTH_TOKEN=INTERN_KEY,
                             ANTHROPIC_MODEL="us.anthropic.claude-opus-4-5-20251101-v1:0")
    p = run_claude(env, "say hello")
    assert p.returncode == 0, claude_failure_text(p)
    assert mb.DEFAULT_ANSWER in p.stdout
    calls = [r for r in model_calls(mock_bedrock) if r.operation == "invoke-with-response-stream"]
    assert calls, mock_bedrock.describe()
    for r in calls:
        assert r.model_id == SONNET_5_5 and r.sig_ok, (r.model_id_raw, r.verdict)
    records = audit_records(stock)
    check_one_record_per_request(stock, records)
    streamed = [r for r in records if r["operation"] == "stream"]
    assert all(r["model_requested"].startswith("us.anthropic.claude-opus") and r["model_served"] == SONNET_5_5
               for r in streamed), streamed


def test_rewritten_model_ids_are_encoded_and_signed_for_boto3_too(stock, mock_bedrock):
    client = with_key(boto_client("bedrock-runtime", stock.base), INTERN_KEY)
    client.invoke_model(modelId="us.anthropic.claude-opus-4-5-20251101-v1:0", body=json.dumps(anthropic_body()))
    r = model_calls(mock_bedrock)[-1]
    assert r.model_id_raw == SONNET_5_5 and r.sig_ok


def test_metrics_count_requests_tokens_denials_and_plugin_calls(stock, mock_bedrock):
    import urllib.request
    client = with_key(boto_client("bedrock-runtime", stock.base), GW_CREDENTIAL)
    client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
    bad = with_key(boto_client("bedrock-runtime", stock.base), "sk-gw-wrong")
    with pytest.raises(botocore.exceptions.ClientError):
        bad.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
    audit_records(stock, expect_at_least=2)
    text = urllib.request.urlopen(stock.admin + "/metrics", timeout=5).read().decode()
    assert re.search(r'gateway_requests_total\{[^}]*front_door="bedrock"[^}]*outcome="ok"[^}]*status="200"\} 1', text), text
    assert f'gateway_tokens_total{{kind="cache_read",model="{SONNET}",team="research"}} {mb.USAGE_CACHE_READ}' in text, text
    assert 'gateway_plugin_denials_total{plugin="auth",status="401"} 1' in text
    assert 'gateway_plugin_calls_total{phase="on_request",plugin="auth",result="ok"}' in text
    assert "gateway_time_to_first_byte_seconds_bucket" in text and "gateway_request_duration_seconds_bucket" in text
