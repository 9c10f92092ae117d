"""The method registry: the shuffled-diagnoses ablations and full-demo's expert fallback."""
import pytest

import hero_gym
from hero_gym.agents.methods import METHODS, ExpertDemos, NoteOptions, build_notes, shuffled_notes
from hero_gym.agents.reflector import Reflection, RuleReflector, TurnReflection
from hero_gym.agents.teachers import DEMO_HEADER
from hero_gym.records import Episode, Turn


def _ep(task, n=3, eid=None):
    turns = [Turn(index=i, action_text=f"act{i}", observation=f"obs{i}") for i in range(n)]
    return Episode(env_id="e", task_id=task, initial_observation="q", turns=turns, episode_id=eid or f"{task}-{n}")


@pytest.mark.parametrize("method", ["hero_shuffled", "hero_rules_shuffled"])
def test_shuffled_notes_come_from_other_tasks_on_heros_own_turns(method):
    """Donors were drawn over the whole batch (a third of the episodes of 2 tasks x 2 rollouts
    got their same-task sibling's diagnosis) and donor turns that did not exist were masked, so the ablation
    trained other turns than HERO. Now: other tasks only, and exactly HERO's note positions."""
    eps, refl = [], []
    for task in ("a", "b"):
        for g in range(2):
            i = len(eps)
            eps.append(_ep(task, n=2 + i, eid=f"e{i}"))
            # episode i diagnoses turns i % 2, i % 2 + 1, ... (different positions and counts per episode)
            refl.append(Reflection(f"e{i}", {t: TurnReflection(f"diagnosis {t} of episode {i} task {task}", "high")
                                             for t in range(i % 2, 2 + i, 2)}))
    own = build_notes("hero_rules", eps, reflections=refl)
    for seed in range(30):
        notes = build_notes(method, eps, reflections=refl, options=NoteOptions(seed=seed))
        for i, ep in enumerate(eps):
            assert [n is None for n in notes[i]] == [n is None for n in own[i]]   # the same turns trained
            for note in filter(None, notes[i]):
                assert f"task {ep.task_id}" not in note                          # never the same task's
    # a batch of one task has no donor: masked, not filled with a sibling's diagnosis
    assert build_notes(method, eps[:2], reflections=refl[:2]) == [[None] * 2, [None] * 3]


def test_shuffled_notes_repeat_a_shorter_donor_and_are_seeded():
    eps = [_ep("a", 3), _ep("b", 1)]
    own = [["x0", None, "x2"], ["y0"]]
    assert shuffled_notes(own, eps, seed=0) == [["y0", None, "y0"], ["x0"]]
    assert shuffled_notes(own, eps, seed=1) == shuffled_notes(own, eps, seed=1)


def test_registry_labels_and_flags():
    assert {m: s.label for m, s in METHODS.items()} == {
        "grpo": "GRPO", "envfb_sd": "Env-feedback SD",
        "full_demo": "Full-demo (successful rollout, else expert demonstration)", "hero_rules": "HERO (rules)",
        "hero_rules_shuffled": "HERO (rules, shuffled diagnoses)", "hero": "HERO",
        "hero_shuffled": "HERO (shuffled diagnoses)",
        "hero_rules_oracle": "Ceiling: HERO (rules) + oracle targets (privileged)"}
    assert [m for m, s in METHODS.items() if s.oracle] == ["hero_rules_oracle"]
    assert METHODS["grpo"].uses_grpo and not METHODS["grpo"].distills
    assert METHODS["hero"].reflector == "model" and METHODS["hero_rules"].reflector == "rules"
    assert METHODS["hero_rules_shuffled"].reflector == "rules" and METHODS["hero_shuffled"].reflector == "model"
    assert METHODS["envfb_sd"].reflector is None


def test_rules_shuffled_on_real_lookup_episodes_keeps_the_rule_positions():
    env = hero_gym.make("hero_gym/Lookup-v0", num_items=4)
    eps = []
    for task in (0, 1):
        for bad in (False, True):
            obs, info = env.reset(seed=task, options={"task_index": task})
            ep = Episode(env_id="l", task_id=info["task_id"], initial_observation=obs)
            item = env.unwrapped._item
            actions = ([f'<tool_call>{{"name": "lookup", "arguments": {{"key": "{item}"}}}}</tool_call>'] * (2 if bad else 1)
                       + [f'<tool_call>{{"name": "answer", "arguments": {{"code": "{env.unwrapped.table[item]}"}}}}'
                          '</tool_call>'])
            for a in actions:
                obs, r, term, trunc, info = env.step(a)
                ep.turns.append(Turn(index=len(ep.turns), action_text=a, observation=obs, reward=r, terminated=term,
                                     parsed_action=info.get("parsed_action"), action_error=info.get("action_error")))
            ep.success = bool(info.get("success"))
            eps.append(ep)
    refl = RuleReflector().reflect(eps)
    own = build_notes("hero_rules", eps, reflections=refl)
    shuffled = build_notes("hero_rules_shuffled", eps, reflections=refl, options=NoteOptions(seed=3))
    assert [[n is None for n in row] for row in own] == [[n is None for n in row] for row in shuffled]
    assert sum(n is not None for row in own for n in row) >= 4   # every final answer, plus the repeated lookup


def test_expert_demos_play_the_same_training_task_and_only_keep_successes():
    """Full-demo's fallback when no rollout of the task succeeded."""
    env = hero_gym.make("hero_gym/Lookup-v0", num_items=16, split="train")
    obs, info = env.reset(seed=11, options={"task_index": 5})
    ep = Episode(env_id="hero_gym/Lookup-v0", task_id=info["task_id"], initial_observation=obs, seed=11,
                 options={"task_index": 5}, turns=[Turn(index=0, action_text="nope", observation="Wrong code.")])
    demos = ExpertDemos("hero_gym/Lookup-v0", {"num_items": 16, "split": "train"})
    demo = demos(ep)
    assert demo is not None and demo.success and demo.initial_observation == obs and demo.task_id == ep.task_id
    assert len(demo.turns) == 2 and demos(ep) is demo and (demos.asked, demos.used) == (2, 2)
    notes = build_notes("full_demo", [ep], options=NoteOptions(expert_demo=demos))
    assert notes[0][0].startswith(DEMO_HEADER) and env.unwrapped.table[env.unwrapped._item] in notes[0][0]
    assert build_notes("full_demo", [ep]) == [[None]]   # without the fallback: masked, as before
    # an expert that cannot finish within the turn cap gives no demonstration
    capped = ExpertDemos("hero_gym/Lookup-v0", {"num_items": 16, "split": "train"}, max_turns=1)
    assert capped(ep) is None and capped.used == 0
