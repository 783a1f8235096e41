"""The Vertex AI front door (``/vertex``, and ``/v1/projects/...`` at the root): the Anthropic SDK's
``AnthropicVertex`` and Claude Code in Vertex mode, through the gateway, to the strict mock Vertex AI.

The client holds only the gateway credential (as its "access token") and names its own project and
region; at the mock every call must carry a live Google token the gateway got for itself (the
service-account JWT grant, an ``authorized_user`` refresh, or the GCE metadata server), the
backend's project and location, the mock's ``Host``, and no client credential."""
from __future__ import annotations

import json
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import mock_vertex as mv
from support import (GW_CREDENTIAL, claude_failure_text, claude_vertex_env, mock_backend, raw_request,
                     run_claude, vertex_backend, wait_request_logs)

CLIENT_PROJECT = "client-side-project-42"    # what the client thinks it bills; never reaches Vertex
CLIENT_REGION = "europe-west4"
VERTEX_SONNET = "claude-sonnet-4-5@20250929"
# The SDK 2.x puts its first-party API version into a Vertex body unless told otherwise.
VERTEX_VERSION = {"anthropic_version": "vertex-2023-10-16"}
MESSAGES = [{"role": "user", "content": "say hello"}]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def sa_file(mock_vertex, tmp_path):
    return mock_vertex.write_service_account(tmp_path / "service-account.json")


@pytest.fixture
def vgw(start_gateway, mock_vertex, sa_file):
    """A gateway whose only backend is the mock Vertex, with a service-account key file."""
    return start_gateway(backends=[vertex_backend(mock_vertex, sa_file)])


def vertex_client(gw, path: str = "/vertex/v1", capture: list | None = None, **kw):
    """``AnthropicVertex`` at the gateway, holding the gateway credential as its access token;
    ``capture`` collects (method, raw path, body) of what it sends."""
    import httpx2
    from anthropic import AnthropicVertex

    hooks = {"request": [lambda req: capture.append((req.method, req.url.raw_path, req.read()))]} \
        if capture is not None else {}
    return AnthropicVertex(region=CLIENT_REGION, project_id=CLIENT_PROJECT, base_url=gw.url + path,
                           access_token=GW_CREDENTIAL, max_retries=0,
                           http_client=httpx2.Client(event_hooks=hooks, timeout=30), **kw)


def api_path(mock, model: str, method: str) -> str:
    return f"/v1/projects/{mock.project}/locations/{mock.region}/publishers/anthropic/models/{model}:{method}"


def check_vertex_call(mock, rec, grant: str = "jwt-bearer"):
    """One API call at the mock: accepted, with a live token of ``grant``, the backend's project,
    location and host, and nothing of the client's."""
    assert rec.auth_ok, f"mock refused the gateway's token: {rec.verdict}\n{mock.describe()}"
    assert rec.verdict.mode == f"bearer:{grant}", rec.verdict
    token = rec.header("Authorization").removeprefix("Bearer ")
    assert mock.tokens[token].grant == grant
    assert rec.path.startswith(f"/v1/projects/{mock.project}/locations/{mock.region}/publishers/anthropic/models/")
    assert CLIENT_PROJECT not in rec.target and CLIENT_REGION not in rec.target
    assert rec.header("Host") == mock.authority
    assert rec.status == 200, mock.describe()
    assert not mock.leaked_credentials(), f"client credentials reached Vertex: {mock.leaked_credentials()}"


def usage_in(entry: dict, input_tokens=mv.USAGE_INPUT, output=mv.USAGE_OUTPUT, cache_read=mv.USAGE_CACHE_READ,
             cache_write=mv.USAGE_CACHE_CREATION) -> None:
    got = tuple(entry.get(k) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))
    assert got == tuple(str(n) for n in (input_tokens, output, cache_read, cache_write)), entry["_line"]


def secrets_absent_from_log(gw, mock) -> None:
    """No access token, private key, JWT assertion, refresh token or client secret in the gateway log."""
    log = gw.log()
    for tok in list(mock.tokens):
        assert tok not in log, "an access token was logged"
        assert tok.removeprefix(mv.TOKEN_PREFIX) not in log, "an access token was logged"
    pem_lines = [l for l in mv.private_key_pem(mock.key).splitlines() if not l.startswith("-----")]
    assert not any(l in log for l in pem_lines), "the service-account private key was logged"
    for r in mock.token_requests:
        for v in r.form().values():
            if len(v) > 20:
                assert v not in log, f"a token-request secret was logged: {v[:12]}..."
    for secret in (mock.user_client_secret, mock.user_refresh_token):
        assert secret not in log


