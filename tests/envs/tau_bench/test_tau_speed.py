"""The speed benchmark runs and reports every row (its numbers are read from the script, not asserted here)."""

import importlib.util
from pathlib import Path


def _load():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "tau_speed.py"
    spec = importlib.util.spec_from_file_location("tau_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_speed_rows_shape_and_speedup():
    rows = _load().main_rows(quick=True)
    names = [r["benchmark"] for r in rows]
    for name in ("tau_retail/reset", "tau_retail/read_step(env.step)", "tau_retail/write_step(env.step)",
                 "tau_retail/reward", "tau_retail/reset+reward"):
        assert name in names
    for r in rows:
        assert set(r) >= {"benchmark", "p50_ms", "p95_ms", "baseline_p50_ms", "speedup"}
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"]
    combined = next(r for r in rows if r["benchmark"] == "tau_retail/reset+reward")
    assert combined["baseline_p50_ms"] > 0 and combined["speedup"] > 0
