"""The mechanism probe: how each method's note moves the self-teacher, and how often the reflector is right.

Self-distillation moves the student toward its teacher's distribution on the student's own sampled tokens,
so a note can only help where it makes the teacher (a) give *less* probability to a wrong action, (b) give
*more* to a better one, (c) keep a right one. This module measures that with forward passes only::

    hero-gym probe hero_gym/WebShop-v0 --warm-start --episodes 40 --out docs/results/probe/webshop

1. **States**: the student's own rollouts through :func:`~hero_gym.agents.rollout.collect` (training split,
   training temperature, token-exact). The env is wrapped in :class:`OracleRecorder`, which asks the env's
   oracle hook (:meth:`hero_gym.core.MultiTurnEnv.oracle_action`) for ``a*_t`` *in the state the student
   reached* before each step and stores it in the turn's ``info["oracle_action"]``.
2. **Turn kinds** (oracle envs): actions are normalised (:func:`normalise_action`: WebShop lower-cased
   bracket actions; tool name + sorted JSON arguments; any plain message is ``"message"``). A turn is
   ``invalid`` (the env reported an action error), ``wrong`` (valid, ``a_t != a*_t``), ``right`` or
   ``unjudged`` (no oracle action, or a message where the oracle also sends one: message texts cannot be
   compared). "Wrong turns" in the tables are invalid + wrong; each is a ``first`` occurrence of its action
   in the episode or a ``repeat``.
3. **Notes** (:func:`probe_notes`): every method's notes exactly as training builds them (the method
   registry, :class:`~hero_gym.agents.methods.NoteOptions` defaults, the trainer's renderer), plus an
   *oracle-target* note (the rule diagnosis with the oracle's action as ``Better action``, in the env's own
   syntax and, as training renders targets today, in JSON: the ceiling of a perfect reflector), a
   *shuffled* rule-diagnosis control, and a *context-free* control (irrelevant text as long as the
   env-feedback note). Full-demo's demonstration is the oracle's own episode of the same task (masked when
   the oracle fails). Teacher weights = the student's (the EMA teacher at step 0).
4. **Scores** (:mod:`~hero_gym.agents.probe_score`): ``log p(a_t)`` and ``log p(a*_t)`` with and without
   each note; ``Δ = log p_teacher(note) - log p_student`` per action (summed over tokens) and per token; the
   trainer's default distillation loss (JSD(0.5) on the student's top-100 + tail) on the sampled tokens.
5. **Metrics** (:mod:`~hero_gym.agents.probe_report`): coverage, Δ on wrong / right turns, Δ of the oracle
   action on wrong turns, AUC of Δ(a_t) on right over wrong turns, per turn kind, episode-clustered
   bootstrap CIs (:mod:`~hero_gym.agents.probe_stats`), paired differences, and the reflectors' error
   verdict precision / recall against the oracle and the target's exact-match rate.

Caveat printed with every table: ``a_t`` was sampled from the student, so any note lowers it on average
(``E[Δ] = -KL(student || teacher) <= 0``); the shuffled and context-free rows are the reference, and
``Δ`` of the oracle action, the paired differences and the AUC are the usable measures.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hero_gym.records import Episode

from .oracle import OracleRecorder

__all__ = ["ProbeConfig", "ProbeResult", "OracleRecorder", "normalise_action", "turn_kind", "probe_notes",
           "oracle_demos", "probe_rollouts", "run_probe", "CONTROL_ROWS", "ROW_LABELS"]

#: Reference rows the probe adds to the methods' notes.
CONTROL_ROWS = ("hero_rules_shuffled", "oracle_target", "oracle_target_json", "context_free")
ROW_LABELS = {
    "envfb_sd": "Env feedback (next observation)", "full_demo": "Full demo (oracle's episode)",
    "hero_rules": "HERO (rules)", "hero": "HERO (model reflector)", "hero_shuffled": "HERO (model), shuffled",
    "hero_rules_shuffled": "HERO (rules), shuffled diagnoses", "oracle_target": "Rules + oracle target, env syntax",
    "oracle_target_json": "Rules + oracle target, JSON", "context_free": "Context-free control (same length)",
}
_IRRELEVANT = ("The lighthouse keeper wound the clock every evening at seven, then walked the long stone stairs "
               "to trim the wick and polish the great glass lens until it shone. ")


@dataclass
class ProbeConfig:
    """Settings of one probe run (every field is recorded in the results)."""

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: ["envfb_sd", "full_demo", "hero_rules", "hero",
                                                        "hero_shuffled"])
    episodes: int = 40
    seed: int = 0
    split: str | None = "train"
    task_indices: list[int] | None = None   # explicit tasks of ``split`` (else a seeded draw, minus ``skip_tasks``)
    skip_tasks: list[int] = field(default_factory=list)   # e.g. the tasks a warm start was trained on
    temperature: float = 1.0
    max_new_tokens: int = 64
    max_turns: int | None = 8
    tool_prompt: str = "compact"
    model_reflector_episodes: int = 4   # episodes the (slow) model reflector diagnoses (0 = none)
    note_styles: list[str] = field(default_factory=list)   # extra HERO (rules) rows, one per note style (teachers.NOTE_STYLES)
    reflector_max_new_tokens: int = 768
    n_boot: int = 2000
    group_tokens: int = 384   # query tokens (trie nodes on the tree path) per scoring forward
    tree_scoring: bool = True   # all rows of a turn in one token trie (EpisodeScorer.score_tree); False: a pass per row
    rollout_slots: int = 16   # episodes sampled together (one batched generate per step)
    scoring_workers: int = 0   # episodes scored at once, one torch thread each (0: the torch thread count on a
    # CPU, 1 on an accelerator)


@dataclass
class ProbeResult:
    """Per-turn records (``turns``), the note rows probed (``rows``), the rollouts and timings."""

    config: ProbeConfig
    turns: list[dict[str, Any]]
    rows: list[str]
    episodes: list[Episode]
    oracle: dict[str, Any]
    seconds: dict[str, float]
    notes: dict[str, list[list[str | None]]] = field(default_factory=dict)
    scoring_inputs: tuple[Any, ...] = ()   # (oracle_texts, parser, rule reflections, model reflections) as scored


# ============================================================================ actions


def normalise_action(action: Any, parser: str) -> str | None:
    """A comparable form of an action: ``click[x]``-style lower-cased for the ``bracket`` parser, ``name {json
    arguments, sorted}`` for a tool call otherwise, ``"message"`` for any plain message, ``"<malformed>"`` for a
    reply that does not parse to one call; ``None`` for ``None``. ``action`` is reply text, a call dict
    ``{"name", "arguments"}``, ``{"message": ...}``, or an env-syntax string inside ``{"action": ...}``."""
    from hero_gym.parsers import ToolCallError, parse_reply

    if action is None:
        return None
    if isinstance(action, dict):
        if "name" in action:
            return _norm_call(str(action["name"]), dict(action.get("arguments") or {}), parser)
        if set(action) == {"message"}:
            return "message"
        strings = [v for v in action.values() if isinstance(v, str)]
        if len(strings) == 1:
            return normalise_action(strings[0], parser)
        return "<malformed>"
    try:
        parsed = parse_reply(str(action), parser, max_chars=0)
    except ToolCallError:
        return "<malformed>"
    if len(parsed.calls) == 1:
        c = parsed.calls[0]
        return _norm_call(c.name, dict(c.arguments), parser)
    if not parsed.calls:
        return "message" if parser != "bracket" else "<malformed>"
    return "<malformed>"


def _norm_call(name: str, arguments: dict[str, Any], parser: str) -> str:
    if parser == "bracket":
        arg = " ".join(str(next(iter(arguments.values()), "")).split()).lower()
        return f"{name.lower()}[{arg}]"
    return name + " " + json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def turn_kind(error: Any, action: str | None, oracle: str | None) -> str:
    """``invalid`` / ``wrong`` / ``right`` / ``unjudged`` (see the module docstring)."""
    if oracle is None:
        return "unjudged"
    if error:
        return "invalid"
    if action == "message" and oracle == "message":
        return "unjudged"
    return "right" if action == oracle else "wrong"


def _argument_text(norm: str | None) -> str | None:
    """The student's argument as it could be quoted in a note (``x`` of ``click[x]``; JSON arguments)."""
    if not norm or norm in ("message", "<malformed>"):
        return None
    if norm.endswith("]") and "[" in norm:
        return norm[norm.index("[") + 1:-1] or None
    return norm.split(" ", 1)[1] if " " in norm else None