# ------------------------------------------------------------------------------------------------
# AnthropicVertex through the gateway (service-account key file)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/vertex/v1", "/vertex", "/v1"], ids=["vertex-v1", "vertex", "root-v1"])
def test_anthropic_vertex_create_served_by_vertex_backend(vgw, mock_vertex, path):
    sent = []
    client = vertex_client(vgw, path, sent)
    rid = f"vertex-create-{uuid.uuid4()}"
    msg = client.messages.create(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES, extra_body=VERTEX_VERSION,
                                 extra_headers={"x-request-id": rid})
    assert msg.content[0].text == mv.DEFAULT_ANSWER
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (mv.USAGE_INPUT, mv.USAGE_CACHE_READ)

    method, raw_path, body = sent[-1]
    prefix = "" if path == "/v1" else "/vertex"
    suffix = "/v1" if path.endswith("/v1") else ""
    assert raw_path.decode() == (f"{prefix}{suffix}/projects/{CLIENT_PROJECT}/locations/{CLIENT_REGION}"
                                 f"/publishers/anthropic/models/{VERTEX_SONNET}:rawPredict")
    calls = mock_vertex.api_requests
    assert len(calls) == 1, mock_vertex.describe()
    rec = calls[0]
    assert rec.path == api_path(mock_vertex, VERTEX_SONNET, "rawPredict")
    check_vertex_call(mock_vertex, rec)
    assert rec.body == body, "same protocol: the body must reach Vertex byte for byte"

    # the token came from the JWT-bearer grant, made once, at start-up
    toks = mock_vertex.token_requests
    assert len(toks) == 1 and toks[0].verdict.ok and toks[0].verdict.mode == "oauth:jwt-bearer", mock_vertex.describe()
    assert toks[0].received_at < rec.received_at

    entry = wait_request_logs(vgw, lambda e: e.get("request_id") == rid)
    assert entry, f"no request log line for {rid}:\n{vgw.log()[-3000:]}"
    e = entry[0]
    assert (e.get("front_door"), e.get("backend"), e.get("status")) == ("vertex", "mock-vertex", "200"), e["_line"]
    usage_in(e)
    secrets_absent_from_log(vgw, mock_vertex)


def test_anthropic_vertex_stream_served_by_vertex_backend(vgw, mock_vertex):
    sent = []
    client = vertex_client(vgw, capture=sent)
    rid = f"vertex-stream-{uuid.uuid4()}"
    with client.messages.stream(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES, extra_body=VERTEX_VERSION,
                                extra_headers={"x-request-id": rid}) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == mv.DEFAULT_ANSWER
    assert final.usage.output_tokens == mv.USAGE_OUTPUT
    assert final.usage.cache_creation_input_tokens == mv.USAGE_CACHE_CREATION

    rec = mock_vertex.by_operation("streamRawPredict")[-1]
    assert rec.path == api_path(mock_vertex, VERTEX_SONNET, "streamRawPredict")
    check_vertex_call(mock_vertex, rec)
    assert mock_vertex.wait_for(lambda _: rec.stream_completed), "the mock did not finish its stream"
    assert rec.body == sent[-1][2]
    assert rec.json()["stream"] is True

    e = wait_request_logs(vgw, lambda e: e.get("request_id") == rid)
    assert e, vgw.log()[-3000:]
    assert e[0].get("status") == "200" and e[0].get("backend") == "mock-vertex", e[0]["_line"]
    usage_in(e[0])


