"""The probe's fast scoring path (one token trie per turn, :meth:`EpisodeScorer.score_tree`) gives what separate
forwards give, and the per-turn records of the fast path equal those of the reference path (one
:meth:`EpisodeScorer.score` call per note row)."""

import math

import torch

from hero_gym.agents.probe_score import EpisodeScorer, Query, _Tree, turn_records
from hero_gym.agents.reflector import Reflection
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn


def _episode(renderer, n_turns=3):
    """A recorded episode built the way collect builds contexts (prefix-preserving)."""
    msgs = [{"role": "system", "content": "Answer with the code."}, {"role": "user", "content": "What is it?"}]
    ctx = renderer.prompt_ids(msgs)
    turns = []
    for t in range(n_turns):
        text = f"answer[{t}{t}]"
        act = renderer.encode(text) + [renderer.end_of_turn_id]
        turns.append(Turn(index=t, action_text=text, observation=f"Wrong code {t}.", context_token_ids=list(ctx),
                          action_token_ids=act, action_error={"kind": "invalid"} if t % 2 == 0 else None))
        prev = msgs + [{"role": "assistant", "content": text}]
        new = [{"role": "user", "content": f"Wrong code {t}."}]
        ctx = ctx + act + renderer.continuation_ids(prev, new, sampled_ids=act)
        msgs = prev + new
    return Episode(env_id="x", initial_observation="What is it?", turns=turns, episode_id="e0")


def _reference(model, context, action):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + action])).logits[0]
    ref = torch.log_softmax(logits.float(), -1)[len(context) - 1:len(context) - 1 + len(action)]
    return ref, ref.gather(-1, torch.tensor(action)[:, None]).squeeze(-1)


def test_tree_scorer_equals_one_forward_per_turn_note_and_action(smol_tokenizer, tiny_lm):
    """Notes that share a header, a note repeated by two queries, the no-note context and two actions per query:
    every log-prob (and action 0's whole distribution) equals a separate causal forward, whatever the trie
    size per forward (a query per forward, a turn split, everything in one forward)."""
    r = ChatRenderer(smol_tokenizer)
    ep = _episode(r)
    other = r.encode("answer[99]") + [r.end_of_turn_id]
    qs = []
    for t, turn in enumerate(ep.turns):
        ctx = list(turn.context_token_ids)
        acts = [list(turn.action_token_ids), other]
        qs.append(Query(t, ctx, acts, keep_dist=True))
        for note in (f"Hindsight note: turn {t} was wrong.", f"Hindsight note: turn {t} was wrong. Try 99.",
                     "Hindsight note: something else entirely.", f"Hindsight note: turn {t} was wrong."):
            qs.append(Query(t, r.note_ids(ctx, note), acts, keep_dist=True))
    for group in (1, 40, 10_000):
        got = EpisodeScorer(tiny_lm, ep, group_tokens=group).score_tree(qs)
        for q, sc in zip(qs, got):
            for k, (a, lp) in enumerate(zip(q.actions, sc.token_logprobs)):
                dist, ref = _reference(tiny_lm, q.context, a)
                assert torch.allclose(lp, ref, atol=2e-4), (group, q.turn)
                if k == 0:
                    assert torch.allclose(sc.dist, dist, atol=2e-4)


def test_tree_encodes_shared_prefixes_once():
    """The trie's node count is the number of distinct prefixes; ``cost`` predicts what ``add`` creates. The
    control: sequences without a common prefix cost their full length."""
    tree = _Tree()
    seqs = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 6]]
    assert tree.cost(0, seqs) == 6
    tree.add(0, 0, 10, 2, seqs)
    assert len(tree) == 6 and tree.pos == [10, 11, 12, 13, 13, 12]
    assert tree.cost(0, [[1, 2, 3, 4]]) == 0 and tree.cost(0, [[1, 2, 7, 8]]) == 2
    assert tree.cost(1, [[1, 2, 3, 4]]) == 4          # another turn shares nothing (another cache length)
    assert _Tree().cost(0, [[1, 2], [3, 4], [5, 6]]) == 6
    assert tree.queries[0][2] == [[0, 1, 2, 3], [0, 1, 2, 4], [0, 1, 5]]


