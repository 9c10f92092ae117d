"""Per-token losses for HERO self-distillation and the GRPO baseline.

Everything here works on *flattened action tokens*: tensors of shape ``[N]`` or
``[N, V]`` where ``N`` counts only the sampled action tokens of all turns in a
batch. Observation, tool-result and prompt tokens never reach these functions
(the scoring code gathers action positions only), so they are masked by
construction; ``mask`` arguments exist for padding/"turn has no usable note".

Conventions (``P_T`` = teacher next-token distribution, ``P_S`` = student):

* forward KL  = KL(P_T || P_S) = sum_v P_T(v) (log P_T(v) - log P_S(v))
  (the classic distillation direction, Hinton et al. 2015; mode-covering)
* reverse KL  = KL(P_S || P_T) = sum_v P_S(v) (log P_S(v) - log P_T(v))
  (mode-seeking; the on-policy distillation direction)
* generalised JSD(alpha), following Agarwal et al. 2024 ("On-policy
  distillation of language models", GKD), with ``M = alpha P_T + (1-alpha) P_S``:
  JSD_alpha = alpha KL(P_T || M) + (1 - alpha) KL(P_S || M).
  alpha=0.5 is the usual (symmetric) Jensen-Shannon divergence.

The teacher is always under stop-gradient (its logits are detached here as well
as scored under ``torch.no_grad`` by the caller).
"""

from __future__ import annotations

from typing import Literal

import torch

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
TopKSource = Literal["teacher", "student"]

