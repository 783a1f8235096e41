"""Limits and budgets shared across replicas (issue 13): the `[state]` section with a Redis
backend, and the stock `rate-limit` plugin's requests per minute, stream leases and budget
reservations on it.

Every test runs real gateway processes (``start_gateway``) in front of the strict mock Bedrock,
with a key prefix of its own, against the machine's Redis at 127.0.0.1:6379 (its keys are
deleted afterwards) or, for outages, a private ``redis-server`` on a free port (the machine's
Redis is never stopped). Requests go through the Bedrock front door as plain HTTP (the mock
checks the gateway's SigV4 signature on everything that reaches it); a few go through boto3 to
see the errors as a real client does.
"""
from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

import mock_bedrock as mb
from redis_support import (MACHINE_REDIS, PrivateRedis, Redis, describe_keys, machine_redis_available,
                           unique_prefix)
from support import (APP_PROFILE_ARN, SONNET, admin_get, anthropic_body, boto_client, metric_sum, plugin_path,
                     raw_request, request_head, wait_request_logs)

# Debug build on a small shared machine: generous plugin CPU limits (as test_stock_plugins.py).
LIMITS = 'cpu_limit = "250ms"'

# `[state] timeout` for tests whose subject is not an outage but that send bursts: on this
# shared 2-core machine (debug build, parallel compilations) a burst sometimes keeps a batch
# over 50 ms, which starts an incident and switches each replica to counting on its own
# (`on_unavailable = "local"`). The outage tests keep the 50 ms default.
BURST_TIMEOUT = "1s"

# A model no catalog entry knows, priced only by the test's own price table (so the arithmetic
# below is the test's, whatever the built-in prices are).
BUDGET_MODEL = "us.anthropic.claude-budget-test-v1:0"


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def machine_redis():
    if not machine_redis_available():
        pytest.skip(f"no Redis at {MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}")
    r = Redis(*MACHINE_REDIS)
    yield r
    r.close()


@pytest.fixture
def redis_prefix(request):
    """A key prefix of the test's own; its keys are deleted from the machine's Redis afterwards."""
    prefix = unique_prefix(request.node.name[5:25].replace("_", "-"))
    yield prefix
    if machine_redis_available():
        r = Redis(*MACHINE_REDIS)
        try:
            r.delete_matching(prefix + ":*")
        finally:
            r.close()


@pytest.fixture
def private_redis(tmp_path, request):
    """A redis-server of the test's own (free port, no persistence), killed at the end."""
    import shutil
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    srv = PrivateRedis(tmp_path / "redis").start()
    request.node.stash[_PRIVATE] = srv
    yield srv
    srv.close()


_PRIVATE = pytest.StashKey[PrivateRedis]()


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def state_section(url: str | list[str], prefix: str, *, on_unavailable: str = "local",
                  timeout: str = "50ms") -> str:
    return (f"[state]\nbackend = \"redis\"\nurl = {toml_value(url)}\ntimeout = \"{timeout}\"\n"
            f"on_unavailable = \"{on_unavailable}\"\nkey_prefix = \"{prefix}\"\n")


def rate_limit_plugin(rules: list[dict], *, prices: dict | None = None, default_price: dict | None = None,
                      **config) -> str:
    """The stock rate-limit plugin with these rules (``[[plugins.config.rules]]``), top-level
    config keys (``stream_ttl_seconds = 3``, ...) and price tables."""
    out = ["[[plugins]]", 'name = "rate-limit"', f"path = {toml_value(plugin_path('rate-limit'))}", LIMITS,
           "[plugins.config]"]
    out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in config.items()]
    for rule in rules:
        out.append("[[plugins.config.rules]]")
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in rule.items()]
    if prices:
        out.append("[plugins.config.prices]")
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in prices.items()]
    if default_price:
        out.append("[plugins.config.default_price]")
        out += [f"{toml_key(k)} = {toml_value(v)}" for k, v in default_price.items()]
    return "\n".join(out) + "\n"


def model_section(name: str, **ids: str) -> str:
    return "[[models]]\n" + f"name = {toml_value(name)}\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in ids.items())


# ------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------

def serving(gw, timeout: float = 10.0):
    """``gw`` once its data plane accepts connections. (``/readyz`` can answer 200 a moment
    before the data-plane listener is bound: the admin listener starts first.)"""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
            return gw
        except OSError as e:
            if time.time() > deadline:
                pytest.fail(f"the data plane on port {gw.port} refused connections for {timeout}s after "
                            f"/readyz said ready: {e!r}", pytrace=False)
            time.sleep(0.02)


def model_path(model: str, operation: str = "invoke") -> str:
    return f"/bedrock/model/{urllib.parse.quote(model, safe='')}/{operation}"


