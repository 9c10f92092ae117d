"""The transformers policy: batched token-level generation with sampling log-probs, LoRA or full fine-tuning.

:class:`HFPolicy` works on token ids, never on text: contexts come in as ``list[list[int]]`` (built by
:class:`hero_gym.chat.ChatRenderer`), and each :class:`Generation` returns the exact sampled ids and the
log-prob each was sampled with. The rollout stores these ids; training re-scores them, it never
re-tokenises text.

Log-prob semantics (``Generation.logprobs``): the log-probability of the sampled token under the
distribution it was actually drawn from, i.e. ``log_softmax(filter(logits / temperature))`` where
``filter`` applies top-k and then top-p (nucleus) and renormalises. With ``temperature=1``, ``top_k=0``
and ``top_p=1`` (the defaults) this equals the model's own log-prob, which is what the trainer recomputes
(:func:`hero_gym.agents.scoring.student_logits`).
Greedy decoding (``temperature=0``) draws from a point mass, whose log-prob (0) is useless to a trainer,
so for greedy the model's untempered log-prob ``log_softmax(logits)`` is reported instead.

Generation is a plain KV-cached decoding loop over a left-padded batch with explicit position ids, so a
context gives the same tokens alone or in a batch (up to float rounding). It stops a row at EOS, at the
chat template's end-of-turn token (``<|im_end|>`` for ChatML), at any ``SamplingConfig.stop_token_ids`` or
``stop`` string, or at ``max_new_tokens``; the stop token is included in ``token_ids``.

Across calls, a :class:`KVCache` per conversation (``generate(..., kv_caches=...)``, kept per env slot by
:func:`hero_gym.agents.rollout.collect`) carries the keys/values of the tokens already seen, so a multi-turn
rollout encodes each turn's new tokens only instead of its whole context. Within a call, the prefix that
several rows need and their caches lack (the system prompt of episodes starting together) is encoded once
and shared (``HFPolicy(share_prefix=...)``).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from hero_gym.agents.models import (CPU_DECODE_LIMITS, DecodeLimits, cache_kwargs, decode_limits, default_device,
                                    free_device_memory, output_cache)

__all__ = ["CPU_DECODE_LIMITS", "DEFAULT_LORA", "DecodeLimits", "Generation", "HFPolicy", "KVCache", "SamplingConfig",
           "decode_limits", "default_lora_config"]

DEFAULT_LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "bias": "none",
    "task_type": "CAUSAL_LM",
}
"""Defaults of the LoRA adapter used for training when ``lora="default"`` (all linear layers except the
output head, rank 16, alpha 32, no dropout)."""


def default_lora_config(**overrides: Any) -> Any:
    """A ``peft.LoraConfig`` with :data:`DEFAULT_LORA`, updated by ``overrides``."""
    from peft import LoraConfig

    return LoraConfig(**{**DEFAULT_LORA, **overrides})


@dataclass
class SamplingConfig:
    """Sampling settings for :meth:`HFPolicy.generate`.

    Attributes:
        max_new_tokens: at most this many tokens per reply (the stop token included).
        temperature: softmax temperature; ``0`` means greedy decoding.
        top_p: nucleus sampling mass (``1.0`` = off).
        top_k: keep the ``k`` most likely tokens (``0`` = off).
        stop: stop strings; a row stops once its decoded reply contains one (the tokens up to and
            including the one completing it are kept).
        stop_token_ids: extra stop tokens, on top of EOS and the template's end-of-turn token.
        seed: seeds the sampler for this call (``None``: torch's global RNG).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """One sampled reply.

    Attributes:
        token_ids: the sampled ids, including the stop token when one was sampled.
        logprobs: per-token sampling log-probs, same length as ``token_ids`` (see module docstring).
        text: the decoded reply without the trailing stop token and without special tokens.
        finish_reason: ``"stop"`` (stop token or string) or ``"length"`` (``max_new_tokens`` reached).
    """

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: Literal["stop", "length"]


@dataclass
class KVCache:
    """The keys/values of one conversation, kept between :meth:`HFPolicy.generate` calls (one per env slot).

    ``ids`` are the token ids the cache covers, ``layers`` one ``(keys, values)`` pair per decoder layer,
    each ``[1, kv_heads, len(ids), head_dim]``. Give the same object for the same row on every call: the
    longest common prefix of ``ids`` and the new context is reused (at most all but the context's last
    token, whose logits are needed) and only the rest is encoded. After the call the cache covers the
    context plus the reply except its last token (the one never fed back to the model). Keys and values
    at a position depend only on the tokens up to it, so reusing them is exact up to float rounding.
    Start with an empty ``KVCache()``; :meth:`clear` frees the memory.
    """

    ids: list[int] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def reusable(self, context: Sequence[int]) -> int:
        """How many leading tokens of ``context`` this cache can supply."""
        n = min(len(self.ids), len(context) - 1)
        if self.ids[:n] == list(context[:n]):
            return n
        i = 0
        while i < n and self.ids[i] == context[i]:
            i += 1
        return i

    def clear(self) -> None:
        self.ids, self.layers = [], []


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) tokens outside top-k and the top-p nucleus; always keeps the argmax."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass of the tokens strictly before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` ``[B, V]`` (non-negative, rows need not sum to 1), by inverse-CDF
    sampling: a float64 cumulative sum, one uniform per row scaled to the row's total, and a binary search.

    The same distribution as ``torch.multinomial(probs, 1)`` (a token of probability 0 is never drawn),
    at a fraction of its cost on a CPU over a 49k-150k vocabulary (``benchmarks/sampling_speed.py``).
    """
    cdf = probs.double().cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, dtype=torch.float64, device=probs.device)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.squeeze(-1).clamp_max_(probs.shape[-1] - 1)


