"""Optional vLLM rollout backend (GPU only; not exercised on the project's CPU machines or in CI).

:class:`VLLMPolicy` has the same ``generate(contexts, sampling) -> list[Generation]`` interface as
:class:`~hero_gym.agents.policy.HFPolicy`, so :func:`hero_gym.agents.rollout.collect` takes either. Rollouts
run in ``vllm.LLM`` on token-id prompts (``TokensPrompt``), so the token-exactness guarantees of the
rollout hold unchanged. Training still happens in the transformers model: after each update save the LoRA
adapter (``HFPolicy.save(dir)``) and hand it over with :meth:`VLLMPolicy.set_lora` — each call registers a
new ``LoRARequest`` (fresh integer id, so vLLM does not serve a stale cached adapter).

Log-probs: vLLM reports, for ``logprobs=0``, the log-prob of the sampled token. Recent vLLM versions
report the raw model distribution by default; this class asks for the processed (temperature/top-k/top-p)
distribution with ``logprobs_mode="processed_logprobs"`` when the installed vLLM accepts it, matching
HFPolicy's semantics; otherwise the raw model log-probs are reported (equal to HFPolicy's at temperature 1
with no top-k/top-p). ``vllm`` is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hero_gym.agents.policy import Generation, SamplingConfig

__all__ = ["VLLMPolicy", "row_seed", "vllm_available"]


def row_seed(seed: int, row: int) -> int:
    """The sampling seed of ``row`` in a call seeded with ``seed``: a hash of the pair (NumPy's
    ``SeedSequence``), so rows and successive calls draw independent streams. (``seed + row`` would give
    row 1 of step ``s`` the stream of row 0 of step ``s + 1``.)"""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) % 2**63, int(row)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def vllm_available() -> bool:
    """Whether the ``vllm`` package is importable."""
    return importlib.util.find_spec("vllm") is not None


def _require_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "VLLMPolicy needs vLLM and a GPU: `pip install 'hero-gym[vllm]'` (or `pip install vllm`). "
            "On CPU use hero_gym.agents.HFPolicy instead."
        ) from e
    return vllm


class VLLMPolicy:  # pragma: no cover - needs vllm + a GPU
    """A ``vllm.LLM`` as a rollout policy over token ids.

    Args:
        model: HF id or local path of the base model (e.g. the converted default model directory,
            :func:`hero_gym.agents.models.default_model_dir`).
        tokenizer: tokenizer used to decode replies and find stop tokens (default: vLLM's own).
        enable_lora: serve LoRA adapters handed over with :meth:`set_lora`.
        max_lora_rank: must be >= the adapter rank (HFPolicy's default rank is 16).
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``max_model_len``, ``dtype``).
    """

    def __init__(self, model: str | Path, tokenizer: Any | None = None, *, enable_lora: bool = True,
                 max_lora_rank: int = 16, **llm_kwargs: Any):
        vllm = _require_vllm()
        kwargs = dict(llm_kwargs)
        if enable_lora:
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_lora_rank", max_lora_rank)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        try:
            self.llm = vllm.LLM(model=str(model), **kwargs)
        except TypeError:  # an older vLLM without logprobs_mode
            kwargs.pop("logprobs_mode", None)
            self.llm = vllm.LLM(model=str(model), **kwargs)
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

    def set_lora(self, adapter_dir: str | Path | None, name: str = "hero") -> None:
        """Use the PEFT adapter saved in ``adapter_dir`` for the next generations (``None``: base model)."""
        if adapter_dir is None:
            self._lora = None
            return
        from vllm.lora.request import LoRARequest

        self._lora_counter += 1
        self._lora = LoRARequest(f"{name}-{self._lora_counter}", self._lora_counter, str(adapter_dir))

    def generate(self, contexts: Sequence[Sequence[int]], sampling: SamplingConfig | None = None, *,
                 max_new_tokens: Sequence[int] | None = None) -> list[Generation]:
        """Sample one reply per context (see :meth:`HFPolicy.generate`)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sc = sampling or SamplingConfig()
        caps = [sc.max_new_tokens] * len(contexts) if max_new_tokens is None else [
            min(int(m), sc.max_new_tokens) for m in max_new_tokens]
        stop_ids = sorted(self.stop_token_ids | set(sc.stop_token_ids))
        params = [
            SamplingParams(
                n=1, temperature=max(sc.temperature, 0.0), top_p=sc.top_p, top_k=sc.top_k if sc.top_k > 0 else -1,
                max_tokens=max(1, cap), stop=list(sc.stop) or None, stop_token_ids=stop_ids, logprobs=0,
                seed=None if sc.seed is None else row_seed(sc.seed, i), skip_special_tokens=True,
                include_stop_str_in_output=True,
            )
            for i, cap in enumerate(caps)
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(c)) for c in contexts]
        outs = self.llm.generate(prompts, params, lora_request=self._lora, use_tqdm=False)
        results: list[Generation] = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = []
            for tid, d in zip(ids, o.logprobs or []):
                lp = d.get(tid) if d else None
                lps.append(float(lp.logprob) if lp is not None else float("nan"))
            body = ids[:-1] if ids and ids[-1] in stop_ids else ids
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            reason = "length" if o.finish_reason == "length" else "stop"
            results.append(Generation(token_ids=ids, logprobs=lps, text=text, finish_reason=reason))
        return results
