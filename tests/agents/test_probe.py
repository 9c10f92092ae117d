"""The mechanism probe: its scorer equals separate forwards, its statistics respect clustering, and on a model
that reads notes an informative note raises the oracle action while a context-free note does not."""

import json

import numpy as np
import pytest
import torch

import hero_gym
from hero_gym.agents.probe import (OracleRecorder, ProbeConfig, normalise_action, probe_notes, run_probe,
                                   turn_kind)
from hero_gym.agents.probe_report import summarise, write_outputs
from hero_gym.agents.probe_score import EpisodeScorer, Query, turn_records
from hero_gym.agents.probe_stats import auc, cluster_bootstrap_auc, cluster_bootstrap_mean
from hero_gym.agents.reflector import Reflection, RuleReflector
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn


# ---------------------------------------------------------------- statistics with a known answer
def _clustered(n_clusters=30, per=10, seed=0):
    rng = np.random.default_rng(seed)
    effects = rng.normal(0, 1, n_clusters)
    values = np.repeat(effects, per) + rng.normal(0, 0.1, n_clusters * per)
    return values, np.repeat(np.arange(n_clusters), per)


def test_clustered_interval_is_wider_than_the_unclustered_one_when_turns_correlate():
    values, clusters = _clustered()
    c = cluster_bootstrap_mean(values, clusters, n_boot=4000, seed=1)
    u = cluster_bootstrap_mean(values, range(len(values)), n_boot=4000, seed=1)
    assert c.value == pytest.approx(u.value) == pytest.approx(values.mean())
    # the analytic standard errors: sd(cluster means)/sqrt(30) vs sd(values)/sqrt(300)
    se_c = values.reshape(30, 10).mean(1).std(ddof=1) / np.sqrt(30)
    se_u = values.std(ddof=1) / np.sqrt(300)
    assert (c.hi - c.lo) == pytest.approx(2 * 1.96 * se_c, rel=0.2)
    assert (u.hi - u.lo) == pytest.approx(2 * 1.96 * se_u, rel=0.2)
    assert (c.hi - c.lo) > 2.5 * (u.hi - u.lo)


def test_clustered_interval_covers_the_true_mean_at_about_the_nominal_rate():
    hits = 0
    for s in range(60):
        values, clusters = _clustered(seed=100 + s)
        e = cluster_bootstrap_mean(values, clusters, n_boot=1000, seed=s)
        hits += e.lo <= 0.0 <= e.hi
    assert hits >= 50          # ~95% nominal; the unclustered interval covers far less often
    miss = sum(not (cluster_bootstrap_mean(*_clustered(seed=100 + s)[:1], range(300), n_boot=500).lo <= 0
                    <= cluster_bootstrap_mean(*_clustered(seed=100 + s)[:1], range(300), n_boot=500).hi)
               for s in range(20))
    assert miss >= 8


def test_auc_known_answer_and_interval():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 400), rng.normal(0, 1, 400)
    assert auc(pos, neg) == pytest.approx(0.76, abs=0.03)     # Phi(1/sqrt(2))
    e = cluster_bootstrap_auc(pos, np.arange(400) % 40, neg, np.arange(400) % 40, n_boot=500)
    assert e.lo < 0.76 < e.hi and e.hi - e.lo < 0.15
    assert auc([1, 1], [1]) == 0.5 and np.isnan(auc([], [1]))


def test_empty_and_bad_input():
    assert cluster_bootstrap_mean([], []).n == 0
    with pytest.raises(ValueError):
        cluster_bootstrap_mean([1.0, 2.0], [0])


# ---------------------------------------------------------------- actions and kinds
def test_normalise_action_and_turn_kinds():
    assert normalise_action("click[ Large ]", "bracket") == normalise_action({"name": "click", "arguments":
                                                                             {"target": "large"}}, "bracket")
    assert normalise_action("search[Red  Shoes]", "bracket") == "search[red shoes]"
    assert normalise_action("hello", "bracket") == "<malformed>"
    call = '<tool_call>\n{"name": "get_user", "arguments": {"b": 1, "a": 2}}\n</tool_call>'
    assert normalise_action(call, "hermes") == normalise_action({"name": "get_user", "arguments": {"a": 2, "b": 1}},
                                                                "hermes")
    assert normalise_action("Hi there", "hermes") == normalise_action({"message": "x"}, "hermes") == "message"
    assert normalise_action(None, "hermes") is None
    assert turn_kind(None, "click[a]", "click[a]") == "right"
    assert turn_kind(None, "click[a]", "click[b]") == "wrong"
    assert turn_kind({"kind": "invalid_arguments"}, "click[z]", "click[b]") == "invalid"
    assert turn_kind(None, "message", "message") == "unjudged"
    assert turn_kind(None, "click[a]", None) == "unjudged"