def body_bytes(max_tokens: int = 64) -> bytes:
    return json.dumps(anthropic_body(max_tokens=max_tokens)).encode()


def invoke(gw, model: str = SONNET, *, max_tokens: int = 64, rid: str | None = None, timeout: float = 30):
    headers = {"x-request-id": rid} if rid else {}
    return raw_request(gw.url, "POST", model_path(model), body_bytes(max_tokens), headers, timeout=timeout)


def error_message(r) -> str:
    try:
        return r.json().get("message", "")
    except ValueError:
        return r.body.decode(errors="replace")


def summary(results) -> str:
    """``status: count`` and the distinct error messages, for failure messages."""
    counts = Counter(r.status for r in results)
    msgs = Counter(f"{r.status} {r.errortype}: {error_message(r)[:200]}" for r in results if r.status != 200)
    return f"statuses {dict(counts)}; errors: " + "; ".join(f"{m} (x{n})" for m, n in msgs.items())


def open_stream(gw, model: str, *, rid: str | None = None, max_tokens: int = 64, timeout: float = 15):
    """Send an InvokeModelWithResponseStream and read the answer's head: ``(sock, response)``;
    the caller reads the body (or not) and closes ``sock``."""
    body = body_bytes(max_tokens)
    headers = {"Content-Type": "application/json"}
    if rid:
        headers["x-request-id"] = rid
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)
    sock.sendall(request_head("POST", model_path(model, "invoke-with-response-stream"), headers, body) + body)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return sock, resp


