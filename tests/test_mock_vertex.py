"""Self-checks of the mock Vertex AI and its Google OAuth endpoints, with no gateway in between:
the mock accepts what Google accepts (tokens got with google-auth and with hand-signed JWTs, the
Anthropic SDK's AnthropicVertex) and rejects what Google rejects, so a passing gateway test means
something."""
from __future__ import annotations

import json
import socket
import time
import urllib.parse

import pytest
import requests

import mock_vertex as mv
from mock_http import parse_sse
from mock_vertex import CLOUD_PLATFORM_SCOPE, JWT_BEARER_GRANT, generate_rsa_key, sign_jwt
from support import raw_request

SONNET = "claude-sonnet-4-5@20250929"


def api_path(mock, model=SONNET, method="rawPredict", project=None, region=None) -> str:
    return (f"/v1/projects/{project or mock.project}/locations/{region or mock.region}"
            f"/publishers/anthropic/models/{model}:{method}")


def vertex_body(**extra) -> dict:
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
            "messages": [{"role": "user", "content": "say hello"}]}
    body.update(extra)
    return body


def claims(mock, **over) -> dict:
    now = int(time.time())
    c = {"iss": mock.client_email, "aud": mock.token_uri, "scope": CLOUD_PLATFORM_SCOPE,
         "iat": now, "exp": now + 3600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def post_token(mock, form: dict, content_type="application/x-www-form-urlencoded") -> requests.Response:
    return requests.post(mock.token_uri, data=urllib.parse.urlencode(form), headers={"Content-Type": content_type},
                         timeout=10)


def jwt_grant(mock, assertion: str) -> requests.Response:
    return post_token(mock, {"grant_type": JWT_BEARER_GRANT, "assertion": assertion})


def token_for(mock) -> str:
    r = jwt_grant(mock, sign_jwt(mock.key, claims(mock), {"alg": "RS256", "typ": "JWT", "kid": mock.private_key_id}))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def call(mock, token: str | None, path: str | None = None, body=None, headers=None, method="POST"):
    h = {"Authorization": f"Bearer {token}"} if token else {}
    h.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(vertex_body() if body is None else body).encode()
    return raw_request(mock.url, method, path or api_path(mock), data, h)


def assert_vertex_error(r, code: int, status: str, needle: str = ""):
    assert r.status == code, (r.status, r.body)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == status, err
    assert needle in err["message"], err["message"]
    return err["message"]


# ------------------------------------------------------------------------------------------------
# credentials files and the token endpoint
# ------------------------------------------------------------------------------------------------

def test_service_account_file_is_a_google_key_file(mock_vertex, tmp_path):
    from cryptography.hazmat.primitives import serialization
    path = mock_vertex.write_service_account(tmp_path / "sa.json")
    info = json.loads(open(path).read())
    assert info["type"] == "service_account" and info["project_id"] == mock_vertex.project
    assert info["token_uri"] == mock_vertex.url + "/token"
    assert info["client_email"] == "gateway@test-project.iam.gserviceaccount.com"
    assert len(info["private_key_id"]) == 40 and int(info["private_key_id"], 16) >= 0
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    key = serialization.load_pem_private_key(info["private_key"].encode(), None)
    assert key.public_key().public_numbers() == mock_vertex.public_key.public_numbers()
    for k in ("client_id", "auth_uri", "auth_provider_x509_cert_url", "client_x509_cert_url"):
        assert info[k]


def test_google_auth_service_account_gets_a_token_that_vertex_accepts(mock_vertex, tmp_path):
    """The reference client: google-auth signs the grant (its aud is Google's fixed token URL, so it
    is told the mock's token_uri as aud, which is what the key file says)."""
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account
    path = mock_vertex.write_service_account(tmp_path / "sa.json")
    creds = service_account.Credentials.from_service_account_file(
        path, scopes=[CLOUD_PLATFORM_SCOPE], additional_claims={"aud": mock_vertex.token_uri})
    creds.refresh(Request())
    assert creds.token.startswith("ya29.mock-")
    assert len(mock_vertex.token_requests) == 1
    assert mock_vertex.token_requests[0].auth_ok and mock_vertex.token_requests[0].verdict.mode == "oauth:jwt-bearer"
    r = call(mock_vertex, creds.token)
    assert r.status == 200, r.body
    assert r.json()["content"][0]["text"] == mv.DEFAULT_ANSWER


def test_google_auth_with_googles_own_audience_is_refused(mock_vertex, tmp_path):
    """A JWT whose aud is not the key file's token_uri (here Google's default URL) fails like Google."""
    from google.auth import exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account
    path = mock_vertex.write_service_account(tmp_path / "sa.json")
    creds = service_account.Credentials.from_service_account_file(path, scopes=[CLOUD_PLATFORM_SCOPE])
    with pytest.raises(exceptions.RefreshError) as e:
        creds.refresh(Request())
    assert "invalid_grant" in str(e.value) and "audience" in str(e.value)


def test_hand_signed_jwt_grant_issues_a_bearer_token(mock_vertex, tmp_path):
    from cryptography.hazmat.primitives import serialization
    info = json.loads(open(mock_vertex.write_service_account(tmp_path / "sa.json")).read())
    key = serialization.load_pem_private_key(info["private_key"].encode(), None)
    assertion = sign_jwt(key, claims(mock_vertex, aud=info["token_uri"], iss=info["client_email"]),
                         {"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]})
    r = jwt_grant(mock_vertex, assertion)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["access_token"].startswith("ya29.mock-") and out["token_type"] == "Bearer"
    assert out["expires_in"] == 3599
    assert mock_vertex.tokens[out["access_token"]].grant == "jwt-bearer"
    # no typ is fine too
    r = jwt_grant(mock_vertex, sign_jwt(key, claims(mock_vertex), {"alg": "RS256", "kid": info["private_key_id"]}))
    assert r.status_code == 200, r.text


def test_token_lifetime_is_configurable(make_vertex):
    m = make_vertex(token_lifetime=120)
    r = jwt_grant(m, sign_jwt(m.key, claims(m), {"alg": "RS256", "typ": "JWT", "kid": m.private_key_id}))
    assert r.json()["expires_in"] == 120


def _bad(mock, case):
    now = int(time.time())
    hdr = {"alg": "RS256", "typ": "JWT", "kid": mock.private_key_id}
    key = mock.key
    if case == "bad signature":
        key = generate_rsa_key()
        return sign_jwt(key, claims(mock), hdr)
    if case == "tampered claims":
        good = sign_jwt(key, claims(mock), hdr).split(".")
        good[1] = mv.b64url(json.dumps(claims(mock, scope=CLOUD_PLATFORM_SCOPE + " openid")).encode())
        return ".".join(good)
    if case == "wrong aud":
        return sign_jwt(key, claims(mock, aud="https://oauth2.googleapis.com/token"), hdr)
    if case == "aud with trailing slash":
        return sign_jwt(key, claims(mock, aud=mock.token_uri + "/"), hdr)
    if case == "missing scope":
        return sign_jwt(key, claims(mock, scope=None), hdr)
    if case == "other scope":
        return sign_jwt(key, claims(mock, scope="https://www.googleapis.com/auth/devstorage.read_only"), hdr)
    if case == "expired":
        return sign_jwt(key, claims(mock, iat=now - 7200, exp=now - 3600), hdr)
    if case == "too long-lived":
        return sign_jwt(key, claims(mock, exp=now + 3601), hdr)
    if case == "iat in the future":
        return sign_jwt(key, claims(mock, iat=now + 600, exp=now + 1200), hdr)
    if case == "iat too old":
        return sign_jwt(key, claims(mock, iat=now - 400, exp=now + 3000), hdr)
    if case == "wrong kid":
        return sign_jwt(key, claims(mock), dict(hdr, kid="0" * 40))
    if case == "missing kid":
        return sign_jwt(key, claims(mock), {"alg": "RS256", "typ": "JWT"})
    if case == "alg none":
        return sign_jwt(key, claims(mock), dict(hdr, alg="none"))
    if case == "wrong iss":
        return sign_jwt(key, claims(mock, iss="someone@else.iam.gserviceaccount.com"), hdr)
    if case == "padded base64":
        parts = sign_jwt(key, claims(mock), hdr).split(".")
        return ".".join(p + "=" * (-len(p) % 4) for p in parts) + ("" if any(-len(p) % 4 for p in parts) else "==")
    if case == "two segments":
        return ".".join(sign_jwt(key, claims(mock), hdr).split(".")[:2])
    raise AssertionError(case)


@pytest.mark.parametrize("case,error,needle", [
    ("bad signature", "invalid_grant", "Invalid JWT Signature."),
    ("tampered claims", "invalid_grant", "Invalid JWT Signature."),
    ("wrong aud", "invalid_grant", "Failed audience check"),
    ("aud with trailing slash", "invalid_grant", "Failed audience check"),
    ("missing scope", "invalid_scope", "Invalid OAuth scope"),
    ("other scope", "invalid_scope", "Invalid OAuth scope"),
    ("expired", "invalid_grant", mv.JWT_TIMEFRAME_MESSAGE),
    ("too long-lived", "invalid_grant", mv.JWT_TIMEFRAME_MESSAGE),
    ("iat in the future", "invalid_grant", mv.JWT_TIMEFRAME_MESSAGE),
    ("iat too old", "invalid_grant", mv.JWT_TIMEFRAME_MESSAGE),
    ("wrong kid", "invalid_grant", "Invalid JWT Signature."),
    ("missing kid", "invalid_grant", "Invalid JWT Signature."),
    ("alg none", "invalid_grant", "RS256"),
    ("wrong iss", "invalid_grant", "account not found"),
    ("padded base64", "invalid_grant", "base64url"),
    ("two segments", "invalid_grant", "Malformed"),
])
def test_bad_jwt_assertions_are_refused_like_google(mock_vertex, case, error, needle):
    r = jwt_grant(mock_vertex, _bad(mock_vertex, case))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == error and needle in body["error_description"], body
    assert not mock_vertex.tokens
    assert not mock_vertex.token_requests[-1].auth_ok


def test_token_endpoint_wants_a_form_post_with_a_known_grant(mock_vertex):
    assertion = sign_jwt(mock_vertex.key, claims(mock_vertex), {"alg": "RS256", "typ": "JWT", "kid": mock_vertex.private_key_id})
    r = requests.post(mock_vertex.token_uri, json={"grant_type": JWT_BEARER_GRANT, "assertion": assertion}, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and "Content-Type" in r.json()["error_description"]
    r = post_token(mock_vertex, {"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = requests.get(mock_vertex.token_uri, timeout=10)
    assert r.status_code == 405
    r = post_token(mock_vertex, {"grant_type": JWT_BEARER_GRANT})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert len(mock_vertex.token_requests) == 4 and not mock_vertex.tokens


def test_refresh_token_grant_needs_the_files_client_and_token(mock_vertex, tmp_path):
    info = json.loads(open(mock_vertex.write_authorized_user(tmp_path / "adc.json")).read())
    assert info["type"] == "authorized_user" and info["token_uri"] == mock_vertex.token_uri
    good = {"grant_type": "refresh_token", "client_id": info["client_id"], "client_secret": info["client_secret"],
            "refresh_token": info["refresh_token"]}
    r = post_token(mock_vertex, good)
    assert r.status_code == 200, r.text
    assert r.json()["access_token"].startswith("ya29.mock-") and r.json()["expires_in"] == 3599
    assert call(mock_vertex, r.json()["access_token"]).status == 200
    for change, status, error in [({"client_secret": "nope"}, 401, "invalid_client"),
                                  ({"client_id": "other.apps.googleusercontent.com"}, 401, "invalid_client"),
                                  ({"refresh_token": "1//other"}, 400, "invalid_grant"),
                                  ({"refresh_token": ""}, 400, "invalid_request")]:
        r = post_token(mock_vertex, dict(good, **change))
        assert (r.status_code, r.json()["error"]) == (status, error), (change, r.text)
    # without token_uri the file means Google's default endpoint
    assert "token_uri" not in json.loads(open(mock_vertex.write_authorized_user(tmp_path / "b.json", token_uri=False)).read())


def test_google_auth_authorized_user_file_refreshes_at_the_mock(mock_vertex, tmp_path):
    from google.auth.transport.requests import Request
    from google.oauth2.credentials import Credentials
    path = mock_vertex.write_authorized_user(tmp_path / "adc.json")
    creds = Credentials.from_authorized_user_file(path)
    # google-auth always uses Google's endpoint for these files; the gateway honours token_uri
    creds = creds.with_token_uri(json.loads(open(path).read())["token_uri"])
    creds.refresh(Request())
    assert creds.token in mock_vertex.tokens
    assert mock_vertex.token_requests[-1].form()["grant_type"] == "refresh_token"


def test_metadata_server_wants_metadata_flavor_and_no_forwarded_for(mock_vertex):
    path = "/computeMetadata/v1/instance/service-accounts/default/token"
    r = raw_request(mock_vertex.url, "GET", path)
    assert r.status == 403 and b"Metadata-Flavor" in r.body
    r = raw_request(mock_vertex.url, "GET", path, headers={"Metadata-Flavor": "Google", "X-Forwarded-For": "10.0.0.1"})
    assert r.status == 403
    r = raw_request(mock_vertex.url, "GET", path, headers={"Metadata-Flavor": "Google"})
    assert r.status == 200 and r.headers["metadata-flavor"] == "Google"
    tok = r.json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3599
    assert call(mock_vertex, tok["access_token"]).status == 200
    assert [x.operation for x in mock_vertex.token_requests] == ["metadata-token"] * 3
    # a token for other scopes is not enough for Vertex
    r = raw_request(mock_vertex.url, "GET", path + "?scopes=https://www.googleapis.com/auth/devstorage.read_only",
                    headers={"Metadata-Flavor": "Google"})
    assert_vertex_error(call(mock_vertex, r.json()["access_token"]), 403, "PERMISSION_DENIED", "insufficient authentication scopes")


def test_google_auth_compute_engine_credentials_use_the_mock_metadata_server(mock_vertex, monkeypatch):
    from google.auth.compute_engine import _metadata, credentials
    from google.auth.transport.requests import Request
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", mock_vertex.authority)
    monkeypatch.setattr(_metadata, "_GCE_METADATA_IP", mock_vertex.authority, raising=False)
    creds = credentials.Credentials()
    creds.refresh(Request())
    assert creds.token in mock_vertex.tokens and creds.service_account_email == mock_vertex.client_email
    assert call(mock_vertex, creds.token).status == 200


# ------------------------------------------------------------------------------------------------
# the Vertex API: authentication, resource, body, betas
# ------------------------------------------------------------------------------------------------

def test_api_requires_a_live_token_issued_by_the_mock(mock_vertex):
    r = call(mock_vertex, None)
    msg = assert_vertex_error(r, 401, "UNAUTHENTICATED", "Expected OAuth 2 access token")
    assert msg == mv.UNAUTHENTICATED_MESSAGE
    assert_vertex_error(call(mock_vertex, "ya29.not-ours"), 401, "UNAUTHENTICATED")
    assert_vertex_error(call(mock_vertex, None, headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401, "UNAUTHENTICATED")
    tok = token_for(mock_vertex)
    assert call(mock_vertex, tok).status == 200
    mock_vertex.expire_tokens()
    assert_vertex_error(call(mock_vertex, tok), 401, "UNAUTHENTICATED")
    assert "expired" in mock_vertex.snapshot()[-1].verdict.message
    short = mock_vertex.issue_token(lifetime=1).token
    assert call(mock_vertex, short).status == 200
    time.sleep(1.1)
    assert call(mock_vertex, short).status == 401


def test_leaked_credentials_flag_client_tokens_and_api_keys(mock_vertex):
    tok = token_for(mock_vertex)
    call(mock_vertex, tok)
    assert mock_vertex.leaked_credentials() == []
    call(mock_vertex, "sk-gw-test")
    call(mock_vertex, tok, headers={"x-api-key": "whatever"})
    call(mock_vertex, "some-other-token")
    leaks = mock_vertex.leaked_credentials()
    assert len(leaks) == 3, leaks
    assert "sk-gw-test" in leaks[0][1]
    assert "x-api-key header" in leaks[1][1]
    assert any("not issued by this mock" in f for f in leaks[2][1])


def test_host_project_and_region_must_be_the_mocks(mock_vertex):
    tok = token_for(mock_vertex)
    assert_vertex_error(call(mock_vertex, tok, headers={"Host": "127.0.0.1:1"}), 404, "NOT_FOUND", "Host")
    assert_vertex_error(call(mock_vertex, tok, api_path(mock_vertex, project="other-project")), 403,
                        "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied")
    assert_vertex_error(call(mock_vertex, tok, api_path(mock_vertex, region="europe-west1")), 400, "INVALID_ARGUMENT")
    # authentication comes first, as on Google's front end
    assert_vertex_error(call(mock_vertex, None, api_path(mock_vertex, project="other-project")), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize("model", [
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc",
    "claude-sonnet-4-5@2025", "gemini-2.5-pro",
])
def test_non_vertex_model_ids_are_not_found(mock_vertex, model):
    r = call(mock_vertex, token_for(mock_vertex), api_path(mock_vertex, model=model))
    msg = assert_vertex_error(r, 404, "NOT_FOUND", "Publisher Model `projects/test-project/locations/us-east5/"
                                                   "publishers/anthropic/models/")
    assert msg.endswith("` not found.")


@pytest.mark.parametrize("model", ["claude-sonnet-4-5@20250929", "claude-opus-4-7", "claude-3-5-haiku@20241022",
                                   "claude-sonnet-4-5%4020250929"])
def test_vertex_model_ids_pass(mock_vertex, model):
    r = call(mock_vertex, token_for(mock_vertex), api_path(mock_vertex, model=model))
    assert r.status == 200, r.body
    assert r.json()["model"] == urllib.parse.unquote(model)


@pytest.mark.parametrize("change,needle", [
    ({"anthropic_version": None}, "anthropic_version: Field required"),
    ({"anthropic_version": "bedrock-2023-05-31"}, "anthropic_version: Input should be 'vertex-2023-10-16'"),
    ({"anthropic_version": "2023-06-01"}, "anthropic_version"),
    ({"model": SONNET}, "model: Extra inputs are not permitted"),
    ({"anthropic_beta": ["context-1m-2025-08-07"]}, "anthropic_beta: Extra inputs are not permitted"),
    ({"messages": None}, "messages: Field required"),
    ({"messages": []}, "messages: List should have at least 1 item"),
    ({"messages": "hi"}, "messages: Input should be a valid list"),
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"max_tokens": "64"}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
])
def test_invalid_bodies_are_invalid_argument(mock_vertex, change, needle):
    body = vertex_body()
    for k, v in change.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    assert_vertex_error(call(mock_vertex, token_for(mock_vertex), body=body), 400, "INVALID_ARGUMENT", needle)


def test_body_must_be_json(mock_vertex):
    tok = token_for(mock_vertex)
    assert_vertex_error(call(mock_vertex, tok, body=b"{not json"), 400, "INVALID_ARGUMENT", "Invalid JSON payload")
    assert_vertex_error(call(mock_vertex, tok, headers={"Content-Type": "text/plain"}), 400, "INVALID_ARGUMENT")


def test_betas_vertex_does_not_accept_are_refused(mock_vertex):
    tok = token_for(mock_vertex)
    ok = "context-1m-2025-08-07,interleaved-thinking-2025-05-14, effort-2025-11-24,claude-code-20250219"
    assert call(mock_vertex, tok, headers={"anthropic-beta": ok}).status == 200
    r = call(mock_vertex, tok, headers={"anthropic-beta": "context-1m-2025-08-07,oauth-2025-04-20"})
    msg = assert_vertex_error(r, 400, "INVALID_ARGUMENT")
    assert msg == ("Unexpected value(s) `oauth-2025-04-20` for the `anthropic-beta` header. Please consult our "
                   "documentation at docs.anthropic.com or try again without the header.")
    r = call(mock_vertex, tok, headers={"anthropic-beta": "prompt-caching-scope-2026-01-05,oauth-2025-04-20"})
    assert "`prompt-caching-scope-2026-01-05, oauth-2025-04-20`" in r.json()["error"]["message"]


def test_accepted_betas_are_configurable(make_vertex):
    m = make_vertex(accepted_betas=["oauth-2025-04-20"])
    tok = token_for(m)
    assert call(m, tok, headers={"anthropic-beta": "oauth-2025-04-20"}).status == 200
    assert call(m, tok, headers={"anthropic-beta": "context-1m-2025-08-07"}).status == 400


# ------------------------------------------------------------------------------------------------
# answers
# ------------------------------------------------------------------------------------------------

def test_raw_predict_answers_one_message_with_usage(mock_vertex):
    r = call(mock_vertex, token_for(mock_vertex))
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    out = r.json()
    assert out["type"] == "message" and out["role"] == "assistant" and out["model"] == SONNET
    assert out["id"].startswith("msg_vrtx_") and out["stop_reason"] == "end_turn"
    assert out["usage"] == {"input_tokens": mv.USAGE_INPUT, "cache_creation_input_tokens": mv.USAGE_CACHE_CREATION,
                            "cache_read_input_tokens": mv.USAGE_CACHE_READ, "output_tokens": mv.USAGE_OUTPUT}
    assert (mv.USAGE_INPUT, mv.USAGE_CACHE_READ, mv.USAGE_CACHE_CREATION, mv.USAGE_OUTPUT) == (2117, 5321, 421, 52)


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


def raw_stream(mock, token, path, body) -> tuple[bytes, list[bytes]]:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", mock.port))
    s.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), mock.authority.encode(), token.encode(), len(data), data))
    try:
        return _read_chunked_raw(s)
    finally:
        s.close()


@pytest.mark.parametrize("method,stream", [("streamRawPredict", True), ("rawPredict", True), ("streamRawPredict", None)])
def test_stream_is_sse_split_across_http_chunks(mock_vertex, method, stream):
    body = vertex_body() if stream is None else vertex_body(stream=stream)
    head, chunks = raw_stream(mock_vertex, token_for(mock_vertex), api_path(mock_vertex, method=method), body)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head and b"chunked" in head.lower()
    data = b"".join(chunks)
    events = parse_sse(data)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(n == e["type"] for n, e in events)
    deltas = [e for n, e in events if n == "content_block_delta"]
    assert len(deltas) > 3 and "".join(d["delta"]["text"] for d in deltas) == mv.DEFAULT_ANSWER
    start = events[0][1]["message"]
    assert start["model"] == SONNET
    assert start["usage"] == {"input_tokens": 2117, "cache_creation_input_tokens": 421,
                              "cache_read_input_tokens": 5321, "output_tokens": 1}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn" and events[-2][1]["usage"]["output_tokens"] == 52
    # chunk boundaries fall inside events, not between them
    assert len(chunks) > 2 * len(events)
    ends, pos = [], 0
    for c in chunks[:-1]:
        pos += len(c)
        ends.append(pos)
    assert any(not data[:e].endswith(b"\n\n") for e in ends)


def test_raw_predict_with_stream_false_is_json(mock_vertex):
    r = call(mock_vertex, token_for(mock_vertex), body=vertex_body(stream=False))
    assert r.status == 200 and r.json()["content"][0]["text"] == mv.DEFAULT_ANSWER


def test_stream_error_marker_ends_with_an_error_event(mock_vertex):
    _, chunks = raw_stream(mock_vertex, token_for(mock_vertex),
                           api_path(mock_vertex, model="claude-mock-stream-error", method="streamRawPredict"),
                           vertex_body(stream=True))
    events = parse_sse(b"".join(chunks))
    assert events[0][0] == "message_start" and events[-1] == (
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert "message_stop" not in [n for n, _ in events]


def test_count_tokens(mock_vertex):
    tok = token_for(mock_vertex)
    path = api_path(mock_vertex, model="count-tokens")
    r = call(mock_vertex, tok, path, body={"model": SONNET, "messages": [{"role": "user", "content": "hello " * 40}]})
    assert r.status == 200 and r.json()["input_tokens"] > 10
    assert mock_vertex.snapshot()[-1].operation == "count-tokens" and mock_vertex.snapshot()[-1].model == SONNET
    r = call(mock_vertex, tok, path, body=vertex_body(model=SONNET))
    assert r.status == 200
    assert_vertex_error(call(mock_vertex, tok, path, body=vertex_body()), 400, "INVALID_ARGUMENT", "model: Field required")
    assert_vertex_error(call(mock_vertex, tok, path, body={"model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                                                          "messages": [{"role": "user", "content": "x"}]}),
                        404, "NOT_FOUND")
    assert_vertex_error(call(mock_vertex, tok, path, body={"model": SONNET}), 400, "INVALID_ARGUMENT", "messages")
    r = call(mock_vertex, tok, api_path(mock_vertex, model="count-tokens", method="streamRawPredict"),
             body={"model": SONNET, "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 404


def test_fail_with_answers_vertex_errors_then_recovers(mock_vertex):
    tok = token_for(mock_vertex)
    mock_vertex.fail_with(429, count=2)
    for _ in range(2):
        msg = assert_vertex_error(call(mock_vertex, tok), 429, "RESOURCE_EXHAUSTED")
        assert msg.startswith("Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model")
    assert call(mock_vertex, tok).status == 200
    assert [r.injected_failure for r in mock_vertex.api_requests] == [True, True, False]
    mock_vertex.fail_with(503)
    for _ in range(3):
        assert_vertex_error(call(mock_vertex, tok), 503, "UNAVAILABLE")
    # a request the mock would refuse anyway still gets its own error
    assert_vertex_error(call(mock_vertex, None), 401, "UNAUTHENTICATED")
    assert_vertex_error(call(mock_vertex, tok, body=vertex_body(model=SONNET)), 400, "INVALID_ARGUMENT")
    mock_vertex.fail_with(500)
    assert_vertex_error(call(mock_vertex, tok), 500, "INTERNAL")
    mock_vertex.fail_with(None)
    assert call(mock_vertex, tok).status == 200
    # the token endpoint is not an API call
    mock_vertex.fail_with(503)
    assert token_for(mock_vertex)


# ------------------------------------------------------------------------------------------------
# the Anthropic SDK straight at the mock
# ------------------------------------------------------------------------------------------------

def test_anthropic_vertex_sdk_direct_create_stream_and_count(mock_vertex):
    from anthropic import AnthropicVertex
    tok = token_for(mock_vertex)
    client = AnthropicVertex(region=mock_vertex.region, project_id=mock_vertex.project,
                             base_url=mock_vertex.url + "/v1", access_token=tok, max_retries=0)
    # the SDK 2.x puts its first-party API version into the body unless told otherwise
    extra = {"anthropic_version": "vertex-2023-10-16"}
    msg = client.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}],
                                 extra_body=extra)
    assert msg.content[0].text == mv.DEFAULT_ANSWER and msg.usage.cache_read_input_tokens == mv.USAGE_CACHE_READ
    with client.messages.stream(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}],
                                extra_body=extra) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == mv.DEFAULT_ANSWER and final.usage.output_tokens == mv.USAGE_OUTPUT
    n = client.messages.count_tokens(model=SONNET, messages=[{"role": "user", "content": "hi"}], extra_body=extra)
    assert n.input_tokens > 0
    api = mock_vertex.api_requests
    assert [r.operation for r in api] == ["rawPredict", "streamRawPredict", "count-tokens"]
    assert all(r.auth_ok and r.status == 200 for r in api), mock_vertex.describe()
    assert mock_vertex.leaked_credentials() == []
    # without the override the SDK's default version is refused, as Vertex does
    from anthropic import BadRequestError
    with pytest.raises(BadRequestError) as e:
        client.messages.create(model=SONNET, max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert "anthropic_version" in str(e.value)


@pytest.mark.claude_code
def test_claude_code_direct_against_mock_vertex(mock_vertex, tmp_path):
    """What Claude Code sends in Vertex mode, straight at the mock with a token it issued: the mock
    takes it (Claude Code drops a beta Vertex refuses with the "Unexpected value(s)" message and
    retries, as it does against Vertex)."""
    from support import claude_failure_text, claude_vertex_env, run_claude
    env = claude_vertex_env(mock_vertex.url + "/v1", tmp_path, ANTHROPIC_AUTH_TOKEN=mock_vertex.issue_token().token)
    p = run_claude(env, timeout=120)
    assert p.returncode == 0 and mv.DEFAULT_ANSWER in p.stdout, claude_failure_text(p)
    streams = [r for r in mock_vertex.by_operation("streamRawPredict") if r.status == 200]
    assert streams, mock_vertex.describe()
    r = streams[-1]
    body = r.json()
    assert body["anthropic_version"] == "vertex-2023-10-16" and body["stream"] is True and "model" not in body
    assert r.header("anthropic-beta") and r.header("X-Claude-Code-Session-Id")
    assert r.header("Host") == mock_vertex.authority