def test_oracle_recorder_stores_the_oracle_action_of_the_state_before_each_step():
    env = OracleRecorder(hero_gym.make("hero_gym/Lookup-v0"))
    env.reset(options={"task_index": 0})
    first = env.unwrapped.oracle_action()
    *_, info = env.step("hello")
    assert info["oracle_action"] == first and '"lookup"' in first
    *_, info = env.step(first)
    assert info["oracle_action"] == first
    *_, term, _, info = env.step(env.unwrapped.oracle_action())
    assert term and '"answer"' in info["oracle_action"]


# ---------------------------------------------------------------- the scorer
def _episode(renderer, tok_ids_of, n_turns=3):
    """A recorded episode built the way collect builds contexts (prefix-preserving)."""
    msgs = [{"role": "system", "content": "Answer with the code."}, {"role": "user", "content": "What is it?"}]
    ctx = renderer.prompt_ids(msgs)
    turns = []
    for t in range(n_turns):
        text = f"answer[{t}{t}]"
        act = tok_ids_of(text) + [renderer.end_of_turn_id]
        turns.append(Turn(index=t, action_text=text, observation=f"Wrong code {t}.", context_token_ids=list(ctx),
                          action_token_ids=act))
        prev = msgs + [{"role": "assistant", "content": text}]
        new = [{"role": "user", "content": f"Wrong code {t}."}]
        ctx = ctx + act + renderer.continuation_ids(prev, new, sampled_ids=act)
        msgs = prev + new
    return Episode(env_id="x", initial_observation="What is it?", turns=turns)


def test_scorer_equals_one_forward_per_turn_note_and_action(smol_tokenizer, tiny_lm):
    r = ChatRenderer(smol_tokenizer)
    ep = _episode(r, r.encode)
    other = r.encode("answer[99]") + [r.end_of_turn_id]
    qs = []
    for t, turn in enumerate(ep.turns):
        qs.append(Query(t, list(turn.context_token_ids), [list(turn.action_token_ids), other]))
        qs.append(Query(t, r.note_ids(turn.context_token_ids, f"Note {t}: the code is 99."),
                        [list(turn.action_token_ids), other], keep_dist=True))
    for group in (1, 10_000):      # one tree per forward, and every tree packed into one forward
        got = EpisodeScorer(tiny_lm, ep, group_tokens=group).score(qs)
        for q, sc in zip(qs, got):
            for a, lp in zip(q.actions, sc.token_logprobs):
                with torch.no_grad():
                    logits = tiny_lm(input_ids=torch.tensor([q.context + a])).logits[0]
                ref = torch.log_softmax(logits.float(), -1)[len(q.context) - 1:len(q.context) - 1 + len(a)]
                ref = ref.gather(-1, torch.tensor(a)[:, None]).squeeze(-1)
                assert torch.allclose(lp, ref, atol=2e-4), (group, q.turn)
            if q.keep_dist:
                assert sc.dist.shape == (len(q.actions[0]), logits.shape[-1])


# ---------------------------------------------------------------- the mechanism, on a model that reads notes
WORDS = ["red", "blue"]


