"""Teacher notes per method, the success buffer, and teacher weight kinds."""
import torch

from hero_gym.agents.reflector import Reflection, TurnReflection
from hero_gym.agents.teachers import (
    DEMO_HEADER,
    SuccessBuffer,
    TeacherWeights,
    build_notes,
    envfb_note,
    hero_note,
)
from hero_gym.records import Episode, Turn


def _ep(task, success, n=2, eid=None):
    turns = [Turn(index=i, action_text=f"act{i}-{task}-{success}", observation="obs" * (i + 1) + "X" * 1000)
             for i in range(n)]
    kw = {"episode_id": eid} if eid else {}
    return Episode(env_id="e", task_id=task, initial_observation="q", turns=turns, success=success, **kw)


def test_hero_note_target_only_when_high():
    t = {"name": "answer", "arguments": {"code": "412"}}
    assert "Better action" in hero_note(TurnReflection("wrong code", "high", t))
    assert "412" in hero_note(TurnReflection("wrong code", "high", t))
    assert "Better action" not in hero_note(TurnReflection("wrong code", "medium", t))
    assert hero_note(None) is None and hero_note(TurnReflection("  ", "high")) is None


def test_build_notes_each_method():
    eps = [_ep("a", False, eid="e1"), _ep("a", True, n=1, eid="e2"), _ep("b", False, eid="e3")]
    refl = [Reflection("e1", {1: TurnReflection("d", "low")}), Reflection("e2"), Reflection("e3", {0: TurnReflection("z")})]
    hero = build_notes("hero", eps, reflections=refl)
    assert hero[0][0] is None and "d" in hero[0][1] and hero[1] == [None] and hero[2][1] is None
    env = build_notes("envfb_sd", eps, envfb_max_chars=50)
    assert env[0][1].endswith("[truncated]") and "obsobs" in env[0][1] and len(env[0][1]) < 200
    assert build_notes("grpo", eps) == [[None, None], [None], [None, None]]
    demo = build_notes("full_demo", eps)
    assert demo[0][0].startswith(DEMO_HEADER) and "act0-a-True" in demo[0][0]
    assert demo[1][0] is not None            # the only success uses itself
    assert demo[2] == [None, None]           # task b: no success anywhere -> masked
    buf = SuccessBuffer()
    buf.add([_ep("b", True, n=1, eid="old")])
    demo = build_notes("full_demo", eps, success_buffer=buf)
    assert "act0-b-True" in demo[2][0]
    buf2 = SuccessBuffer()
    buf2.load_state_dict(buf.state_dict())
    assert buf2.get("b").episode_id == "old"


def test_envfb_note_short_kept():
    assert envfb_note("hello").endswith("hello")


def test_teacher_weights_ema_and_base():
    lin = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(lin.weight, 1.0)
    tw = TeacherWeights(lin, "ema", ema_decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    tw.update()                                  # shadow = 0.5*1 + 0.5*3 = 2
    with tw.active() as m:
        assert torch.allclose(m.weight, torch.full((1, 2), 2.0))
    assert torch.allclose(lin.weight, torch.full((1, 2), 3.0))   # restored
    live = TeacherWeights(lin, "live")
    with live.active() as m:
        assert m is lin
    base = TeacherWeights(lin, "base")           # no adapter: same as live
    with base.active() as m:
        assert torch.allclose(m.weight, torch.full((1, 2), 3.0))
