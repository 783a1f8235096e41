#!/usr/bin/env python3
"""A mock Google Vertex AI (Claude on the Anthropic publisher) with Google's OAuth token endpoint
and a GCE metadata server, for the gateway's end-to-end tests.

One HTTP server (optionally TLS), standard library plus ``cryptography`` for RSA:

* an RSA-2048 service-account key is made at construction; ``write_service_account(path)`` writes
  it as a Google JSON key file whose ``token_uri`` is this mock, ``write_authorized_user(path)``
  an ``authorized_user`` ADC file (with ``token_uri`` pointing here too);
* ``POST /token`` checks like Google does: form-encoded; the JWT-bearer grant's assertion is an
  RS256 JWT whose ``kid`` is the key's id, whose signature verifies with the key, with ``iss`` =
  the client email, ``aud`` = the ``token_uri`` exactly, the cloud-platform ``scope``, ``iat``
  within 5 minutes of now, ``exp`` in the future and at most an hour after ``iat``; the
  refresh-token grant needs the file's client id, secret and refresh token. It issues random
  ``ya29.mock-...`` tokens and remembers when they expire;
* ``GET /computeMetadata/v1/instance/service-accounts/default/token`` (and the ping, the account
  info, the project id) as a GCE metadata server: ``Metadata-Flavor: Google`` required,
  ``X-Forwarded-For`` refused;
* ``POST /v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict``,
  ``:streamRawPredict`` and ``.../models/count-tokens:rawPredict``, checking on every call a
  Bearer token this mock issued and that has not expired (with the cloud-platform scope), the
  ``Host`` header, the project and region, a Vertex model ID (``claude-...[@YYYYMMDD]``; Bedrock
  and first-party spellings are 404), the body (``anthropic_version: vertex-2023-10-16``,
  ``messages``, ``max_tokens``, no ``model``, no ``anthropic_beta``) and every ``anthropic-beta``
  header value against the betas Vertex accepts. Errors are in Vertex's shape
  ``{"error": {"code", "message", "status"}}``;
* streams SSE (``message_start`` ... ``message_stop``) with chunked transfer-encoding split at odd
  offsets; records every request exactly as it arrived in ``MockVertex.requests``;
* behaviour switches: ``fail_with(status, count)`` and model-id markers (see ``mock_http``).

Standalone: ``python tests/mock_vertex.py --port 18081 --write-service-account sa.json``.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mock_bedrock import CLIENT_CREDENTIAL_MARKERS
from mock_http import (MockHandler, MockUpstream, Recorded, UpstreamError, Verdict, anthropic_events,
                       anthropic_message, parse_betas, text_pieces)

TEST_PROJECT = "test-project"
TEST_REGION = "us-east5"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
TOKEN_PREFIX = "ya29.mock-"
DEFAULT_TOKEN_LIFETIME = 3599
MAX_CLOCK_SKEW = 300          # seconds between the JWT's iat and now
MAX_ASSERTION_LIFETIME = 3600  # exp - iat

DEFAULT_ANSWER = "Hello from the mock Vertex."

# Fixed, distinctive usage numbers (mock_bedrock uses 1117/4321/321/42, mock_anthropic 3117/...).
USAGE_INPUT = 2117
USAGE_CACHE_READ = 5321
USAGE_CACHE_CREATION = 421
USAGE_OUTPUT = 52

# The anthropic-beta values Vertex accepts; anything else is a 400. The last two are what Claude
# Code 2.1.332 itself sends in Vertex mode (observed: `claude-code-20250219,interleaved-thinking-2025-05-14,
# web-search-2025-03-05,effort-2025-11-24`, plus tool-search-tool-2025-10-19), so Vertex takes them;
# first-party-only betas such as oauth-2025-04-20 or prompt-caching-scope-2026-01-05 it rejects.
ACCEPTED_BETAS = (
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14", "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
    "claude-code-20250219", "web-search-2025-03-05",
)

# Vertex's error messages (the ones clients and the gateway's tests match on).
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.")
INSUFFICIENT_SCOPES_MESSAGE = "Request had insufficient authentication scopes."
QUOTA_MESSAGE = ("Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base "
                 "model: anthropic-{base}. Please submit a quota increase request. "
                 "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.")
UNAVAILABLE_MESSAGE = "The service is currently unavailable."
INTERNAL_MESSAGE = "Internal error encountered."
BETA_MESSAGE = ("Unexpected value(s) `{betas}` for the `anthropic-beta` header. Please consult our documentation "
                "at docs.anthropic.com or try again without the header.")
JWT_TIMEFRAME_MESSAGE = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                         "Check your iat and exp values in the JWT claim.")
JWT_SIGNATURE_MESSAGE = "Invalid JWT Signature."

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

VERTEX_MODEL_RE = re.compile(r"claude-[a-z0-9][a-z0-9.-]*(@\d{8})?")
_API_PATH_RE = re.compile(
    r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/publishers/(?P<publisher>[^/]+)"
    r"/models/(?P<model>[^/]+):(?P<method>[A-Za-z]+)")


def generate_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#8 PEM, as in Google's key files."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", s):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An RS256 JWT (for the self-tests; the gateway makes its own)."""
    hdr = {"alg": "RS256", "typ": "JWT"} if header is None else header
    signing_input = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def vertex_error(status: int, message: str, status_name: str | None = None) -> UpstreamError:
    name = status_name or STATUS_NAMES.get(status, "UNKNOWN")
    return UpstreamError(status, {"error": {"code": status, "message": message, "status": name}}, message=message)


