"""``benchmarks/gpu_smoke.py --reduced``: the GPU smoke script's reduced CPU run, end to end (~20-30 s).

It says it is reduced, every check passes (KV-cache greedy ids, prefix-cache teacher scoring against the
naive scorer, one update per method with an EMA teacher that moves), and the 7B-shaped figures come out
(measured at reduced size, the 7B snapshot size and KV per slot computed from the config)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_reduced_smoke_run(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--reduced", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **_env()})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REDUCED" in proc.stdout
    r = json.loads(out.read_text())
    assert r["all_checks_ok"] and r["mode"].startswith("REDUCED") and set(r["checks"]) == {"float32", "bfloat16"}
    from hero_gym.agents.methods import METHODS

    for checks in r["checks"].values():
        assert set(checks["update_per_method"]) == set(METHODS)
        assert checks["teacher_scoring"]["scored_tokens"] > 0
    s = r["seven_b"]
    assert s["computed_7b_kv_per_8k_slot_mb"] == 2 * 28 * 4 * 128 * 2 * 8192 / 1e6
    assert 70 < s["computed_7b_snapshot_mb_bf16"] < 90          # rank-16 LoRA on every linear layer of a 7B
    assert s["decode_tokens_per_s_8_rows"] > 0 and s["kv_per_slot_mb_measured"] > 0


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