def close_socket(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def stream_events(resp, stop_after_deltas: int | None = None, timeout: float = 30) -> list[dict]:
    """The Anthropic events of an event-stream answer (CRC-checked frames), up to
    ``stop_after_deltas`` content_block_delta events when given."""
    events, buf, deltas = [], b"", 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = resp.read1(65536)
        if not data:
            break
        buf += data
        frames, buf = mb.decode_frames(buf)
        for headers, payload in frames:
            if headers.get(":message-type") != "event":
                events.append({"type": "_exception", "headers": headers, "payload": payload.decode(errors="replace")})
                continue
            ev = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
            events.append(ev)
            if ev.get("type") == "content_block_delta":
                deltas += 1
                if stop_after_deltas is not None and deltas >= stop_after_deltas:
                    return events
    return events


# ------------------------------------------------------------------------------------------------
# What the gateway and Redis show
# ------------------------------------------------------------------------------------------------

def status_state(gw) -> dict:
    status = json.loads(admin_get(gw, "/status"))
    assert "state" in status, f"/status has no `state`: {json.dumps(status)[:2000]}"
    return status["state"]


def wait_state(gw, pred, timeout: float = 10.0) -> dict:
    deadline = time.time() + timeout
    while True:
        st = status_state(gw)
        if pred(st) or time.time() > deadline:
            return st
        time.sleep(0.1)


def metrics(gw) -> str:
    return admin_get(gw, "/metrics")


def incidents_metric(gw) -> float:
    return metric_sum(metrics(gw), "gateway_state_store_incidents_total")


_STATE_LINE = re.compile(r"redis|state store", re.I)


def state_store_lines(gw) -> list[str]:
    """The gateway's own log lines about its state store (not request lines, not the lines a
    plugin logs through the host)."""
    out = []
    for line in gw.log().splitlines():
        if "gateway::request" in line or "gateway::plugin" in line or "plugin=" in line:
            continue
        if _STATE_LINE.search(line):
            out.append(line)
    return out


_DOWN = re.compile(r"state store unavailable", re.I)
_UP = re.compile(r"state store available again", re.I)


def outage_lines(gw) -> tuple[list[str], list[str]]:
    """(lines saying the store became unavailable, lines saying it is back)."""
    down, up = [], []
    for line in state_store_lines(gw):
        if _UP.search(line):
            up.append(line)
        elif _DOWN.search(line):
            down.append(line)
    return down, up


def keys(r: Redis, prefix: str, contains: str = "") -> list:
    return [k for k in r.keys_under(prefix + ":*") if contains in k.key]


def assert_no_incident(replicas, answers) -> None:
    """No replica lost Redis during the test (it would have counted on its own meanwhile)."""
    states = {i: status_state(gw) for i, gw in enumerate(replicas)}
    assert all(st.get("incidents") == 0 for st in states.values()), \
        (f"the state store had an incident (/status state per replica: {states}); {summary(answers)}\n"
         + "\n".join(line for gw in replicas for line in state_store_lines(gw)))


def assert_keys_expire(r: Redis, prefix: str) -> None:
    """Every key under the prefix has a TTL (none would outlive a dead replica)."""
    infos = keys(r, prefix)
    forever = [str(k) for k in infos if k.pttl == -1]          # -2: deleted since the scan
    assert not forever, "keys without an expiry:\n" + "\n".join(forever) + "\n--- all keys ---\n" + describe_keys(infos)


def redis_count(r: Redis, prefix: str, contains: str) -> tuple[int, list]:
    infos = keys(r, prefix, contains)
    return sum(k.count() for k in infos), infos


def settled_spend(r: Redis, prefix: str, rule: str) -> tuple[int, list]:
    """The settled spend of budget rule ``rule``: its integer counters under
    ``<prefix>:rate-limit:budget:<rule>:`` (holds, kept in other shapes, are not spend)."""
    infos = keys(r, prefix, f":budget:{rule}:")
    total = 0
    for k in infos:
        if k.type == "string":
            try:
                total += int(k.value)
            except (TypeError, ValueError):
                pass
    return total, infos


def avoid_minute_edge(margin: float = 6.0) -> None:
    """Sliding windows roll on the minute: a burst that straddles a roll is counted across two
    windows. Start bursts that must be counted exactly well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def model_calls(mock):
    return [r for r in mock.snapshot() if r.operation.startswith(("invoke", "converse"))]


# ------------------------------------------------------------------------------------------------
# 1. One global request limit across two replicas
# ------------------------------------------------------------------------------------------------

def test_two_replicas_enforce_one_global_requests_per_minute(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    cfg = state_section("redis://127.0.0.1:6379", redis_prefix, timeout=BURST_TIMEOUT) + rate_limit_plugin(
        [{"name": "rpm-global", "per": "global", "requests_per_minute": 50}])
    a = serving(start_gateway(mock_bedrock, extra=cfg))
    b = serving(start_gateway(mock_bedrock, extra=cfg))
    replicas = [a, b]
    avoid_minute_edge()

    def one(i):
        gw = replicas[i % 2]
        return i % 2, invoke(gw)

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(120)))
    answers = [r for _, r in results]
    by_replica = {n: Counter(r.status for i, r in results if i == n) for n in (0, 1)}
    assert_no_incident(replicas, answers)
    counts = Counter(r.status for r in answers)
    assert counts == Counter({200: 50, 429: 70}), \
        f"expected exactly 50 x 200 and 70 x 429 over both replicas; got {summary(answers)}; per replica {by_replica}"
    assert by_replica[0][200] and by_replica[1][200], f"one replica served nothing: {by_replica}"
    for r in answers:
        if r.status == 429:
            assert r.errortype == "ThrottlingException", (r.headers, r.body)
            msg = error_message(r)
            assert "50 requests per minute" in msg and "rpm-global" in msg, msg
            assert int(r.headers.get("retry-after", "0")) >= 1, r.headers
    calls = model_calls(mock_bedrock)
    assert len(calls) == 50 and all(c.sig_ok for c in calls), \
        f"the mock saw {len(calls)} model calls (signature ok: {sum(c.sig_ok for c in calls)}), expected 50"

    # A real client sees Bedrock's throttling error with the limit's message.
    client = boto_client("bedrock-runtime", b.base)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
    assert e.value.response["Error"]["Code"] == "ThrottlingException", e.value.response
    assert "requests per minute" in e.value.response["Error"]["Message"], e.value.response

    rpm, infos = redis_count(machine_redis, redis_prefix, "rpm")
    assert infos, "no requests-per-minute key in Redis:\n" + describe_keys(keys(machine_redis, redis_prefix))
    assert rpm == 50 and all(k.key.startswith(redis_prefix + ":") and "rate-limit:" in k.key for k in infos), \
        describe_keys(infos)
    assert_keys_expire(machine_redis, redis_prefix)


# ------------------------------------------------------------------------------------------------
# 2. A budget of a few cents holds across replicas under concurrency
# ------------------------------------------------------------------------------------------------

# USD per million tokens. Output dominates and the mock's answer (42 output tokens) is within
# max_tokens (50), so the reservation (input estimate + max_tokens at the output price) bounds
# each request's real cost; input and cache are cheap so the mock's fixed usage
# (1117 input, 4321 cache read, 321 cache write) adds little.
BUDGET_PRICE = {"input": 1.0, "output": 500.0, "cache_read": 0.01, "cache_write": 0.01}
BUDGET_MAX_TOKENS = 50


def micro_usd(price: dict, input=0, output=0, cache_read=0, cache_write=0) -> float:
    return (input * price["input"] + output * price["output"] + cache_read * price.get("cache_read", 0)
            + cache_write * price.get("cache_write", 0))


def mock_cost(price: dict) -> float:
    return micro_usd(price, mb.USAGE_INPUT, mb.USAGE_OUTPUT, mb.USAGE_CACHE_READ, mb.USAGE_CACHE_CREATION)


def test_a_budget_holds_across_two_replicas_under_40_concurrent_requests(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    budget_usd = 0.10
    rule = "cents-budget"
    cfg = state_section("redis://127.0.0.1:6379", redis_prefix, timeout=BURST_TIMEOUT) + rate_limit_plugin(
        [{"name": rule, "per": "global", "budget_usd": budget_usd}],
        prices={"*budget-test*": BUDGET_PRICE}, default_price=BUDGET_PRICE)
    a = serving(start_gateway(mock_bedrock, extra=cfg))
    b = serving(start_gateway(mock_bedrock, extra=cfg))
    replicas = [a, b]

    cost = mock_cost(BUDGET_PRICE)                                  # ~22,163 micro-USD
    body_len = len(body_bytes(BUDGET_MAX_TOKENS))
    worst = micro_usd(BUDGET_PRICE, input=-(-body_len // 4), output=BUDGET_MAX_TOKENS)   # ~25,000
    assert cost <= worst, "the test's arithmetic: a request's real cost must fit its reservation"
    budget = budget_usd * 1e6

    # Connect each replica to Redis first (its connection is made on first use), with a
    # request whose worst case could never fit: refused, it reserves and spends nothing.
    for gw in replicas:
        r = invoke(gw, BUDGET_MODEL, max_tokens=1000)
        assert r.status == 429 and "budget" in error_message(r).lower(), (r.status, r.body)

    barrier = threading.Barrier(40)

    def one(i):
        barrier.wait(timeout=30)
        return invoke(replicas[i % 2], BUDGET_MODEL, max_tokens=BUDGET_MAX_TOKENS)

    with ThreadPoolExecutor(40) as ex:
        answers = list(ex.map(one, range(40)))
    ok = [r for r in answers if r.status == 200]
    refused = [r for r in answers if r.status == 429]
    assert len(ok) + len(refused) == 40, summary(answers)
    assert ok, f"no request got through a ${budget_usd} budget: {summary(answers)}"
    assert refused, f"40 requests at ~${cost / 1e6:.4f} each all passed a ${budget_usd} budget: {summary(answers)}"
    for r in refused:
        assert r.errortype == "ThrottlingException", (r.headers, r.body)
        assert "budget" in error_message(r).lower(), error_message(r)
        assert int(r.headers.get("retry-after", "0")) >= 1, r.headers
    assert_no_incident(replicas, answers)

    # Settlements may land just after the answers: wait for the counter to hold every answered
    # request's exact cost.
    expected = len(ok) * cost
    deadline = time.time() + 10
    while True:
        spent, infos = settled_spend(machine_redis, redis_prefix, rule)
        if abs(spent - expected) <= len(ok) + 1 or time.time() > deadline:
            break
        time.sleep(0.1)
    detail = (f"{len(ok)} answered x {cost:.2f} = {expected:.0f} micro-USD expected settled; Redis holds "
              f"{spent}; budget {budget:.0f}, one request's worst case {worst:.0f}\n{summary(answers)}\n"
              + describe_keys(infos))
    assert infos, "no budget counter in Redis:\n" + describe_keys(keys(machine_redis, redis_prefix))
    assert abs(spent - expected) <= len(ok) + 1, "settled spend is not the answered requests' exact cost: " + detail
    assert spent <= budget + worst, "the budget was overspent: " + detail
    metric_spent = sum(metric_sum(metrics(gw), "plugin_rate_limit_spent_micro_usd_total") for gw in replicas)
    assert abs(metric_spent - spent) <= len(ok) + 1, f"spent_micro_usd_total over both replicas is {metric_spent}; " + detail
    assert len(model_calls(mock_bedrock)) == len(ok), "a refused request reached the upstream"
    assert_keys_expire(machine_redis, redis_prefix)


# ------------------------------------------------------------------------------------------------
# 3. Stream leases of a killed replica expire
# ------------------------------------------------------------------------------------------------

def test_stream_leases_of_a_killed_replica_expire_after_the_ttl(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    ttl = 3
    cfg = state_section("redis://127.0.0.1:6379", redis_prefix) + rate_limit_plugin(
        [{"name": "two-streams", "per": "global", "max_concurrent_streams": 2}], stream_ttl_seconds=ttl)
    a = serving(start_gateway(mock_bedrock, extra=cfg))
    b = serving(start_gateway(mock_bedrock, extra=cfg))
    long_model = "us.anthropic.claude-sonnet-4-5-mock-slow-stream-150-v1:0"    # 150 deltas, 0.2 s apart
    short_model = "us.anthropic.claude-sonnet-4-5-mock-slow-stream-2-v1:0"

    opened_at = time.time()
    held = []
    try:
        for _ in range(2):
            sock, resp = open_stream(a, long_model)
            held.append(sock)
            assert resp.status == 200, (resp.status, resp.read())
        leases = keys(machine_redis, redis_prefix, ":streams:two-streams:")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        killed_at = time.time()
    finally:
        for s in held:
            close_socket(s)

    # The two leases are in Redis, each with its expiry (a sorted set of holders by expiry).
    holders = [m for k in leases if k.type == "zset" for m in k.value]
    assert len(holders) == 2, "A's two leases are not in Redis:\n" + describe_keys(leases)

    sock, resp = open_stream(b, short_model)
    try:
        first = (resp.status, resp.getheader("x-amzn-errortype"), resp.getheader("retry-after"), resp.read())
    finally:
        close_socket(sock)
    refused_at = time.time()
    assert first[0] == 429, (f"replica B admitted a third stream {refused_at - killed_at:.2f}s after replica A "
                             f"(holding 2 of 2) was killed: {first}\nlease keys when A held them:\n{describe_keys(leases)}")
    assert first[1] == "ThrottlingException" and "concurren" in first[3].decode().lower(), first

    admitted, tries = None, []
    deadline = killed_at + ttl + 5
    while time.time() < deadline:
        sock, resp = open_stream(b, short_model)
        try:
            if resp.status == 200:
                admitted = time.time()
                events = stream_events(resp)
                assert [e["type"] for e in events][-1] == "message_stop", events
                break
            tries.append((round(time.time() - killed_at, 2), resp.status))
            resp.read()
        finally:
            close_socket(sock)
        time.sleep(0.2)
    assert admitted, (f"replica B still refused streams {deadline - killed_at:.0f}s after replica A died holding "
                      f"leases with a {ttl}s TTL: {tries}\nkeys now:\n" + describe_keys(keys(machine_redis, redis_prefix)))
    assert admitted - opened_at >= ttl - 0.3, \
        f"A's leases ended {admitted - opened_at:.2f}s after they were taken, before their {ttl}s TTL"
    assert admitted - killed_at <= ttl + 2.5, \
        f"B was admitted {admitted - killed_at:.2f}s after A died (leases of {ttl}s): {tries}"
    assert_keys_expire(machine_redis, redis_prefix)


# ------------------------------------------------------------------------------------------------
# 4. Redis outages: local, deny, allow
# ------------------------------------------------------------------------------------------------

MAX_LATENCY_DOWN = 1.0   # timeout is 50 ms; the rest is a debug gateway on a busy machine


def timed_invoke(gw, **kw):
    t0 = time.time()
    r = invoke(gw, timeout=10, **kw)
    return r, time.time() - t0


def assert_private_keys(srv: PrivateRedis, prefix: str) -> None:
    """The private Redis holds only the gateway's keys: all under the prefix, all expiring."""
    r = srv.client()
    try:
        everything = r.keys_under("*")
        stray = [str(k) for k in everything if not k.key.startswith(prefix + ":")]
        assert not stray, "keys outside the key prefix:\n" + "\n".join(stray)
        assert_keys_expire(r, prefix)
    finally:
        r.close()


def rpm_in_redis(srv: PrivateRedis, prefix: str) -> tuple[int, list]:
    r = srv.client()
    try:
        return redis_count(r, prefix, ":rpm:")
    finally:
        r.close()


def wait_rpm(srv, prefix, want: int, timeout: float = 5.0) -> tuple[int, list]:
    deadline = time.time() + timeout
    while True:
        n, infos = rpm_in_redis(srv, prefix)
        if n == want or time.time() > deadline:
            return n, infos
        time.sleep(0.05)


def test_redis_outage_with_local_counts_per_replica_until_redis_is_back(
        private_redis, start_gateway, mock_bedrock):
    prefix = unique_prefix("outage-local")
    limit = 4
    cfg = state_section(private_redis.url, prefix, on_unavailable="local") + rate_limit_plugin(
        [{"name": "rpm-outage", "per": "global", "requests_per_minute": limit}])
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    avoid_minute_edge(10)

    st = status_state(gw)
    assert st.get("backend") == "redis" and st.get("healthy") is True and st.get("on_unavailable") == "local" \
        and st.get("incidents") == 0, st

    for _ in range(2):
        assert invoke(gw).status == 200
    n, infos = wait_rpm(private_redis, prefix, 2)
    assert n == 2, "2 requests are not counted in Redis:\n" + describe_keys(infos)

    private_redis.kill()
    outcomes = [timed_invoke(gw) for _ in range(limit + 3)]
    statuses = [r.status for r, _ in outcomes]
    slow = [(i, round(t, 3)) for i, (_, t) in enumerate(outcomes) if t > MAX_LATENCY_DOWN]
    assert not slow, f"requests waited on the dead Redis (index, seconds): {slow}; statuses {statuses}"
    assert statuses[0] == 200, f"Redis down with on_unavailable=local: {statuses}\n{summary([r for r, _ in outcomes])}"
    n_ok = statuses.count(200)
    assert statuses == [200] * n_ok + [429] * (len(statuses) - n_ok), \
        f"the local limit of {limit}/min did not apply while Redis was down: {statuses}"
    assert limit - 2 <= n_ok <= limit, f"{n_ok} requests passed the local limit of {limit}: {statuses}"
    refused = [r for r, _ in outcomes if r.status == 429]
    assert all("requests per minute" in error_message(r) for r in refused), summary(refused)

    st = wait_state(gw, lambda s: s.get("healthy") is False, timeout=3)
    assert st.get("healthy") is False and st.get("incidents") == 1, f"/status state while Redis is down: {st}"
    assert incidents_metric(gw) == 1, [l for l in metrics(gw).splitlines() if "state_store" in l]
    down, up = outage_lines(gw)
    assert len(down) == 1, "expected one log line saying the state store became unavailable, got:\n" + \
        "\n".join(state_store_lines(gw))

    private_redis.start()
    st = wait_state(gw, lambda s: s.get("healthy") is True, timeout=10)
    assert st.get("healthy") is True, f"/status state 10 s after Redis came back: {st}"
    assert st.get("incidents") == 1, st
    r = invoke(gw)
    assert r.status == 200, (r.status, r.body)
    n, infos = wait_rpm(private_redis, prefix, 1)
    assert n == 1, "a request after Redis came back is not counted in it:\n" + describe_keys(infos)
    r = invoke(gw)
    n, infos = wait_rpm(private_redis, prefix, 2)
    assert r.status == 200 and n == 2, (r.status, describe_keys(infos))

    down, up = gw.wait_log(lambda _: (lambda d, u: (d, u) if u else None)(*outage_lines(gw)), timeout=3) \
        or outage_lines(gw)
    lines = "\n".join(state_store_lines(gw))
    assert len(down) == 1 and len(up) == 1, f"expected one 'unavailable' and one 'back' line, got:\n{lines}"
    assert incidents_metric(gw) == 1
    assert_private_keys(private_redis, prefix)


def test_redis_outage_with_deny_refuses_with_503_without_hanging(private_redis, start_gateway, mock_bedrock):
    """Redis hangs (SIGSTOP): every request is refused within the timeout, not held."""
    prefix = unique_prefix("outage-deny")
    cfg = state_section(private_redis.url, prefix, on_unavailable="deny") + rate_limit_plugin(
        [{"name": "rpm-deny", "per": "global", "requests_per_minute": 1000}])
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    assert invoke(gw).status == 200
    calls_before = len(model_calls(mock_bedrock))

    private_redis.pause()
    outcomes = [timed_invoke(gw) for _ in range(5)]
    statuses = [r.status for r, _ in outcomes]
    slow = [(i, round(t, 3)) for i, (_, t) in enumerate(outcomes) if t > MAX_LATENCY_DOWN]
    assert not slow, f"requests waited on the hung Redis (index, seconds): {slow}; statuses {statuses}"
    assert statuses == [503] * 5, f"on_unavailable=deny with Redis hung: {summary([r for r, _ in outcomes])}"
    for r, _ in outcomes:
        assert r.errortype == "ServiceUnavailableException", (r.headers, r.body)
        assert int(r.headers.get("retry-after", "0")) >= 1, r.headers
    assert len(model_calls(mock_bedrock)) == calls_before, "a refused request reached the upstream"
    st = status_state(gw)
    assert st.get("healthy") is False and st.get("incidents") == 1 and st.get("on_unavailable") == "deny", st
    down, _ = outage_lines(gw)
    assert len(down) == 1, "expected one 'unavailable' line, got:\n" + "\n".join(state_store_lines(gw))

    private_redis.resume()
    st = wait_state(gw, lambda s: s.get("healthy") is True, timeout=10)
    assert st.get("healthy") is True, f"/status state 10 s after Redis resumed: {st}"
    r = invoke(gw)
    assert r.status == 200, (r.status, r.body)
    assert incidents_metric(gw) == 1
    assert_private_keys(private_redis, prefix)


def test_redis_outage_with_allow_lets_requests_through_uncounted(private_redis, start_gateway, mock_bedrock):
    prefix = unique_prefix("outage-allow")
    limit = 2
    cfg = state_section(private_redis.url, prefix, on_unavailable="allow") + rate_limit_plugin(
        [{"name": "rpm-allow", "per": "global", "requests_per_minute": limit}])
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    avoid_minute_edge(10)
    assert invoke(gw).status == 200
    n, infos = wait_rpm(private_redis, prefix, 1)
    assert n == 1, describe_keys(infos)

    private_redis.kill()
    outcomes = [timed_invoke(gw) for _ in range(limit + 3)]
    slow = [(i, round(t, 3)) for i, (_, t) in enumerate(outcomes) if t > MAX_LATENCY_DOWN]
    assert not slow, f"requests waited on the dead Redis (index, seconds): {slow}"
    assert [r.status for r, _ in outcomes] == [200] * (limit + 3), \
        f"on_unavailable=allow (limit {limit}/min) with Redis down: {summary([r for r, _ in outcomes])}"
    st = status_state(gw)
    assert st.get("healthy") is False and st.get("incidents") == 1 and st.get("on_unavailable") == "allow", st

    private_redis.start()                       # empty: nothing of before the outage
    st = wait_state(gw, lambda s: s.get("healthy") is True, timeout=10)
    assert st.get("healthy") is True, f"/status state 10 s after Redis came back: {st}"
    n, infos = rpm_in_redis(private_redis, prefix)
    assert n == 0, "requests made while Redis was down were counted in it afterwards:\n" + describe_keys(infos)
    statuses = [invoke(gw).status for _ in range(limit + 1)]
    assert statuses == [200] * limit + [429], f"the limit of {limit}/min after Redis came back: {statuses}"
    n, infos = wait_rpm(private_redis, prefix, limit)
    assert n == limit, describe_keys(infos)
    assert incidents_metric(gw) == 1
    assert_private_keys(private_redis, prefix)


# ------------------------------------------------------------------------------------------------
# 5. Application inference profiles and unknown models cannot spend past a budget
# ------------------------------------------------------------------------------------------------

# Claude Sonnet 4.5's list prices (USD per million tokens), built into the gateway's catalog:
# the ARN is listed in `[[models]]` as that model.
SONNET_PRICE = {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}
UNLISTED_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/zzz999"
UNKNOWN_MODEL = "us.acme.mystery-model-v1:0"


def test_an_application_profile_arn_is_priced_through_the_catalog_and_unknown_models_are_refused(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    rule = "arn-budget"
    budget_usd = 0.02
    cfg = (state_section("redis://127.0.0.1:6379", redis_prefix)
           + model_section("claude-sonnet-4-5", bedrock=APP_PROFILE_ARN)
           # No price of the plugin's own names it: only the catalog can price the ARN.
           + rate_limit_plugin([{"name": rule, "per": "global", "budget_usd": budget_usd}],
                               prices={"*haiku*": BUDGET_PRICE}))
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    cost = mock_cost(SONNET_PRICE)              # ~6,481 micro-USD per answered request

    # Models nothing can price are refused before they reach the upstream, naming the model.
    for model in (UNLISTED_ARN, UNKNOWN_MODEL):
        r = invoke(gw, model)
        assert r.status == 403 and r.errortype == "AccessDeniedException", \
            f"{model}: expected 403 AccessDeniedException, got {r.status} {r.errortype}: {r.body[:500]!r}"
        assert model in error_message(r), f"the refusal does not name {model}: {error_message(r)}"
    assert not [c for c in model_calls(mock_bedrock) if c.model_id in (UNLISTED_ARN, UNKNOWN_MODEL)], \
        mock_bedrock.describe()
    spent, infos = settled_spend(machine_redis, redis_prefix, rule)
    assert spent == 0, "refused requests were charged:\n" + describe_keys(infos)

    # The ARN is Sonnet 4.5: answered and charged at Sonnet's prices until the budget is spent.
    statuses = []
    spends = []
    for _ in range(10):
        r = invoke(gw, APP_PROFILE_ARN)
        statuses.append(r.status)
        if r.status != 200:
            break
        deadline = time.time() + 5
        while True:
            spent, infos = settled_spend(machine_redis, redis_prefix, rule)
            if spent >= (len(spends) + 1) * cost - len(spends) - 1 or time.time() > deadline:
                break
            time.sleep(0.05)
        spends.append(spent)
    assert statuses[0] == 200, f"the profile ARN was refused: {statuses} {r.status} {error_message(r)}"
    assert statuses[-1] == 429, f"10 requests at ~${cost / 1e6:.4f} each passed a ${budget_usd} budget: {statuses}"
    assert r.errortype == "ThrottlingException" and "budget" in error_message(r).lower(), error_message(r)
    assert abs(spends[0] - cost) <= 1, \
        f"the ARN's first request was charged {spends[0]} micro-USD, Sonnet 4.5's price gives {cost:.2f}"
    final, infos = settled_spend(machine_redis, redis_prefix, rule)
    assert final <= budget_usd * 1e6 + cost + 1, f"spent {final} micro-USD of a {budget_usd * 1e6:.0f} budget " \
        f"(one request costs {cost:.0f}); statuses {statuses}\n" + describe_keys(infos)
    calls = [c for c in model_calls(mock_bedrock) if c.model_id == APP_PROFILE_ARN]
    assert len(calls) == statuses.count(200) and all(c.sig_ok for c in calls), mock_bedrock.describe()
    assert_keys_expire(machine_redis, redis_prefix)


def test_default_price_admits_and_charges_a_model_no_price_names(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    rule = "default-priced"
    cfg = state_section("redis://127.0.0.1:6379", redis_prefix) + rate_limit_plugin(
        [{"name": rule, "per": "global", "budget_usd": 5.0}],
        prices={"*sonnet*": SONNET_PRICE}, default_price=BUDGET_PRICE)
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    r = invoke(gw, UNKNOWN_MODEL, max_tokens=BUDGET_MAX_TOKENS)
    assert r.status == 200, (r.status, r.body)
    cost = mock_cost(BUDGET_PRICE)
    deadline = time.time() + 5
    while True:
        spent, infos = settled_spend(machine_redis, redis_prefix, rule)
        if spent or time.time() > deadline:
            break
        time.sleep(0.05)
    assert abs(spent - cost) <= 1, f"charged {spent} micro-USD at default_price, expected {cost:.2f}\n" + describe_keys(infos)
    assert_keys_expire(machine_redis, redis_prefix)


# ------------------------------------------------------------------------------------------------
# 6. A stream the client aborts is billed for what it saw
# ------------------------------------------------------------------------------------------------

# Output tokens are expensive (1,000 micro-USD each), everything else nearly free: what the
# aborted stream is billed shows how many output tokens it was charged.
ABORT_PRICE = {"input": 0.001, "output": 1000.0, "cache_read": 0.001, "cache_write": 0.001}


def test_a_stream_aborted_after_6_deltas_is_billed_at_least_their_tokens(
        machine_redis, redis_prefix, start_gateway, mock_bedrock):
    rule = "abort-budget"
    cfg = state_section("redis://127.0.0.1:6379", redis_prefix) + rate_limit_plugin(
        [{"name": rule, "per": "global", "budget_usd": 10.0}],
        prices={"*abort-test*": ABORT_PRICE}, default_price=ABORT_PRICE)
    gw = serving(start_gateway(mock_bedrock, extra=cfg))
    model = "us.anthropic.claude-abort-test-mock-slow-stream-40-v1:0"    # "tickN " deltas, 0.2 s apart
    rid = str(uuid.uuid4())

    sock, resp = open_stream(gw, model, rid=rid)
    try:
        assert resp.status == 200, (resp.status, resp.read())
        events = stream_events(resp, stop_after_deltas=6)
    finally:
        close_socket(sock)
    deltas = [e for e in events if e.get("type") == "content_block_delta"]
    assert len(deltas) == 6 and events[0]["type"] == "message_start", events
    delta_tokens = sum(max(1, len(e["delta"]["text"].encode()) // 4) for e in deltas)

    rec = mock_bedrock.wait_for(lambda rs: [r for r in rs if r.peer_closed_at], timeout=10)
    assert rec, "the gateway did not drop the upstream stream after its client left"
    entry = wait_request_logs(gw, lambda e: e.get("request_id") == rid, timeout=10)
    assert entry, f"no request log line for {rid}"
    line = entry[0]
    assert line.get("outcome") == "client_aborted", line["_line"]
    assert line.get("output_estimated") == "true", line["_line"]
    assert int(line.get("output_tokens", 0)) >= delta_tokens, \
        f"the aborted stream's log line has output_tokens={line.get('output_tokens')}, the client saw " \
        f"{len(deltas)} deltas ({delta_tokens} tokens): {line['_line']}"

    floor = delta_tokens * ABORT_PRICE["output"]
    deadline = time.time() + 10
    while True:
        spent, infos = settled_spend(machine_redis, redis_prefix, rule)
        if spent >= floor or time.time() > deadline:
            break
        time.sleep(0.1)
    assert spent >= floor, (f"the aborted stream was billed {spent} micro-USD; its {delta_tokens} output tokens "
                            f"alone cost {floor:.0f}\nlog line: {line['_line']}\n" + describe_keys(infos))
    worst = micro_usd(ABORT_PRICE, input=len(body_bytes(64)), output=64)
    assert spent <= worst + 100, f"the aborted stream was billed {spent} micro-USD, more than its reservation {worst:.0f}"
    assert_keys_expire(machine_redis, redis_prefix)
