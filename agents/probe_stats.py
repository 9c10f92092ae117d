"""Statistics of the mechanism probe: cluster-bootstrap means, paired differences and a weighted AUC.

The probe's unit of observation is a turn, but turns of one episode are not independent (the same
context, the same mistakes repeated), so every interval here resamples **clusters** (episodes) with
replacement and recomputes the statistic over all turns of the drawn clusters. An interval that
resamples turns instead is too narrow when turns within an episode are correlated
(``tests/agents/test_probe.py`` checks this on synthetic data with a known answer).

A resample is a vector of cluster counts ``w`` (multinomial): a mean is ``sum_c w_c S_c / sum_c w_c n_c``
with ``S_c`` the sum and ``n_c`` the number of a cluster's values, so ``n_boot`` resamples cost one matrix
product. All functions are deterministic given ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "cluster_bootstrap_mean", "cluster_bootstrap_auc", "cluster_weights", "auc"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval (``nan`` when there is no data) and the sample size."""

    value: float
    lo: float
    hi: float
    n: int
    clusters: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.n) and (self.lo > 0 or self.hi < 0)

    def fmt(self, digits: int = 2, ci: bool = True) -> str:
        if not self.n or not np.isfinite(self.value):
            return "—"
        s = f"{self.value:+.{digits}f}"
        if ci and np.isfinite(self.lo):
            s += f" [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"
        return s

    def to_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n, "clusters": self.clusters}


_EMPTY = Estimate(float("nan"), float("nan"), float("nan"), 0, 0)


def cluster_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_clusters]`` counts of each cluster in each resample (clusters drawn with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(float)


def _codes(clusters: Sequence) -> tuple[np.ndarray, int]:
    _, codes = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    return codes, int(codes.max()) + 1 if len(codes) else 0


def cluster_bootstrap_mean(values: Sequence[float], clusters: Sequence, *, n_boot: int = 2000, level: float = 0.95,
                           seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile interval from resampling ``clusters`` (one label per value).

    Pass ``clusters=range(len(values))`` for the ordinary (unclustered) bootstrap."""
    x = np.asarray(values, dtype=float)
    if len(x) != len(clusters):
        raise ValueError("values and clusters must have the same length")
    if not len(x):
        return _EMPTY
    codes, k = _codes(clusters)
    sums = np.bincount(codes, weights=x, minlength=k)
    counts = np.bincount(codes, minlength=k).astype(float)
    if k < 2:
        return Estimate(float(x.mean()), float("nan"), float("nan"), len(x), k)
    w = cluster_weights(k, n_boot, seed)
    den = w @ counts
    ok = den > 0
    boots = (w @ sums)[ok] / den[ok]
    a = (1 - level) / 2
    return Estimate(float(x.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), len(x), k)


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a ``pos`` value > a ``neg`` value) + half the ties (0.5 = no separation)."""
    p, q = np.asarray(pos, float), np.asarray(neg, float)
    if not len(p) or not len(q):
        return float("nan")
    m = (p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :])
    return float(m.mean())


def cluster_bootstrap_auc(pos: Sequence[float], pos_clusters: Sequence, neg: Sequence[float], neg_clusters: Sequence,
                          *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """:func:`auc` of ``pos`` over ``neg`` with an interval from resampling the clusters both share
    (a drawn cluster brings its positive and its negative values)."""
    p, q = np.asarray(pos, float), np.asarray(neg, float)
    if not len(p) or not len(q):
        return _EMPTY
    codes, k = _codes(list(pos_clusters) + list(neg_clusters))
    cp, cq = codes[: len(p)], codes[len(p):]
    m = (p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :])
    point = float(m.mean())
    if k < 2:
        return Estimate(point, float("nan"), float("nan"), len(p) + len(q), k)
    w = cluster_weights(k, n_boot, seed)
    wp, wq = w[:, cp], w[:, cq]                      # per resample, the weight of each value
    num = np.einsum("bi,ij,bj->b", wp, m, wq)
    den = wp.sum(1) * wq.sum(1)
    ok = den > 0
    boots = num[ok] / den[ok]
    a = (1 - level) / 2
    return Estimate(point, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), len(p) + len(q), k)