def test_count_tokens_through_the_vertex_door(vgw, mock_vertex):
    sent = []
    client = vertex_client(vgw, capture=sent)
    n = client.messages.count_tokens(model=VERTEX_SONNET, messages=MESSAGES, extra_body=VERTEX_VERSION)
    expected = max(1, len(json.dumps(MESSAGES) + json.dumps("")) // 4)   # the mock's count
    assert n.input_tokens == expected
    assert sent[-1][1].decode().endswith("/publishers/anthropic/models/count-tokens:rawPredict")
    rec = mock_vertex.by_operation("count-tokens")[-1]
    assert rec.path == api_path(mock_vertex, "count-tokens", "rawPredict")
    check_vertex_call(mock_vertex, rec)
    assert rec.json()["model"] == VERTEX_SONNET
    assert rec.body == sent[-1][2]


def test_same_protocol_upstream_error_passes_unmodified(vgw, mock_vertex):
    from anthropic import RateLimitError

    mock_vertex.fail_with(429, count=1)
    client = vertex_client(vgw)
    with pytest.raises(RateLimitError) as e:
        client.messages.create(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES, extra_body=VERTEX_VERSION)
    quota = mv.QUOTA_MESSAGE.format(base="claude-sonnet-4-5")
    assert e.value.status_code == 429
    assert e.value.body == {"error": {"code": 429, "message": quota, "status": "RESOURCE_EXHAUSTED"}}
    assert len(mock_vertex.api_requests) == 1, "one backend only: nothing to fail over to"


def test_one_token_fetch_for_many_concurrent_requests_and_no_secret_in_the_log(vgw, mock_vertex):
    # readiness waited for the token: it is there before any request
    assert [r.verdict.mode for r in mock_vertex.token_requests] == ["oauth:jwt-bearer"], mock_vertex.describe()
    client = vertex_client(vgw)
    start = threading.Barrier(16)

    def one(i):
        start.wait(timeout=10)
        if i % 2:
            with client.messages.stream(model=VERTEX_SONNET, max_tokens=64, extra_body=VERTEX_VERSION,
                                        messages=[{"role": "user", "content": f"request {i}"}]) as s:
                return "".join(s.text_stream)
        return client.messages.create(model=VERTEX_SONNET, max_tokens=64, extra_body=VERTEX_VERSION,
                                      messages=[{"role": "user", "content": f"request {i}"}]).content[0].text

    with ThreadPoolExecutor(16) as ex:
        texts = list(ex.map(one, range(16)))
    assert texts == [mv.DEFAULT_ANSWER] * 16
    calls = mock_vertex.api_requests
    assert len(calls) == 16
    for rec in calls:
        check_vertex_call(mock_vertex, rec)
    assert len({r.header("Authorization") for r in calls}) == 1, "every call should use the one cached token"
    assert len(mock_vertex.token_requests) == 1, f"token stampede:\n{mock_vertex.describe()}"
    assert len(wait_request_logs(vgw, lambda e: e.get("front_door") == "vertex", count=16)) == 16
    secrets_absent_from_log(vgw, mock_vertex)


# ------------------------------------------------------------------------------------------------
# Other Google credential sources
# ------------------------------------------------------------------------------------------------

def _one_create(gw) -> None:
    msg = vertex_client(gw).messages.create(model=VERTEX_SONNET, max_tokens=64, messages=MESSAGES,
                                            extra_body=VERTEX_VERSION)
    assert msg.content[0].text == mv.DEFAULT_ANSWER


def test_authorized_user_credentials_file(start_gateway, mock_vertex, tmp_path):
    creds = mock_vertex.write_authorized_user(tmp_path / "adc.json")
    gw = start_gateway(backends=[vertex_backend(mock_vertex, creds)])
    _one_create(gw)
    toks = mock_vertex.token_requests
    assert len(toks) == 1 and toks[0].verdict.ok and toks[0].verdict.mode == "oauth:refresh_token", mock_vertex.describe()
    assert toks[0].form()["refresh_token"] == mock_vertex.user_refresh_token
    check_vertex_call(mock_vertex, mock_vertex.api_requests[-1], grant="refresh_token")
    secrets_absent_from_log(gw, mock_vertex)


def test_adc_from_google_application_credentials(start_gateway, mock_vertex, sa_file):
    gw = start_gateway(backends=[vertex_backend(mock_vertex)], env={"GOOGLE_APPLICATION_CREDENTIALS": sa_file})
    _one_create(gw)
    check_vertex_call(mock_vertex, mock_vertex.api_requests[-1], grant="jwt-bearer")
    assert len(mock_vertex.token_requests) == 1
    secrets_absent_from_log(gw, mock_vertex)


def test_adc_from_the_gcloud_file_in_home(start_gateway, mock_vertex, tmp_path):
    home = tmp_path / "home-with-adc"
    (home / ".config" / "gcloud").mkdir(parents=True)
    mock_vertex.write_authorized_user(home / ".config" / "gcloud" / "application_default_credentials.json")
    gw = start_gateway(backends=[vertex_backend(mock_vertex)], env={"HOME": str(home)})
    _one_create(gw)
    check_vertex_call(mock_vertex, mock_vertex.api_requests[-1], grant="refresh_token")
    secrets_absent_from_log(gw, mock_vertex)


def test_metadata_server_when_there_is_no_credentials_file(start_gateway, mock_vertex, tmp_path):
    empty_home = tmp_path / "home-without-adc"
    empty_home.mkdir()
    gw = start_gateway(backends=[vertex_backend(mock_vertex)],
                       env={"HOME": str(empty_home), "GCE_METADATA_HOST": mock_vertex.authority})
    _one_create(gw)
    toks = mock_vertex.token_requests
    assert toks and all(r.operation == "metadata-token" for r in toks), mock_vertex.describe()
    assert toks[0].verdict.ok and toks[0].header("Metadata-Flavor") == "Google"
    assert len(toks) == 1
    check_vertex_call(mock_vertex, mock_vertex.api_requests[-1], grant="metadata")
    secrets_absent_from_log(gw, mock_vertex)


# ------------------------------------------------------------------------------------------------
# Errors the gateway decides, in Vertex's shape
# ------------------------------------------------------------------------------------------------

def assert_vertex_error(r, status: int, status_name: str) -> str:
    assert r.status == status, (r.status, r.body)
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["code"] == status and err["status"] == status_name, body
    assert isinstance(err["message"], str) and err["message"], body
    assert "x-amzn-errortype" not in r.headers
    return err["message"]


GOOD_VERTEX_BODY = json.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 8, "messages": MESSAGES}).encode()


