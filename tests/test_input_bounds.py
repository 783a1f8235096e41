"""Bounds on what one client can make the gateway hold or do, each refused in the client's
protocol before any plugin runs, and never forwarded:

- ``server.max_request_headers`` (default 64 KiB): a larger header block (request line, names and
  values) is answered 431 in the client's protocol;
- model IDs longer than the providers allow are answered 400: Bedrock path model IDs over 2,048
  bytes, Vertex path models and Anthropic body ``model`` over 256 bytes;
- ``server.client_body_timeout``: the whole body must arrive within it, counted from the head;
- ``server.max_connections``: connections beyond it are closed at once;
- ``server.client_write_timeout``: a client that stops reading its stream is dropped
  (``outcome=client_aborted``);
- a client that leaves while the gateway waits for the upstream's first byte makes the gateway
  drop the upstream request at once.

And the point of them: hostile inputs never reach a plugin, so they cannot trip a plugin's breaker
(``on_error = "deny"``) for everyone else."""
from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import mock_anthropic as ma
import mock_bedrock as mb
from support import (GW_CREDENTIAL, SONNET, SONNET_WIRE, anthropic_backend, anthropic_body, boto_client,
                     metric_sum, mock_backend, request_head, send_raw, vertex_backend, wait_request_logs)
from test_stock_plugins import LIMITS, audit_records, model_calls, stock_pipeline

BODY = json.dumps(anthropic_body()).encode()
AUTH = {"Authorization": f"Bearer {GW_CREDENTIAL}"}
SONNET_1P = "claude-sonnet-4-5-20250929"
VERTEX_SONNET = "claude-sonnet-4-5@20250929"
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}

KIB = 1024
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def sa_file(mock_vertex, tmp_path):
    return mock_vertex.write_service_account(tmp_path / "service-account.json")


def deny_on_error_pipeline(audit_path) -> str:
    """The stock pipeline with every plugin failing closed: a plugin that broke (or whose breaker
    opened) would fail the request."""
    text = stock_pipeline(audit_path).replace('on_error = "allow"\n', "")
    return text.replace(f"{LIMITS}\n", f'{LIMITS}\non_error = "deny"\n')


@pytest.fixture
def three_doors(start_gateway, mock_bedrock, mock_vertex, mock_anthropic, sa_file, tmp_path):
    """``three_doors(**options)``: a gateway with a backend of each kind (each front door is served
    by its own kind) and the stock pipeline (failing closed) with an audit file."""
    def start(**kw):
        audit = tmp_path / "audit.log"
        gw = start_gateway(backends=[mock_backend(mock_bedrock), vertex_backend(mock_vertex, sa_file),
                                     anthropic_backend(mock_anthropic)],
                           extra=deny_on_error_pipeline(audit), **kw)
        gw.audit_path = audit
        return gw
    return start


def upstream_calls(mock_bedrock, mock_vertex, mock_anthropic) -> list[str]:
    """Every model call any mock received (token fetches aside)."""
    return ([f"bedrock {r.method} {r.target[:100]}" for r in model_calls(mock_bedrock)]
            + [f"vertex {r.method} {r.target[:100]}" for r in mock_vertex.api_requests]
            + [f"anthropic {r.method} {r.target[:100]}" for r in mock_anthropic.snapshot()
               if r.operation in ("messages", "count_tokens")])


def vertex_path(model: str, method: str = "rawPredict") -> str:
    return f"/vertex/v1/projects/any/locations/us-east5/publishers/anthropic/models/{model}:{method}"


VERTEX_BODY = json.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 64,
                          "messages": [{"role": "user", "content": "say hello"}]}).encode()


def anthropic_messages_body(model: str | bytes) -> bytes:
    model_bytes = model if isinstance(model, bytes) else model.encode()
    # `model` first: a gateway that measured it only after reading the rest would still be fine,
    # but one that streams the parse can refuse early.
    return (b'{"model":"' + model_bytes + b'","max_tokens":64,'
            b'"messages":[{"role":"user","content":"say hello"}]}')


def door_request(door: str, model: str | None = None, headers: dict | None = None) -> tuple[bytes, bytes]:
    """(head, body) of a valid model call through ``door`` (with the gateway key), naming ``model``."""
    h = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    if door == "bedrock":
        body = BODY
        target = f"/bedrock/model/{model or SONNET_WIRE}/invoke"
    elif door == "vertex":
        body = VERTEX_BODY
        target = vertex_path(model or VERTEX_SONNET)
    else:
        body = anthropic_messages_body(model or SONNET_1P)
        target = "/v1/messages"
        h.update(ANTHROPIC_VERSION)
    return request_head("POST", target, h, body), body


