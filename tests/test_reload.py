"""Hot reload under traffic: configuration and plugin swaps while requests stream through."""
from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import botocore.exceptions

import mock_bedrock as mb
from support import GW_CREDENTIAL, SONNET, anthropic_body, boto_client, plugin_path, stream_text
from test_stock_plugins import audit_records, stock_pipeline


def admin(gw, method: str, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(gw.admin + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def keyed_client(base: str, key: str, request_ids: list | None = None):
    client = boto_client("bedrock-runtime", base)

    def add(request, **_):
        request.headers["x-api-key"] = key
        if request_ids is not None:
            rid = str(uuid.uuid4())
            request.headers["x-request-id"] = rid
            request_ids.append(rid)
    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def test_a_config_edit_takes_effect_for_new_requests_within_a_second(start_gateway, mock_bedrock, tmp_path):
    gw = start_gateway(mock_bedrock, extra=stock_pipeline(tmp_path / "audit.log"))
    client = keyed_client(gw.base, GW_CREDENTIAL)
    client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))

    text = gw.config_path.read_text()
    deny_research = '[[plugins.config.rules]]\nmatch = { model = "*", team = "contractors" }'
    assert deny_research in text
    edited = text.replace(deny_research, deny_research.replace("contractors", "research"))
    written = time.monotonic()
    gw.config_path.write_text(edited)
    while True:
        try:
            client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
        except botocore.exceptions.ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            break
        assert time.monotonic() - written < 1.0, "the edit did not take effect within 1 s"
        time.sleep(0.02)
    took = time.monotonic() - written
    assert took < 1.0, took
    status, doc = admin(gw, "GET", "/status")
    assert status == 200 and doc["config"]["generation"] == 2 and doc["last_reload_error"] is None


def test_a_changed_plugin_serves_on_baseline_code_then_switches_to_optimized_code(start_gateway, mock_bedrock, tmp_path):
    gw = start_gateway(mock_bedrock, extra=stock_pipeline(tmp_path / "audit.log"))

    def compilers_once_optimized(generation: int) -> dict:
        deadline = time.monotonic() + 20
        while True:
            _, status = admin(gw, "GET", "/status")
            compilers = {p["name"]: p["compiler"] for p in status["plugins"]}
            if status["config"]["generation"] == generation and set(compilers.values()) == {"cranelift"}:
                return compilers
            assert time.monotonic() < deadline, status
            time.sleep(0.05)

    compilers_once_optimized(1)
    # A plugin file that changed is compiled anew: quickly with Winch for the reload, then in the
    # background with Cranelift, while requests keep being served.
    copy = tmp_path / "model-rewrite-copy.wasm"
    copy.write_bytes(open(plugin_path("model-rewrite"), "rb").read() + custom_section(b"reload-test", b"x"))
    gw.config_path.write_text(gw.config_path.read_text().replace(plugin_path("model-rewrite"), str(copy)))
    client = keyed_client(gw.base, GW_CREDENTIAL)
    deadline = time.monotonic() + 20
    while True:
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
        _, status = admin(gw, "GET", "/status")
        if status["config"]["generation"] >= 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    generation = status["config"]["generation"]
    compilers_once_optimized(generation)
    _, status = admin(gw, "GET", "/status")
    new_hash = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert [p["sha256"] for p in status["plugins"] if p["name"] == "model-rewrite"] == [new_hash]
    assert gw.wait_log(lambda log: any("plugins now run optimized code" in line and f"generation={generation} " in line
                                       for line in log.splitlines())), gw.log()[-3000:]
    client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))


def custom_section(name: bytes, payload: bytes) -> bytes:
    """A WebAssembly custom section (id 0), which a component may carry anywhere after its header."""
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    body = leb(len(name)) + name + payload
    return b"\0" + leb(len(body)) + body


def test_a_bad_config_leaves_the_running_one_and_is_reported(start_gateway, mock_bedrock, tmp_path):
    gw = start_gateway(mock_bedrock, extra=stock_pipeline(tmp_path / "audit.log"))
    good = gw.config_path.read_text()
    client = keyed_client(gw.base, GW_CREDENTIAL)
    for bad, why in [
        (good.replace('name = "auth"', 'name = "auth"\nbogus_key = 1'), "bogus_key"),
        (good.replace(plugin_path("auth"), str(tmp_path / "missing.wasm")), "missing.wasm"),
        (good.replace(plugin_path("auth"), plugin_path("wrongworld")), "does not export"),
        (good.replace(plugin_path("auth"), plugin_path("v2")), "2.0.0"),
        (good.replace(plugin_path("auth"), plugin_path("failinit")), "bad config"),
    ]:
        gw.config_path.write_text(bad)
        status, doc = admin(gw, "POST", "/admin/reload")
        assert status == 422 and why in doc["error"], doc
        assert doc["generation"] == 1
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))  # still served, by generation 1
    status, doc = admin(gw, "GET", "/status")
    assert doc["config"]["generation"] == 1 and "2.0.0" not in json.dumps(doc["plugins"])
    assert doc["last_reload_error"] and "bad config" in doc["last_reload_error"]["error"]
    gw.config_path.write_text(good)
    assert admin(gw, "POST", "/admin/reload")[1]["generation"] == 2


def test_settings_that_need_a_restart_are_reported(start_gateway, mock_bedrock, tmp_path):
    gw = start_gateway(mock_bedrock)
    text = gw.config_path.read_text().replace('idle = "30s"', 'idle = "31s"')
    gw.config_path.write_text(text)
    status, doc = admin(gw, "POST", "/admin/reload")
    assert status == 200 and doc["restart_required"] == ["timeouts"], doc


