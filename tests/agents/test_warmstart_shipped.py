"""The warm-start adapters shipped in the package (agents/warmstart_adapters/): each one's settings give
its folder's cache key, it is small, it loads onto its base, and the `default` benchmark preset has one."""

from __future__ import annotations

import json

import pytest

from hero_gym.agents import warmstart_files as files
from hero_gym.agents.warmstart import RECIPE_VERSION, WarmStartConfig, cache_key

SHIPPED = sorted(p for p in files.SHIPPED_ROOT.glob("*") if p.is_dir()) if files.SHIPPED_ROOT.is_dir() else []
MAX_BYTES = 15 * 1024 * 1024


class _Asked(Exception):
    def __init__(self, cfg, base):
        self.cfg, self.base = cfg, base


def _preset_key(preset: str) -> str:
    """The cache key of the warm start the benchmark preset asks for (the bench builds the config)."""
    import hero_gym.agents.warmstart as ws
    from hero_gym.agents import bench

    opts = bench.parse_args(["--preset", preset])
    b = bench.Bench(opts, files.SHIPPED_ROOT, log=lambda s: None)
    real = ws.warm_start

    def ask(cfg, *, base="default", device=None):
        raise _Asked(cfg, base)

    ws.warm_start = ask
    try:
        b.source.base(b.setups[opts.envs[0]])
    except _Asked as asked:
        return cache_key(asked.cfg, asked.base)
    finally:
        ws.warm_start = real
    raise AssertionError("the bench did not ask for a warm start")


def test_the_default_preset_warm_start_is_shipped():
    key = _preset_key("default")
    assert files.shipped_adapter(key) is not None, (
        f"no shipped adapter for the default preset's warm start (key {key}); build and ship it with "
        "`python benchmarks/ship_warmstart.py --preset default`")


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_adapter_matches_its_key_and_loads(folder):
    from peft import PeftModel

    from hero_gym.agents.models import load_named_model

    report = json.loads((folder / files.REPORT_FILE).read_text())
    assert report["recipe"] == RECIPE_VERSION and report["key"] == folder.name
    assert cache_key(WarmStartConfig(**report["config"]), report["base"]) == folder.name
    assert report["rebuild_command"].startswith("python benchmarks/ship_warmstart.py")
    assert sum(f.stat().st_size for f in folder.iterdir()) <= MAX_BYTES

    model, _ = load_named_model(report["base"], device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    after = merged.state_dict()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert changed and all(k.endswith(".weight") for k in changed)   # the adapter moved the linear weights