def assert_error_shape(door: str, r, status: int | set[int]) -> str:
    """The answer is an error of ``status`` in ``door``'s protocol; returns its message."""
    assert r is not None, "no answer"
    statuses = {status} if isinstance(status, int) else status
    assert r.status in statuses, (r.status, r.headers, r.body[:300])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    if door == "bedrock":
        assert r.errortype, f"no x-amzn-errortype header: {r.headers}"
        msg = body.get("message")
    elif door == "vertex":
        err = body.get("error")
        assert isinstance(err, dict) and err.get("code") == r.status and isinstance(err.get("status"), str) \
            and err["status"], body
        assert "x-amzn-errortype" not in r.headers
        msg = err.get("message")
    else:
        assert body.get("type") == "error" and isinstance(body.get("error"), dict), body
        assert isinstance(body["error"].get("type"), str) and body["error"]["type"], body
        assert "x-amzn-errortype" not in r.headers
        msg = body["error"].get("message")
    assert isinstance(msg, str) and msg, body
    return msg


def exchanged(ex) -> str:
    return f"response={ex.response and (ex.response.status, ex.response.body[:200])} " \
           f"send_error={ex.send_error} receive_error={ex.receive_error}"


# ------------------------------------------------------------------------------------------------
# The point: hostile inputs cannot break the plugins for everyone
# ------------------------------------------------------------------------------------------------

def test_huge_model_ids_and_headers_are_refused_and_cannot_trip_a_plugin_breaker(
        three_doors, mock_bedrock, mock_vertex, mock_anthropic):
    gw = three_doors()
    huge_model = b"claude-" + b"m" * (12 * MIB)
    anthropic_body_12mib = anthropic_messages_body(huge_model)
    anthropic_head = request_head("POST", "/v1/messages", {"Content-Type": "application/json", **AUTH,
                                                           **ANTHROPIC_VERSION}, anthropic_body_12mib)
    # 60 KB: a request line the HTTP parser still takes (a URI over 64 KiB is refused by Pingora
    # itself, with a plain 400); over the model cap, and over the header cap with the headers.
    bedrock_head = request_head("POST", f"/bedrock/model/us.anthropic.{'m' * 60_000}/invoke",
                                {"Content-Type": "application/json", **AUTH, "x-pad": "p" * 8000}, BODY)
    big_header_head = request_head("POST", f"/bedrock/model/{SONNET_WIRE}/invoke",
                                   {"Content-Type": "application/json", **AUTH, "x-pad": "h" * MIB}, BODY)
    jobs = ([("anthropic", anthropic_head, anthropic_body_12mib, 400)] * 8
            + [("bedrock", bedrock_head, BODY, {400, 431})] * 8
            + [("bedrock", big_header_head, BODY, None)])
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: send_raw(gw.port, j[1], j[2], timeout=60), jobs))
    for (door, _, _, status), ex in zip(jobs, results):
        assert ex.response is not None, f"{door}: no answer: {exchanged(ex)}"
        if status is None:   # the 1 MiB header: past Pingora's own limit, which answers a plain 400
            assert 400 <= ex.response.status < 500, exchanged(ex)
        else:
            assert_error_shape(door, ex.response, status)
    assert upstream_calls(mock_bedrock, mock_vertex, mock_anthropic) == []

    # Right after: valid requests through every plugin (all failing closed) are served.
    def bedrock_call(i):
        c = boto_client("bedrock-runtime", gw.base)
        rid = str(uuid.uuid4())

        def add(request, **_):
            request.headers["x-api-key"] = GW_CREDENTIAL
            request.headers["x-request-id"] = rid
        c.meta.events.register("before-sign.bedrock-runtime.*", add)
        out = json.loads(c.invoke_model(modelId=SONNET, body=BODY)["body"].read())
        assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
        return rid

    def anthropic_call(i):
        import anthropic
        rid = str(uuid.uuid4())
        client = anthropic.Anthropic(base_url=gw.url, api_key=GW_CREDENTIAL, max_retries=0, timeout=30)
        msg = client.messages.create(model=SONNET_1P, max_tokens=64,
                                     messages=[{"role": "user", "content": "say hello"}],
                                     extra_headers={"x-request-id": rid})
        assert msg.content[0].text == ma.DEFAULT_ANSWER
        return rid

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(bedrock_call if i % 2 else anthropic_call, i) for i in range(20)]
        rids = [f.result() for f in futures]
    records = {r["request_id"]: r for r in audit_records(gw, expect_at_least=20)}
    for rid in rids:
        r = records.get(rid)
        assert r, f"no audit record for {rid}"
        assert (r["status"], r["outcome"], r["principal"], r["team"]) == (200, "ok", "dev", "research"), r
    metrics = urllib_get(gw.admin + "/metrics")
    calls = metric_sum(metrics, "gateway_plugin_calls_total")
    ok = metric_sum(metrics, "gateway_plugin_calls_total", result="ok")
    assert calls > 0 and calls == ok, f"plugin calls that did not succeed: {calls - ok}"


