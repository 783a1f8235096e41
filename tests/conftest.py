"""Fixtures for the gateway's end-to-end tests.

* ``mock_bedrock``: a fresh mock Amazon Bedrock (SigV4 with the gateway's test key pair);
  ``make_mock(**kw)`` makes more. ``mock_vertex`` / ``make_vertex(**kw)``: a mock Vertex AI with its
  OAuth token endpoint; ``mock_anthropic`` / ``make_anthropic(**kw)``: a mock Anthropic API.
  Each is stopped at teardown and its request list is attached to a failing test's report.
* ``start_gateway``: a factory that writes a config into tmp_path, starts
  ``target/debug/gateway run --config ...`` on free ports, waits for ``/readyz`` and stops it
  with SIGTERM at teardown.  The gateway's stderr goes to a log file that is attached to the
  report of a failing test (so is the mock's request list).
* ``gateway``: one gateway in front of ``mock_bedrock`` with the default settings.

The binary is built (``cargo build -p gateway``) once per run, before the first test, when it is
missing or older than its sources.  ``GATEWAY_BIN=/path`` uses a given binary and never builds;
``GATEWAY_NO_BUILD=1`` never builds either (a missing binary then fails the gateway tests).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from mock_anthropic import MockAnthropic
from mock_bedrock import TEST_ACCESS_KEY, TEST_SECRET_KEY, MockBedrock
from mock_vertex import MockVertex
from support import ROOT, free_port, gateway_config, minimal_env, mock_backend, scrub_process_env

scrub_process_env()

GATEWAY_BIN = Path(os.environ.get("GATEWAY_BIN") or ROOT / "target" / "debug" / "gateway")
_SOURCE_DIRS = ("gateway", "plugin-sdk")
_SOURCE_FILES = ("Cargo.toml", "Cargo.lock")

_build_state: dict[str, object] = {"checked": False, "error": None}


# ------------------------------------------------------------------------------------------------
# Building the gateway (outside the per-test timeout)
# ------------------------------------------------------------------------------------------------

def _newest_source_mtime() -> float:
    newest = 0.0
    for f in _SOURCE_FILES:
        p = ROOT / f
        if p.exists():
            newest = max(newest, p.stat().st_mtime)
    for d in _SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(ROOT / d):
            dirnames[:] = [x for x in dirnames if x != "target"]
            for fn in filenames:
                newest = max(newest, os.stat(os.path.join(dirpath, fn)).st_mtime)
    return newest


def _ensure_gateway_built() -> None:
    if _build_state["checked"]:
        return
    _build_state["checked"] = True
    if os.environ.get("GATEWAY_BIN"):
        if not GATEWAY_BIN.exists():
            _build_state["error"] = f"GATEWAY_BIN={GATEWAY_BIN} does not exist"
        return
    stale = not GATEWAY_BIN.exists() or GATEWAY_BIN.stat().st_mtime < _newest_source_mtime()
    if not stale:
        return
    if os.environ.get("GATEWAY_NO_BUILD"):
        if not GATEWAY_BIN.exists():
            _build_state["error"] = f"{GATEWAY_BIN} is missing and GATEWAY_NO_BUILD is set"
        return
    print(f"\n[e2e] building the gateway: cargo build -p gateway (in {ROOT}) ...", flush=True)
    t0 = time.time()
    p = subprocess.run(["cargo", "build", "-p", "gateway"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        _build_state["error"] = ("`cargo build -p gateway` failed (exit %d):\n%s"
                                 % (p.returncode, "\n".join(p.stderr.splitlines()[-80:])))
    elif not GATEWAY_BIN.exists():
        _build_state["error"] = f"`cargo build -p gateway` succeeded but {GATEWAY_BIN} does not exist"
    else:
        print(f"[e2e] gateway built in {time.time() - t0:.0f}s", flush=True)


def pytest_collection_finish(session):
    if any("gateway_bin" in item.fixturenames for item in session.items):
        _ensure_gateway_built()


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    _ensure_gateway_built()
    if _build_state["error"]:
        pytest.fail(str(_build_state["error"]), pytrace=False)
    return GATEWAY_BIN


# ------------------------------------------------------------------------------------------------
# Failure reports: attach the gateway log and the mock's request list
# ------------------------------------------------------------------------------------------------

_REPORTERS = pytest.StashKey[list]()


def _add_reporter(item, title: str, fn: Callable[[], str]) -> None:
    item.stash.setdefault(_REPORTERS, []).append((title, fn))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for title, fn in item.stash.get(_REPORTERS, []):
            try:
                text = fn()
            except Exception as e:  # pragma: no cover
                text = f"(could not collect: {e})"
            rep.sections.append((f"{title} ({rep.when})", text))


# ------------------------------------------------------------------------------------------------
# The mocks
# ------------------------------------------------------------------------------------------------

def _mock_factory(request, cls, title: str):
    """``(make, stop_all)``: ``make(**kw)`` starts a ``cls(**kw)`` whose requests go into the report
    of a failing test; ``stop_all()`` stops every one made."""
    mocks = []

    def make(**kw):
        m = cls(**kw).start()
        mocks.append(m)
        _add_reporter(request.node, f"{title} #{len(mocks)} requests", m.describe)
        return m

    def stop_all():
        for m in mocks:
            m.stop()

    return make, stop_all


@pytest.fixture
def mock_bedrock(request):
    mock = MockBedrock().start()
    _add_reporter(request.node, "mock Bedrock requests", mock.describe)
    yield mock
    mock.stop()


@pytest.fixture
def make_mock(request):
    """Factory for extra mocks (bearer mode, session token, TLS, ...)."""
    make, stop_all = _mock_factory(request, MockBedrock, "mock Bedrock")
    yield make
    stop_all()


@pytest.fixture
def mock_vertex(request):
    mock = MockVertex().start()
    _add_reporter(request.node, "mock Vertex requests", mock.describe)
    yield mock
    mock.stop()


@pytest.fixture
def make_vertex(request):
    """Factory for extra mock Vertex AIs (another project or region, short token lifetime, TLS, ...)."""
    make, stop_all = _mock_factory(request, MockVertex, "mock Vertex")
    yield make
    stop_all()


@pytest.fixture
def mock_anthropic(request):
    mock = MockAnthropic().start()
    _add_reporter(request.node, "mock Anthropic requests", mock.describe)
    yield mock
    mock.stop()


@pytest.fixture
def make_anthropic(request):
    """Factory for extra mock Anthropic APIs (another key, TLS, ...)."""
    make, stop_all = _mock_factory(request, MockAnthropic, "mock Anthropic")
    yield make
    stop_all()


# ------------------------------------------------------------------------------------------------
# The gateway
# ------------------------------------------------------------------------------------------------

@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    admin_port: int
    scheme: str
    config_path: Path
    log_path: Path
    config_text: str
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        """The Bedrock front door: give this to clients as their endpoint / base URL."""
        return self.url + "/bedrock"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pred: Callable[[str], object], timeout: float = 5.0):
        deadline = time.time() + timeout
        while True:
            text = self.log()
            v = pred(text)
            if v or time.time() > deadline:
                return v
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture
def start_gateway(request, tmp_path, gateway_bin):
    """``start_gateway(mock_or_url, **options)`` -> Gateway.  Options: backends=[...] (instead of
    one backend at the mock), backend={extra backend keys}, max_request_body, connect, first_byte,
    idle, tls=(cert, key), env={extra env}, aws_keys=False (no AWS credentials in the env)."""
    started: list[Gateway] = []

    def start(mock: MockBedrock | str | None = None, *, backends: list[dict] | None = None,
              backend: dict | None = None, env: dict | None = None, aws_keys: bool = True,
              wait: bool = True, **cfg) -> Gateway:
        n = len(started)
        if backends is None:
            assert mock is not None, "give a mock (or its URL) or backends=[...]"
            backends = [mock_backend(mock, **(backend or {}))]
        port, admin_port = free_port(), free_port()
        text = gateway_config(port=port, admin_port=admin_port, backends=backends, **cfg)
        cfg_path = tmp_path / f"gateway{n}.toml"
        cfg_path.write_text(text)
        log_path = tmp_path / f"gateway{n}.log"
        home = tmp_path / f"gw-home{n}"
        home.mkdir()
        e = {"RUST_BACKTRACE": "1", "AWS_REGION": "us-east-1"}
        if aws_keys:
            e.update(AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY)
        e.update(env or {})
        logf = open(log_path, "wb")
        proc = subprocess.Popen([str(gateway_bin), "run", "--config", str(cfg_path)], cwd=tmp_path,
                                env=minimal_env(home, **e), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        logf.close()
        gw = Gateway(proc=proc, port=port, admin_port=admin_port, scheme="https" if cfg.get("tls") else "http",
                     config_path=cfg_path, log_path=log_path, config_text=text)
        started.append(gw)
        _add_reporter(request.node, f"gateway #{n} config", lambda gw=gw: gw.config_text)
        _add_reporter(request.node, f"gateway #{n} log", lambda gw=gw: gw.log()[-20000:])
        if wait:
            wait_ready(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


def wait_ready(gw: Gateway, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if gw.proc.poll() is not None:
            pytest.fail(f"gateway exited with {gw.proc.returncode} during start-up\n--- config ---\n"
                        f"{gw.config_text}\n--- log ---\n{gw.log()[-8000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(gw.admin + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
                last = f"status {r.status}"
        except Exception as e:  # noqa: BLE001
            last = repr(e)
        time.sleep(0.1)
    pytest.fail(f"gateway not ready after {timeout}s ({last})\n--- log ---\n{gw.log()[-8000:]}", pytrace=False)


@pytest.fixture
def gateway(start_gateway, mock_bedrock) -> Gateway:
    return start_gateway(mock_bedrock)


@pytest.fixture
def assert_no_leaks(mock_bedrock):
    """Call at the end of a test: no client credential reached the mock."""
    def check(mock: MockBedrock = mock_bedrock):
        leaks = mock.leaked_credentials()
        assert not leaks, f"client credentials reached the upstream: {leaks}"
    return check