# ============================================================================ notes


def oracle_demos(env_id: str, env_kwargs: dict[str, Any], episodes: Sequence[Episode]) -> list[Episode]:
    """Per distinct task of ``episodes``, the oracle's own episode from the reset state (text fields only), as
    the full-demo method's demonstration; its ``success`` tells whether it can serve as one."""
    import hero_gym

    env = hero_gym.make(env_id, **env_kwargs)
    out, seen = [], set()
    try:
        for ep in episodes:
            if ep.task_id in seen:
                continue
            seen.add(ep.task_id)
            obs, info = env.reset(seed=ep.seed, options=dict(ep.options) or None)
            demo = Episode(env_id=env_id, seed=ep.seed, options=dict(ep.options), task_id=ep.task_id,
                           initial_observation=str(obs), episode_id=f"oracle-{ep.task_id}")
            done = False
            while not done:
                a = env.unwrapped.oracle_action()
                if a is None:
                    break
                obs, r, term, trunc, info = env.step(a)
                from hero_gym.records import Turn

                demo.turns.append(Turn(index=len(demo.turns), action_text=a, observation=str(obs), reward=float(r),
                                       terminated=term, truncated=trunc))
                demo.total_reward += float(r)
                done = term or trunc
            demo.success = bool(info.get("success", False))
            out.append(demo)
    finally:
        env.close()
    return out


