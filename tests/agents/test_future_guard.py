"""The no-future-exposure guard: model-reflector diagnoses/targets that copy a later turn are dropped and counted."""
import pytest
import torch

from hero_gym.agents.future_guard import drop_future_copies
from hero_gym.agents.reflector import Reflection, TurnReflection
from hero_gym.records import Episode, Turn

LATER_PAGE = "Results page 2: Blue cotton t-shirt, size medium, $12.99 [SEP] Red wool scarf $8.50 [SEP] Next >"


def _episode():
    turns = [
        Turn(index=0, action_text="search[shirt]", observation="Error: unknown product category shirts for this store",
             parsed_action={"name": "search", "arguments": {"q": "shirt"}}),
        Turn(index=1, action_text="search[blue cotton shirt]", observation=LATER_PAGE,
             parsed_action={"name": "search", "arguments": {"q": "blue cotton shirt"}}),
        Turn(index=2, action_text="search[shirt]", observation="Error: unknown product category shirts for this store",
             parsed_action={"name": "search", "arguments": {"q": "shirt"}}),
        Turn(index=3, action_text="click[next >]", observation="Results page 3",
             parsed_action={"name": "click", "arguments": {"target": "next >"}}),
    ]
    return Episode(env_id="e", initial_observation="Find a blue cotton shirt under $20.", turns=turns)


def test_copies_of_later_turns_are_dropped_and_counted():
    """The rule was prompt-only; nothing removed a diagnosis quoting the future."""
    ep = _episode()
    refl = Reflection(ep.episode_id, {
        # quotes a later observation at length: dropped
        0: TurnReflection(f"Wrong: the store shows {LATER_PAGE[:60]} after a better search.", "high"),
        # quotes its own observation (allowed), which recurs at turn 2: kept
        1: TurnReflection("Good; unlike 'error: unknown product category shirts for this store' it found items.",
                          "high", {"name": "search", "arguments": {"q": "shirt"}}),
        # copies the later action text verbatim: dropped
        2: TurnReflection("Should have used click[next >] right away.", "medium"),
    })
    refl_first = Reflection(ep.episode_id, {0: TurnReflection("Too vague; search more precisely.", "high",
                                                              {"name": "search", "arguments": {"q": "blue cotton shirt"}})})
    (out, out_first), counts = drop_future_copies([ep, ep], [refl, refl_first])
    assert set(out.turns) == {1} and out.turns[1].next_action_target is not None   # turn 0's call, not a later one
    # a target that is exactly the action a later turn took is dropped, its diagnosis kept
    assert out_first.turns[0].next_action_target is None and "vague" in out_first.turns[0].diagnosis
    assert counts == {"diagnoses": 2, "targets": 1}
    assert len(refl.turns) == 3 and refl_first.turns[0].next_action_target is not None   # input untouched
    # the turn's own observation and earlier text is not "later"
    own = Reflection(ep.episode_id, {1: TurnReflection(f"It showed {LATER_PAGE[:50]}: good.", "high")})
    assert drop_future_copies([ep], [own])[1] == {"diagnoses": 0, "targets": 0}


def test_bad_input():
    with pytest.raises(ValueError, match="one Reflection per episode"):
        drop_future_copies([_episode()], [])


def test_trainer_drops_model_reflector_copies_and_logs_the_count(tmp_path):
    from hero_gym.agents.models import load_default_tokenizer, tiny_model
    from hero_gym.agents.policy import HFPolicy
    from hero_gym.agents.reflector import LLMReflector
    from hero_gym.agents.trainer import TrainConfig, train
    from hero_gym.records import load_jsonl

    class CopyingReflector(LLMReflector):
        """A model reflector that writes the later turns' actions into turn 1's diagnosis."""

        def reflect(self, episodes):
            return [Reflection(ep.episode_id, {0: TurnReflection(
                "Later: " + " | ".join(t.action_text for t in ep.turns[1:]), "high")}) for ep in episodes]

    torch.set_num_threads(1)
    tok = load_default_tokenizer()
    cfg = TrainConfig(method="hero", env_id="hero_gym/Lookup-v0", env_kwargs={"num_items": 4}, turn_budget=8,
                      tasks_per_update=1, group_size=2, max_turns=3, max_new_tokens=6, seed=1, progress=False,
                      checkpoint_dir=str(tmp_path))
    refl = CopyingReflector(lambda chats: [""] * len(chats))
    res = train(HFPolicy(tiny_model(tok, seed=1), tok), cfg, reflector=refl)
    episodes = load_jsonl(tmp_path / "episodes.jsonl")
    expected = drop_future_copies(episodes, refl.reflect(episodes))[1]["diagnoses"]
    assert expected > 0 and sum(m["future_copy_diagnoses_dropped"] for m in res.metrics) == expected
    # what the teacher saw is what was kept: no logged reflection quotes a later action
    assert all("reflection" not in e.metadata or "turn1" not in e.metadata["reflection"]
               for e in episodes if len({t.action_text for t in e.turns}) == len(e.turns) > 1)
