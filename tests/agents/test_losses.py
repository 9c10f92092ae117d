"""Loss functions against values computed by hand (plain Python floats) on small distributions."""
import math

import pytest
import torch

from hero_gym.agents import losses as L

P_T = [0.5, 0.3, 0.2]   # teacher
P_S = [0.2, 0.5, 0.3]   # student


def logits(p):
    return torch.tensor([[math.log(x) for x in p]], dtype=torch.float32)


def distill(s_logits, t_logits, kind="forward_kl", alpha=0.5, topk=None, topk_source="teacher"):
    """The trainer's per-token distillation: log-softmax both, optional top-k + tail, divergence."""
    s = torch.log_softmax(s_logits, -1)
    t = torch.log_softmax(t_logits, -1)
    if topk is not None:
        s, t = L.topk_with_tail(s, t, topk, topk_source)
    return L.divergence(s, t, kind, alpha)


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_forward_kl_hand():
    # 0.5 ln(0.5/0.2) + 0.3 ln(0.3/0.5) + 0.2 ln(0.2/0.3)
    want = 0.5 * math.log(2.5) + 0.3 * math.log(0.6) + 0.2 * math.log(2 / 3)
    assert want == pytest.approx(0.2238, abs=1e-4)
    got = distill(logits(P_S), logits(P_T), kind="forward_kl")
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_reverse_kl_hand():
    want = 0.2 * math.log(0.4) + 0.5 * math.log(5 / 3) + 0.3 * math.log(1.5)
    assert want == pytest.approx(0.1938, abs=1e-4)
    got = distill(logits(P_S), logits(P_T), kind="reverse_kl")
    assert got.item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.9])
def test_jsd_hand(alpha):
    m = [alpha * t + (1 - alpha) * s for t, s in zip(P_T, P_S)]
    want = alpha * kl(P_T, m) + (1 - alpha) * kl(P_S, m)
    got = distill(logits(P_S), logits(P_T), kind="jsd", alpha=alpha)
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_jsd_half_value():
    # M = [0.35, 0.4, 0.25]
    want = 0.5 * (0.5 * math.log(0.5 / 0.35) + 0.3 * math.log(0.3 / 0.4) + 0.2 * math.log(0.2 / 0.25)) \
        + 0.5 * (0.2 * math.log(0.2 / 0.35) + 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.25))
    got = distill(logits(P_S), logits(P_T), kind="jsd", alpha=0.5)
    assert got.item() == pytest.approx(want, abs=1e-6)
    assert want == pytest.approx(0.0507, abs=1e-3)


def test_identical_distributions_zero():
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert distill(logits(P_T), logits(P_T), kind=kind).item() == pytest.approx(0.0, abs=1e-7)


def test_topk_tail_hand():
    t = [0.4, 0.3, 0.2, 0.1]
    s = [0.1, 0.2, 0.3, 0.4]
    # teacher top-2 = tokens 0,1; tail buckets: teacher 0.3, student 0.7
    tt, ss = [0.4, 0.3, 0.3], [0.1, 0.2, 0.7]
    got_s, got_t = L.topk_with_tail(torch.log(torch.tensor([s])), torch.log(torch.tensor([t])), 2, "teacher")
    assert got_t.exp().tolist()[0] == pytest.approx(tt, abs=1e-6)
    assert got_s.exp().tolist()[0] == pytest.approx(ss, abs=1e-6)
    fwd = distill(logits(s), logits(t), kind="forward_kl", topk=2)
    assert fwd.item() == pytest.approx(kl(tt, ss), abs=1e-6)
    rev = distill(logits(s), logits(t), kind="reverse_kl", topk=2)
    assert rev.item() == pytest.approx(kl(ss, tt), abs=1e-6)
    # student-sourced top-2 = tokens 3,2 -> teacher [0.1, 0.2, 0.7], student [0.4, 0.3, 0.3]
    fwd_s = distill(logits(s), logits(t), kind="forward_kl", topk=2, topk_source="student")
    assert fwd_s.item() == pytest.approx(kl([0.1, 0.2, 0.7], [0.4, 0.3, 0.3]), abs=1e-6)
    # the tail-bucket divergence lower-bounds the full one
    full = distill(logits(s), logits(t), kind="forward_kl")
    assert fwd.item() <= full.item() + 1e-7
    # k >= V is the full vocabulary
    assert distill(logits(s), logits(t), topk=10).item() == pytest.approx(full.item(), abs=1e-7)


