"""A FAKE vLLM for CPU tests — not vLLM. It implements the small part of vLLM's documented offline API that
``hero_gym.agents.vllm_policy`` uses, on top of a transformers model, so the wiring (engine arguments, token
prompts, per-row sampling parameters, LoRA hand-over, sleep/wake, the context window) can be tested where
vLLM does not install:

* ``LLM(model=path, **engine_args)``; unknown engine arguments raise ``TypeError`` (as vLLM's ``EngineArgs``
  does); ``llm.llm_engine.model_config.max_model_len``; ``llm.get_tokenizer()``.
* ``llm.generate(prompts, sampling_params, use_tqdm=..., lora_request=...)`` -> ``RequestOutput``-shaped
  objects: ``.outputs[0].token_ids``, ``.logprobs`` (a list of ``{token_id: Logprob(logprob=...)}``),
  ``.finish_reason`` (``"stop"`` / ``"length"``). A prompt of ``max_model_len`` tokens or more raises
  ``ValueError`` (vLLM refuses prompts past the model length); generating while asleep raises.
* ``SamplingParams(**kw)``, ``LoRARequest(lora_name, lora_int_id, lora_path)`` (an adapter is loaded once per
  ``lora_int_id``, like vLLM's LoRA cache), ``TokensPrompt(prompt_token_ids=...)``.
* ``llm.sleep(level=1)`` / ``llm.wake_up(tags=None)``.

Generation itself is :class:`hero_gym.agents.policy.HFPolicy`'s, one request at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

ENGINE_ARGS = {"gpu_memory_utilization", "max_model_len", "enable_lora", "max_lora_rank", "logprobs_mode",
               "enable_sleep_mode", "dtype", "seed", "enable_prefix_caching"}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: list[str] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    seed: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


def TokensPrompt(prompt_token_ids: list[int]) -> dict[str, Any]:  # noqa: N802 - vLLM's TypedDict name
    return {"prompt_token_ids": list(prompt_token_ids)}


class LLM:
    """The fake engine. Class attributes record every instance for the tests."""

    instances: list[LLM] = []
    rejected: set[str] = set()

    def __init__(self, model: str, **engine_args: Any):
        unknown = sorted(set(engine_args) - (ENGINE_ARGS - type(self).rejected))
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        from hero_gym.agents.models import load_model

        self.model_path = model
        self.engine_args = engine_args
        self._base, self._tok = load_model(model, device="cpu", dtype="float32")
        cfg_len = int(self._base.config.max_position_embeddings)
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(
            max_model_len=int(engine_args.get("max_model_len") or cfg_len)))
        self.sleeping = False
        self.calls: list[dict[str, Any]] = []       # one per generate call
        self.events: list[str] = []                 # "sleep", "wake_up", "generate", "load_lora:<id>"
        self._loaded: dict[int, Any] = {}
        LLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self._tok

    def sleep(self, level: int = 1) -> None:
        assert self.engine_args.get("enable_sleep_mode"), "sleep() needs enable_sleep_mode=True"
        self.sleeping = True
        self.events.append("sleep")

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.sleeping = False
        self.events.append("wake_up")

    def _policy(self, lora: LoRARequest | None) -> Any:
        from hero_gym.agents.policy import HFPolicy

        if lora is None:
            return HFPolicy(self._base, self._tok, lora=None, device="cpu")
        if not self.engine_args.get("enable_lora"):
            raise ValueError("LoRA is not enabled")
        if lora.lora_int_id not in self._loaded:
            from peft import PeftModel

            self.events.append(f"load_lora:{lora.lora_int_id}")
            self._loaded[lora.lora_int_id] = PeftModel.from_pretrained(copy.deepcopy(self._base), lora.lora_path)
        return HFPolicy(self._loaded[lora.lora_int_id], self._tok, device="cpu")

    def generate(self, prompts: list[dict[str, Any]], sampling_params: Any = None, *, use_tqdm: bool = True,
                 lora_request: LoRARequest | None = None) -> list[Any]:
        from hero_gym.agents.policy import SamplingConfig

        if self.sleeping:
            raise RuntimeError("the engine is asleep")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        limit = self.llm_engine.model_config.max_model_len
        for p in prompts:
            if len(p["prompt_token_ids"]) >= limit:
                raise ValueError(f"The decoder prompt (length {len(p['prompt_token_ids'])}) is longer than the "
                                 f"maximum model length of {limit}.")
        self.events.append("generate")
        self.calls.append({"n": len(prompts), "lora": lora_request})
        policy = self._policy(lora_request)
        outs = []
        for p, sp in zip(prompts, params):
            ids = p["prompt_token_ids"]
            sc = SamplingConfig(max_new_tokens=min(sp.max_tokens, limit - len(ids)), temperature=sp.temperature,
                                top_p=sp.top_p, top_k=max(sp.top_k, 0), stop=list(sp.stop or []),
                                stop_token_ids=list(sp.stop_token_ids), seed=sp.seed)
            g = policy.generate([ids], sc)[0]
            lps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(g.token_ids, g.logprobs)]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(g.token_ids), logprobs=lps,
                                                                 finish_reason=g.finish_reason, text=g.text)]))
        return outs


class LLMWithoutSleep(LLM):
    """An older fake vLLM: no sleep mode, no ``enable_sleep_mode`` / ``logprobs_mode`` engine arguments."""

    rejected = {"logprobs_mode", "enable_sleep_mode"}
    sleep = None  # type: ignore[assignment]
    wake_up = None  # type: ignore[assignment]


def api(llm_class: type = LLM) -> SimpleNamespace:
    """The fake's entry points, shaped like ``hero_gym.agents.vllm_policy.vllm_api()``."""
    return SimpleNamespace(LLM=llm_class, SamplingParams=SamplingParams, LoRARequest=LoRARequest,
                           TokensPrompt=TokensPrompt)