def _forward(model: Any, keep: int, **kwargs: Any) -> Any:
    """``model(**kwargs)`` computing only the last ``keep`` positions' logits when the model supports
    ``logits_to_keep`` (most transformers causal LMs); full logits otherwise (callers slice the tail)."""
    try:
        return model(logits_to_keep=keep, **kwargs)
    except TypeError as e:
        if "logits_to_keep" not in str(e):
            raise
        return model(**kwargs)


class HFPolicy:
    """A causal LM as a policy over token ids.

    Args:
        model: a transformers causal LM (e.g. from :func:`hero_gym.agents.models.load_default_model`), or an
            existing ``peft.PeftModel``.
        tokenizer: its tokenizer (needs a pad or EOS token).
        lora: ``"default"`` wraps the model with a fresh LoRA adapter (:data:`DEFAULT_LORA`), a
            ``peft.LoraConfig`` uses that config, ``None`` means full fine-tuning (every weight trainable).
            A model that is already a ``PeftModel`` is used as is.
        device: where to run (default :func:`~hero_gym.agents.models.default_device`).
        dtype: cast the model to this dtype (default: keep the model's dtype).
        max_batch_size: at most this many rows per forward pass in :meth:`generate`.
        max_batch_tokens: at most this many padded tokens (rows x longest row) per forward pass; rows are
            grouped by length so that short contexts are not padded to long ones. Bounds prefill memory.
        max_cached_tokens: at most this many tokens kept in the env slots' KV caches between turns during a
            rollout (:func:`hero_gym.agents.rollout.collect`).
        share_prefix: in :meth:`generate` with ``kv_caches``, encode the prefix that all rows share and at
            least two of their caches lack (e.g. the system prompt of episodes starting in the same call)
            once, as one row, and start those caches from it (the same tensors, read only), instead of
            encoding it in every row. Same ids up to float rounding; ``False`` encodes it per row.

    Each limit left ``None`` comes from :func:`decode_limits`: on CUDA sized from the device's free memory
    when the policy is built (after the model is on the device); on CPU 64 rows, 65,536 tokens and no cache
    cap (:data:`CPU_DECODE_LIMITS`). The decoding loop syncs with the host once per generated token.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        lora: Any | None | Literal["default"] = "default",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        max_cached_tokens: int | None = None,
        share_prefix: bool = True,
    ):
        self.tokenizer = tokenizer
        self.share_prefix = bool(share_prefix)
        self.device = torch.device(device) if device is not None else default_device()
        model = model.to(self.device)
        if dtype is not None:
            model = model.to(dtype)
        from peft import PeftModel, get_peft_model

        if isinstance(model, PeftModel):
            self.is_lora = True
        elif lora is None:
            self.is_lora = False
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            cfg = default_lora_config() if isinstance(lora, str) and lora == "default" else lora
            with warnings.catch_warnings():  # PEFT reads transformers' deprecated `is_gradient_checkpointing`
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, cfg)
            self.is_lora = True
        self.model = model
        self.model.eval()
        sized = decode_limits(free_device_memory(self.device), self.base_model.config, self.dtype)
        self.max_batch_size = int(max_batch_size if max_batch_size is not None else sized.max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens if max_batch_tokens is not None else sized.max_batch_tokens)
        self.max_cached_tokens: int | None = (int(max_cached_tokens) if max_cached_tokens is not None
                                              else sized.max_cached_tokens)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad or EOS token")
        self.stop_token_ids: set[int] = self._default_stop_ids()
        self.encoded_tokens = 0
        """Context tokens run through the model by :meth:`generate` so far (not counting sampled tokens)."""

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "default", lora: Any = "default", device: Any = None, dtype: Any = None, **kwargs: Any
    ) -> HFPolicy:
        """Load ``name_or_path`` with :func:`~hero_gym.agents.models.load_model` (``"default"`` =
        SmolLM2-135M-Instruct) and wrap it."""
        from hero_gym.agents.models import load_model

        model, tok = load_model(name_or_path, device=device, dtype=dtype)
        return cls(model, tok, lora=lora, device=device, **kwargs)

    def _default_stop_ids(self) -> set[int]:
        ids: set[int] = set()

        def add(x: Any) -> None:
            if isinstance(x, int):
                ids.add(x)
            elif isinstance(x, (list, tuple)):
                ids.update(int(i) for i in x if i is not None)

        add(self.tokenizer.eos_token_id)
        gen_cfg = getattr(self.base_model, "generation_config", None)
        if gen_cfg is not None:
            add(getattr(gen_cfg, "eos_token_id", None))
        if getattr(self.tokenizer, "chat_template", None):
            try:
                from hero_gym.chat import ChatRenderer

                eot = ChatRenderer(self.tokenizer, check=False).end_of_turn_id
                if eot is not None:
                    ids.add(int(eot))
            except Exception:  # a template the renderer cannot probe: EOS only
                pass
        return ids

    @property
    def base_model(self) -> Any:
        """The underlying transformers model (without the PEFT wrapper)."""
        m = self.model
        if hasattr(m, "get_base_model"):
            return m.get_base_model()
        return m

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser should update (the LoRA weights, or all weights for full fine-tuning)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base model (LoRA adapter off), e.g. for a "base" teacher or a reference KL.
        Raises ``RuntimeError`` for full fine-tuning (there is no separate base)."""
        if not self.is_lora:
            raise RuntimeError("adapter_disabled() needs a LoRA policy (full fine-tuning has no separate base)")
        with self.model.disable_adapter():
            yield

    def reset_adapter(self, seed: int) -> None:
        """Re-draw the LoRA adapter's initial weights from ``seed`` (PEFT's initialisation: ``B = 0``, so the
        policy equals its base model again), leaving the global RNG untouched. Lets one base model serve
        many training runs in turn (the benchmark's cells) instead of one deep copy per run. Raises
        ``RuntimeError`` for full fine-tuning (there is no adapter to reset)."""
        if not self.is_lora:
            raise RuntimeError("reset_adapter() needs a LoRA policy")
        from peft.tuners.lora import LoraLayer

        devices = [self.device.index or 0] if self.device.type == "cuda" else []   # LoRA weights draw there
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            for module in self.model.modules():
                if isinstance(module, LoraLayer):
                    for name in list(module.lora_A.keys()):
                        module.reset_lora_parameters(name, True)

    # ------------------------------------------------------------------ generation
    def new_kv_cache(self) -> KVCache:
        """An empty :class:`KVCache` for one conversation (pass it to every :meth:`generate` call on it)."""
        return KVCache()

    @torch.no_grad()
    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        sampling: SamplingConfig | None = None,
        *,
        max_new_tokens: Sequence[int] | None = None,
        kv_caches: Sequence[KVCache | None] | None = None,
    ) -> list[Generation]:
        """Sample one reply for every context, all rows decoded together (chunks of ``max_batch_size``).

        Args:
            contexts: token ids per row (e.g. a chat context ending with the generation prompt).
            sampling: :class:`SamplingConfig` (default: temperature 1, 256 new tokens).
            max_new_tokens: optional per-row caps (e.g. the room left in a context window), each at most
                ``sampling.max_new_tokens``.
            kv_caches: optional :class:`KVCache` per row (``None`` entries: no cache), read and updated in
                place so that the next call on the same conversation encodes only its new tokens.
        Returns one :class:`Generation` per context, in order. ``encoded_tokens`` counts the context tokens
        run through the model (the part of each context not supplied by a cache).
        """
        sampling = sampling or SamplingConfig()
        if not contexts:
            return []
        if any(len(c) == 0 for c in contexts):
            raise ValueError("generate: empty context")
        if kv_caches is not None and len(kv_caches) != len(contexts):
            raise ValueError(f"generate: {len(kv_caches)} kv_caches for {len(contexts)} contexts")
        caps = [sampling.max_new_tokens] * len(contexts) if max_new_tokens is None else [
            min(int(m), sampling.max_new_tokens) for m in max_new_tokens]
        caches = list(kv_caches) if kv_caches is not None else [None] * len(contexts)
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(sampling.seed))
        was_training = self.model.training
        self.model.eval()
        try:
            if self.share_prefix:
                self._seed_shared_prefix(contexts, caches)
            out: list[Generation | None] = [None] * len(contexts)
            for chunk in self._chunks([len(c) + caps[i] for i, c in enumerate(contexts)]):
                gens = self._generate_chunk([contexts[i] for i in chunk], [caps[i] for i in chunk], sampling, gen,
                                            [caches[i] for i in chunk])
                for i, g in zip(chunk, gens):
                    out[i] = g
            return out  # type: ignore[return-value]
        finally:
            if was_training:
                self.model.train()

    def _prefill_inputs(self, contexts: Sequence[Sequence[int]], caches: Sequence[KVCache | None]) -> tuple:
        """Batch the part of each context a cache does not supply, after the cached keys/values.

        Layout of row ``i`` (reused ``r_i`` tokens, ``n_i`` new ones): ``[pad | cached r_i] [pad | new n_i]``,
        the cached block right-aligned in ``max r`` columns, the new block right-aligned in ``max n``.
        Padding is masked out and every token gets its true position, so rows of any lengths batch.
        Returns ``(input_ids, attention_mask, position_ids, past)``; ``past`` is ``None`` when nothing is reused.
        """
        reuse = [c.reusable(ctx) if c is not None and c.layers else 0 for c, ctx in zip(caches, contexts)]
        b, past_w = len(contexts), max(reuse)
        new_w = max(len(ctx) - r for ctx, r in zip(contexts, reuse))
        input_ids = torch.full((b, new_w), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((b, past_w + new_w), dtype=torch.long)
        pos = torch.zeros((b, new_w), dtype=torch.long)
        for i, (ctx, r) in enumerate(zip(contexts, reuse)):
            n = len(ctx) - r
            input_ids[i, new_w - n:] = torch.tensor(list(ctx[r:]), dtype=torch.long)
            attn[i, past_w - r:past_w] = 1
            attn[i, past_w + new_w - n:] = 1
            pos[i, new_w - n:] = torch.arange(r, r + n)
        self.encoded_tokens += sum(len(ctx) - r for ctx, r in zip(contexts, reuse))
        past = None
        if past_w:
            from transformers import DynamicCache

            n_layers = max(len(c.layers) for c, r in zip(caches, reuse) if r)
            stacked = []
            for layer in range(n_layers):
                ref = next(c.layers[layer][0] for c, r in zip(caches, reuse) if r)
                k = ref.new_zeros((b, ref.shape[1], past_w, ref.shape[3]))
                v = k.clone()
                for i, (c, r) in enumerate(zip(caches, reuse)):
                    if r:
                        k[i, :, past_w - r:] = c.layers[layer][0][0, :, :r]
                        v[i, :, past_w - r:] = c.layers[layer][1][0, :, :r]
                stacked.append((k, v))
            past = DynamicCache(stacked)
        return input_ids.to(self.device), attn.to(self.device), pos.to(self.device), past

    SHARED_PREFIX_MIN_TOKENS = 16
    """The shortest common prefix :meth:`generate` encodes once for several rows (``share_prefix``)."""

    def _seed_shared_prefix(self, contexts: Sequence[Sequence[int]], caches: Sequence[KVCache | None]) -> None:
        """Start the caches that lack the prefix all cached rows share from one encoding of it.

        The prefix is the longest one common to every row with a cache (at most all but each context's last
        token). When at least two of those caches supply less of it than it is long, it is run through the
        model once as a single row and each such cache is set to it; :meth:`_prefill_inputs` then reuses
        it like any cached prefix. Caches already covering more of their context are left alone."""
        rows = [i for i, c in enumerate(caches) if c is not None]
        if len(rows) < 2:
            return
        shared = os.path.commonprefix([list(contexts[i]) for i in rows])  # lexicographic min vs max: linear
        n = min(len(shared), min(len(contexts[i]) for i in rows) - 1)
        if n < self.SHARED_PREFIX_MIN_TOKENS:
            return
        lacking = [i for i in rows if (caches[i].reusable(contexts[i]) if caches[i].layers else 0) < n]
        if len(lacking) < 2:
            return
        from transformers.cache_utils import DynamicLayer

        ids = torch.tensor([shared[:n]], dtype=torch.long, device=self.device)
        out = _forward(self.model, 1, input_ids=ids, attention_mask=torch.ones_like(ids),
                       position_ids=torch.arange(n, device=self.device)[None], use_cache=True,
                       **cache_kwargs(self.model, None))
        self.encoded_tokens += n
        layers = getattr(output_cache(out), "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return  # sliding-window or other caches: every row encodes its own context
        kv = [(layer.keys, layer.values) for layer in layers]
        for i in lacking:
            caches[i].ids, caches[i].layers = list(shared[:n]), list(kv)

    @staticmethod
    def _save_row(cache: KVCache, past: Any, row: int, attn: torch.Tensor, ids: list[int]) -> None:
        """Copy row ``row`` of the batched ``past`` (its unmasked columns) into ``cache``, covering ``ids``.
        Caches with layers other than plain full-attention ones (e.g. sliding windows) are not kept."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(past, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            cache.clear()
            return
        keep = attn[row].bool()
        if int(keep.sum()) != len(ids) or layers[0].keys.shape[2] != keep.numel():
            raise RuntimeError("generate: KV cache and attention mask are out of step")
        cache.ids = list(ids)
        cache.layers = [(layer.keys[row:row + 1, :, keep], layer.values[row:row + 1, :, keep]) for layer in layers]

    def _generate_chunk(self, contexts: Sequence[Sequence[int]], caps: list[int], sc: SamplingConfig,
                        gen: torch.Generator | None, caches: Sequence[KVCache | None]) -> list[Generation]:
        b = len(contexts)
        input_ids, attn, pos, past = self._prefill_inputs(contexts, caches)
        stop_ids = torch.tensor(sorted(self.stop_token_ids | set(sc.stop_token_ids)) or [-1], device=self.device)
        toks: list[list[int]] = [[] for _ in range(b)]
        lps: list[list[float]] = [[] for _ in range(b)]
        reason: list[str | None] = [None] * b
        done = [caps[i] <= 0 for i in range(b)]
        for i in range(b):
            if done[i]:
                reason[i] = "length"
        out = _forward(self.model, 1, input_ids=input_ids, attention_mask=attn, position_ids=pos,
                       use_cache=True, **cache_kwargs(self.model, past))
        past = output_cache(out)
        logits = out.logits[:, -1, :].float()
        last_pos = pos[:, -1:]
        rows = list(range(b))  # position in the running batch -> original row

        def save(j: int, i: int) -> None:  # row i is done: keep its cache (context + reply but its last token)
            cache = caches[i]
            if cache is not None:
                self._save_row(cache, past, j, attn, list(contexts[i]) + toks[i][:-1])

        for j, i in enumerate(rows):
            if done[i]:
                save(j, i)
        # finished rows are dropped from the running batch (and its KV cache) when the cache supports it
        can_compact = hasattr(past, "batch_select_indices")
        max_steps = max(caps) if caps else 0
        for step in range(max_steps):
            if all(done):
                break
            if sc.greedy:
                logp = F.log_softmax(logits, dim=-1)
                nxt = logp.argmax(-1)
            else:
                logp = F.log_softmax(_filter_logits(logits / sc.temperature, sc.top_k, sc.top_p), dim=-1)
                nxt = sample_tokens(logp.exp(), gen)
            chosen = logp.gather(-1, nxt[:, None]).squeeze(-1)
            is_stop = torch.isin(nxt, stop_ids)
            # one host sync per token: ids (exact in float64), log-probs and stop flags in one transfer
            packed = torch.stack([nxt.double(), chosen.double(), is_stop.double()]).tolist()
            nxt_l, chosen_l, stop_l = [int(x) for x in packed[0]], packed[1], [x > 0.5 for x in packed[2]]
            for j, i in enumerate(rows):
                if done[i]:
                    continue
                toks[i].append(nxt_l[j])
                lps[i].append(chosen_l[j])
                if stop_l[j]:
                    reason[i] = "stop"
                elif sc.stop and self._hit_stop_string(toks[i], sc.stop):
                    reason[i] = "stop"
                elif len(toks[i]) >= caps[i]:
                    reason[i] = "length"
                if reason[i] is not None:
                    done[i] = True
                    save(j, i)
            if all(done) or step == max_steps - 1:
                break
            keep = [j for j, i in enumerate(rows) if not done[i]]
            if can_compact and len(keep) < len(rows):
                idx = torch.tensor(keep, dtype=torch.long, device=self.device)
                past.batch_select_indices(idx)
                nxt, attn, last_pos = nxt[idx], attn[idx], last_pos[idx]
                rows = [rows[j] for j in keep]
            elif len(keep) < len(rows):  # keep feeding finished rows (ignored) with padding
                finished = torch.tensor([done[i] for i in rows], device=self.device)
                nxt = torch.where(finished, torch.full_like(nxt, self.pad_token_id), nxt)
            attn = torch.cat([attn, torch.ones((attn.shape[0], 1), dtype=attn.dtype, device=self.device)], dim=1)
            last_pos = last_pos + 1
            out = self.model(input_ids=nxt[:, None], attention_mask=attn, position_ids=last_pos,
                             use_cache=True, **cache_kwargs(self.model, past))
            past = output_cache(out)
            logits = out.logits[:, -1, :].float()
        results = []
        for i in range(b):
            ids = toks[i]
            body = ids[:-1] if ids and reason[i] == "stop" and ids[-1] in self.stop_token_ids | set(sc.stop_token_ids) \
                else ids
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            results.append(Generation(token_ids=ids, logprobs=lps[i], text=text,
                                      finish_reason="stop" if reason[i] == "stop" else "length"))
        return results

    def _chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        """Row indices grouped for batching: sorted by length, at most ``max_batch_size`` rows and
        ``max_batch_tokens`` padded tokens per group (a single longer row still gets its own group)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            width = max(lengths[i], max((lengths[j] for j in cur), default=0))
            if cur and (len(cur) + 1 > self.max_batch_size or (len(cur) + 1) * width > self.max_batch_tokens):
                chunks.append(cur)
                cur = []
            cur.append(i)
        if cur:
            chunks.append(cur)
        return chunks

    def _hit_stop_string(self, ids: list[int], stops: Sequence[str]) -> bool:
        tail = self.tokenizer.decode(ids[-32:], skip_special_tokens=False)
        return any(s and s in tail for s in stops)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Save the trainable weights: the LoRA adapter (PEFT format) or, for full fine-tuning, the whole
        model (safetensors), plus the tokenizer and a small ``hero_policy.json``. ``state_dict``: the
        model's weights to write instead of its own (an FSDP-sharded model's gathered full state dict)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        extra = {} if state_dict is None else {"state_dict": state_dict}
        self.model.save_pretrained(str(path), safe_serialization=True, **extra)
        self.tokenizer.save_pretrained(str(path))
        (path / "hero_policy.json").write_text(json.dumps({"lora": self.is_lora}))

    def load(self, path: str | Path) -> None:
        """Load weights saved by :meth:`save` into this policy, in place (same architecture/adapter config)."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "hero_policy.json").read_text()) if (path / "hero_policy.json").exists() else {}
        if meta.get("lora", self.is_lora) != self.is_lora:
            raise ValueError(f"{path} holds a {'LoRA' if meta['lora'] else 'full'} checkpoint; this policy is "
                             f"{'LoRA' if self.is_lora else 'full'}")
        if self.is_lora:
            from peft import set_peft_model_state_dict

            state = load_file(str(path / "adapter_model.safetensors"), device=str(self.device))
            result = set_peft_model_state_dict(self.model, state)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"adapter keys not in this model: {unexpected[:5]}")
        else:
            state: dict[str, torch.Tensor] = {}
            for f in sorted(path.glob("*.safetensors")):
                state.update(load_file(str(f), device=str(self.device)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
            if missing or unexpected:
                raise ValueError(f"checkpoint mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
