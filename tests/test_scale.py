"""2,000 concurrent streams through the four stock plugins (audit-log, auth, model-rewrite,
rate-limit) of one gateway, against a pacing mock Bedrock (``mock_pacing.py``: the same SigV4
and body checks as ``mock_bedrock.py``, one event a second).

Every stream must end with a 200, all its frames (CRC-checked, the text as sent) and
``message_stop``; all 2,000 must be open at once; a non-streaming request made while they are
must answer in normal time; and every request must have exactly one audit record. Every plugin
runs with ``on_error = "deny"``, so a plugin that fails (no instance to run on, say) fails its
request, which this test counts.

The pacing mock is checked first on its own (strict like the other mocks, and paced).

The client is asyncio with raw HTTP/1.1 (one connection per stream), the mock a process of its
own. The gateway is started before this process raises its own open-file limit, so it holds its
4,000 sockets with whatever limit it sets itself.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import resource
import subprocess
import sys
import time
import types
import urllib.request

import botocore.exceptions
import pytest

import mock_bedrock as mb
from mock_pacing import delta_text
from support import (GW_CREDENTIAL, SONNET, SONNET_WIRE, TESTS, anthropic_body, boto_client, raw_request,
                     stream_text)
from test_stock_plugins import audit_records, check_one_record_per_request, stock_pipeline

STREAMS = 2000
DELTAS = 6          # paced text deltas per stream, one a second: a stream lasts ~6 s
INTERVAL = 1.0
RAMP = 2.0          # seconds over which the connections are opened
FRAMES = DELTAS + 5  # message_start, content_block_start, deltas, content_block_stop, message_delta, message_stop
STREAM_TIMEOUT = 30.0   # connect to last byte, per stream
RUN_TIMEOUT = 45.0      # every stream together
PROBE_LIMIT = 1.0       # the plain request during the plateau


def scale_pipeline(audit_path) -> str:
    """The stock pipeline of test_stock_plugins, with every plugin failing closed and a
    concurrent-streams limit the 2,000 streams stay under (so rate-limit counts them all)."""
    text = stock_pipeline(audit_path)
    assert text.count('on_error = "allow"') == 1, "stock_pipeline changed: update scale_pipeline"
    text = text.replace('on_error = "allow"', 'on_error = "deny"')
    # Appended after rate-limit's tables, so it is one more of rate-limit's rules.
    return text + f"""
