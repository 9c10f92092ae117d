"""Text spaces for multi-turn envs.

``gymnasium.spaces.Text`` only admits a fixed character set and a maximum length, which real
model replies and tool observations break at once. :class:`AnyText` admits any ``str`` (up to an
optional length), samples printable strings, and is a proper ``gymnasium.spaces.Space`` so that
Gymnasium's own env checker accepts it.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium.spaces import Space

_SAMPLE_CHARS = np.array(list(string.ascii_letters + string.digits + string.punctuation + " \n"))


class AnyText(Space[str]):
    """Any Python ``str`` of length ``<= max_length`` (no limit when ``None``)."""

    def __init__(self, max_length: int | None = None, seed: int | np.random.Generator | None = None):
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random printable string of 1..64 characters (garbage, good for robustness checks)."""
        hi = 64 if self.max_length is None else max(1, min(64, self.max_length))
        n = int(self.np_random.integers(1, hi + 1))
        return "".join(self.np_random.choice(_SAMPLE_CHARS, size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and (self.max_length is None or len(x) <= self.max_length)

    def __repr__(self) -> str:
        return f"AnyText(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AnyText) and other.max_length == self.max_length

    def to_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)
