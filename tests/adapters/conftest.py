"""Shared fixtures of the adapter tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def tool_tokenizer():
    """SmolLM2's tokenizer with TRL's ChatML chat template that renders tools (same special tokens)."""
    pytest.importorskip("trl")
    from trl.chat_template_utils import qwen2_5_chat_template

    from hero_gym.agents.models import load_default_tokenizer

    tok = load_default_tokenizer()
    tok.chat_template = qwen2_5_chat_template
    tok.padding_side = "left"
    return tok