@pytest.mark.parametrize("path", [
    "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models",
    "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic",
    "/vertex/v1/nothing-here",
    "/vertex/nothing-here",
])
def test_unknown_path_under_vertex_is_404_in_vertex_shape(vgw, mock_vertex, path):
    r = raw_request(vgw.url, "POST", path, GOOD_VERTEX_BODY, {"Authorization": f"Bearer {GW_CREDENTIAL}"})
    assert_vertex_error(r, 404, "NOT_FOUND")
    assert mock_vertex.api_requests == []


def test_unknown_method_on_a_model_is_refused_in_vertex_shape(vgw, mock_vertex):
    path = "/vertex/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:fooPredict"
    r = raw_request(vgw.url, "POST", path, GOOD_VERTEX_BODY, {"Authorization": f"Bearer {GW_CREDENTIAL}"})
    assert r.status in (400, 404), (r.status, r.body)
    assert_vertex_error(r, r.status, {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}[r.status])
    assert mock_vertex.api_requests == []


def test_route_to_a_backend_without_the_model_is_400_in_vertex_shape(start_gateway, mock_vertex, mock_bedrock, sa_file):
    """A catalog model with only a Vertex ID, routed (no plugin involved) to a Bedrock backend:
    the gateway cannot name it there and says so itself, in the Vertex client's shape."""
    extra = """
[[models]]
name = "claude-vertex-only-9"
vertex = "claude-vertex-only-9@20990101"

[[routes]]
models = ["claude-vertex-only-9*"]
front_doors = ["vertex"]
backends = ["mock-bedrock"]
"""
    gw = start_gateway(backends=[vertex_backend(mock_vertex, sa_file), mock_backend(mock_bedrock)], extra=extra)
    from anthropic import BadRequestError
    with pytest.raises(BadRequestError) as e:
        vertex_client(gw).messages.create(model="claude-vertex-only-9@20990101", max_tokens=64, messages=MESSAGES,
                                          extra_body=VERTEX_VERSION)
    assert e.value.status_code == 400
    assert set(e.value.body) == {"error"}, e.value.body
    assert e.value.body["error"]["code"] == 400 and e.value.body["error"]["status"] == "INVALID_ARGUMENT", e.value.body
    assert "claude-vertex-only-9" in e.value.body["error"]["message"]
    assert [r for r in mock_bedrock.snapshot() if r.operation.startswith(("invoke", "count"))] == []
    assert mock_vertex.api_requests == []
    # the other models still reach Vertex
    _one_create(gw)


# ------------------------------------------------------------------------------------------------
# Claude Code in Vertex mode
# ------------------------------------------------------------------------------------------------

@pytest.mark.claude_code
def test_claude_code_vertex_mode_served_by_vertex_backend(vgw, mock_vertex, tmp_path):
    home = tmp_path / "claude-home"
    home.mkdir()
    env = claude_vertex_env(vgw.url + "/vertex", home, project=CLIENT_PROJECT, region=CLIENT_REGION)
    p = run_claude(env, "say hello", timeout=120)
    assert p.returncode == 0, claude_failure_text(p)
    assert mv.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)

    streams = [r for r in mock_vertex.by_operation("streamRawPredict") if r.status == 200]
    assert streams, mock_vertex.describe()
    for rec in mock_vertex.api_requests:
        assert rec.status == 200, f"the mock refused a call:\n{mock_vertex.describe()}"
        check_vertex_call(mock_vertex, rec)
    rec = streams[-1]
    body = rec.json()
    assert body["anthropic_version"] == "vertex-2023-10-16" and body["stream"] is True and "model" not in body
    assert body["tools"] and body["system"]
    assert "claude-code-20250219" in rec.header("anthropic-beta")
    session = rec.header("X-Claude-Code-Session-Id")
    assert session
    assert re.fullmatch(r"claude-[a-z0-9.-]+(@\d{8})?", rec.model), rec.model
    assert len(mock_vertex.token_requests) == 1

    entries = wait_request_logs(vgw, lambda e: e.get("session_id") == session and e.get("status") == "200")
    assert entries and entries[-1].get("front_door") == "vertex", vgw.log()[-3000:]
    usage_in(entries[-1])
    secrets_absent_from_log(vgw, mock_vertex)
