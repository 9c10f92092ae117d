"""Teacher notes per method, the success buffer, and teacher weight kinds."""
import pytest
import torch

from hero_gym.agents.methods import NoteOptions, build_notes
from hero_gym.agents.reflector import Reflection, TurnReflection
from hero_gym.agents.teachers import DEMO_HEADER, SuccessBuffer, TeacherWeights, envfb_note, hero_note
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


def test_low_confidence_diagnoses_are_masked_by_default():
    """a low-confidence (uninformative) diagnosis does not enter the loss unless asked."""
    low = TurnReflection("No direct error signal; the episode failed.", "low")
    assert hero_note(low) is None
    assert hero_note(low, min_confidence="low") is not None
    assert hero_note(TurnReflection("d", "medium")) is not None
    assert hero_note(TurnReflection("d", "medium"), min_confidence="high") is None


def test_build_notes_each_method():
    eps = [_ep("a", False, eid="e1"), _ep("a", True, n=1, eid="e2"), _ep("b", False, eid="e3")]
    refl = [Reflection("e1", {1: TurnReflection("d", "medium")}), Reflection("e2"),
            Reflection("e3", {0: TurnReflection("z", "low")})]
    for method in ("hero", "hero_rules"):
        hero = build_notes(method, eps, reflections=refl)
        assert hero[0][0] is None and "d" in hero[0][1] and hero[1] == [None] and hero[2] == [None, None]
    env = build_notes("envfb_sd", eps, options=NoteOptions(envfb_max_chars=50))
    assert env[0][1].endswith("[truncated]") and "obsobs" in env[0][1] and len(env[0][1]) < 200
    assert build_notes("grpo", eps) == [[None, None], [None], [None, None]]
    demo = build_notes("full_demo", eps)
    assert demo[0][0].startswith(DEMO_HEADER) and "act0-a-True" in demo[0][0]
    assert demo[1] == [None]                 # the only success: never its own trajectory
    assert demo[2] == [None, None]           # task b: no success anywhere -> masked
    buf = SuccessBuffer()
    buf.add([_ep("b", True, n=1, eid="old")])
    demo = build_notes("full_demo", eps, success_buffer=buf)
    assert "act0-b-True" in demo[2][0]
    buf2 = SuccessBuffer()
    buf2.load_state_dict(buf.state_dict())
    assert buf2.get("b").episode_id == "old"


def test_full_demo_never_shows_the_episode_its_own_actions():
    """with no successful sibling, a successful episode used to get itself as the demo,
    from the batch or from the buffer (which holds it after ``buffer.add``)."""
    ep = _ep("a", True, n=2, eid="self")
    buf = SuccessBuffer()
    buf.add([ep])
    for b in (None, buf):
        assert build_notes("full_demo", [ep], success_buffer=b) == [[None, None]]
    other = _ep("a", True, n=1, eid="other")
    notes = build_notes("full_demo", [ep, other])   # each shows the other's trajectory
    assert notes[0][0].count("Step ") == 1 and notes[1][0].count("Step ") == 2


def test_envfb_note_short_kept():
    assert envfb_note("hello").endswith("hello")


def test_teacher_weights_ema_and_base():
    lin = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(lin.weight, 1.0)
    tw = TeacherWeights(lin, "ema", ema_rate=0.5)
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


def test_vllm_row_seeds_do_not_collide_across_rows_and_steps():
    """seeds ``seed + row`` gave row 1 of step s the draws of row 0 of step s + 1."""
    from hero_gym.agents.vllm_policy import row_seed

    seeds = {row_seed(s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400 and row_seed(3, 1) == row_seed(3, 1) and all(0 <= x < 2**63 for x in seeds)


def _visible_refl():
    return TurnReflection("Execution error: the clicked button is not on this page.", "medium",
                          {"name": "click", "arguments": {"target": "b0x"}}, verdict="error", target_text="click[b0x]",
                          target_confidence="high", target_source="visible",
                          echo_diagnosis="Execution error: There is no button '4' on this page.")


def test_note_styles():
    from hero_gym.agents.teachers import HERO_HEADER, NOTE_STYLES

    r = _visible_refl()
    notes = {s: hero_note(r, style=s) for s in NOTE_STYLES}
    assert notes["no_echo_target"] == (f"{HERO_HEADER}\nExecution error: the clicked button is not on this page."
                                       "\nBetter action: click[b0x]")
    assert notes["no_echo_target"] == hero_note(r)                   # the default
    assert notes["no_echo"] == f"{HERO_HEADER}\nExecution error: the clicked button is not on this page."
    assert notes["target_only"] == f"{HERO_HEADER}\nBetter action: click[b0x]"
    assert notes["echo_target"] == f"{HERO_HEADER}\nExecution error: There is no button '4' on this page.\nBetter action: click[b0x]"
    # legacy: the quoting wording, and no visible-information target (the old reflector had none)
    assert notes["legacy"] == f"{HERO_HEADER}\nExecution error: There is no button '4' on this page."
    assert hero_note(TurnReflection("d", "medium"), style="target_only") is None     # no target: masked
    with pytest.raises(ValueError):
        hero_note(r, style="fancy")


def test_legacy_style_renders_given_targets_as_before_and_new_styles_in_env_syntax():
    msg = TurnReflection("Asked nothing.", "high", {"message": "Could you give me your email?"}, target_source="given",
                         target_text="Could you give me your email?")
    assert hero_note(msg, style="legacy").endswith("Better action: reply to the user: Could you give me your email?")
    assert hero_note(msg).endswith("Better action: Could you give me your email?")
    call = TurnReflection("Wrong call.", "high", {"name": "answer", "arguments": {"code": "412"}})   # hand-made
    assert hero_note(call, style="legacy").endswith('Better action: {"name": "answer", "arguments": {"code": "412"}}')
    assert hero_note(call).endswith('Better action: <tool_call>\n{"name": "answer", "arguments": {"code": "412"}}\n</tool_call>')
    low_target = TurnReflection("d", "medium", {"message": "x"}, target_text="x", target_confidence="medium")
    assert "Better action" not in hero_note(low_target)              # the target's own confidence gates it


def test_note_style_reaches_the_notes_and_the_config():
    from hero_gym.agents.trainer import TrainConfig, make_reflector, note_options

    eps = [_ep("a", False, n=1, eid="e1")]
    refl = [Reflection("e1", {0: _visible_refl()})]
    for style in ("legacy", "target_only"):
        [[note]] = build_notes("hero_rules", eps, reflections=refl, options=NoteOptions(note_style=style))
        assert note == hero_note(refl[0].get(0), style=style)
    cfg = TrainConfig(method="hero", note_style="legacy")
    assert note_options(cfg, 0).note_style == "legacy"
    assert make_reflector(cfg.spec, lambda chats: [], cfg).style == "legacy"
    assert make_reflector(TrainConfig().spec, lambda chats: [], TrainConfig()).style == "current"
    with pytest.raises(ValueError):
        TrainConfig(note_style="fancy")