[[plugins.config.rules]]
match = {{ team = "research" }}
per = "team"
max_concurrent_streams = {STREAMS * 2}
requests_per_minute = {STREAMS * 10}
"""


@pytest.fixture
def make_pacing_mock(tmp_path):
    """``make(deltas, interval)`` starts ``mock_pacing.py`` as a process of its own (stopped at
    teardown) and returns it: ``url``, ``stats()``, ``log()`` (its stderr)."""
    procs = []

    def make(deltas: int = DELTAS, interval: float = INTERVAL):
        log_path = tmp_path / f"mock_pacing{len(procs)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, str(TESTS / "mock_pacing.py"), "--port", "0",
                                     "--deltas", str(deltas), "--interval", str(interval)],
                                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                    text=True, cwd=TESTS)
        procs.append(proc)
        line = proc.stdout.readline()  # its only line: the address, once it listens
        if "listening on" not in line:
            proc.kill()
            pytest.fail(f"mock_pacing.py did not start: {line}{log_path.read_text()}", pytrace=False)
        url = line.split("listening on ", 1)[1].split()[0]

        def stats() -> dict:
            with urllib.request.urlopen(url + "/_mock/stats", timeout=5) as r:
                return json.loads(r.read())

        return types.SimpleNamespace(url=url, stats=stats, proc=proc,
                                     log=lambda: log_path.read_text(errors="replace")[-4000:])

    yield make
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_pacing_mock_checks_what_bedrock_checks_and_paces_its_deltas(make_pacing_mock):
    mock = make_pacing_mock(deltas=3, interval=0.3)
    client = boto_client("bedrock-runtime", mock.url, access_key=mb.TEST_ACCESS_KEY, secret_key=mb.TEST_SECRET_KEY)
    t0 = time.monotonic()
    r = client.invoke_model_with_response_stream(modelId=SONNET, body=json.dumps(anthropic_body()))
    assert stream_text(r["body"]) == "tick0 tick1 tick2 "
    assert 0.85 < time.monotonic() - t0 < 3, "three deltas, one every 0.3 s"
    usage = json.loads(client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))["body"].read())["usage"]
    assert usage["input_tokens"] == mb.USAGE_INPUT and usage["cache_read_input_tokens"] == mb.USAGE_CACHE_READ

    wrong = boto_client("bedrock-runtime", mock.url, access_key=mb.TEST_ACCESS_KEY, secret_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        wrong.invoke_model_with_response_stream(modelId=SONNET, body=json.dumps(anthropic_body()))
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body(stream=True)))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    stats = mock.stats()
    assert (stats["sig_ok"], stats["rejected"], stats["streams_completed"], stats["invokes"]) == (3, 2, 1, 1), stats


class Run:
    """What the streams saw, shared by their tasks (one event loop, no locks)."""

    def __init__(self):
        self.open = 0
        self.max_open = 0
        self.answered = 0           # streams with a response head, or a failure before one
        self.all_answered = asyncio.Event()
        self.ok = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.open_at_probe = None
        self.probe = None           # (status, seconds, body)


def stream_request(port: int, i: int) -> bytes:
    body = json.dumps(anthropic_body(f"stream {i}")).encode()
    head = (f"POST /bedrock/model/{SONNET_WIRE}/invoke-with-response-stream HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {GW_CREDENTIAL}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/vnd.amazon.eventstream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_head(reader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_chunked(reader):
    """Yields the data of each HTTP chunk until the last one."""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            return
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("bad chunk framing")
        yield data


async def one_stream(run: Run, port: int, i: int) -> None:
    answered = False

    def answer():
        nonlocal answered
        if not answered:
            answered = True
            run.answered += 1
            if run.answered == STREAMS:
                run.all_answered.set()

    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        writer.write(stream_request(port, i))
        await writer.drain()
        status, headers = await read_head(reader)
        if status != 200:
            n = int(headers.get("content-length") or 0)
            body = await reader.readexactly(n) if n else b""
            raise AssertionError(f"status {status} {headers.get('x-amzn-errortype', '')}: "
                                 f"{body[:200].decode(errors='replace')}")
        run.open += 1
        run.max_open = max(run.max_open, run.open)
        answer()
        try:
            buf, events, text = b"", [], []
            async for data in read_chunked(reader):
                frames, buf = mb.decode_frames(buf + data)  # checks both CRCs
                for headers_, payload in frames:
                    if headers_.get(":message-type") != "event" or headers_.get(":event-type") != "chunk":
                        raise AssertionError(f"not a chunk event: {headers_} {payload[:200]!r}")
                    event = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
                    events.append(event["type"])
                    if event["type"] == "content_block_delta":
                        text.append(event["delta"]["text"])
        finally:
            run.open -= 1
        if buf:
            raise AssertionError(f"{len(buf)} bytes after the last frame")
        if len(events) != FRAMES or events[-1] != "message_stop":
            raise AssertionError(f"{len(events)} events, want {FRAMES} ending in message_stop")
        if "".join(text) != "".join(delta_text(k) for k in range(DELTAS)):
            raise AssertionError(f"text {''.join(text)!r}")
        run.ok += 1
    except Exception as e:  # noqa: BLE001 - every failure is counted by kind
        run.failures[f"{type(e).__name__}: {e}"[:300]] += 1
    finally:
        answer()
        if writer is not None:
            writer.close()


async def probe_at_plateau(run: Run, gw) -> None:
    """Once every stream has its answer's head: one plain InvokeModel, timed."""
    try:
        await asyncio.wait_for(run.all_answered.wait(), timeout=RAMP + 20)
    except asyncio.TimeoutError:
        return
    run.open_at_probe = run.open
    body = json.dumps(anthropic_body("a plain request during the plateau")).encode()

    def call():
        t0 = time.perf_counter()
        r = raw_request(gw.url, "POST", f"/bedrock/model/{SONNET_WIRE}/invoke", body,
                        headers={"Authorization": f"Bearer {GW_CREDENTIAL}"}, timeout=10)
        return r.status, time.perf_counter() - t0, r.body[:300]

    try:
        run.probe = await asyncio.get_running_loop().run_in_executor(None, call)
    except Exception as e:  # noqa: BLE001
        run.probe = (None, None, repr(e).encode())


