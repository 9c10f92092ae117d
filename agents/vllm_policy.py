"""The vLLM rollout backend (``--rollout vllm``; GPU only).

:class:`VLLMPolicy` has the same ``generate(contexts, sampling) -> list[Generation]`` interface as
:class:`~hero_gym.agents.policy.HFPolicy`, so :func:`hero_gym.agents.rollout.collect`, evaluation and the model
reflector take either. Rollouts run in ``vllm.LLM`` on token-id prompts (``TokensPrompt``), so the
token-exactness guarantees of the rollout hold unchanged. Training still happens in the transformers model:
after each update the trainer saves the LoRA adapter and hands it over with :meth:`VLLMPolicy.set_lora` —
each call registers a new ``LoRARequest`` (fresh integer id, so vLLM does not serve a stale cached adapter).

Memory: vLLM and the transformers model share one GPU in one process, so the engine is built with a set
``gpu_memory_utilization`` (default :data:`DEFAULT_GPU_MEMORY_UTILIZATION`, not vLLM's 0.9 that leaves no
room for training). Where the installed vLLM has sleep mode (``LLM.sleep`` / ``LLM.wake_up`` and the
``enable_sleep_mode`` engine argument, detected by feature, not by version), :meth:`released` puts the engine
to sleep (level 1: weights offloaded to CPU RAM, KV cache discarded) around each update and wakes it for the
next rollouts. Context: ``max_model_len`` (given, or read from the engine) is :attr:`max_context_tokens`,
which :func:`~hero_gym.agents.rollout.collect` uses as its context cap, so no prompt past it reaches vLLM
(a longer prompt handed to :meth:`generate` directly gets an empty ``"length"`` reply instead of an engine
error).

Log-probs: vLLM reports, for ``logprobs=0``, the log-prob of the sampled token. Recent vLLM versions
report the raw model distribution by default; this class asks for the processed (temperature/top-k/top-p)
distribution with ``logprobs_mode="processed_logprobs"`` when the installed vLLM accepts it, matching
HFPolicy's semantics; otherwise the raw model log-probs are reported (equal to HFPolicy's at temperature 1
with no top-k/top-p). ``vllm`` is imported lazily: importing this module never needs it.

Testing: vLLM does not install on CPU machines. The tests drive this class through ``api=`` with a small
**fake** engine (``tests/agents/fake_vllm.py``) that implements the documented interface used here
(``LLM(model, **engine_args)``, ``LLM.generate(prompts, sampling_params, use_tqdm=, lora_request=)``,
``SamplingParams``, ``LoRARequest(name, int_id, path)``, ``TokensPrompt``, ``LLM.sleep(level=)`` /
``LLM.wake_up()``, ``LLM.get_tokenizer()``); the real engine has not been exercised by the test suite.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hero_gym.agents.policy import Generation, SamplingConfig

__all__ = ["DEFAULT_GPU_MEMORY_UTILIZATION", "VLLMPolicy", "make_rollout_policy", "row_seed", "vllm_api",
           "vllm_available"]

DEFAULT_GPU_MEMORY_UTILIZATION = 0.35
"""Share of the GPU's memory the vLLM engine may take (weights + KV cache) when it shares the GPU with
the transformers model being trained (vLLM's own default, 0.9, leaves nothing for training)."""

_OPTIONAL_ENGINE_ARGS = ("logprobs_mode", "enable_sleep_mode")
"""Engine arguments dropped (with a retry) when the installed vLLM rejects them."""


def row_seed(seed: int, row: int) -> int:
    """The sampling seed of ``row`` in a call seeded with ``seed``: a hash of the pair (NumPy's
    ``SeedSequence``), so rows and successive calls draw independent streams. (``seed + row`` would give
    row 1 of step ``s`` the stream of row 0 of step ``s + 1``.)"""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) % 2**63, int(row)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def vllm_available() -> bool:
    """Whether the ``vllm`` package is importable."""
    return importlib.util.find_spec("vllm") is not None


def vllm_api() -> SimpleNamespace:
    """The parts of the installed vLLM this module uses: ``LLM``, ``SamplingParams``, ``LoRARequest``,
    ``TokensPrompt``. Raises ``ImportError`` with the install command when vLLM is missing."""
    try:
        import vllm
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "--rollout vllm (VLLMPolicy) needs vLLM and a GPU: `pip install 'hero-gym[vllm]'` (or `pip install "
            "vllm`). On CPU use --rollout hf (hero_gym.agents.HFPolicy)."
        ) from e
    return SimpleNamespace(LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest,
                           TokensPrompt=TokensPrompt)


