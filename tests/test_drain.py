"""Graceful stop and binary upgrade with streams in flight.

On SIGTERM (or SIGINT) the gateway drains: ``/readyz`` answers 503 ``{"draining": true}`` at once,
the data listener stops taking connections, every request in flight (streams included) runs to
its end within ``server.grace_period``, and the process exits by itself (code 0), its audit
records written. Streams still open at the deadline are ended then, each with its request log
line (``outcome=gateway_stopped``) and its audit record. A second SIGTERM stops it at once.
The old process of a binary upgrade drains the same way after it handed over its listeners.

Streams are the mock's ``mock-slow-stream-N`` (N text deltas at the mock's pace), read by boto3
through the stock plugin pipeline with an audit file, like ``test_stock_plugins``."""
from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

import mock_bedrock as mb
from support import (GW_CREDENTIAL, SONNET, anthropic_body, boto_client, minimal_env, request_log_entries,
                     wait_request_logs)
from test_stock_plugins import audit_records, check_one_record_per_request, stock_pipeline

BODY = json.dumps(anthropic_body())


def slow_model(deltas: int) -> str:
    """A model ID the mock answers with ``deltas`` text deltas ("tick0 ", "tick1 ", ...) at its pace."""
    return f"us.anthropic.mock-slow-stream-{deltas}-v1:0"


def ticks(n: int) -> str:
    return "".join(f"tick{i} " for i in range(n))


# Request IDs given to the gateway are UUIDs: the audit helpers of test_stock_plugins find a
# request's ID in the log by that shape.


def keyed_client(base: str, request_id: str | None = None):
    """boto3 ``bedrock-runtime`` holding the gateway key (``x-api-key``); every request it sends
    carries ``request_id`` as ``x-request-id`` when given."""
    client = boto_client("bedrock-runtime", base, read_timeout=60)

    def add(request, **_):
        request.headers["x-api-key"] = GW_CREDENTIAL
        if request_id:
            request.headers["x-request-id"] = request_id
    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


class StreamReader(threading.Thread):
    """Reads one ``invoke_model_with_response_stream`` answer in the background, noting when its
    first event came and when it ended (normally or with an error)."""

    def __init__(self, base: str, model: str, request_id: str):
        super().__init__(daemon=True)
        self.client = keyed_client(base, request_id)
        self.model, self.request_id = model, request_id
        self.started = threading.Event()
        self.first_at: float | None = None
        self.ended_at: float | None = None
        self.events: list[dict] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            resp = self.client.invoke_model_with_response_stream(modelId=self.model, body=BODY)
            for ev in resp["body"]:
                if "chunk" in ev:
                    self.events.append(json.loads(ev["chunk"]["bytes"]))
                    if self.first_at is None:
                        self.first_at = time.monotonic()
                        self.started.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.ended_at = time.monotonic()
            self.started.set()

    @property
    def text(self) -> str:
        return "".join(e["delta"]["text"] for e in self.events
                       if e.get("type") == "content_block_delta" and e["delta"].get("type") == "text_delta")

    @property
    def types(self) -> list[str]:
        return [e.get("type") for e in self.events]

    def wait_started(self, timeout: float = 15.0) -> None:
        assert self.started.wait(timeout), "the stream did not start"
        assert self.error is None and self.first_at is not None, f"the stream failed before it started: {self.error!r}"