def test_sighup_reloads(start_gateway, mock_bedrock, tmp_path):
    gw = start_gateway(mock_bedrock)
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while admin(gw, "GET", "/status")[1]["config"]["generation"] < 2:
        assert time.time() < deadline, gw.log()[-3000:]
        time.sleep(0.05)


def test_steady_traffic_survives_twenty_swaps_and_records_the_generation_it_started_on(
        start_gateway, mock_bedrock, tmp_path):
    # Generation A and B differ in a plugin's code (a file swapped under the same path) and in
    # plugin settings; every fifth swap is a bad configuration that must change nothing.
    swapped = tmp_path / "swapped.wasm"
    shutil.copy(plugin_path("noop"), swapped)
    base = stock_pipeline(tmp_path / "audit.log")
    extra_plugin = f'\n[[plugins]]\nname = "swapped"\npath = "{swapped}"\ncpu_limit = "250ms"\n'
    gw = start_gateway(mock_bedrock, extra=base + extra_plugin)
    gw.audit_path = tmp_path / "audit.log"
    config_a = gw.config_text
    config_b = config_a.replace("requests_per_minute = 1", "requests_per_minute = 2")
    config_bad = config_a.replace(str(swapped), str(tmp_path / "nope.wasm"))

    stop = threading.Event()
    errors: list[str] = []
    spans: dict[str, tuple[int, int]] = {}   # request id -> generation before it started, after it ended
    lock = threading.Lock()

    def generation() -> int:
        return admin(gw, "GET", "/status")[1]["config"]["generation"]

    def traffic(kind: str):
        ids: list[str] = []
        client = keyed_client(gw.base, GW_CREDENTIAL, ids)
        while not stop.is_set():
            start = generation()
            try:
                if kind == "invoke":
                    out = json.loads(client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))["body"].read())
                    ok = out["content"][0]["text"] == mb.DEFAULT_ANSWER
                else:
                    resp = client.invoke_model_with_response_stream(modelId=SONNET, body=json.dumps(anthropic_body()))
                    ok = stream_text(resp["body"]) == mb.DEFAULT_ANSWER
                if not ok:
                    errors.append(f"{kind}: wrong answer")
            except Exception as e:  # noqa: BLE001 - any failure is a test failure
                errors.append(f"{kind}: {e!r}")
            with lock:
                spans[ids[-1]] = (start, generation())

    threads = [threading.Thread(target=traffic, args=(k,)) for k in ("invoke", "stream", "stream", "invoke")]
    for t in threads:
        t.start()
    swaps = [(time.monotonic(), 1)]   # (when it took effect, generation)
    try:
        for i in range(24):
            time.sleep(0.15)
            if i % 5 == 4:
                gw.config_path.write_text(config_bad)
                status, doc = admin(gw, "POST", "/admin/reload")
                assert status == 422, doc
                continue
            shutil.copy(plugin_path("probe" if i % 2 else "noop"), swapped)
            gw.config_path.write_text(config_b if i % 2 else config_a)
            before = time.monotonic()
            status, doc = admin(gw, "POST", "/admin/reload")
            assert status == 200, doc
            swaps.append((before, doc["generation"]))
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:10]
    generations = [g for _, g in swaps]
    assert len(generations) >= 21 and generations == sorted(generations), generations

    records = {r["request_id"]: r for r in audit_records(gw, expect_at_least=len(spans))}
    assert set(spans) <= set(records), f"{len(set(spans) - set(records))} requests lack an audit record"
    for rid, (before, after) in spans.items():
        gen = records[rid]["config_generation"]
        # A request runs on the generation in force when it started: never an older one than
        # /status showed before it was sent, never a newer one than /status showed once it
        # was answered (the pipeline is swapped a moment before /status counts it).
        assert before <= gen <= after + 1, (rid, gen, before, after)
    assert len(spans) > 50, len(spans)


def test_a_binary_upgrade_hands_over_the_listeners_without_failing_a_request(start_gateway, mock_bedrock, tmp_path, gateway_bin):
    import os
    import subprocess
    sock = tmp_path / "upgrade.sock"
    old = start_gateway(mock_bedrock, extra_server=f'upgrade_sock = "{sock}"')
    env = dict(os.environ, AWS_ACCESS_KEY_ID=mb.TEST_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=mb.TEST_SECRET_KEY,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_REGION="us-east-1")
    new_log = open(tmp_path / "new.log", "wb")
    new = subprocess.Popen([str(gateway_bin), "run", "--config", str(old.config_path), "--upgrade"], env=env,
                           stdout=new_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # the new process waits on the upgrade socket
        client = boto_client("bedrock-runtime", old.base)
        failures = []
        done = threading.Event()

        def traffic():
            while not done.is_set():
                try:
                    client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
                except botocore.exceptions.ConnectionClosedError:
                    # The one race no HTTP/1 server avoids: the old process closes a keep-alive
                    # connection that was idle when it stopped, just as the client reuses it.
                    # The client sent nothing the server read; its retry must succeed.
                    try:
                        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))
                    except Exception as e:  # noqa: BLE001
                        failures.append(repr(e))
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))
        t = threading.Thread(target=traffic)
        t.start()
        time.sleep(0.3)
        old.proc.send_signal(signal.SIGQUIT)
        assert old.proc.wait(timeout=60) is not None, "the old process exits once it handed over"
        time.sleep(0.5)
        done.set()
        t.join(timeout=30)
        assert not failures, failures[:5]
        client.invoke_model(modelId=SONNET, body=json.dumps(anthropic_body()))  # served by the new process
        assert new.poll() is None
    finally:
        new.terminate()
        new.wait(timeout=30)
        new_log.close()
