import numpy as np

from hero_gym.spaces import AnyText


def test_any_text_contains_any_str():
    space = AnyText()
    assert space.contains("Ünïcödé ✓ \x00 " * 1000)
    assert not space.contains(b"bytes") and not space.contains(3)
    assert not AnyText(max_length=3).contains("abcd")


def test_sample_is_seeded_and_contained():
    a, b = AnyText(seed=1), AnyText(seed=1)
    samples = [a.sample() for _ in range(20)]
    assert samples == [b.sample() for _ in range(20)]
    assert all(a.contains(s) and len(s) >= 1 for s in samples)
    assert AnyText(max_length=2, seed=np.random.default_rng(0)).sample().__len__() <= 2