class ReadyzPoller(threading.Thread):
    """Polls the admin port's ``/readyz`` every 50 ms until stopped or the process is gone, keeping
    (time, status, body) of every answer (status 0: no answer)."""

    def __init__(self, admin: str, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.url, self.proc = admin + "/readyz", proc
        self.seen: list[tuple[float, int, str]] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set() and self.proc.poll() is None:
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    self.seen.append((t, r.status, r.read().decode(errors="replace")))
            except urllib.error.HTTPError as e:
                self.seen.append((t, e.code, e.read().decode(errors="replace")))
            except OSError as e:
                self.seen.append((t, 0, repr(e)))
            self.done.wait(0.05)

    def first_503_after(self, since: float, timeout: float = 3.0) -> tuple[float, int, str] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in list(self.seen):
                if s[0] >= since and s[1] == 503:
                    return s
            time.sleep(0.02)
        return None

    def summary(self, since: float) -> str:
        """How /readyz answered since ``since`` (status 0: no answer), and its last answer."""
        seen = [s for s in self.seen if s[0] >= since]
        counts = collections.Counter(status for _, status, _ in seen)
        return f"statuses {dict(counts)}; last: {seen[-1][1:] if seen else None}"

    def stop(self):
        self.done.set()
        self.join(timeout=5)


class ExitWatcher(threading.Thread):
    """Notes when a process exits."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc = proc
        self.exited_at: float | None = None

    def run(self):
        self.proc.wait()
        self.exited_at = time.monotonic()

    def wait(self, timeout: float) -> float | None:
        self.join(timeout)
        return self.exited_at


def new_connection_outcome(port: int, wait: float = 3.0) -> str:
    """Opens a new connection to ``port`` and sends a request on it: ``"refused"`` (connect failed),
    ``"closed"`` (EOF or reset without any answer), ``"answered: ..."`` or ``"no answer"`` (the
    connection sat in a backlog nobody serves)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"refused ({e!r})"
    try:
        s.settimeout(wait)
        try:
            s.sendall(b"POST /bedrock/model/%s/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (SONNET.encode(), len(BODY), BODY.encode()))
        except OSError:
            return "closed"
        try:
            data = s.recv(4096)
        except socket.timeout:
            return "no answer"
        except OSError:
            return "closed"
        return "closed" if not data else "answered: " + data[:80].decode(errors="replace")
    finally:
        s.close()


def stock_gateway(start_gateway, mock, tmp_path, **kw):
    audit = tmp_path / "audit.log"
    gw = start_gateway(mock, extra=stock_pipeline(audit), **kw)
    gw.audit_path = audit
    return gw


def log_entry(log_text: str, request_id: str) -> dict | None:
    found = [e for e in request_log_entries(log_text) if e.get("request_id") == request_id]
    assert len(found) <= 1, f"more than one log line for {request_id}: {found}"
    return found[0] if found else None


def records_of(gw, request_id: str, at_least: int = 0, timeout: float = 10.0) -> list[dict]:
    """The audit records of one request (waiting up to ``timeout`` for ``at_least`` of them)."""
    deadline = time.time() + timeout
    while True:
        mine = [r for r in audit_records(gw, timeout=1.0) if r["request_id"] == request_id]
        if len(mine) >= at_least or time.time() > deadline:
            return mine
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# SIGTERM / SIGINT: drain
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_lets_a_stream_in_flight_finish_then_the_process_exits(start_gateway, mock_bedrock,
                                                                             tmp_path, sig):
    mock_bedrock.slow_stream_interval = 0.5          # 10 deltas: a stream of about 5 s
    gw = stock_gateway(start_gateway, mock_bedrock, tmp_path)   # grace_period: the default 30 s
    rid = str(uuid.uuid4())
    stream = StreamReader(gw.base, slow_model(10), rid)
    stream.start()
    stream.wait_started()
    poller = ReadyzPoller(gw.admin, gw.proc)
    poller.start()
    exits = ExitWatcher(gw.proc)
    exits.start()
    time.sleep(max(0.0, stream.first_at + 1.0 - time.monotonic()))   # one second into the stream

    signalled = time.monotonic()
    gw.proc.send_signal(sig)
    first = poller.first_503_after(signalled, timeout=3)
    assert first is not None, \
        f"/readyz did not answer 503 after {sig.name}: {poller.summary(signalled)}"
    assert first[0] - signalled < 1.0, f"/readyz answered 503 only {first[0] - signalled:.2f}s after {sig.name}"
    assert json.loads(first[2]).get("draining") is True, first[2]

    still_streaming = stream.ended_at is None
    outcome = new_connection_outcome(gw.port)
    assert outcome.startswith(("refused", "closed")), \
        f"a new connection to the data port during the drain was not refused: {outcome}"
    assert still_streaming, "the stream ended before the new connection was tried (test too slow)"

    stream.join(timeout=30)
    assert not stream.is_alive(), "the stream did not end"
    assert stream.error is None, f"the stream in flight was cut by the drain: {stream.error!r}"
    assert stream.text == ticks(10), stream.text
    assert stream.types[0] == "message_start" and stream.types[-1] == "message_stop", stream.types

    exited = exits.wait(timeout=15)
    poller.stop()
    assert exited is not None, "the gateway did not exit after its last stream ended"
    assert gw.proc.returncode == 0, f"exit code {gw.proc.returncode}"
    assert exited >= stream.ended_at - 0.2, "the process exited before the stream in flight ended"
    assert exited - stream.ended_at < 2.5, \
        f"the process exited {exited - stream.ended_at:.1f}s after its last stream ended (grace_period is 30 s)"
    after = [s for s in poller.seen if s[0] >= first[0]]
    assert all(status in (503, 0) for _, status, _ in after), \
        f"/readyz went back to ready during the drain: {[s[1] for s in after]}"

    entry = log_entry(gw.log(), rid)
    assert entry, f"no request log line for {rid}"
    assert (entry["status"], entry["outcome"]) == ("200", "ok"), entry["_line"]
    records = audit_records(gw)
    check_one_record_per_request(gw, records)
    mine = [r for r in records if r["request_id"] == rid]
    assert len(mine) == 1 and mine[0]["status"] == 200 and mine[0]["outcome"] == "ok", mine
    assert mine[0]["output_tokens"] == mb.USAGE_OUTPUT, mine
    assert mock_bedrock.snapshot()[-1].stream_completed


def test_streams_still_open_at_the_end_of_the_grace_period_are_ended_and_recorded(start_gateway, mock_bedrock,
                                                                                  tmp_path):
    # 50 deltas at 200 ms: a stream of about 10 s, against a grace period of 2 s.
    gw = stock_gateway(start_gateway, mock_bedrock, tmp_path, extra_server='grace_period = "2s"')
    rid = str(uuid.uuid4())
    stream = StreamReader(gw.base, slow_model(50), rid)
    stream.start()
    stream.wait_started()
    exits = ExitWatcher(gw.proc)
    exits.start()
    time.sleep(max(0.0, stream.first_at + 1.0 - time.monotonic()))

    signalled = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    exited = exits.wait(timeout=15)
    assert exited is not None, "the gateway did not exit within 15 s of SIGTERM with grace_period = 2s"
    took = exited - signalled
    assert took >= 1.5, f"the gateway exited {took:.2f}s after SIGTERM: it did not let the stream run for the grace period"
    assert took < 5.0, f"the gateway exited {took:.2f}s after SIGTERM with grace_period = 2s"
    assert gw.proc.returncode == 0, f"exit code {gw.proc.returncode}"

    stream.join(timeout=10)
    assert not stream.is_alive(), "the client was left hanging after the gateway exited"
    assert 0 < stream.text.count("tick") < 50, "the stream should have been ended part-way"

    entry = log_entry(gw.log(), rid)
    assert entry, f"no request log line for the stream ended at the deadline ({rid})"
    assert entry["outcome"] == "gateway_stopped", entry["_line"]
    mine = records_of(gw, rid)
    assert len(mine) == 1, f"the stream ended at the deadline has {len(mine)} audit records"
    assert mine[0]["status"] == 200, mine


def test_a_second_sigterm_during_the_drain_stops_at_once(start_gateway, mock_bedrock, tmp_path):
    # 150 deltas at 200 ms: a stream of about 30 s; grace_period 30 s.
    gw = stock_gateway(start_gateway, mock_bedrock, tmp_path)
    stream = StreamReader(gw.base, slow_model(150), str(uuid.uuid4()))
    stream.start()
    stream.wait_started()
    exits = ExitWatcher(gw.proc)
    exits.start()
    time.sleep(max(0.0, stream.first_at + 1.0 - time.monotonic()))

    gw.proc.send_signal(signal.SIGTERM)
    # Draining: the process stays and the stream keeps flowing.
    flowing = len(stream.events)
    time.sleep(1.0)
    assert gw.proc.poll() is None, "the gateway exited on the first SIGTERM with a stream in flight"
    assert stream.ended_at is None, f"the stream ended on the first SIGTERM: {stream.error!r}"
    assert len(stream.events) > flowing, "the stream stopped flowing on the first SIGTERM"

    second = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    exited = exits.wait(timeout=10)
    assert exited is not None, "the gateway was still running 10 s after a second SIGTERM"
    assert exited - second < 1.5, f"the gateway took {exited - second:.2f}s to stop after a second SIGTERM"
    stream.join(timeout=10)
    assert not stream.is_alive(), "the client was left hanging after the gateway stopped"


# ------------------------------------------------------------------------------------------------
# Binary upgrade: the old process drains like on SIGTERM
# ------------------------------------------------------------------------------------------------

def test_the_old_process_of_a_binary_upgrade_finishes_its_streams_then_exits(start_gateway, mock_bedrock,
                                                                            tmp_path, gateway_bin):
    mock_bedrock.slow_stream_interval = 0.5          # 20 deltas: a stream of about 10 s
    sock = tmp_path / "upgrade.sock"
    old = stock_gateway(start_gateway, mock_bedrock, tmp_path, extra_server=f'upgrade_sock = "{sock}"')
    rid = str(uuid.uuid4())
    stream = StreamReader(old.base, slow_model(20), rid)
    stream.start()
    stream.wait_started()
    old_exit = ExitWatcher(old.proc)
    old_exit.start()

    home = tmp_path / "new-home"
    home.mkdir()
    new_log_path = tmp_path / "new.log"
    new_log = open(new_log_path, "wb")
    env = minimal_env(home, RUST_BACKTRACE="1", AWS_REGION="us-east-1",
                      AWS_ACCESS_KEY_ID=mb.TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=mb.TEST_SECRET_KEY)
    new = subprocess.Popen([str(gateway_bin), "run", "--config", str(old.config_path), "--upgrade"], env=env,
                           cwd=tmp_path, stdout=new_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    new_log.close()
    new_gw = LogFile(new_log_path)
    try:
        time.sleep(1.0)  # the new process waits on the upgrade socket
        assert new.poll() is None, f"the new process exited: {new_gw.log()[-3000:]}"
        assert stream.ended_at is None, "the stream ended before the handover (test too slow)"
        # As in test_reload's upgrade test (and the README): the old process hands its listeners
        # over on SIGQUIT.
        quit_at = time.monotonic()
        old.proc.send_signal(signal.SIGQUIT)

        # Requests on new connections all along the old process's drain: every one is answered.
        # Pingora's old process keeps accepting for 5 s after it sent the listeners (both accept
        # then); past that every new connection is the new process's.
        made: list[tuple[float, str]] = []
        while stream.ended_at is None and time.monotonic() - quit_at < 20:
            r = str(uuid.uuid4())
            made.append((time.monotonic() - quit_at, r))
            out = json.loads(keyed_client(old.base, r).invoke_model(modelId=SONNET, body=BODY)["body"].read())
            assert out["content"][0]["text"] == mb.DEFAULT_ANSWER
            time.sleep(0.5)

        stream.join(timeout=30)
        assert not stream.is_alive(), "the stream on the old process did not end"
        assert stream.error is None, f"the old process cut its stream in flight: {stream.error!r}"
        assert stream.text == ticks(20), stream.text
        exited = old_exit.wait(timeout=20)
        assert exited is not None, "the old process did not exit after its stream ended"
        assert exited >= stream.ended_at - 0.2, "the old process exited before its stream ended"
        assert exited - stream.ended_at < 3.0, \
            f"the old process exited {exited - stream.ended_at:.1f}s after its last stream ended"
        assert old.proc.returncode == 0, f"the old process exited with {old.proc.returncode}"
        assert new.poll() is None, "the new process stopped"

        old_entry = log_entry(old.log(), rid)
        assert old_entry and (old_entry["status"], old_entry["outcome"]) == ("200", "ok"), old_entry
        mine = records_of(old, rid)
        assert len(mine) == 1 and mine[0]["outcome"] == "ok", mine

        late = [r for t, r in made if t >= 6.0]
        assert len(late) >= 2, f"too few requests after the handover to judge ({made})"
        served_by_new = {e["request_id"] for e in wait_request_logs(new_gw, lambda e: e.get("request_id") in late,
                                                                    count=len(late))}
        assert served_by_new == set(late), \
            f"requests made after the handover not served by the new process: {set(late) - served_by_new}"
        for _, r in made:
            assert len(records_of(old, r, at_least=1)) == 1, f"request {r} has no single audit record"
    finally:
        if new.poll() is None:
            new.terminate()
            try:
                new.wait(timeout=15)
            except subprocess.TimeoutExpired:
                new.kill()
                new.wait(timeout=5)


class LogFile:
    """A log file read the way ``wait_request_logs`` reads a gateway's (``log``, ``wait_log``)."""

    def __init__(self, path):
        self.path = path

    def log(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pred, timeout: float = 5.0):
        deadline = time.time() + timeout
        while True:
            v = pred(self.log())
            if v or time.time() > deadline:
                return v
            time.sleep(0.05)