async def drive(gw) -> Run:
    run = Run()

    async def staggered(i):
        await asyncio.sleep(i * RAMP / STREAMS)
        await asyncio.wait_for(one_stream(run, gw.port, i), timeout=STREAM_TIMEOUT)

    async def guarded(i):
        try:
            await staggered(i)
        except asyncio.TimeoutError:
            run.failures[f"stream timed out after {STREAM_TIMEOUT} s"] += 1

    await asyncio.wait_for(asyncio.gather(probe_at_plateau(run, gw), *(guarded(i) for i in range(STREAMS))),
                           timeout=RUN_TIMEOUT)
    return run


def raise_nofile_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        pytest.skip(f"this process may open {soft} files (hard limit {hard}); the test needs {need}")


def test_2000_concurrent_streams_through_the_stock_plugins_all_complete(start_gateway, make_pacing_mock, tmp_path):
    pacing_mock = make_pacing_mock()
    audit = tmp_path / "audit.log"
    gw = start_gateway(pacing_mock.url, extra=scale_pipeline(audit))
    gw.audit_path = audit
    raise_nofile_limit(STREAMS + 200)   # after the gateway started: it keeps the limit it inherited

    t0 = time.monotonic()
    run = asyncio.run(drive(gw))
    elapsed = time.monotonic() - t0
    stats = pacing_mock.stats()
    summary = (f"{run.ok} of {STREAMS} streams complete in {elapsed:.1f} s, at most {run.max_open} open at "
               f"once, {run.open_at_probe} at the plateau; plain request then: {run.probe and run.probe[:2]}; "
               f"failures: {dict(run.failures.most_common(5))}; mock: {stats}; mock log: {pacing_mock.log()!r}")
    print(summary)

    assert run.ok == STREAMS and not run.failures, summary
    assert run.open_at_probe == STREAMS, f"not every stream was open at once ({run.open_at_probe} at the plateau); {summary}"
    status, seconds, body = run.probe
    assert status == 200, f"the plain request during the plateau got {status}: {body!r}"
    assert seconds < PROBE_LIMIT, f"the plain request during the plateau took {seconds:.2f} s"

    # The mock: every call signed by the gateway, valid, no client credential, every stream whole.
    assert stats["model_calls"] == STREAMS + 1 and stats["sig_ok"] == STREAMS + 1, stats
    assert stats["rejected"] == 0 and stats["leaks"] == 0, stats
    assert stats["streams_completed"] == STREAMS and stats["max_open_streams"] == STREAMS, stats

    # One audit record per request, with the mock's token counts (checked by the helper).
    records = audit_records(gw, expect_at_least=STREAMS + 1, timeout=30)
    check_one_record_per_request(gw, records)
    streamed = [r for r in records if r["operation"] == "stream"]
    assert len(streamed) == STREAMS, f"{len(streamed)} stream records of {len(records)}"
    assert all(r["status"] == 200 and r["outcome"] == "ok" and r["principal"] == "dev" for r in streamed), \
        collections.Counter((r["status"], r["outcome"]) for r in streamed)
    assert [r["operation"] for r in records if r["operation"] != "stream"] == ["invoke"]
