"""Model helpers: the KV-cache keyword across transformers releases, and the suite's private cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from hero_gym.agents.models import cache_dir, cache_kwargs, output_cache


class _NewStyle(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None):  # noqa: ANN001, D102
        return cache


class _OldStyle(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None):  # noqa: ANN001, D102
        return past_key_values


class _Wrapper(torch.nn.Module):
    """Shaped like a PEFT wrapper: ``forward(*args, **kwargs)`` over ``base_model.model``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.base_model = torch.nn.Module()
        self.base_model.model = inner

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003, D102
        return self.base_model.model(*args, **kwargs)


@pytest.mark.parametrize("cls,kw", [(_NewStyle, "cache"), (_OldStyle, "past_key_values")])
def test_cache_keyword_follows_the_forward_signature(cls, kw):
    m = cls()
    assert cache_kwargs(m, "C") == {kw: "C"}
    assert cache_kwargs(_Wrapper(m), "C") == {kw: "C"}
    assert m(**cache_kwargs(m, "C")) == "C"


def test_installed_transformers_gets_the_keyword_its_decoder_names(tiny_lm):
    import inspect

    names = inspect.signature(type(tiny_lm).forward).parameters
    want = "cache" if "cache" in names else "past_key_values"
    assert list(cache_kwargs(tiny_lm, None)) == [want]
    out = tiny_lm(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True)
    assert output_cache(out).get_seq_length() == 3


def test_output_cache_reads_either_field():
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    key = "cache" if "cache" in fields else "past_key_values"
    assert output_cache(CausalLMOutputWithPast(**{key: "C"})) == "C"


def test_the_suite_uses_a_private_cache():
    """``make test`` must not write warm starts or converted models into the user's cache."""
    root = cache_dir().resolve()
    assert root != (Path.home() / ".cache" / "hero_gym").resolve()
    if not os.environ.get("HERO_GYM_TEST_CACHE"):
        assert str(root).startswith(str(Path(tempfile.gettempdir()).resolve()))