def urllib_get(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_a_served_request_with_a_70kb_user_agent_has_its_audit_record(start_gateway, mock_bedrock, tmp_path,
                                                                      monkeypatch):
    # Python's http.server (the mock) refuses header lines over 64 KiB with 431 before it records
    # the request; this test is about the gateway and its audit-log plugin, so let it take more.
    monkeypatch.setattr(http.client, "_MAXLINE", 256 * KIB)
    audit = tmp_path / "audit.log"
    gw = start_gateway(mock_bedrock, extra=stock_pipeline(audit), extra_server='max_request_headers = "256KiB"')
    gw.audit_path = audit
    ua = "claude-cli/9.9.9 (long) " + "u" * 70_000
    rid = str(uuid.uuid4())
    head = request_head("POST", f"/bedrock/model/{SONNET_WIRE}/invoke",
                        {"Content-Type": "application/json", **AUTH, "User-Agent": ua, "x-request-id": rid}, BODY)
    ex = send_raw(gw.port, head, BODY)
    assert ex.response is not None and ex.response.status == 200, exchanged(ex)
    assert json.loads(ex.response.body)["content"][0]["text"] == mb.DEFAULT_ANSWER
    records = [r for r in audit_records(gw) if r["request_id"] == rid]
    assert len(records) == 1, f"{len(records)} audit records for the request with a 70 KB User-Agent"
    r = records[0]
    assert (r["status"], r["outcome"]) == (200, "ok"), r
    assert isinstance(r["user_agent"], str) and r["user_agent"].startswith("claude-cli/9.9.9 (long) uuu"), \
        str(r["user_agent"])[:200]
    assert len(r["user_agent"]) < 70_000, "the long field was not truncated"
    assert "user_agent" in (r.get("truncated") or []), \
        f"the truncated field is not named in the record's `truncated` list: {json.dumps(r)[-600:]}"


# ------------------------------------------------------------------------------------------------
# Header block cap
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("door", ["bedrock", "vertex", "anthropic"])
def test_a_header_block_over_max_request_headers_is_431_in_the_clients_protocol(
        three_doors, mock_bedrock, mock_vertex, mock_anthropic, door):
    gw = three_doors()   # max_request_headers: the default 64 KiB
    head, body = door_request(door, headers={"x-pad": "p" * (100 * KIB)})
    ex = send_raw(gw.port, head, body)
    assert_error_shape(door, ex.response, 431)
    assert upstream_calls(mock_bedrock, mock_vertex, mock_anthropic) == []
    assert not [r for r in audit_records(gw, expect_at_least=0, timeout=1)], "a plugin saw the request"


def test_the_header_cap_counts_the_whole_block_and_spares_what_fits(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock)
    # Under 64 KiB in all: served.
    head, body = door_request("bedrock", headers={"x-pad": "p" * (60 * KIB)})
    ex = send_raw(gw.port, head, body)
    assert ex.response is not None and ex.response.status == 200, exchanged(ex)
    assert len(model_calls(mock_bedrock)) == 1
    # Many headers, none large, 72 KiB together: refused.
    many = [("Content-Type", "application/json")] + list(AUTH.items()) \
        + [(f"x-pad-{i}", "q" * (3 * KIB)) for i in range(24)]
    ex = send_raw(gw.port, request_head("POST", f"/bedrock/model/{SONNET_WIRE}/invoke", many, BODY), BODY)
    assert_error_shape("bedrock", ex.response, 431)
    # The request line counts too: 40 KiB of query and 30 KiB of header, neither over alone.
    long_target = f"/bedrock/model/{SONNET_WIRE}/invoke?pad={'r' * (40 * KIB)}"
    ex = send_raw(gw.port, request_head("POST", long_target, {"Content-Type": "application/json",
                                                              "x-pad": "s" * (30 * KIB)}, BODY), BODY)
    assert_error_shape("bedrock", ex.response, 431)
    assert len(model_calls(mock_bedrock)) == 1


# ------------------------------------------------------------------------------------------------
# Model ID length per front door
# ------------------------------------------------------------------------------------------------

def _model_of_length(door: str, n: int) -> str:
    """A model ID of exactly ``n`` bytes, of characters that need no percent-encoding."""
    prefix = {"bedrock": "us.anthropic.claude-", "vertex": "claude-sonnet-4-5@", "anthropic": "claude-"}[door]
    return prefix + "9" * (n - len(prefix))


@pytest.mark.parametrize("door,limit", [("bedrock", 2048), ("vertex", 256), ("anthropic", 256)])
def test_a_model_id_longer_than_the_provider_allows_is_400_before_any_plugin(
        three_doors, mock_bedrock, mock_vertex, mock_anthropic, door, limit):
    gw = three_doors()
    too_long = str(uuid.uuid4())
    head, body = door_request(door, _model_of_length(door, limit + 1), headers={"x-request-id": too_long})
    ex = send_raw(gw.port, head, body)
    assert_error_shape(door, ex.response, 400)
    assert upstream_calls(mock_bedrock, mock_vertex, mock_anthropic) == []

    # At the limit the gateway forwards it (whatever the mock then thinks of the model).
    at_limit = str(uuid.uuid4())
    head, body = door_request(door, _model_of_length(door, limit), headers={"x-request-id": at_limit})
    ex = send_raw(gw.port, head, body)
    assert ex.response is not None, exchanged(ex)
    calls = upstream_calls(mock_bedrock, mock_vertex, mock_anthropic)
    assert len(calls) == 1, f"a model ID of {limit} bytes was not forwarded: {ex.response.status} {ex.response.body[:300]}"

    # Plugins ran for the one at the limit (its audit record) and never for the one over it.
    ids = {r["request_id"] for r in audit_records(gw)}
    assert at_limit in ids and too_long not in ids, ids
    entry = wait_request_logs(gw, lambda e: e.get("request_id") == too_long)
    assert entry and entry[0]["status"] == "400", entry


# ------------------------------------------------------------------------------------------------
# Body timeout
# ------------------------------------------------------------------------------------------------

def test_a_body_trickled_past_client_body_timeout_is_refused(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, extra_server='client_body_timeout = "1s"')
    body = json.dumps(anthropic_body("x" * 300)).encode()
    head = request_head("POST", f"/bedrock/model/{SONNET_WIRE}/invoke", {"Content-Type": "application/json"}, body)

    # Within the timeout, even in pieces with a pause: served.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(head + body[:100])
    time.sleep(0.5)
    s.sendall(body[100:])
    r = http.client.HTTPResponse(s)
    r.begin()
    r.read()
    s.close()
    assert r.status == 200

    # One byte every 100 ms: each read is quick, the whole body is not.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.setblocking(False)
    s.sendall(head)
    t0 = time.monotonic()
    got, ended, sent = b"", None, 0
    try:
        while time.monotonic() - t0 < 8 and sent < len(body):
            try:
                s.send(body[sent:sent + 1])
                sent += 1
            except BlockingIOError:
                pass
            except OSError:
                ended = "reset on send"
                break
            deadline = time.monotonic() + 0.1
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                except OSError as e:
                    ended = f"reset: {e!r}"
                    break
                if not data:
                    ended = "closed"
                    break
                got += data
                if b"\r\n\r\n" in got:
                    ended = "answered"
                    break
            if ended:
                break
        took = time.monotonic() - t0
    finally:
        s.close()
    assert ended, f"the gateway was still reading a trickled body after {time.monotonic() - t0:.1f}s " \
                  f"({sent} bytes) with client_body_timeout = 1s"
    assert took < 3.0, f"the gateway refused the trickled body only after {took:.1f}s"
    if got:
        status = int(got.split(b" ", 2)[1])
        assert 400 <= status < 500, got[:300]
        assert status == 408, f"expected 408 Request Timeout, got {got[:300]!r}"
    assert len(model_calls(mock_bedrock)) == 1, "the trickled request reached the upstream"


# ------------------------------------------------------------------------------------------------
# Connection cap
# ------------------------------------------------------------------------------------------------

def test_connections_beyond_max_connections_are_closed_at_once(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, extra_server="max_connections = 4")

    def served(conn: http.client.HTTPConnection) -> int:
        conn.request("POST", f"/bedrock/model/{SONNET_WIRE}/invoke", body=BODY,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status

    idle = [http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10) for _ in range(4)]
    try:
        assert [served(c) for c in idle] == [200] * 4   # four keep-alive connections, now idle

        def fifth() -> str:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=3)
            try:
                s.settimeout(3)
                try:
                    s.sendall(request_head("POST", f"/bedrock/model/{SONNET_WIRE}/invoke",
                                           {"Content-Type": "application/json"}, BODY) + BODY)
                    data = s.recv(4096)
                except socket.timeout:
                    return "no answer within 3 s"
                except OSError:
                    return "closed"
                return "closed" if not data else "answered: " + data[:60].decode(errors="replace")
            finally:
                s.close()

        t0 = time.monotonic()
        assert fifth() == "closed", "a fifth connection with max_connections = 4 was not closed"
        assert time.monotonic() - t0 < 1.0, "the fifth connection was not closed at once"
        assert len(model_calls(mock_bedrock)) == 4

        idle.pop().close()
        deadline = time.monotonic() + 3
        while True:
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            try:
                status = served(c)
                break
            except (OSError, http.client.HTTPException):
                assert time.monotonic() < deadline, "no connection was served after one of the four closed"
                time.sleep(0.1)
            finally:
                c.close()
        assert status == 200
        assert [served(c) for c in idle] == [200] * 3, "the idle connections were not kept"
    finally:
        for c in idle:
            c.close()


