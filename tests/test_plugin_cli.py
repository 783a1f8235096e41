"""`gateway plugin test` and `gateway check` on real plugins."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import plugin_path


def test_plugin_test_runs_every_phase_offline_and_prints_decisions(gateway_bin, tmp_path):
    req = tmp_path / "req.json"
    req.write_text(json.dumps({
        "method": "POST", "path": "/bedrock/model/m/invoke", "front_door": "bedrock", "operation": "invoke",
        "model": "us.anthropic.claude-opus-4-5", "headers": {"authorization": "Bearer sk-gw-dev-bob"},
        "body": {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
        "completion": {"status": 200, "usage": {"input_tokens": 10, "output_tokens": 20}},
    }))
    cfg = tmp_path / "auth.toml"
    cfg.write_text('keys = [{ key = "sk-gw-dev-bob", principal = "bob", team = "platform" }]\n')
    out = subprocess.run([str(gateway_bin), "plugin", "test", plugin_path("auth"), "--request", str(req),
                          "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["on_request"]["decision"] == "continue"
    assert (report["on_request"]["principal"], report["on_request"]["team"]) == ("bob", "platform")
    assert report["on_complete"] == {"ok": True}

    cfg.write_text('keys = [{ key = "another", principal = "x" }]\n')
    out = subprocess.run([str(gateway_bin), "plugin", "test", plugin_path("auth"), "--request", str(req),
                          "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert report["on_request"]["decision"] == "deny" and report["on_request"]["status"] == 401


def test_check_loads_plugins_and_names_the_one_that_fails(gateway_bin, tmp_path):
    base = ('[server]\nlisten = "127.0.0.1:1"\nadmin_listen = "127.0.0.1:2"\n[[backends]]\nname = "b"\n'
            'kind = "bedrock"\nregion = "us-east-1"\n')
    good = tmp_path / "good.toml"
    good.write_text(base + f'[[plugins]]\nname = "noop"\npath = "{plugin_path("noop")}"\n')
    out = subprocess.run([str(gateway_bin), "check", "--config", str(good)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(base + f'[[plugins]]\nname = "noop"\npath = "{plugin_path("noop")}"\n'
                   f'[[plugins]]\nname = "v2"\npath = "{plugin_path("v2")}"\n')
    out = subprocess.run([str(gateway_bin), "check", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "plugins[1] (v2)" in out.stderr and "2.0.0" in out.stderr, out.stderr


def test_the_example_configuration_that_make_run_serves_checks_clean(gateway_bin):
    """`make run` serves examples/gateway.toml after `gateway check`: it must stay valid,
    stock plugins included."""
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([str(gateway_bin), "check", "--config", str(root / "examples" / "gateway.toml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