__all__ = [
    "DivergenceKind",
    "divergence",
    "topk_with_tail",
    "sampled_token_loss",
    "importance_weights",
    "group_advantages",
    "grpo_token_loss",
]


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim from log-probabilities; 0 * log 0 := 0."""
    p = log_p.exp()
    terms = p * (log_p - log_q)
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)


def divergence(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    kind: DivergenceKind = "forward_kl",
    alpha: float = 0.5,
) -> torch.Tensor:
    """Per-row divergence between two categorical distributions given as log-probs.

    Args:
        student_logp, teacher_logp: ``[N, C]`` normalised log-probabilities (full
            vocabulary, or top-k plus a tail bucket from :func:`topk_with_tail`).
        kind: ``"forward_kl"`` = KL(T||S), ``"reverse_kl"`` = KL(S||T),
            ``"jsd"`` = generalised JSD(alpha) (see module docstring).
        alpha: JSD interpolation weight in ``(0, 1)``; ignored for the KLs.

    Returns: ``[N]`` divergences (non-negative up to float error).
    """
    t = teacher_logp.detach()
    s = student_logp
    if kind == "forward_kl":
        return _kl(t, s)
    if kind == "reverse_kl":
        return _kl(s, t)
    if kind == "jsd":
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"JSD alpha must be in (0, 1), got {alpha}")
        # log M = logsumexp(log alpha + log T, log(1-alpha) + log S), computed stably.
        log_m = torch.logsumexp(
            torch.stack([t + torch.log(torch.tensor(alpha, dtype=t.dtype)),
                         s + torch.log(torch.tensor(1.0 - alpha, dtype=s.dtype))]),
            dim=0,
        )
        return alpha * _kl(t, log_m) + (1.0 - alpha) * _kl(s, log_m)
    raise ValueError(f"unknown divergence kind {kind!r}")


def topk_with_tail(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    k: int,
    source: TopKSource = "student",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce two ``[N, V]`` log-prob tables to ``[N, k+1]``: k shared tokens + one tail bucket.

    The k token ids are the top-k of ``source`` (the student's by default, as in SDPO). Both
    distributions are evaluated on the *same* ids; the last column holds the
    remaining mass ``log(1 - sum_topk p)``, computed exactly as the logsumexp of
    the excluded entries (no ``log1p(-x)`` cancellation). The result is again a
    normalised distribution over k+1 outcomes, so any :func:`divergence`
    applies and lower-bounds the full-vocabulary one (data-processing inequality).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    V = student_logp.shape[-1]
    if k >= V:
        return student_logp, teacher_logp
    ref = teacher_logp if source == "teacher" else student_logp
    idx = ref.detach().topk(k, dim=-1).indices
    excluded = torch.ones_like(student_logp, dtype=torch.bool).scatter(-1, idx, False)
    neg_inf = torch.finfo(student_logp.dtype).min

    def reduce(lp: torch.Tensor) -> torch.Tensor:
        top = lp.gather(-1, idx)
        tail = torch.logsumexp(lp.masked_fill(~excluded, neg_inf), dim=-1, keepdim=True)
        return torch.cat([top, tail], dim=-1)

    return reduce(student_logp), reduce(teacher_logp)


def importance_weights(
    student_logp: torch.Tensor,
    behaviour_logp: torch.Tensor | None,
    clip: float | None = 2.0,
) -> torch.Tensor:
    """Truncated importance weights ``sg(min(pi_S(a)/mu(a), clip))`` per sampled token.

    ``student_logp``: current student log-prob of each sampled token; ``behaviour_logp``:
    the log-prob recorded at sampling time (``Turn.action_logprobs``). Corrects
    the distillation loss for tokens sampled by a (slightly) older policy;
    truncation at ``clip`` bounds the variance (truncated IS, Ionides 2008;
    as in V-trace, Espeholt et al. 2018). ``behaviour_logp=None`` or ``clip=None``
    gives unit weights. Weights carry no gradient.
    """
    if behaviour_logp is None or clip is None:
        return torch.ones_like(student_logp).detach()
    ratio = torch.exp(student_logp.detach() - behaviour_logp.detach())
    return ratio.clamp(max=clip)


def sampled_token_loss(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    behaviour_logp: torch.Tensor | None = None,
    clip_eps: float | None = 0.2,
) -> torch.Tensor:
    """Sampled-token distillation: only the log-probs of the sampled tokens are used.

    Per token the "advantage" is ``A = sg(log P_T(a) - log P_S(a))`` (the negative
    single-sample reverse-KL estimate), optimised with a PPO-clipped surrogate
    ``-min(rho A, clip(rho, 1-eps, 1+eps) A)`` where ``rho = P_S(a)/mu(a)``
    (``mu`` = behaviour policy; ``rho = 1`` in value when ``behaviour_logp`` is None).
    At ``rho = 1`` the gradient is ``-A grad log P_S(a)``, the score-function
    gradient of KL(P_S || P_T) (Williams 1992). Needs no ``[N, V]`` tables.
    Returns ``[N]``.
    """
    adv = (teacher_logp.detach() - student_logp.detach())
    base = behaviour_logp.detach() if behaviour_logp is not None else student_logp.detach()
    ratio = torch.exp(student_logp - base)
    surr = ratio * adv
    if clip_eps is not None:
        surr = torch.minimum(surr, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return -surr


def group_advantages(
    rewards: torch.Tensor | list[float],
    group_ids: list,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO group-relative outcome advantages (Shao et al. 2024, DeepSeekMath, eq. 3 outcome form).

    ``A_i = (r_i - mean_g r) / (std_g r + eps)`` over the episodes sharing
    ``group_ids[i]`` (population std). A group whose rewards are all equal
    (including a singleton) gets zero advantage. ``normalize_std=False`` gives the
    plain mean-centred variant (Dr. GRPO, Liu et al. 2025).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.numel() != len(group_ids):
        raise ValueError("rewards and group_ids differ in length")
    adv = torch.zeros_like(r)
    groups: dict = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for members in groups.values():
        idx = torch.tensor(members)
        rg = r[idx]
        centred = rg - rg.mean()
        if normalize_std:
            centred = centred / (rg.std(unbiased=False) + eps)
        adv[idx] = centred
    return adv


def grpo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Per-token clipped policy-gradient surrogate (PPO, Schulman et al. 2017) + optional KL to a reference.

    ``L = -min(rho A, clip(rho, 1-eps, 1+eps) A) + kl_coef * k3``, where
    ``rho = exp(logp - old_logp)``, ``A`` is the episode advantage broadcast to its
    action tokens, and ``k3 = exp(ref - logp) - (ref - logp) - 1`` is the
    non-negative unbiased KL(pi || ref) estimator (Schulman 2020, "Approximating
    KL divergence"). Returns ``[N]``.
    """
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach()
    loss = -torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    if ref_logp is not None and kl_coef:
        d = ref_logp.detach() - logp
        loss = loss + kl_coef * (torch.exp(d) - d - 1.0)
    return loss
