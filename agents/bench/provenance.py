"""Provenance of a benchmark run: fingerprints (what a cached cell or run depends on), the data an env
reads, the source checkout's commit and the hardware."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .presets import EnvSetup

__all__ = ["code_fingerprint", "data_source", "git_commit", "hardware", "sha"]


def sha(obj: Any) -> str:
    """A short, stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_CODE_FP: str | None = None


def code_fingerprint() -> str:
    """Hash of the installed package's Python sources (core, envs, agents), the benchmark package itself
    excluded (its statistics and report do not change a cell): a cell computed by other code is not reused."""
    global _CODE_FP
    if _CODE_FP is None:
        h = hashlib.sha256()
        bench_dir = Path(__file__).resolve().parent
        for pkg in ("hero_gym", "hero_gym.envs", "hero_gym.agents"):
            root = Path(importlib.import_module(pkg).__file__).parent
            for f in sorted(root.rglob("*.py")):
                if bench_dir in f.resolve().parents or "__pycache__" in f.parts:
                    continue
                if pkg == "hero_gym" and f.relative_to(root).parts[0] in ("envs", "agents"):
                    continue
                h.update(f"{pkg}:{f.relative_to(root)}".encode())
                h.update(f.read_bytes())
        _CODE_FP = h.hexdigest()[:16]
    return _CODE_FP
def _files_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def data_source(setup: EnvSetup, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Which data an env reads: official/generated, path and a content fingerprint."""
    import hero_gym

    env = hero_gym.make(setup.env_id, **kwargs)
    try:
        u = env.unwrapped
        ds = getattr(u, "dataset", None)
        if ds is not None:   # Tau-bench
            info = {"source": ds.source, "ident": ds.ident}
            if ds.source == "official":
                info.update(path=ds.ident, fingerprint=_files_fingerprint(Path(ds.ident)))
            else:
                info["fingerprint"] = sha([ds.ident, sorted((k, len(v)) for k, v in ds.tasks.items())])
            return info
        if getattr(u, "catalog", None) is not None:
            cat = u.catalog
            src = "official" if kwargs.get("data_dir") else "generated"
            info = {"source": src, "products": len(getattr(cat, "products", []) or []),
                    "goals": len(getattr(cat, "goals", []) or [])}
            if kwargs.get("data_dir"):
                info.update(path=str(Path(kwargs["data_dir"]).resolve()),
                            fingerprint=_files_fingerprint(Path(kwargs["data_dir"])))
            else:
                info["fingerprint"] = sha([kwargs, [g.instruction for g in cat.goals[:200]]])
            return info
        return {"source": "generated", "fingerprint": sha([setup.env_id, kwargs])}
    finally:
        env.close()


def git_commit() -> str:
    """The source checkout's commit (with ``+dirty`` if it has uncommitted changes), or a note."""
    src = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            raise OSError
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"installed package hero-gym {version('hero-gym')} (not a git checkout)"
        except PackageNotFoundError:
            return "unknown"


def hardware() -> dict[str, Any]:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "platform": platform.platform()}

