"""The load script runs, is bounded, and refuses non-loopback targets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("requests")

from hero_gym.serve import start_server  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "env_server_load.py"


def _load():
    spec = importlib.util.spec_from_file_location("env_server_load", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_load_script_prints_throughput_and_latency(capsys):
    mod = _load()
    with start_server("hero_gym/Lookup-v0") as handle:
        out = mod.main(["--url", handle.url, "--clients", "4", "--requests", "60", "--seconds", "60"])
    assert out["requests"] == 60 and out["errors"] == 0
    # Lookup: reset + 2 steps per episode; the last episode of a client may be cut when the shared budget
    # runs out (which client takes the last requests depends on scheduling), so resets are >= 60 / 3
    assert out["reset"]["count"] + out["step"]["count"] == 60 and 20 <= out["reset"]["count"] <= 24
    assert out["requests_per_s"] > 0 and out["all"]["p99_ms"] >= out["all"]["p50_ms"] > 0
    text = capsys.readouterr().out
    assert "requests/s" in text and "p99 ms" in text


def test_load_script_refuses_remote_hosts_and_unbounded_runs():
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--url", "http://10.1.2.3:8000"])
    with pytest.raises(SystemExit):
        mod.main(["--requests", "10000000"])
