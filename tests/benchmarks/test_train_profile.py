"""benchmarks/train_profile.py runs one batch and one evaluation per sampler and reports per-phase seconds."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train_profile  # noqa: E402


def test_profile_reports_both_samplers_with_phases(capsys):
    res = train_profile.main(["--preset", "quick", "--eval-goals", "2", "--bench-arg=--envs", "--bench-arg=WebShop",
                              "--bench-arg=--max-new-tokens", "--bench-arg=4"])
    for kind in ("multinomial", "inverse-cdf"):
        for part in ("train", "eval"):
            r = res[kind][part]
            assert r["turns"] > 0 and r["seconds"] > 0 and r["phases"]["model forward"] > 0
            assert 0 < r["phases"]["env step"] < r["seconds"]
        assert res[kind]["train"]["phases"]["sampling"] > 0   # training samples at T=1; evaluation is greedy
    assert "per turn" in capsys.readouterr().out
