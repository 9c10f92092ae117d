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
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym

from hero_gym.records import Episode

__all__ = ["ProbeConfig", "ProbeResult", "OracleRecorder", "normalise_action", "turn_kind", "probe_notes",
           "oracle_demos", "run_probe", "CONTROL_ROWS", "ROW_LABELS"]

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
    reflector_max_new_tokens: int = 768
    n_boot: int = 2000
    group_tokens: int = 384


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


class OracleRecorder(gym.Wrapper):
    """Stores, in each step's ``info["oracle_action"]``, the env's oracle action in the state *before* that
    step (``None`` when the env has none). Nothing else changes."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._next: str | None = None

    def _oracle(self) -> str | None:
        inner = self.env.unwrapped
        if not getattr(inner, "has_oracle", False):
            return None
        try:
            return inner.oracle_action()
        except (RuntimeError, ValueError, KeyError):   # an oracle that cannot act here: no comparison
            return None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._next = self._oracle()
        return obs, info

    def step(self, action: Any):
        before = self._next
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "oracle_action": before}
        self._next = None if (terminated or truncated) else self._oracle()
        return obs, reward, terminated, truncated, info


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
                seed: int = 0) -> dict[str, list[list[str | None]]]:
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
        if not spec.distills:
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
    rows["hero_rules_shuffled"] = build_notes("hero_shuffled", episodes, reflections=rule_reflections, options=opts) \
        if len(episodes) >= 2 else [r[:] for r in empty]
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


def run_probe(model: Any, tokenizer: Any, cfg: ProbeConfig, *, progress: bool = False) -> ProbeResult:
    """Roll the student out, build every row's notes and score them (see the module docstring)."""
    import hero_gym
    from hero_gym.chat import ChatRenderer

    from .policy import HFPolicy, SamplingConfig
    from .probe_score import turn_records
    from .reflector import LLMReflector, RuleReflector
    from .rollout import TOOL_PROMPTS, collect

    log = (lambda m: print(m, flush=True)) if progress else (lambda m: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    kw = dict(cfg.env_kwargs)
    if cfg.max_turns is not None:
        kw["max_turns"] = cfg.max_turns
    envs = [OracleRecorder(hero_gym.make(cfg.env_id, **kw)) for _ in range(4)]
    parser = envs[0].unwrapped.parser
    has_oracle = bool(getattr(envs[0].unwrapped, "has_oracle", False))
    policy = HFPolicy(model, tokenizer, lora=None)
    model.eval()
    try:
        tasks = _tasks(envs[0], cfg)
        sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed * 7919)
        max_ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        episodes = collect(policy, envs, tasks=tasks, sampling=sampling, tool_prompt=TOOL_PROMPTS[cfg.tool_prompt],
                           max_context_tokens=max_ctx)
    finally:
        for e in envs:
            e.close()
    seconds["rollouts"] = time.perf_counter() - t0
    log(f"probe: {len(episodes)} episodes, {sum(len(e.turns) for e in episodes)} turns "
        f"({seconds['rollouts']:.0f} s)")

    t1 = time.perf_counter()
    oracle_texts = [[(t.info or {}).get("oracle_action") for t in ep.turns] for ep in episodes]
    demos = oracle_demos(cfg.env_id, kw, episodes) if has_oracle else []
    rule = RuleReflector().reflect(episodes)
    model_refl: dict[int, Any] = {}
    if cfg.model_reflector_episodes > 0 and any(get_spec_reflector(m) == "model" for m in cfg.methods):
        idx = list(range(min(cfg.model_reflector_episodes, len(episodes))))
        refl = LLMReflector(policy, max_new_tokens=cfg.reflector_max_new_tokens).reflect([episodes[i] for i in idx])
        model_refl = dict(zip(idx, refl))
    seconds["reflect"] = time.perf_counter() - t1
    notes = probe_notes(episodes, cfg.methods, rule_reflections=rule, model_reflections=model_refl, demos=demos,
                        oracle_texts=oracle_texts if has_oracle else None, parser=parser, seed=cfg.seed)
    if not has_oracle:
        for r in ("oracle_target", "oracle_target_json"):
            notes.pop(r, None)
    log(f"probe: notes built ({seconds['reflect']:.0f} s for the reflectors)")

    t2 = time.perf_counter()
    renderer = ChatRenderer(tokenizer, check=False)
    turns = turn_records(model, renderer, episodes, notes, oracle_texts, parser, rule, model_refl,
                         group_tokens=cfg.group_tokens, log=log)
    seconds["scoring"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0
    oracle_info = {"available": has_oracle, "demos": len(demos), "demo_success_rate":
                   (sum(d.success for d in demos) / len(demos)) if demos else None}
    return ProbeResult(cfg, turns, list(notes), episodes, oracle_info, seconds, notes)


def get_spec_reflector(method: str) -> str | None:
    from .methods import get_method

    return get_method(method).reflector


def config_dict(cfg: ProbeConfig) -> dict[str, Any]:
    return asdict(cfg)



# ============================================================================ command line


def warm_start_seen_tasks(env_id: str, wcfg: Any) -> list[int]:
    """Training-task indices a warm start saw (its demonstrations and recovery rollouts), to probe others."""
    import hero_gym

    from .warmstart import _tasks as ws_tasks

    env = hero_gym.make(env_id, **wcfg.env_kwargs)
    try:
        tasks = ws_tasks(env, "train", wcfg.episodes, wcfg.seed, shuffle=True)
        for r in range(wcfg.recovery_rounds):
            tasks += ws_tasks(env, "train", wcfg.recovery_episodes, wcfg.seed + 1 + r, shuffle=True)
    finally:
        env.close()
    return sorted({int(t.options["task_index"]) for t in tasks})


def build_parser(prog: str = "hero-gym probe") -> Any:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="The mechanism probe: how each method's note moves the "
                                "self-teacher on the student's own rollouts (forward passes only).")
    p.add_argument("env_id")
    p.add_argument("--methods", nargs="+", default=None, help="methods whose notes are probed (default: every "
                   "distilling method); the controls are always added")
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny | HF id or local path")
    p.add_argument("--warm-start", action="store_true", help="probe the env's warm start of --model (built once, "
                   "cached): the benchmark's settings unless -c overrides them")
    p.add_argument("--warm-start-config", "-c", action="append", default=[], metavar="KEY=VALUE",
                   help="WarmStartConfig field (repeatable)")
    p.add_argument("--kwarg", "-k", action="append", default=[], metavar="KEY=VALUE", help="env constructor argument")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="task split the student is rolled out on ('none': no split)")
    p.add_argument("--max-turns", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--tool-prompt", choices=["compact", "full"], default="compact")
    p.add_argument("--model-reflector-episodes", type=int, default=4,
                   help="episodes the model reflector diagnoses (slow on a CPU; 0 = skip HERO's model rows)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", default=None, help="write probe.md, probe.json, turns.csv, delta.png, examples.md here")
    return p


def main(argv: Sequence[str] | None = None, parser: Any = None) -> int:
    """``hero-gym probe`` (also ``python -m hero_gym.agents.probe``): print the report, write the files."""
    import dataclasses

    import hero_gym
    from hero_gym.cli import json_or_str

    from .methods import METHODS
    from .models import load_named_model
    from .probe_report import markdown, summarise, write_outputs

    parser = parser or build_parser()
    a = parser.parse_args(argv)

    def kv(items: list[str], what: str) -> dict[str, Any]:
        out = {}
        for item in items:
            if "=" not in item:
                parser.error(f"{what} must be KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            out[k.strip()] = json_or_str(v)
        return out

    if a.env_id not in hero_gym.list_envs():
        parser.error(f"unknown env {a.env_id!r}; registered: {', '.join(hero_gym.list_envs())}")
    methods = a.methods or [m for m, s in METHODS.items() if s.distills]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    env_kwargs = kv(a.kwarg, "--kwarg")
    split = None if a.split == "none" else a.split
    skip: list[int] = []
    t0 = time.perf_counter()
    if a.warm_start:
        from .warmstart import WarmStartConfig, load_warm_started

        names = {f.name for f in dataclasses.fields(WarmStartConfig)}
        over = kv(a.warm_start_config, "--warm-start-config")
        bad = sorted(set(over) - names)
        if bad:
            parser.error(f"unknown WarmStartConfig field(s) {bad}; valid: {sorted(names)}")
        wcfg = WarmStartConfig(**{"env_id": a.env_id, "env_kwargs": {k: v for k, v in env_kwargs.items() if k != "split"},
                                  "max_new_tokens": a.max_new_tokens, "max_turns": a.max_turns,
                                  "eval_max_turns": a.max_turns, "tool_prompt": a.tool_prompt, "progress": True,
                                  **over})
        model, tok = load_warm_started(wcfg, base="default" if a.model == "smollm2" else a.model, device=a.device)
        skip = warm_start_seen_tasks(a.env_id, wcfg) if split == "train" else []
        model_desc = f"{a.model}, warm-started ({wcfg.episodes} demonstrations, {wcfg.recovery_rounds} recovery rounds)"
        ws_meta = {k: v for k, v in dataclasses.asdict(wcfg).items() if k != "progress"}
    else:
        model, tok = load_named_model(a.model, device=a.device)
        model_desc, ws_meta = f"{a.model} (raw)", None
    cfg = ProbeConfig(env_id=a.env_id, env_kwargs=env_kwargs, methods=methods, episodes=a.episodes, seed=a.seed,
                      split=split, skip_tasks=skip, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                      max_turns=a.max_turns, tool_prompt=a.tool_prompt,
                      model_reflector_episodes=a.model_reflector_episodes, n_boot=a.bootstrap)
    res = run_probe(model, tok, cfg, progress=True)
    summary = summarise(res.turns, res.rows, n_boot=cfg.n_boot, seed=cfg.seed)
    import platform

    import torch

    meta = {"env_id": a.env_id, "model": model_desc, "warm_start": ws_meta, "temperature": cfg.temperature,
            "split": split, "seconds": time.perf_counter() - t0, "timings": res.seconds, "oracle": res.oracle,
            "config": config_dict(cfg), "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} torch "
            "thread(s)" if a.device in (None, "cpu") else str(a.device),
            "command": "hero-gym probe " + " ".join(argv if argv is not None else sys.argv[1:])}
    meta["config"]["env_kwargs"] = {k: ("<HERO_GYM_TAUBENCH_DIR>" if k == "data_dir" else v)
                                    for k, v in cfg.env_kwargs.items()}
    print(markdown(summary, meta))
    if a.out:
        print(f"probe: files in {write_outputs(res, summary, meta, None, a.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