def _context_free(length: int) -> str:
    text = _IRRELEVANT * (length // len(_IRRELEVANT) + 1)
    return text[:length]


def probe_notes(episodes: Sequence[Episode], methods: Sequence[str], *, rule_reflections: Sequence[Any],
                model_reflections: dict[int, Any] | None = None, demos: Sequence[Episode] = (),
                oracle_texts: Sequence[Sequence[str | None]] | None = None, parser: str = "hermes",
                seed: int = 0, note_styles: Sequence[str] = ()) -> dict[str, list[list[str | None]]]:
    """The note of every probed row for every turn (``None`` = masked), keyed by row name.

    Methods' rows come from the registry with the trainer's default :class:`NoteOptions`; methods whose
    reflector is the model are built on the episodes in ``model_reflections`` (index -> Reflection) only.
    ``demos`` fill the full-demo success buffer. See the module docstring for the control rows."""
    from .methods import NoteOptions, build_notes, get_method
    from .teachers import HERO_HEADER, SuccessBuffer, _fmt_target, envfb_note

    opts = NoteOptions(seed=seed)
    buffer = SuccessBuffer()
    buffer.add([d for d in demos if d.success])
    empty = [[None] * len(ep.turns) for ep in episodes]
    rows: dict[str, list[list[str | None]]] = {}
    for m in methods:
        spec = get_method(m)
        if not spec.distills or spec.oracle:   # the privileged ceiling is the oracle_target row below
            continue
        if spec.reflector == "model":
            idx = sorted(model_reflections or {})
            notes = [row[:] for row in empty]
            if len(idx) >= (2 if m == "hero_shuffled" else 1):
                sub = build_notes(m, [episodes[i] for i in idx], reflections=[model_reflections[i] for i in idx],
                                  success_buffer=buffer, options=opts)
                for i, n in zip(idx, sub):
                    notes[i] = n
            rows[m] = notes
        else:
            rows[m] = build_notes(m, episodes, reflections=rule_reflections, success_buffer=buffer, options=opts)
    for style in note_styles:   # HERO (rules) in another note style (teachers.NOTE_STYLES), e.g. "legacy"
        rows[f"hero_rules:{style}"] = build_notes("hero_rules", episodes, reflections=rule_reflections,
                                                  options=NoteOptions(seed=seed, note_style=style))
    if "hero_rules_shuffled" not in rows:   # the control: the registry's shuffled rule diagnoses
        rows["hero_rules_shuffled"] = build_notes("hero_rules_shuffled", episodes, reflections=rule_reflections,
                                                  options=opts)
    oracle_env, oracle_json = [r[:] for r in empty], [r[:] for r in empty]
    from hero_gym.parsers import ToolCallError, parse_reply

    for i, ep in enumerate(episodes):
        for t in range(len(ep.turns)):
            text = oracle_texts[i][t] if oracle_texts else None
            if text is None:
                continue
            refl = rule_reflections[i].get(t)
            head = HERO_HEADER + (f"\n{refl.diagnosis.strip()}" if refl is not None and refl.diagnosis.strip() else "")
            oracle_env[i][t] = f"{head}\nBetter action: {text}"
            try:
                parsed = parse_reply(text, parser, max_chars=0)
                target = ({"name": parsed.calls[0].name, "arguments": parsed.calls[0].arguments} if parsed.calls
                          else {"message": parsed.text})
            except ToolCallError:
                target = {"message": text}
            oracle_json[i][t] = f"{head}\nBetter action: {_fmt_target(target)}"
    rows["oracle_target"], rows["oracle_target_json"] = oracle_env, oracle_json
    rows["context_free"] = [[_context_free(len(envfb_note(turn.observation, max_chars=opts.envfb_max_chars)))
                             for turn in ep.turns] for ep in episodes]
    return rows


# ============================================================================ the run


def _tasks(env: Any, cfg: ProbeConfig) -> list[Any]:
    from .rollout import Task

    inner = env.unwrapped
    has_split = bool(inner.splits()) and cfg.split is not None
    total = inner.num_tasks(cfg.split) if has_split else inner.num_tasks()
    if cfg.task_indices is not None:
        order = list(cfg.task_indices)
    else:
        order = [i for i in range(total) if i not in set(cfg.skip_tasks)]
        random.Random(cfg.seed).shuffle(order)
    if not order:
        raise ValueError("no tasks left to probe (every task is in skip_tasks)")
    out = []
    for k in range(cfg.episodes):
        opts: dict[str, Any] = {"task_index": order[k % len(order)]}
        if has_split:
            opts["split"] = cfg.split
        out.append(Task(seed=cfg.seed * 100_003 + k, options=opts))
    return out


def probe_rollouts(model: Any, tokenizer: Any, cfg: ProbeConfig) -> tuple[list[Episode], str, bool]:
    """``(episodes, parser, has_oracle)``: the student's rollouts on ``cfg``'s tasks through ``collect``,
    ``cfg.rollout_slots`` episodes sampled together, each step's oracle action recorded (:class:`OracleRecorder`)."""
    import hero_gym

    from .policy import HFPolicy, SamplingConfig
    from .rollout import TOOL_PROMPTS, collect

    slots = max(1, min(cfg.rollout_slots, cfg.episodes))
    envs = [OracleRecorder(hero_gym.make(cfg.env_id, **_env_kwargs(cfg))) for _ in range(slots)]
    parser = envs[0].unwrapped.parser
    has_oracle = bool(getattr(envs[0].unwrapped, "has_oracle", False))
    model.eval()
    try:
        tasks = _tasks(envs[0], cfg)
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed * 7919)
        max_ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        episodes = collect(HFPolicy(model, tokenizer, lora=None), envs, tasks=tasks, sampling=sampling,
                           tool_prompt=TOOL_PROMPTS[cfg.tool_prompt], max_context_tokens=max_ctx)
    finally:
        for e in envs:
            e.close()
    return episodes, parser, has_oracle