def _invalid(message: str) -> UpstreamError:
    return vertex_error(400, message)


def oauth_error(status: int, error: str, description: str) -> UpstreamError:
    return UpstreamError(status, {"error": error, "error_description": description},
                         message=f"{error}: {description}")


@dataclass
class IssuedToken:
    token: str
    issued_at: float
    expires_at: float
    scopes: tuple[str, ...]
    grant: str             # jwt-bearer | refresh_token | metadata | direct

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


class _VertexHandler(MockHandler):
    server_version = "ESF"

    @property
    def mock(self) -> "MockVertex":
        return self.server.mock

    def process(self) -> None:
        path = self.rec.path
        if path.startswith("/computeMetadata/") or (path == "/" and self.command == "GET"):
            return self._metadata(path)
        if path == "/token":
            return self._token()
        m = _API_PATH_RE.fullmatch(path)
        if not m:
            raise vertex_error(404, f"The requested URL {path} was not found on this server.")
        return self._api(m)

    # ---- OAuth token endpoint ----------------------------------------------------------------
    def _token(self) -> None:
        self.rec.operation = "token"
        self.rec.verdict = Verdict(ok=False, mode="oauth")
        if self.command != "POST":
            raise oauth_error(405, "invalid_request", f"Method {self.command} is not allowed; use POST.")
        ctype = (self.rec.header("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise oauth_error(400, "invalid_request",
                              f"Invalid Content-Type: {ctype or '(none)'}; expected application/x-www-form-urlencoded")
        try:
            pairs = urllib.parse.parse_qsl(self.rec.body.decode("ascii"), keep_blank_values=True,
                                           strict_parsing=bool(self.rec.body))
        except (UnicodeDecodeError, ValueError):
            raise oauth_error(400, "invalid_request", "The request body is not form-urlencoded.")
        form: dict[str, str] = {}
        for k, v in pairs:
            if k in form:
                raise oauth_error(400, "invalid_request", f"Duplicate parameter: {k}")
            form[k] = v
        grant = form.get("grant_type", "")
        if grant == JWT_BEARER_GRANT:
            scopes = self._check_assertion(form.get("assertion", ""))
            tok = self.mock.issue_token(scopes=scopes, grant="jwt-bearer")
        elif grant == "refresh_token":
            scopes = self._check_refresh(form)
            tok = self.mock.issue_token(scopes=scopes, grant="refresh_token")
        else:
            raise oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
        self.rec.verdict = Verdict(ok=True, mode="oauth:" + tok.grant)
        out = {"access_token": tok.token, "expires_in": int(tok.expires_at - tok.issued_at), "token_type": "Bearer"}
        if grant == "refresh_token":
            out["scope"] = " ".join(scopes)
        self.send_json(200, out, {"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate", "Pragma": "no-cache"})

    def _check_assertion(self, assertion: str) -> tuple[str, ...]:
        mock = self.mock

        def grant_error(msg: str, error: str = "invalid_grant", status: int = 400) -> UpstreamError:
            self.rec.verdict.error_type, self.rec.verdict.message = error, msg
            return oauth_error(status, error, msg)

        if not assertion:
            raise grant_error("Missing required parameter: assertion", "invalid_request")
        parts = assertion.split(".")
        if len(parts) != 3:
            raise grant_error("Invalid JWT: Malformed: expected three dot-separated segments.")
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            sig = b64url_decode(parts[2])
        except ValueError:
            raise grant_error("Invalid JWT: segments must be unpadded base64url-encoded JSON.")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise grant_error("Invalid JWT: header and claims must be JSON objects.")
        if header.get("alg") != "RS256":
            raise grant_error(f"Invalid JWT: unsupported algorithm {header.get('alg')!r}; Google accepts RS256.")
        if "typ" in header and header["typ"] != "JWT":
            raise grant_error(f"Invalid JWT: typ must be JWT, not {header['typ']!r}.")
        if claims.get("iss") != mock.client_email:
            raise grant_error("Invalid grant: account not found")
        if header.get("kid") != mock.private_key_id:
            raise grant_error(JWT_SIGNATURE_MESSAGE)
        try:
            mock.public_key.verify(sig, (parts[0] + "." + parts[1]).encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise grant_error(JWT_SIGNATURE_MESSAGE)
        if claims.get("aud") != mock.token_uri:
            raise grant_error(f"Invalid JWT: Failed audience check. The right audience is {mock.token_uri}")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or isinstance(iat, bool) or isinstance(exp, bool):
            raise grant_error(JWT_TIMEFRAME_MESSAGE)
        now = time.time()
        if abs(now - iat) > MAX_CLOCK_SKEW or exp <= now or exp <= iat or exp - iat > MAX_ASSERTION_LIFETIME:
            raise grant_error(JWT_TIMEFRAME_MESSAGE)
        if "sub" in claims and claims["sub"] != mock.client_email:
            raise grant_error("Client is unauthorized to retrieve access tokens using this method, or client not "
                              "authorized for any of the scopes requested.", "unauthorized_client", 401)
        scope = claims.get("scope")
        scopes = tuple(scope.split()) if isinstance(scope, str) else ()
        if CLOUD_PLATFORM_SCOPE not in scopes:
            raise grant_error("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
        return scopes

    def _check_refresh(self, form: dict[str, str]) -> tuple[str, ...]:
        mock = self.mock
        self.rec.verdict.mode = "oauth:refresh_token"
        for k in ("client_id", "client_secret", "refresh_token"):
            if not form.get(k):
                self.rec.verdict.message = f"missing {k}"
                raise oauth_error(400, "invalid_request", f"Missing required parameter: {k}")
        if form["client_id"] != mock.user_client_id:
            self.rec.verdict.message = "wrong client_id"
            raise oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if form["client_secret"] != mock.user_client_secret:
            self.rec.verdict.message = "wrong client_secret"
            raise oauth_error(401, "invalid_client", "Unauthorized")
        if form["refresh_token"] != mock.user_refresh_token:
            self.rec.verdict.message = "wrong refresh_token"
            raise oauth_error(400, "invalid_grant", "Bad Request")
        granted = (CLOUD_PLATFORM_SCOPE, "openid", "https://www.googleapis.com/auth/userinfo.email")
        if form.get("scope"):
            asked = tuple(form["scope"].split())
            if any(s not in granted for s in asked):
                raise oauth_error(400, "invalid_scope", "Some requested scopes were invalid.")
            return asked
        return granted

    # ---- GCE metadata server -----------------------------------------------------------------
    def _metadata(self, path: str) -> None:
        mock = self.mock
        token_path = re.fullmatch(r"/computeMetadata/v1/instance/service-accounts/[^/]+/token", path)
        self.rec.operation = "metadata-token" if token_path else "metadata"
        self.rec.verdict = Verdict(ok=False, mode="metadata")
        flavor = {"Metadata-Flavor": "Google"}

        def text(status: int, body: str) -> None:
            self.send_body(status, body.encode(), "text/html; charset=UTF-8" if status != 200 else "application/text",
                           flavor)

        if self.rec.header("X-Forwarded-For") is not None:
            self.rec.verdict.message = "X-Forwarded-For present"
            return text(403, "Request had an X-Forwarded-For header and was rejected.")
        if self.rec.header("Metadata-Flavor") != "Google":
            self.rec.verdict.message = "Metadata-Flavor: Google missing"
            return text(403, "Missing Metadata-Flavor:Google header.")
        if self.command != "GET":
            return text(405, "Method not allowed.")
        self.rec.verdict.ok = True
        q = urllib.parse.parse_qs(self.rec.query)
        m = re.fullmatch(r"/computeMetadata/v1/instance/service-accounts/([^/]+)(/.*)?", path)
        if path == "/":
            return text(200, "computeMetadata/\n")
        if path == "/computeMetadata/v1/project/project-id":
            return text(200, mock.project)
        if m and m.group(1) in ("default", mock.client_email):
            rest = m.group(2) or "/"
            if rest == "/token":
                scopes = tuple(s for s in (q.get("scopes") or [CLOUD_PLATFORM_SCOPE])[0].split(",") if s)
                tok = mock.issue_token(scopes=scopes, grant="metadata")
                return self.send_json(200, {"access_token": tok.token, "expires_in": int(tok.expires_at - tok.issued_at),
                                            "token_type": "Bearer"}, flavor)
            if rest == "/email":
                return text(200, mock.client_email)
            if rest == "/" and (q.get("recursive") or [""])[0] == "true":
                return self.send_json(200, {"aliases": ["default"], "email": mock.client_email,
                                            "scopes": [CLOUD_PLATFORM_SCOPE]}, flavor)
        self.rec.verdict.ok = False
        return text(404, "Not Found")

    # ---- the Vertex API ----------------------------------------------------------------------
    def _api(self, m: re.Match) -> None:
        mock = self.mock
        rec = self.rec
        project, location = urllib.parse.unquote(m["project"]), urllib.parse.unquote(m["location"])
        publisher, model = urllib.parse.unquote(m["publisher"]), urllib.parse.unquote(m["model"])
        method = m["method"]
        counting = model == "count-tokens"
        rec.operation = "count-tokens" if counting else method
        rec.model = "" if counting else model
        resource = f"projects/{project}/locations/{location}/publishers/{publisher}/models/{model}"

        if self.command != "POST" or method not in ("rawPredict", "streamRawPredict") or (counting and method != "rawPredict"):
            raise vertex_error(404, f"The requested URL {rec.path} was not found on this server.")
        host = rec.header("Host")
        if host != mock.authority:
            raise vertex_error(404, f"Host `{host}` is not served here (expected `{mock.authority}`).")
        self._check_token()
        if project != mock.project:
            raise vertex_error(403, f"Permission 'aiplatform.endpoints.predict' denied on resource "
                                    f"'//aiplatform.googleapis.com/{resource}' (or it may not exist).")
        if location != mock.region:
            raise _invalid(f"Location `{location}` is not served by the `{mock.region}` endpoint.")
        if publisher != "anthropic" or not (counting or VERTEX_MODEL_RE.fullmatch(model)):
            raise vertex_error(404, f"Publisher Model `{resource}` not found.")

        ctype = (rec.header("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _invalid(f"Invalid Content-Type `{ctype or '(none)'}`; the body must be application/json.")
        try:
            req = json.loads(rec.body)
        except ValueError:
            raise _invalid("Invalid JSON payload received. Unexpected token.")
        if not isinstance(req, dict):
            raise _invalid("Invalid JSON payload received. The body must be a JSON object.")
        if "anthropic_beta" in req:
            raise _invalid("anthropic_beta: Extra inputs are not permitted")
        if counting:
            self._validate_count(req, project, location)
        else:
            self._validate_messages(req)
        rejected = [b for b in parse_betas(rec.header_all("anthropic-beta")) if b not in mock.accepted_betas]
        if rejected:
            raise _invalid(BETA_MESSAGE.format(betas=", ".join(rejected)))

        failure = mock._take_failure()
        if failure:
            rec.injected_failure = True
            status, options = failure
            raise vertex_error(status, options.get("message") or self._failure_message(status, rec.model or req.get("model", "")))
        if counting:
            n = max(1, len(json.dumps(req.get("messages")) + json.dumps(req.get("system", ""))) // 4)
            return self.send_json(200, {"input_tokens": n})
        if "mock-hang" in model:
            return self.hang()
        msg_id = "msg_vrtx_" + secrets.token_hex(12)
        usage = {"input": USAGE_INPUT, "cache_read": USAGE_CACHE_READ, "cache_creation": USAGE_CACHE_CREATION,
                 "output": USAGE_OUTPUT}
        if method == "streamRawPredict" or req.get("stream") is True:
            return self.stream_events(anthropic_events(msg_id, model, text_pieces(mock.answer), usage), marker_model=model)
        self.send_json(200, anthropic_message(msg_id, model, mock.answer, usage))

    @staticmethod
    def _failure_message(status: int, model: str) -> str:
        if status == 429:
            return QUOTA_MESSAGE.format(base=model.split("@")[0] or "claude")
        if status == 503:
            return UNAVAILABLE_MESSAGE
        if status == 500:
            return INTERNAL_MESSAGE
        if status == 401:
            return UNAUTHENTICATED_MESSAGE
        return f"Injected failure ({status})."

    def _check_token(self) -> None:
        mock = self.mock
        rec = self.rec
        auths = rec.header_all("Authorization")
        rec.verdict = Verdict(ok=False, mode="bearer")

        def deny(reason: str) -> UpstreamError:
            rec.verdict.error_type, rec.verdict.message = "UNAUTHENTICATED", reason
            return vertex_error(401, UNAUTHENTICATED_MESSAGE)

        if not auths:
            raise deny("no Authorization header")
        if len(auths) != 1:
            raise deny("more than one Authorization header")
        scheme, _, token = auths[0].partition(" ")
        if scheme != "Bearer" or not token:
            raise deny(f"not a Bearer token: {auths[0][:20]}...")
        issued = mock.tokens.get(token)
        if issued is None:
            raise deny("token not issued by this mock")
        if issued.expired:
            raise deny(f"token expired {time.time() - issued.expires_at:.1f}s ago")
        if CLOUD_PLATFORM_SCOPE not in issued.scopes:
            rec.verdict.error_type, rec.verdict.message = "PERMISSION_DENIED", "token lacks the cloud-platform scope"
            raise vertex_error(403, INSUFFICIENT_SCOPES_MESSAGE)
        rec.verdict = Verdict(ok=True, mode="bearer:" + issued.grant)

    @staticmethod
    def _validate_version(req: dict, required: bool) -> None:
        if "anthropic_version" not in req:
            if required:
                raise _invalid("anthropic_version: Field required")
            return
        if req["anthropic_version"] != VERTEX_ANTHROPIC_VERSION:
            raise _invalid(f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")

    @staticmethod
    def _validate_list_of_messages(req: dict) -> None:
        if "messages" not in req:
            raise _invalid("messages: Field required")
        if not isinstance(req["messages"], list):
            raise _invalid("messages: Input should be a valid list")
        if not req["messages"]:
            raise _invalid("messages: List should have at least 1 item after validation, not 0")

    def _validate_messages(self, req: dict) -> None:
        if "model" in req:
            raise _invalid("model: Extra inputs are not permitted")
        self._validate_version(req, required=True)
        self._validate_list_of_messages(req)
        if "max_tokens" not in req:
            raise _invalid("max_tokens: Field required")
        mt = req["max_tokens"]
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise _invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
        if "stream" in req and not isinstance(req["stream"], bool):
            raise _invalid("stream: Input should be a valid boolean")

    def _validate_count(self, req: dict, project: str, location: str) -> None:
        if "model" not in req:
            raise _invalid("model: Field required")
        model = req["model"]
        self.rec.model = model if isinstance(model, str) else ""
        if not isinstance(model, str) or not VERTEX_MODEL_RE.fullmatch(model):
            raise vertex_error(404, f"Publisher Model `projects/{project}/locations/{location}/publishers/anthropic/"
                                    f"models/{model}` not found.")
        self._validate_version(req, required=False)
        self._validate_list_of_messages(req)


class MockVertex(MockUpstream):
    """In-process mock Vertex AI + Google OAuth; ``start()`` binds 127.0.0.1 on a free port."""
    name = "mock-vertex"
    handler = _VertexHandler

    def __init__(self, *, project: str = TEST_PROJECT, region: str = TEST_REGION,
                 token_lifetime: int = DEFAULT_TOKEN_LIFETIME, accepted_betas=ACCEPTED_BETAS,
                 answer: str = DEFAULT_ANSWER, port: int = 0, host: str = "127.0.0.1",
                 tls: tuple[str, str] | None = None, split_delay: float = 0.002, verbose: bool = False):
        super().__init__(port=port, host=host, tls=tls, split_delay=split_delay, verbose=verbose)
        self.project, self.region, self.token_lifetime = project, region, token_lifetime
        self.accepted_betas = list(accepted_betas)
        self.answer = answer
        self.key = generate_rsa_key()
        self.public_key = self.key.public_key()
        self.private_key_id = secrets.token_hex(20)
        self.client_email = f"gateway@{project}.iam.gserviceaccount.com"
        self.client_id = str(100000000000000000000 + secrets.randbelow(10 ** 20))
        self.user_client_id = f"{secrets.randbelow(10 ** 12)}-mock.apps.googleusercontent.com"
        self.user_client_secret = "GOCSPX-mock-" + secrets.token_hex(10)
        self.user_refresh_token = "1//mock-refresh-" + secrets.token_hex(16)
        self.tokens: dict[str, IssuedToken] = {}

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    # ---- credentials files -------------------------------------------------------------------
    def service_account_info(self, **overrides: Any) -> dict[str, Any]:
        info = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": self.private_key_id,
            "private_key": private_key_pem(self.key),
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                    + urllib.parse.quote(self.client_email),
            "universe_domain": "googleapis.com",
        }
        info.update(overrides)
        return info

    def write_service_account(self, path, **overrides: Any) -> str:
        """Write a service-account JSON key file (``overrides`` replace fields, e.g. a foreign
        ``private_key``); returns the path."""
        Path(path).write_text(json.dumps(self.service_account_info(**overrides), indent=2))
        return str(path)

    def write_authorized_user(self, path, *, token_uri: bool = True, **overrides: Any) -> str:
        """Write an ``authorized_user`` ADC file (as ``gcloud auth application-default login``
        does), with ``token_uri`` pointing at this mock unless ``token_uri=False``."""
        info: dict[str, Any] = {
            "account": "",
            "client_id": self.user_client_id,
            "client_secret": self.user_client_secret,
            "quota_project_id": self.project,
            "refresh_token": self.user_refresh_token,
            "type": "authorized_user",
            "universe_domain": "googleapis.com",
        }
        if token_uri:
            info["token_uri"] = self.token_uri
        info.update(overrides)
        Path(path).write_text(json.dumps(info, indent=2))
        return str(path)

    # ---- tokens ------------------------------------------------------------------------------
    def issue_token(self, *, scopes=(CLOUD_PLATFORM_SCOPE,), lifetime: int | None = None,
                    grant: str = "direct") -> IssuedToken:
        now = time.time()
        tok = IssuedToken(token=TOKEN_PREFIX + secrets.token_urlsafe(32), issued_at=now,
                          expires_at=now + (self.token_lifetime if lifetime is None else lifetime),
                          scopes=tuple(scopes), grant=grant)
        with self._lock:
            self.tokens[tok.token] = tok
        return tok

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (the next API call with one gets 401)."""
        with self._lock:
            for t in self.tokens.values():
                t.expires_at = min(t.expires_at, time.time() - 1)

    @property
    def token_requests(self) -> list[Recorded]:
        """Every request for a token (``/token`` and the metadata server's token path)."""
        return [r for r in self.snapshot() if r.operation in ("token", "metadata-token")]

    @property
    def api_requests(self) -> list[Recorded]:
        """Every Vertex API call (rawPredict, streamRawPredict, count-tokens)."""
        return [r for r in self.snapshot() if r.operation in ("rawPredict", "streamRawPredict", "count-tokens")]

    # ---- inspection --------------------------------------------------------------------------
    def leaked_credentials(self, markers=CLIENT_CREDENTIAL_MARKERS) -> list[tuple[str, list[str]]]:
        """Client credentials that reached the mock: the markers anywhere, an ``x-api-key``
        header, or an ``Authorization`` that is not a token this mock issued."""
        out = []
        for r in self.snapshot():
            found = r.leaked_credentials(markers)
            if "x-api-key" in r.header_names():
                found.append("x-api-key header")
            for a in r.header_all("Authorization"):
                scheme, _, token = a.partition(" ")
                if scheme != "Bearer" or token not in self.tokens:
                    found.append(f"Authorization not issued by this mock: {a[:24]}...")
            if found:
                out.append((r.target, found))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=18081)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--project", default=TEST_PROJECT)
    ap.add_argument("--region", default=TEST_REGION)
    ap.add_argument("--token-lifetime", type=int, default=DEFAULT_TOKEN_LIFETIME)
    ap.add_argument("--answer", default=DEFAULT_ANSWER)
    ap.add_argument("--write-service-account", metavar="PATH", help="write a service-account key file for this mock")
    ap.add_argument("--write-authorized-user", metavar="PATH", help="write an authorized_user ADC file for this mock")
    ap.add_argument("--print-token", action="store_true", help="issue one access token and print it")
    ap.add_argument("--dump-bodies", action="store_true", help="print each request body (truncated)")
    args = ap.parse_args(argv)
    mock = MockVertex(project=args.project, region=args.region, token_lifetime=args.token_lifetime,
                      answer=args.answer, port=args.port, host=args.host)
    mock.start()
    print(f"mock Vertex on {mock.url} (project={mock.project}, region={mock.region}, token_uri={mock.token_uri}); "
          "Ctrl-C to stop", flush=True)
    if args.write_service_account:
        print("service-account key:", mock.write_service_account(args.write_service_account), flush=True)
    if args.write_authorized_user:
        print("authorized_user file:", mock.write_authorized_user(args.write_authorized_user), flush=True)
    if args.print_token:
        print("access token:", mock.issue_token().token, flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            reqs = mock.snapshot()
            for r in reqs[seen:]:
                verdict = "ok" if r.verdict.ok else f"{r.verdict.error_type} {r.verdict.message}".strip()
                print(f"{time.strftime('%H:%M:%S')} {r.method} {r.target} status={r.status or '...'} "
                      f"auth={r.verdict.mode}:{verdict} body={len(r.body)}B {r.error[:200]}", flush=True)
                if args.dump_bodies and r.body:
                    print("   ", r.body[:2000].decode("utf-8", "replace"), flush=True)
            seen = len(reqs)
    except KeyboardInterrupt:
        pass
    finally:
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