def test_an_informative_note_raises_the_oracle_action_and_a_context_free_one_does_not(smol_tokenizer, fit_reader):
    """The reader is fitted to emit the action a note names, and to pick either action with even odds without a
    note or with irrelevant text. The probe must then find Δ log p(a*) > 0 for the informative note (CI above
    0: log 2 in theory) and no effect for the context-free control (CI includes 0). If the probe did not put
    the notes in the teacher's context, the informative row would be 0 too; if it scored the wrong tokens or
    positions, neither row would be what the reader was fitted to."""
    from hero_gym.agents.probe import _context_free

    r = ChatRenderer(smol_tokenizer)
    act = {w: r.encode(w) + [r.end_of_turn_id] for w in WORDS}
    note = {w: f"Better action: {w}" for w in WORDS}
    free = _context_free(len(note["blue"]))

    def ctx(i):
        return r.prompt_ids([{"role": "user", "content": f"Shop {i}: pick the colour."}])

    pairs = []
    for i in range(3):
        for w in WORDS:
            pairs += [(r.note_ids(ctx(i), note[w]), act[w]), (ctx(i), act[w]), (r.note_ids(ctx(i), free), act[w])]
    model = fit_reader(pairs, steps=150)
    episodes, oracle, n = [], [], 12
    for k in range(n):      # the student said the other word (an invalid action); the oracle names the target
        target, wrong = WORDS[k % 2], WORDS[1 - k % 2]
        episodes.append(Episode(env_id="x", initial_observation="", episode_id=f"e{k}", turns=[
            Turn(index=0, action_text=wrong, observation="Error", action_error={"kind": "invalid_arguments"},
                 context_token_ids=ctx(k % 3), action_token_ids=act[wrong])]))
        oracle.append([target])
    notes = {"informative": [[note[o[0]]] for o in oracle], "context_free": [[free] for _ in oracle]}
    turns = turn_records(model, r, episodes, notes, oracle, "hermes", [Reflection(ep.episode_id) for ep in episodes], {})
    assert all(t["kind"] == "invalid" for t in turns)
    s = summarise(turns, list(notes), n_boot=2000)
    inf, ctl = s["rows"]["informative"]["d_oracle"], s["rows"]["context_free"]["d_oracle"]
    assert inf["n"] == ctl["n"] == n
    assert inf["lo"] > 0.5, inf
    assert ctl["lo"] <= 0 <= ctl["hi"] and abs(ctl["value"]) < 0.05, ctl
    # and the sampled (wrong) action: the informative note lowers it, the control leaves it
    assert s["rows"]["informative"]["d_wrong"]["hi"] < -0.5
    assert abs(s["rows"]["context_free"]["d_wrong"]["value"]) < 0.05


# ---------------------------------------------------------------- notes and the whole run
def test_probe_notes_use_the_registry_and_add_the_controls(smol_tokenizer):
    from hero_gym.agents.methods import NoteOptions, build_notes
    from hero_gym.agents.teachers import envfb_note

    env = hero_gym.make("hero_gym/Lookup-v0")
    eps = []
    for i in range(3):
        obs, _ = env.reset(options={"task_index": i})
        ep = Episode(env_id="lookup", initial_observation=obs, task_id=f"t{i}", episode_id=f"e{i}")
        for a in ["hi", '<tool_call>{"name": "lookup", "arguments": {"key": "zzz"}}</tool_call>']:
            obs, r, term, trunc, info = env.step(a)
            ep.turns.append(Turn(index=len(ep.turns), action_text=a, observation=obs,
                                 action_error=info["action_error"], parsed_action=info["parsed_action"]))
        eps.append(ep)
    rule = RuleReflector().reflect(eps)
    oracle = [['<tool_call>{"name": "lookup", "arguments": {"key": "apple"}}</tool_call>'] * 2 for _ in eps]
    rows = probe_notes(eps, ["grpo", "envfb_sd", "hero_rules"], rule_reflections=rule, oracle_texts=oracle,
                       note_styles=["legacy"])
    assert "grpo" not in rows
    assert rows["hero_rules"] == build_notes("hero_rules", eps, reflections=rule, options=NoteOptions())
    assert rows["hero_rules:legacy"] == build_notes("hero_rules", eps, reflections=rule,
                                                    options=NoteOptions(note_style="legacy"))
    assert rows["hero_rules_shuffled"] == build_notes("hero_rules_shuffled", eps, reflections=rule,
                                                      options=NoteOptions())
    assert rows["envfb_sd"] == build_notes("envfb_sd", eps, options=NoteOptions())
    assert all("Better action: <tool_call>" in n for row in rows["oracle_target"] for n in row)
    assert all('Better action: {"name": "lookup"' in n for row in rows["oracle_target_json"] for n in row)
    for ep, row in zip(eps, rows["context_free"]):
        for turn, n in zip(ep.turns, row):
            assert len(n) == len(envfb_note(turn.observation)) and "lookup" not in n


def test_run_probe_end_to_end_writes_the_report(smol_tokenizer, tiny_lm, tmp_path):
    cfg = ProbeConfig(env_id="hero_gym/Lookup-v0", episodes=3, max_turns=3, max_new_tokens=10,
                      model_reflector_episodes=2, reflector_max_new_tokens=16, n_boot=100)
    res = run_probe(tiny_lm, smol_tokenizer, cfg)
    assert len(res.episodes) == 3 and res.turns and res.oracle["available"]
    assert {"envfb_sd", "hero_rules", "hero", "oracle_target", "context_free"} <= set(res.rows)
    assert all(t["oracle_text"] for t in res.turns)
    s = summarise(res.turns, res.rows, n_boot=100)
    out = write_outputs(res, s, {"env_id": cfg.env_id}, None, tmp_path / "p")
    for f in ("probe.md", "probe.json", "turns.csv", "delta.png", "examples.md"):
        assert (out / f).stat().st_size > 0
    data = json.loads((out / "probe.json").read_text())
    assert data["summary"]["turns"] == len(res.turns)
    assert "E[Δ log p(a_t)] = −KL" in (out / "probe.md").read_text()


