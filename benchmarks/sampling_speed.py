"""Token sampling cost per decode step: ``torch.multinomial`` against the policy's inverse-CDF sampler.

    python benchmarks/sampling_speed.py [--rows 8] [--vocab 49152] [--reps 200]

Prints milliseconds per call for each and their ratio (one run, same machine, same threads). The policy
samples with :func:`hero_gym.agents.policy.sample_tokens`; both draw from the same distribution
(``tests/agents/test_policy.py::test_inverse_cdf_sampling_draws_from_the_distribution``).
"""

from __future__ import annotations

import argparse
import time

import torch

from hero_gym.agents.policy import sample_tokens


def _ms(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=49152, help="49152 = SmolLM2's vocabulary")
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(a.rows, a.vocab, generator=gen).mul(3).softmax(-1)
    multi = _ms(lambda: torch.multinomial(probs, 1, generator=gen), a.reps)
    icdf = _ms(lambda: sample_tokens(probs, gen), a.reps)
    print(f"rows {a.rows}, vocab {a.vocab}, torch threads {torch.get_num_threads()}")
    print(f"torch.multinomial   {multi:8.3f} ms/call")
    print(f"inverse CDF         {icdf:8.3f} ms/call   ({multi / icdf:.1f}x faster)")
    return {"multinomial_ms": multi, "inverse_cdf_ms": icdf}


if __name__ == "__main__":
    main()
