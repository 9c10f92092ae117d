"""The distillation loss in one function: zero when the teacher agrees, positive and clipped otherwise."""
import torch

from hero_gym.agents.trainer import TrainConfig
from hero_gym.agents.update import distillation_loss


def _logp(seed, n=3, v=50):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, v, generator=g), -1)


def test_distillation_loss_is_zero_iff_teacher_and_student_agree():
    s, t, ids = _logp(0), _logp(1), torch.tensor([3, 7, 11])
    beh = s.gather(-1, ids[:, None]).squeeze(-1)
    for loss in ("jsd", "forward_kl", "reverse_kl"):
        cfg = TrainConfig(loss=loss, topk=10)
        assert torch.allclose(distillation_loss(s, s, ids, beh, cfg), torch.zeros(3), atol=1e-6)
        assert (distillation_loss(s, t, ids, beh, cfg) > 0).all()
    full = distillation_loss(s, t, ids, beh, TrainConfig(topk=None))
    assert (full > 0).all()


def test_importance_weights_are_clipped():
    s, t, ids = _logp(0), _logp(1), torch.tensor([3, 7, 11])
    cfg = TrainConfig(is_clip=2.0)
    base = distillation_loss(s, t, ids, s.gather(-1, ids[:, None]).squeeze(-1), cfg)   # ratio 1
    far = distillation_loss(s, t, ids, torch.full((3,), -30.0), cfg)                # ratio huge -> 2
    assert torch.allclose(far, 2 * base)
