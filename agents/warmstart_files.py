"""The warm start's files: the cached model directory, its adapter, shipped adapters and resume checkpoints.

Layout under ``cache_dir() / "warmstart"``:

* ``<key>/``: a finished warm start. The merged model (``from_pretrained``-loadable), its tokenizer,
  ``warmstart.json`` (settings, training figures, evaluation) and, when it was trained with LoRA,
  ``adapter/``: the unmerged adapter (``adapter_model.safetensors`` in float16 + ``adapter_config.json``),
  the small artifact that rebuilds the merged weights on top of the base model.
* ``<key>.partial/checkpoint.pt``: the resume checkpoint of a build in progress (removed when it finishes).

**Shipped adapters.** ``agents/warmstart_adapters/<key>/`` (``hero_gym.agents.warmstart_adapters`` when
installed) holds adapters built by this project, each with its ``warmstart.json`` (the recipe's settings, so
its key can be checked, and the command that rebuilt it). When a warm start is asked for with the same key and
nothing is cached yet, the merged model is rebuilt from the shipped adapter in seconds instead of being trained
(:func:`materialise`). ``HERO_GYM_WARMSTART_SHIPPED=0`` turns this off (then every warm start trains).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["ADAPTER_DIR", "REPORT_FILE", "SHIPPED_ROOT", "is_built", "load_checkpoint", "materialise",
           "read_report", "save_adapter", "save_checkpoint", "save_model_dir", "ship", "shipped_adapter",
           "write_report"]

REPORT_FILE = "warmstart.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_FILE = "checkpoint.pt"
SHIPPED_ROOT = Path(__file__).resolve().parent / "warmstart_adapters"
"""Where adapters shipped with the package live (one folder per cache key)."""


def is_built(path: Path) -> bool:
    """Whether ``path`` holds a finished warm start (report, config and weights)."""
    return (path / REPORT_FILE).is_file() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """The ``warmstart.json`` of a warm-started model directory (settings, training and eval figures)."""
    return json.loads((Path(path) / REPORT_FILE).read_text())


def write_report(target: Path, report: dict[str, Any]) -> None:
    """Write ``warmstart.json`` atomically."""
    tmp = target / f".{REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, target / REPORT_FILE)


# ====================================================================================== the adapter


def save_adapter(folder: Path, peft_model: Any) -> None:
    """The LoRA adapter of ``peft_model`` as ``adapter_model.safetensors`` (float16) + ``adapter_config.json``,
    the files ``peft.PeftModel.from_pretrained`` reads. The recipe rounds the adapter to float16 before merging
    (:func:`~hero_gym.agents.warmstart_build.round_adapter_`), so this file holds exactly the trained values."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = peft_model.peft_config["default"].to_dict()
    config["base_model_name_or_path"] = None   # the base is named in warmstart.json (a cache path here means nothing)
    config["target_modules"] = sorted(config["target_modules"]) if isinstance(config.get("target_modules"), (set, list)) \
        else config.get("target_modules")
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


def save_model_dir(target: Path, model: Any, tokenizer: Any, report: dict[str, Any],
                   adapter_from: Any = None) -> None:
    """Write a finished warm start to ``target`` atomically (a temporary sibling renamed into place): the merged
    ``model``, ``tokenizer``, ``report`` and, when given, the adapter (a PEFT model, or a folder to copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if isinstance(adapter_from, (str, os.PathLike)):
            (tmp / ADAPTER_DIR).mkdir()
            for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                shutil.copy2(Path(adapter_from) / name, tmp / ADAPTER_DIR / name)
        elif adapter_from is not None:
            save_adapter(tmp / ADAPTER_DIR, adapter_from)
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)  # a stale, incomplete directory (a complete one is returned before building)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ====================================================================================== shipped adapters


def _shipped_enabled() -> bool:
    return os.environ.get("HERO_GYM_WARMSTART_SHIPPED", "1").strip().lower() not in ("0", "false", "no", "off")


def shipped_adapter(key: str, root: Path | None = None) -> Path | None:
    """The shipped adapter folder for cache key ``key``, or ``None`` (none shipped, or turned off by
    ``HERO_GYM_WARMSTART_SHIPPED=0``)."""
    if not _shipped_enabled():
        return None
    folder = (root or SHIPPED_ROOT) / key
    ok = all((folder / n).is_file() for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, REPORT_FILE))
    return folder if ok else None


def materialise(src: Path, target: Path, *, base: str, device: str | None = None) -> Path:
    """Rebuild the merged warm start in ``target`` from the shipped adapter in ``src`` (no training): the base
    model, the adapter applied and merged, saved with the tokenizer, the adapter and the shipped report (plus
    ``"source"``). Gives the same merged weights as the build that produced the adapter."""
    from peft import PeftModel

    from hero_gym.agents.models import load_named_model

    model, tokenizer = load_named_model(base, device=device)
    peft_model = PeftModel.from_pretrained(model, str(src), is_trainable=False)
    merged = peft_model.merge_and_unload()
    merged.eval()
    report = {**read_report(src), "source": f"shipped adapter {src.name} (merged onto the base, not trained here)"}
    save_model_dir(target, merged, tokenizer, report, adapter_from=src)
    return target


def ship(built: Path, root: Path | None = None, command: str | None = None) -> Path:
    """Copy the adapter and report of the finished warm start in ``built`` to ``root / <key>`` (``root``:
    :data:`SHIPPED_ROOT`), recording ``command`` (how it was built) in the shipped report."""
    if not (built / ADAPTER_DIR / ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"{built} has no {ADAPTER_DIR}/ (a LoRA warm start built by this version keeps one)")
    dest = (root or SHIPPED_ROOT) / built.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        shutil.copy2(built / ADAPTER_DIR / name, dest / name)
    report = read_report(built)
    report["key"] = built.name
    if command:
        report["rebuild_command"] = command
    write_report(dest, report)
    return dest


# ====================================================================================== checkpoints


def save_checkpoint(partial: Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically to ``partial / checkpoint.pt``."""
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f".{CHECKPOINT_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, partial / CHECKPOINT_FILE)


def load_checkpoint(partial: Path, key: str) -> dict[str, Any] | None:
    """The resume state in ``partial`` when it belongs to cache key ``key``; ``None`` otherwise."""
    f = partial / CHECKPOINT_FILE
    if not f.is_file():
        return None
    state = torch.load(f, map_location="cpu", weights_only=True)
    return state if state.get("key") == key else None