def test_tree_records_equal_the_reference_records(smol_tokenizer, tiny_lm):
    """turn_records with the trie path equals the reference path (one score() call per row): every Δ, log-prob,
    distillation signal and flag, with masked rows (None), a row repeating another's note and an oracle
    action on some turns only."""
    r = ChatRenderer(smol_tokenizer)
    eps = [_episode(r, 3), _episode(r, 2)]
    eps[1].episode_id = "e1"
    oracle = [["answer[77]", None, "answer[00]"], ["answer[11]", "answer[55]"]]
    notes = {"a": [[f"Hindsight note: turn {t} was wrong." for t in range(len(ep.turns))] for ep in eps],
             "b": [[f"Hindsight note: turn {t} was wrong. Better: answer[77]." if t != 1 else None
                    for t in range(len(ep.turns))] for ep in eps],
             "c": [[f"Hindsight note: turn {t} was wrong." for t in range(len(ep.turns))] for ep in eps],
             "free": [["The lighthouse keeper wound the clock." for _ in ep.turns] for ep in eps]}
    refl = [Reflection(ep.episode_id) for ep in eps]
    fast = turn_records(tiny_lm, r, eps, notes, oracle, "bracket", refl, {}, group_tokens=60, tree=True)
    slow = turn_records(tiny_lm, r, eps, notes, oracle, "bracket", refl, {}, tree=False)
    assert len(fast) == len(slow) == 5
    for f, s in zip(fast, slow):
        assert set(f) == set(s) and list(f["rows"]) == list(s["rows"]) == list(notes)
        for k in f:
            if k == "rows":
                continue
            if isinstance(s[k], float):
                assert math.isclose(f[k], s[k], abs_tol=1e-3), k
            else:
                assert f[k] == s[k], k
        for row in notes:
            if s["rows"][row] is None:
                assert f["rows"][row] is None
                continue
            for k, v in s["rows"][row].items():
                if isinstance(v, float):
                    assert math.isclose(f["rows"][row][k], v, abs_tol=1e-3), (row, k)
                else:
                    assert f["rows"][row][k] == v, (row, k)
    assert fast[1]["rows"]["b"] is None and fast[0]["rows"]["b"]["d_oracle"] is not None
    assert fast[1]["rows"]["a"]["d_oracle"] is None   # no oracle action at that turn


def test_scoring_workers_give_the_records_of_one_worker_in_episode_order(smol_tokenizer, tiny_lm):
    """Episodes scored in two threads (one torch thread each) give the one-thread records, in episode order,
    and the caller's torch thread count is restored."""
    r = ChatRenderer(smol_tokenizer)
    eps = [_episode(r, n) for n in (3, 1, 2, 3)]
    for k, ep in enumerate(eps):
        ep.episode_id = f"e{k}"
    oracle = [["answer[77]"] * len(ep.turns) for ep in eps]
    notes = {"a": [[f"Hindsight note: turn {t} was wrong." for t in range(len(ep.turns))] for ep in eps],
             "free": [["The lighthouse keeper wound the clock." for _ in ep.turns] for ep in eps]}
    refl = [Reflection(ep.episode_id) for ep in eps]
    threads = torch.get_num_threads()
    one = turn_records(tiny_lm, r, eps, notes, oracle, "bracket", refl, {}, workers=1)
    two = turn_records(tiny_lm, r, eps, notes, oracle, "bracket", refl, {}, workers=2)
    assert torch.get_num_threads() == threads
    assert [(x["episode_id"], x["turn"]) for x in two] == [(x["episode_id"], x["turn"]) for x in one]
    assert [x["episode_id"] for x in two] == ["e0"] * 3 + ["e1"] + ["e2"] * 2 + ["e3"] * 3
    for x, y in zip(one, two):
        for row in notes:
            for k in ("d_action", "d_oracle", "signal"):
                assert math.isclose(x["rows"][row][k], y["rows"][row][k], abs_tol=1e-4), (row, k)


def test_cli_reference_scoring_gives_the_same_report(tmp_path):
    """``--reference-scoring`` (a pass per row) and the default trie path give the same metrics on the same
    rollouts (same seed and ``--rollout-slots``); the provenance records the per-phase timings and the load."""
    import json

    from hero_gym.cli import main

    base = ["probe", "hero_gym/Lookup-v0", "--model", "tiny", "--episodes", "3", "--max-turns", "2",
            "--max-new-tokens", "8", "--model-reflector-episodes", "0", "--bootstrap", "50", "--rollout-slots", "2"]
    assert main(base + ["--out", str(tmp_path / "tree")]) == 0
    assert main(base + ["--reference-scoring", "--out", str(tmp_path / "ref")]) == 0
    tree, ref = (json.loads((tmp_path / d / "probe.json").read_text()) for d in ("tree", "ref"))
    assert tree["meta"]["config"]["tree_scoring"] and not ref["meta"]["config"]["tree_scoring"]
    assert tree["meta"]["config"]["rollout_slots"] == 2 and len(tree["meta"]["load_average"]) == 2
    assert {"rollouts", "scoring", "statistics"} <= set(tree["meta"]["timings"])
    assert tree["summary"]["turns"] == ref["summary"]["turns"] > 0
    for row, m in ref["summary"]["rows"].items():
        for key in ("d_wrong", "d_oracle", "d_right", "signal"):
            a, b = m[key], tree["summary"]["rows"][row][key]
            assert a["n"] == b["n"], (row, key)
            if a["n"]:
                assert math.isclose(a["value"], b["value"], abs_tol=1e-3), (row, key)


def test_cli_refuses_a_negative_worker_count(capsys):
    """``--scoring-workers -1`` is a usage error that names the flag (before any model is loaded)."""
    from hero_gym.cli import main

    assert main(["probe", "hero_gym/Lookup-v0", "--model", "tiny", "--scoring-workers", "-1"]) == 2
    assert "--scoring-workers must be >= 0" in capsys.readouterr().err
