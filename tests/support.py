"""Shared helpers for the end-to-end tests: client factories, raw HTTP, Claude Code runner, test CA."""
from __future__ import annotations

import datetime as _dt
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
CLAUDE_BIN = TESTS / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"

GW_CREDENTIAL = "sk-gw-test"            # what Claude Code holds (ANTHROPIC_AUTH_TOKEN)
CLIENT_AK, CLIENT_SK = "AKIDCLIENT", "clientsecret"  # what boto3 / the Anthropic SDK sign with
REGION = "us-east-1"

SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SONNET_WIRE = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
APP_PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
APP_PROFILE_WIRE = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123"

# Variables that must never leak from the developer's environment into a client or the gateway.
_SCRUB_PREFIXES = ("AWS_", "ANTHROPIC_", "CLAUDE_", "GOOGLE_", "CLOUDSDK_", "VERTEX_", "BEDROCK_")
_SCRUB_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "GOOGLE_APPLICATION_CREDENTIALS"}


def scrub_process_env() -> None:
    """Make this (pytest) process safe for in-process clients (boto3, the Anthropic SDK)."""
    for k in list(os.environ):
        if k.startswith(_SCRUB_PREFIXES) or k in _SCRUB_NAMES:
            del os.environ[k]
    os.environ.update({
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })


def minimal_env(home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """A fresh environment for a child process: nothing inherited but PATH and locale."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(home),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Client factories
# ------------------------------------------------------------------------------------------------

def boto_client(service: str, endpoint_url: str, *, access_key: str = CLIENT_AK, secret_key: str = CLIENT_SK,
                session_token: str | None = None, region: str = REGION, verify: Any = None,
                read_timeout: float = 30):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()  # no default session: nothing from the environment
    return session.client(
        service, endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=session_token,
        verify=verify,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                      connect_timeout=5, read_timeout=read_timeout),
    )


def anthropic_body(text: str = "say hello", **extra: Any) -> dict:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
            "messages": [{"role": "user", "content": text}]}
    body.update(extra)
    return body


def stream_text(event_stream) -> str:
    """Assemble the text of a boto3 invoke_model_with_response_stream body."""
    out = []
    for ev in event_stream:
        if "chunk" in ev:
            e = json.loads(ev["chunk"]["bytes"])
            if e.get("type") == "content_block_delta" and e["delta"].get("type") == "text_delta":
                out.append(e["delta"]["text"])
    return "".join(out)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]   # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def errortype(self) -> str | None:
        return self.headers.get("x-amzn-errortype")


def raw_request(base: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 15,
                cafile: str | None = None) -> RawResponse:
    """Send exactly ``path`` (no normalisation, no encoding) to ``base`` (scheme://host:port)."""
    scheme, _, hostport = base.partition("://")
    hostport = hostport.split("/")[0]
    host, _, port = hostport.rpartition(":")
    if scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return RawResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


@dataclass
class RawExchange:
    """What came back for a request sent with ``send_raw``: the answer, if one arrived, and what
    went wrong on the way (the send cut short, the connection reset or closed without answer)."""
    response: RawResponse | None
    send_error: str | None = None
    receive_error: str | None = None


def send_raw(port: int, head: bytes, body: bytes = b"", timeout: float = 30,
             host: str = "127.0.0.1") -> RawExchange:
    """Send ``head`` (request line and headers, ending in a blank line) and ``body`` over a fresh
    connection while reading the answer on the same socket: a server that answers before it read
    the whole request (a header or body over its limits) is heard even though the rest of the
    send then fails. Nothing is normalised or encoded."""
    import threading

    sock = socket.create_connection((host, port), timeout=timeout)
    out = RawExchange(None)

    def send():
        try:
            sock.sendall(head + body)
        except OSError as e:
            out.send_error = repr(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        r = http.client.HTTPResponse(sock)
        r.begin()
        data = r.read()
        out.response = RawResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        out.receive_error = repr(e)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout=timeout)
    return out


def request_head(method: str, target: str, headers: dict[str, str] | list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> bytes:
    """An HTTP/1.1 request head (with ``Host`` and, for a body, ``Content-Length``) as bytes."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in items}
    if "host" not in names:
        items.insert(0, ("Host", "127.0.0.1"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ------------------------------------------------------------------------------------------------
# Claude Code
# ------------------------------------------------------------------------------------------------

def claude_bedrock_env(base_url: str, home: str | os.PathLike, **extra: str) -> dict[str, str]:
    env = {
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "ANTHROPIC_BEDROCK_BASE_URL": base_url,
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
        "AWS_REGION": REGION,
        "ANTHROPIC_AUTH_TOKEN": GW_CREDENTIAL,
        "CLAUDE_CODE_MAX_RETRIES": "2",
    }
    env.update(extra)
    return minimal_env(home, **env)


def claude_vertex_env(base_url: str, home: str | os.PathLike, *, project: str = "test-project",
                      region: str = "us-east5", **extra: str) -> dict[str, str]:
    """Claude Code in Vertex mode at ``base_url`` (it appends ``/projects/...``), sending
    ``ANTHROPIC_AUTH_TOKEN`` as ``Authorization: Bearer`` instead of Google credentials."""
    env = {
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_USE_VERTEX": "1",
        "ANTHROPIC_VERTEX_BASE_URL": base_url,
        "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
        "CLOUD_ML_REGION": region,
        "ANTHROPIC_VERTEX_PROJECT_ID": project,
        "ANTHROPIC_AUTH_TOKEN": GW_CREDENTIAL,
        "CLAUDE_CODE_MAX_RETRIES": "2",
    }
    env.update(extra)
    return minimal_env(home, **env)


def claude_anthropic_env(base_url: str, home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """Claude Code against the Anthropic API at ``base_url``, holding ``ANTHROPIC_AUTH_TOKEN``
    (sent as ``Authorization: Bearer``); pass ``ANTHROPIC_API_KEY=...`` for ``x-api-key``."""
    env = {
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": GW_CREDENTIAL,
        "CLAUDE_CODE_MAX_RETRIES": "2",
    }
    env.update(extra)
    return minimal_env(home, **{k: v for k, v in env.items() if v is not None})


def run_claude(env: dict[str, str], prompt: str = "say hello", timeout: float = 120,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    if not CLAUDE_BIN.exists():
        raise RuntimeError(f"{CLAUDE_BIN} is missing: run `npm install` in {TESTS}")
    cwd = cwd or env["HOME"]
    args = [str(CLAUDE_BIN), "-p", prompt]
    try:
        return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:  # keep what it printed, for the failure message
        def s(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        return subprocess.CompletedProcess(args, -9, s(e.stdout), s(e.stderr) + f"\n[timed out after {timeout}s]")


def claude_failure_text(p: subprocess.CompletedProcess) -> str:
    return f"claude exited {p.returncode}\n--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}"


# ------------------------------------------------------------------------------------------------
# A test CA and a server certificate for 127.0.0.1 / localhost
# ------------------------------------------------------------------------------------------------

def make_test_pki(directory: str | os.PathLike) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway e2e test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": str(d / "ca.pem"), "cert": str(d / "server.pem"), "key": str(d / "server-key.pem")}
    Path(paths["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(paths["cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(paths["key"]).write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return paths


# ------------------------------------------------------------------------------------------------
# Gateway configuration
# ------------------------------------------------------------------------------------------------

def gateway_config(*, port: int, admin_port: int, backends: list[dict], max_request_body: str = "20MiB",
                   connect: str = "2s", first_byte: str = "30s", idle: str = "30s",
                   tls: tuple[str, str] | None = None, extra_server: str = "", extra: str = "") -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[server]", f'listen = "127.0.0.1:{port}"', f'admin_listen = "127.0.0.1:{admin_port}"',
             f'max_request_body = "{max_request_body}"']
    if tls:
        lines += [f"tls_cert = {val(tls[0])}", f"tls_key = {val(tls[1])}"]
    if extra_server:
        lines.append(extra_server)
    lines += ["", "[timeouts]", f'connect = "{connect}"', f'first_byte = "{first_byte}"', f'idle = "{idle}"',
              "", "[front_doors.bedrock]", 'prefix = "/bedrock"']
    for b in backends:
        lines += ["", "[[backends]]"] + [f"{k} = {val(v)}" for k, v in b.items()]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


def plugin_path(name: str) -> str:
    """A stock plugin (target/plugins) or, failing that, a test plugin (target/test-plugins)."""
    for d in ("plugins", "test-plugins"):
        p = ROOT / "target" / d / f"{name}.wasm"
        if p.exists():
            return str(p)
    raise RuntimeError(f"plugin {name} is not built: run `make plugins`")


def mock_backend(mock, **kw) -> dict:
    url = mock if isinstance(mock, str) else mock.url
    b = {"name": "mock-bedrock", "kind": "bedrock", "region": "us-east-1", "endpoint": url,
         "control_endpoint": url}
    b.update(kw)
    return b


def vertex_backend(mock, credentials_file=None, **kw) -> dict:
    """A ``vertex`` backend at a ``MockVertex``; ``credentials_file`` (a key file the mock wrote)
    is left out when None (the gateway then uses ADC / the metadata server)."""
    b = {"name": "mock-vertex", "kind": "vertex", "project": mock.project, "region": mock.region,
         "endpoint": mock.url}
    if credentials_file is not None:
        b["credentials_file"] = str(credentials_file)
    b.update(kw)
    return b


def anthropic_backend(mock, **kw) -> dict:
    """An ``anthropic`` backend at a ``MockAnthropic``, with its upstream API key."""
    b = {"name": "mock-anthropic", "kind": "anthropic", "endpoint": mock.url, "api_key": mock.api_key}
    b.update(kw)
    return b


# ------------------------------------------------------------------------------------------------
# The gateway's per-request log lines and its metrics
# ------------------------------------------------------------------------------------------------

# key=value fields of a text log line; a value runs to the next " key=" (Display values such as
# attempts="a:429 b:200" may or may not be quoted).
_LOG_FIELD_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|.*?)(?= \w+=|$)')


def request_log_entries(log_text: str) -> list[dict[str, str]]:
    """The fields of every ``gateway::request`` line (one per request), in order; ``_line`` holds
    the whole line."""
    out = []
    for line in log_text.splitlines():
        if "gateway::request" not in line:
            continue
        fields: dict[str, str] = {"_line": line}
        for m in _LOG_FIELD_RE.finditer(line):
            v = m.group(2)
            if len(v) >= 2 and v[0] == v[-1] == '"':
                try:
                    v = json.loads(v)
                except ValueError:
                    v = v[1:-1]
            fields.setdefault(m.group(1), v)
        out.append(fields)
    return out


def wait_request_logs(gw, pred=lambda e: True, count: int = 1, timeout: float = 5.0) -> list[dict[str, str]]:
    """The request log entries matching ``pred``, once there are at least ``count`` of them (or
    whatever there is after ``timeout``: the caller asserts)."""
    def found(text: str):
        entries = [e for e in request_log_entries(text) if pred(e)]
        return entries if len(entries) >= count else None
    return gw.wait_log(found, timeout=timeout) or [e for e in request_log_entries(gw.log()) if pred(e)]


def attempts_of(entry: dict[str, str]) -> list[str]:
    """``attempts`` of a request log entry as a list (``["mock-bedrock:429", "mock-vertex:200"]``)."""
    return entry.get("attempts", "").split()


def admin_get(gw, path: str) -> str:
    import urllib.request
    with urllib.request.urlopen(gw.admin + path, timeout=5) as r:
        return r.read().decode()


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in metrics_text.splitlines():
        m = re.fullmatch(rf'{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)', line.strip())
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total