# ------------------------------------------------------------------------------------------------
# Write timeout
# ------------------------------------------------------------------------------------------------

def test_a_client_that_stops_reading_its_stream_is_dropped_after_client_write_timeout(start_gateway, mock_bedrock):
    gw = start_gateway(mock_bedrock, extra_server='client_write_timeout = "1s"')
    rid = str(uuid.uuid4())
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connecting: a small window
    s.settimeout(10)
    s.connect(("127.0.0.1", gw.port))
    try:
        s.sendall(request_head("POST", "/bedrock/model/us.anthropic.mock-big-stream-v1%3A0/invoke-with-response-stream",
                               {"Content-Type": "application/json", "x-request-id": rid}, BODY) + BODY)
        # Never read: the mock writes ~90 MB as fast as it can; the buffers on the way hold far less.
        rec = mock_bedrock.wait_for(lambda rs: rs and rs[-1].peer_closed_at and rs[-1], timeout=30)
        assert rec, "the gateway kept the upstream stream of a client that stopped reading for 30 s " \
                    "with client_write_timeout = 1s"
        assert not rec.stream_completed
        entry = wait_request_logs(gw, lambda e: e.get("request_id") == rid, timeout=10)
        assert entry, f"no request log line for {rid}"
        assert entry[0]["outcome"] == "client_aborted", entry[0]["_line"]
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------
# Client disconnect before the first byte
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", ["invoke", "invoke-with-response-stream"])
def test_a_client_leaving_while_the_upstream_is_silent_drops_the_upstream_request(start_gateway, mock_bedrock,
                                                                                 operation):
    gw = start_gateway(mock_bedrock)   # first_byte: 30 s
    rid = str(uuid.uuid4())
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(request_head("POST", f"/bedrock/model/us.anthropic.mock-hang-v1%3A0/{operation}",
                           {"Content-Type": "application/json", "x-request-id": rid}, BODY) + BODY)
    rec = mock_bedrock.wait_for(lambda rs: rs and rs[-1], timeout=10)
    assert rec, "the request did not reach the upstream"
    time.sleep(0.3)
    s.close()
    left = time.time()
    rec = mock_bedrock.wait_for(lambda rs: rs[-1].peer_closed_at and rs[-1], timeout=10)
    assert rec, "the gateway kept waiting on the upstream for 10 s after its client left"
    assert rec.peer_closed_at - left < 1.5, \
        f"the gateway dropped the upstream request {rec.peer_closed_at - left:.2f}s after its client left"
    entry = wait_request_logs(gw, lambda e: e.get("request_id") == rid, timeout=5)
    assert entry, f"no request log line for {rid}"
    assert entry[0]["outcome"] == "client_aborted", entry[0]["_line"]