def _env_kwargs(cfg: ProbeConfig) -> dict[str, Any]:
    kw = dict(cfg.env_kwargs)
    if cfg.max_turns is not None:
        kw["max_turns"] = cfg.max_turns
    return kw


def run_probe(model: Any, tokenizer: Any, cfg: ProbeConfig, *, progress: bool = False,
              episodes: tuple[list[Episode], str, bool] | None = None) -> ProbeResult:
    """Roll the student out, build every row's notes and score them (see the module docstring).
    ``episodes``: the output of :func:`probe_rollouts` for ``cfg`` when already sampled (then not timed)."""
    import torch

    from hero_gym.chat import ChatRenderer

    from .policy import HFPolicy
    from .probe_score import turn_records
    from .reflector import LLMReflector, RuleReflector

    log = (lambda m: print(m, flush=True)) if progress else (lambda m: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    eps, parser, has_oracle = episodes if episodes is not None else probe_rollouts(model, tokenizer, cfg)
    seconds["rollouts"] = time.perf_counter() - t0
    log(f"probe: {len(eps)} episodes, {sum(len(e.turns) for e in eps)} turns ({seconds['rollouts']:.0f} s)")

    t1 = time.perf_counter()
    oracle_texts = [[(t.info or {}).get("oracle_action") for t in ep.turns] for ep in eps]
    demos = oracle_demos(cfg.env_id, _env_kwargs(cfg), eps) if has_oracle else []
    rule = RuleReflector().reflect(eps)
    seconds["notes"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    model_refl: dict[int, Any] = {}
    if cfg.model_reflector_episodes > 0 and any(get_spec_reflector(m) == "model" for m in cfg.methods):
        idx = list(range(min(cfg.model_reflector_episodes, len(eps))))
        refl = LLMReflector(HFPolicy(model, tokenizer, lora=None), max_new_tokens=cfg.reflector_max_new_tokens
                            ).reflect([eps[i] for i in idx])
        model_refl = dict(zip(idx, refl))
    seconds["reflect"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    notes = probe_notes(eps, cfg.methods, rule_reflections=rule, model_reflections=model_refl, demos=demos,
                        oracle_texts=oracle_texts if has_oracle else None, parser=parser, seed=cfg.seed,
                        note_styles=cfg.note_styles)
    if not has_oracle:
        for r in ("oracle_target", "oracle_target_json"):
            notes.pop(r, None)
    seconds["notes"] += time.perf_counter() - t1
    log(f"probe: notes built ({seconds['reflect']:.0f} s for the model reflector)")

    t2 = time.perf_counter()
    renderer = ChatRenderer(tokenizer, check=False)
    workers = cfg.scoring_workers or (torch.get_num_threads() if next(model.parameters()).device.type == "cpu" else 1)
    turns = turn_records(model, renderer, eps, notes, oracle_texts, parser, rule, model_refl,
                         group_tokens=cfg.group_tokens, tree=cfg.tree_scoring, workers=workers, log=log)
    seconds["scoring"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    oracle_info = {"available": has_oracle, "demos": len(demos), "demo_success_rate":
                   (sum(d.success for d in demos) / len(demos)) if demos else None}
    return ProbeResult(cfg, turns, list(notes), eps, oracle_info, seconds, notes,
                       scoring_inputs=(oracle_texts, parser, rule, model_refl))


def get_spec_reflector(method: str) -> str | None:
    from .methods import get_method

    return get_method(method).reflector


def config_dict(cfg: ProbeConfig) -> dict[str, Any]:
    return asdict(cfg)