def _engine_max_len(llm: Any) -> int | None:
    """``max_model_len`` as the engine resolved it (``llm.llm_engine.model_config.max_model_len``)."""
    cfg = getattr(getattr(llm, "llm_engine", None), "model_config", None)
    value = getattr(cfg, "max_model_len", None)
    return int(value) if value else None


class VLLMPolicy:
    """A ``vllm.LLM`` as a rollout policy over token ids.

    Args:
        model: HF id or local path of the base model (for the embedded default, the converted model
            directory :func:`hero_gym.agents.models.default_model_dir`).
        tokenizer: tokenizer used to decode replies and find stop tokens (default: vLLM's own).
        gpu_memory_utilization: share of the GPU's memory vLLM may use (see the module docstring).
        max_model_len: the engine's context window in tokens (prompt + reply), also the rollouts' context
            cap (:attr:`max_context_tokens`); ``None`` = the engine's default (the model's own window).
        enable_lora: serve LoRA adapters handed over with :meth:`set_lora`.
        max_lora_rank: must be >= the adapter rank (HFPolicy's default rank is 16).
        sleep_mode: ``"auto"`` uses sleep mode where the installed vLLM has it; ``False`` never does.
        api: the vLLM entry points (default :func:`vllm_api`); tests pass a fake here.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``dtype``, ``seed``, ``enable_prefix_caching``).
    """

    def __init__(self, model: str | Path, tokenizer: Any | None = None, *,
                 gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION, max_model_len: int | None = None,
                 enable_lora: bool = True, max_lora_rank: int = 16, sleep_mode: bool | str = "auto",
                 api: Any | None = None, **llm_kwargs: Any):
        if not 0.0 < float(gpu_memory_utilization) <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if sleep_mode not in ("auto", True, False):
            raise ValueError(f"sleep_mode must be 'auto', True or False, got {sleep_mode!r}")
        self.api = api if api is not None else vllm_api()
        kwargs = {"gpu_memory_utilization": float(gpu_memory_utilization), **llm_kwargs}
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        if enable_lora:
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_lora_rank", max_lora_rank)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        has_sleep = callable(getattr(self.api.LLM, "sleep", None)) and callable(getattr(self.api.LLM, "wake_up", None))
        if sleep_mode is True and not has_sleep:
            raise ValueError("sleep_mode=True but the installed vLLM's LLM has no sleep()/wake_up()")
        if sleep_mode and has_sleep:
            kwargs.setdefault("enable_sleep_mode", True)
        self.llm = self._build(str(model), kwargs)
        self.engine_args = kwargs
        self.can_sleep = bool(has_sleep and kwargs.get("enable_sleep_mode"))
        self.sleeping = False
        self.max_context_tokens: int | None = int(max_model_len) if max_model_len else _engine_max_len(self.llm)
        """The context window (prompt + reply) in tokens: ``collect`` keeps every context below it."""
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self._lora: Any | None = None
        self._lora_counter = 0
        self.stop_token_ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            self.stop_token_ids.add(int(self.tokenizer.eos_token_id))
        try:
            from hero_gym.chat import ChatRenderer

            eot = ChatRenderer(self.tokenizer, check=False).end_of_turn_id
            if eot is not None:
                self.stop_token_ids.add(int(eot))
        except Exception:
            pass

    def _build(self, model: str, kwargs: dict[str, Any]) -> Any:
        """``LLM(model, **kwargs)``, dropping an optional engine argument the installed vLLM rejects."""
        while True:
            try:
                return self.api.LLM(model=model, **kwargs)
            except TypeError as e:
                optional = [k for k in _OPTIONAL_ENGINE_ARGS if k in kwargs and k in str(e)]
                if not optional:
                    raise
                for k in optional:
                    kwargs.pop(k)

    # ------------------------------------------------------------------ adapter and memory
    def set_lora(self, adapter_dir: str | Path | None, name: str = "hero") -> None:
        """Use the PEFT adapter saved in ``adapter_dir`` for the next generations (``None``: base model)."""
        if adapter_dir is None:
            self._lora = None
            return
        if not self.engine_args.get("enable_lora"):
            raise ValueError("this VLLMPolicy was built with enable_lora=False")
        self._lora_counter += 1
        self._lora = self.api.LoRARequest(f"{name}-{self._lora_counter}", self._lora_counter, str(adapter_dir))

    @property
    def lora_request(self) -> Any | None:
        """The ``LoRARequest`` the next generations use (``None``: the base model)."""
        return self._lora

    def sleep(self) -> None:
        """Free the engine's GPU memory (level 1: weights to CPU RAM, KV cache discarded); a no-op where
        the installed vLLM has no sleep mode."""
        if self.can_sleep and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (a no-op when awake)."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """The engine asleep inside (the trainer's update runs here), awake again after."""
        self.sleep()
        try:
            yield
        finally:
            self.wake_up()

    # ------------------------------------------------------------------ generation
    def _params(self, sc: SamplingConfig, cap: int, row: int, stop_ids: list[int]) -> Any:
        kw = dict(n=1, temperature=max(sc.temperature, 0.0), top_p=sc.top_p, top_k=sc.top_k if sc.top_k > 0 else -1,
                  max_tokens=max(1, cap), stop=list(sc.stop) or None, stop_token_ids=stop_ids, logprobs=0,
                  seed=None if sc.seed is None else row_seed(sc.seed, row), skip_special_tokens=True,
                  include_stop_str_in_output=True)
        return self.api.SamplingParams(**kw)

    def generate(self, contexts: Sequence[Sequence[int]], sampling: SamplingConfig | None = None, *,
                 max_new_tokens: Sequence[int] | None = None) -> list[Generation]:
        """Sample one reply per context (see :meth:`HFPolicy.generate`). Wakes a sleeping engine. Replies
        are capped so that context + reply fits :attr:`max_context_tokens`; a context that already fills
        it gets an empty ``"length"`` reply (never sent to the engine)."""
        sc = sampling or SamplingConfig()
        if not contexts:
            return []
        if any(len(c) == 0 for c in contexts):
            raise ValueError("generate: empty context")
        self.wake_up()
        caps = [sc.max_new_tokens] * len(contexts) if max_new_tokens is None else [
            min(int(m), sc.max_new_tokens) for m in max_new_tokens]
        if self.max_context_tokens is not None:
            caps = [min(cap, self.max_context_tokens - len(c)) for cap, c in zip(caps, contexts)]
        stop_ids = sorted(self.stop_token_ids | set(sc.stop_token_ids))
        rows = [i for i, cap in enumerate(caps) if cap > 0]
        results: list[Generation] = [Generation(token_ids=[], logprobs=[], text="", finish_reason="length")
                                     for _ in contexts]
        if not rows:
            return results
        params = [self._params(sc, caps[i], i, stop_ids) for i in rows]
        prompts = [self.api.TokensPrompt(prompt_token_ids=list(contexts[i])) for i in rows]
        outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        for i, out in zip(rows, outs):
            o = out.outputs[0]
            ids = [int(t) for t in o.token_ids]
            lps = []
            for tid, d in zip(ids, o.logprobs or []):
                lp = d.get(tid) if d else None
                lps.append(float(lp.logprob) if lp is not None else float("nan"))
            lps += [float("nan")] * (len(ids) - len(lps))
            body = ids[:-1] if ids and ids[-1] in stop_ids else ids
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            reason = "length" if o.finish_reason == "length" else "stop"
            results[i] = Generation(token_ids=ids, logprobs=lps, text=text, finish_reason=reason)
        return results


def make_rollout_policy(kind: str, model: str, tokenizer: Any | None = None, *, api: Any | None = None,
                        **kwargs: Any) -> VLLMPolicy | None:
    """The rollout backend named on a command line: ``"hf"`` -> ``None`` (the trained HFPolicy generates),
    ``"vllm"`` -> a :class:`VLLMPolicy` on ``model`` (a model name as the CLI takes it: ``smollm2`` /
    ``default`` is the converted embedded model's directory; ``tiny`` has no weights on disk and is refused).
    ``kwargs`` go to :class:`VLLMPolicy` (``gpu_memory_utilization``, ``max_model_len``, ...)."""
    if kind == "hf":
        return None
    if kind != "vllm":
        raise ValueError(f"rollout must be 'hf' or 'vllm', got {kind!r}")
    from hero_gym.agents.models import DEFAULT_MODEL_NAME, default_model_dir, load_default_model

    if model == "tiny":
        raise ValueError("--rollout vllm needs a model on disk; 'tiny' is built in memory (use --rollout hf)")
    if model in ("smollm2", "default", DEFAULT_MODEL_NAME):
        if not (default_model_dir() / "config.json").is_file():
            load_default_model(device="cpu")   # converts the shipped GGUF into the cache once
        model = str(default_model_dir())
    return VLLMPolicy(model, tokenizer, api=api, **kwargs)