def test_cli_probe(tmp_path, capsys):
    from hero_gym.cli import main

    assert main(["probe", "hero_gym/Lookup-v0", "--model", "tiny", "--episodes", "2", "--max-turns", "2",
                 "--max-new-tokens", "8", "--model-reflector-episodes", "0", "--bootstrap", "50",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "probe.md").exists()
    assert main(["probe", "hero_gym/Nope-v0"]) == 2
    assert main(["probe", "hero_gym/Lookup-v0", "--methods", "nope"]) == 2


def _delta_plot(rows, tmp_path, monkeypatch):
    """Render the probe's delta plot of ``rows`` (each row the same cell in every panel unless given) and return
    the figure it would have saved."""
    import matplotlib
    from matplotlib.figure import Figure

    from hero_gym.agents.probe_report import _plot

    matplotlib.use("Agg")
    seen = {}
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: seen.setdefault("fig", self))
    _plot({"rows": rows}, tmp_path / "delta.png", {"env_id": "x", "config": {}})
    return seen["fig"]


def _delta_plot_markers(rows, tmp_path, monkeypatch):
    """Per panel of the delta plot of ``rows``, ``{row position: (colour hex, marker)}`` of its point markers."""
    from matplotlib.colors import to_hex

    return [{round(line.get_ydata()[0]): (to_hex(line.get_color()), line.get_marker()) for line in ax.lines
             if len(line.get_ydata()) == 1 and line.get_marker() != "|"}  # not the error bars' caps
            for ax in _delta_plot(rows, tmp_path, monkeypatch).axes]


DELTA_CELL = {"value": -1.0, "lo": -2.0, "hi": 0.0, "n": 5}


def test_delta_plot_keeps_each_rows_colour_when_an_earlier_row_has_no_turns(tmp_path, monkeypatch):
    """A row without right turns leaves a gap in the right panel; the rows after it keep their own colour (the
    colour they have in the other panels), not the colour of the row before them."""
    from matplotlib.colors import to_hex

    rows = {r: {k: dict(DELTA_CELL) for k in ("d_wrong", "d_oracle", "d_right")} for r in ("a", "b", "c")}
    rows["b"]["d_right"] = {"value": None, "lo": None, "hi": None, "n": 0}
    left, _, right = _delta_plot_markers(rows, tmp_path, monkeypatch)
    assert right == {0: (to_hex("C0"), "o"), 2: (to_hex("C2"), "o")}
    assert right[2] == left[2]


def test_delta_plot_gives_each_of_more_than_ten_rows_its_own_colour(tmp_path, monkeypatch):
    """Past the default cycle's 10 colours the rows still differ (the default cycle would give row 10 row 0's
    colour, the control)."""
    from matplotlib.colors import to_hex

    rows = {f"r{i}": {k: dict(DELTA_CELL) for k in ("d_wrong", "d_oracle", "d_right")} for i in range(12)}
    left = _delta_plot_markers(rows, tmp_path, monkeypatch)[0]
    assert len(left) == 12 and len(set(left.values())) == 12
    assert to_hex("C10") == to_hex("C0")  # the control: the default cycle repeats after 10


def test_delta_plot_keeps_zero_inside_every_panel(tmp_path, monkeypatch):
    """Zero is the reference line: with every estimate on one side of it (all negative, all positive) it is drawn
    inside the panel with a margin, not on the frame. The control is the case that put it on the frame: the
    interval ending just short of zero, within matplotlib's own 5 % margin."""
    rows = {r: {"d_wrong": {"value": -3.0, "lo": -18.0, "hi": -0.85, "n": 5},
                "d_oracle": {"value": 3.0, "lo": 0.85, "hi": 18.0, "n": 5},
                "d_right": {"value": -2.0, "lo": float("nan"), "hi": float("nan"), "n": 1}} for r in ("a", "b")}
    for ax in _delta_plot(rows, tmp_path, monkeypatch).axes:
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi
        assert min(-lo, hi) >= 0.04 * (hi - lo)