def test_teacher_gets_no_gradient_student_does():
    s = logits(P_S).requires_grad_(True)
    t = logits(P_T).requires_grad_(True)
    distill(s, t, kind="forward_kl").sum().backward()
    assert t.grad is None
    # d/dz_S KL(T||S) = softmax(z_S) - p_T
    assert s.grad[0].tolist() == pytest.approx([0.2 - 0.5, 0.5 - 0.3, 0.3 - 0.2], abs=1e-6)


def test_importance_weight_clip_hand():
    cur = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    old = torch.log(torch.tensor([0.2, 0.3, 0.4]))
    w = L.importance_weights(cur, old, clip=2.0)
    # ratios 3.0 (clipped to 2.0), 1.0, 0.25
    assert w.tolist() == pytest.approx([2.0, 1.0, 0.25], abs=1e-6)
    assert not w.requires_grad
    assert L.importance_weights(cur, None).tolist() == [1.0, 1.0, 1.0]


def test_sampled_token_loss_hand_and_clip():
    s = torch.log(torch.tensor([0.2, 0.5], requires_grad=False)).requires_grad_(True)
    t = torch.log(torch.tensor([0.4, 0.25]))
    # rho = 1: loss = -(log pT - log pS) = [-ln 2, ln 2]
    out = L.sampled_token_loss(s, t)
    assert out.tolist() == pytest.approx([-math.log(2), math.log(2)], abs=1e-6)
    out.sum().backward()
    assert s.grad.tolist() == pytest.approx([-math.log(2), math.log(2)], abs=1e-6)
    # clipping: behaviour prob 0.1 -> rho = 2 for token 0 (A = ln 2 > 0) is clipped at 1.2
    beh = torch.log(torch.tensor([0.1, 0.5]))
    out = L.sampled_token_loss(torch.log(torch.tensor([0.2, 0.5])), t, beh, clip_eps=0.2)
    assert out[0].item() == pytest.approx(-1.2 * math.log(2), abs=1e-6)


def test_group_advantages_hand():
    adv = L.group_advantages([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 2.0], ["a", "a", "a", "a", "b", "b", "c"])
    # group a: mean .5, population std .5 -> +-1; b all equal -> 0; singleton c -> 0
    assert adv.tolist() == pytest.approx([1, -1, 1, -1, 0, 0, 0], abs=1e-4)
    # mean-only variant
    adv = L.group_advantages([3.0, 1.0], [0, 0], normalize_std=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0])


def test_equal_rewards_zero_advantage():
    adv = L.group_advantages([0.7] * 5, [1] * 5)
    assert torch.count_nonzero(adv).item() == 0
    lp = torch.log(torch.tensor([0.3, 0.6])).requires_grad_(True)
    loss = L.grpo_token_loss(lp, lp.detach(), torch.zeros(2)).sum()
    loss.backward()
    assert loss.item() == 0.0 and lp.grad.abs().sum().item() == 0.0


def test_grpo_clipped_surrogate_hand():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.8, 0.8, 0.3, 0.3]))   # ratios 1.6, 1.6, 0.6, 0.6
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = L.grpo_token_loss(new, old, adv, clip_eps=0.2)
    # A>0, rho=1.6: -min(1.6, 1.2) = -1.2 ; A<0, rho=1.6: -min(-1.6, -1.2) = 1.6
    # A>0, rho=0.6: -min(0.6, 0.8) = -0.6 ; A<0, rho=0.6: -min(-0.6, -0.8) = 0.8
    assert out.tolist() == pytest.approx([-1.2, 1.6, -0.6, 0.8], abs=1e-5)


def test_grpo_kl_to_reference_hand():
    lp = torch.log(torch.tensor([0.5]))
    ref = torch.log(torch.tensor([0.25]))
    d = math.log(0.5)          # ref - logp
    k3 = math.exp(d) - d - 1   # 0.5 + ln 2 - 1
    out = L.grpo_token_loss(lp, lp, torch.zeros(1), ref_logp=ref, kl_coef=0.1)
    assert out.item() == pytest.approx(0.1 * k3, abs=1e-6)
