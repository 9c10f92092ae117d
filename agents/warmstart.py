"""Warm start by behaviour cloning from an env's own expert, with DAgger-style recovery data.

A small model that never emits a valid action gives every training method the same 0 %. The warm start
fine-tunes the base model (a LoRA adapter) on expert demonstrations from the **training split**, merges the
adapter into the base weights and caches the result, so every benchmark cell can start a fresh LoRA on top
of an agent that already acts sensibly. It is under-trained on purpose (few episodes, one epoch) so that
the methods compared afterwards still have headroom. Supported envs: WebShop, Tau-bench retail / airline
and Lookup (see *Experts* below).

Recipe (:func:`warm_start`):

1. **Demonstrations.** The env's expert plays ``episodes`` training tasks through
   :func:`~hero_gym.agents.rollout.collect` (an :class:`ExpertPolicy` stands in for the model), so each
   recorded turn holds exactly the context ids the model will see at rollout time (same system message,
   same tool prompt, same chat rendering) and the expert's action ids (closed by the end-of-turn token).
   With ``noise > 0`` a share of the expert's actions is replaced by a noisy one (WebShop: a random button
   or a corrupted copy of the expert's action, often invalid; Tau: a gold call with a mis-typed id, a
   wrong read call or an off-plan message); those actions get no loss, but the expert's
   next actions from the resulting state (after an error observation, on a wrong page) teach recovery.
2. **Behaviour cloning.** Cross-entropy on the expert's action tokens only (the episode's action mask:
   prompt, observations and template tokens get no loss; noisy actions neither), one episode per
   example, ``batch_episodes`` examples per optimiser step, ``epochs`` passes, AdamW with ``lr``.
3. **Recovery rounds (DAgger).** The fine-tuned model plays ``recovery_episodes`` fresh training tasks
   (greedy, ``max_turns``); each episode is replayed in a fresh env and the expert labels every state
   visited from the first turn where the model disagreed with it. Those (model context, expert action)
   pairs, mixed with as many demonstrations, are trained on for one pass. Repeated ``recovery_rounds``
   times.
4. **Merge and cache.** The adapter is rounded to float16 values, kept (``adapter/``, ~10 MB for
   SmolLM2-135M at rank 16), merged into the base weights and saved with the tokenizer under
   ``cache_dir() / "warmstart" / <key>`` (``<key>`` hashes the base model name and every setting that
   changes the weights); ``warmstart.json`` there records the settings, training figures and a greedy
   held-out evaluation (``eval_goals`` test goals, ``eval_max_turns`` turns). A second call with the
   same settings returns the cached directory without training; an adapter shipped with the package for
   the same key is merged instead of training (:mod:`hero_gym.agents.warmstart_files`).

Progress and interruption: with ``progress`` each phase logs its steps, the total, seconds per step and an
ETA; the build checkpoints to ``<key>.partial/`` (at most every :data:`CHECKPOINT_SECONDS`, after each phase
and on Ctrl-C) and a rerun with the same settings resumes there, ending with the same weights.

Experts (:func:`make_expert`): WebShop uses
:class:`~hero_gym.envs.webshop.expert.InstructionExpert` (does not know the goal product, acts from any
page); Tau-bench retail and airline use :class:`~hero_gym.envs.tau_bench.gold_expert.GoldExpert` (knows
the task's gold actions; from any state it asks for the identity, makes the first gold call not done yet,
asking to confirm each write first, then tells the outputs); Lookup uses its solver (look the item up,
answer the code). Other envs raise ``ValueError``.

Splits: demonstrations and recovery rollouts use the env's ``train`` split and the evaluation its
``test`` split when the env has splits (:meth:`~hero_gym.core.MultiTurnEnv.splits`: WebShop, Tau-bench);
an env without splits (Lookup) uses its one task list for both. An env with splits but no ``train``
split (official Tau airline has only ``test``) is an error, never a silent training on test tasks.

Valid actions: a turn is *valid* when the env reported no ``action_error`` (WebShop: a parseable
``search``/``click`` whose button is on the page; Tau/Lookup: a well-formed tool call or a message).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hero_gym.agents import warmstart_files as files
from hero_gym.agents.experts import ExpertPolicy, LookupSolver, WebShopExpert, make_expert
from hero_gym.agents.models import DEFAULT_MODEL_NAME, cache_dir, load_model
from hero_gym.agents.rollout import TOOL_PROMPTS, Task
from hero_gym.agents.warmstart_files import read_report
from hero_gym.chat import ChatRenderer, tokenize_episode
from hero_gym.records import Episode

__all__ = [
    "ExpertPolicy",
    "LookupSolver",
    "RECIPE_VERSION",
    "WarmStartConfig",
    "WebShopExpert",
    "build_examples",
    "cache_key",
    "evaluate_valid",
    "load_warm_started",
    "make_expert",
    "read_report",
    "recovery_examples",
    "warm_start",
]

RECIPE_VERSION = 2
"""Bumped when the recipe changes the weights it produces (part of the cache key). 2: the LoRA adapter is
rounded to float16 before the merge, so the shipped float16 adapter rebuilds the merged weights exactly."""

CHECKPOINT_SECONDS = 120.0
"""A build writes its resume checkpoint at most this often (and after every phase, and on Ctrl-C)."""


@dataclass
class WarmStartConfig:
    """Settings of a warm start. Every field except ``progress`` is part of the cache key.

    Attributes:
        env_id: the env to clone the expert on (``hero_gym/WebShop-v0``, ``hero_gym/TauRetail-v0``,
            ``hero_gym/TauAirline-v0`` or ``hero_gym/Lookup-v0``).
        env_kwargs: env constructor kwargs for demonstrations, recovery rollouts and the evaluation
            (e.g. the small-model observation options ``{"max_results": 5, "instruction_once": True}``);
            use the same ones as the runs that start from this model.
        episodes: expert demonstration episodes (distinct training tasks while they last).
        epochs: passes over the demonstrations.
        max_steps: stop behaviour cloning after this many optimiser steps (``None``: no cap).
        batch_episodes: examples (episodes or recovery pairs) per optimiser step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lora_r, lora_alpha, lora_dropout: the LoRA adapter (all linear layers); it is merged at the end.
            ``lora_r=0`` fine-tunes every weight instead (nothing to merge).
        noise: share of expert actions replaced by a noisy action (no loss on it; recovery after it is
            learned). ``0`` = clean demonstrations.
        demo_max_turns: turn cap of a demonstration episode (``None``: the env's default).
        recovery_rounds: DAgger rounds after behaviour cloning (``0``: none).
        recovery_episodes: model rollouts per recovery round.
        recovery_temperature: sampling temperature of the recovery rollouts (``0``: greedy).
        max_turns: turn cap of recovery rollouts.
        max_new_tokens: reply cap of every rollout (>= 64: WebShop search queries copy the instruction;
            >= 256 for Tau-bench: the expert's confirmation messages and write calls repeat the write's
            arguments, up to ~210 tokens; longer demonstration actions are truncated and counted in the
            report's ``truncated_actions``).
        eval_goals: held-out (test) tasks in the final greedy evaluation (``0``: skip it).
        eval_max_turns: turn cap of the evaluation episodes.
        tool_prompt: ``"full"`` or ``"compact"`` tool description in the system message (as in
            :class:`~hero_gym.agents.trainer.TrainConfig`; use the same as the later runs).
        seed: seeds task sampling, noise, shuffling and torch.
        progress: print progress lines to stderr: each phase's steps, total and ETA (not part of the cache key).
    """

    env_id: str = "hero_gym/WebShop-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    episodes: int = 150
    epochs: int = 1
    max_steps: int | None = None
    batch_episodes: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    noise: float = 0.1
    demo_max_turns: int | None = None
    recovery_rounds: int = 1
    recovery_episodes: int = 40
    recovery_temperature: float = 0.0
    max_turns: int = 8
    max_new_tokens: int = 64
    eval_goals: int = 20
    eval_max_turns: int = 8
    tool_prompt: str = "full"
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        # normalise numbers so that e.g. noise=0 and noise=0.0 give the same cache key
        for name in ("lr", "weight_decay", "lora_dropout", "noise", "recovery_temperature"):
            setattr(self, name, float(getattr(self, name)))
        for name in ("episodes", "epochs", "batch_episodes", "lora_r", "lora_alpha", "recovery_rounds",
                     "recovery_episodes", "max_turns", "max_new_tokens", "eval_goals", "eval_max_turns", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(value))
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.epochs < 0 or self.recovery_rounds < 0 or self.recovery_episodes < 0 or self.eval_goals < 0:
            raise ValueError("epochs, recovery_rounds, recovery_episodes and eval_goals must be >= 0")
        if self.batch_episodes < 1:
            raise ValueError(f"batch_episodes must be >= 1, got {self.batch_episodes}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.max_new_tokens < 1 or self.max_turns < 1 or self.eval_max_turns < 1:
            raise ValueError("max_new_tokens, max_turns and eval_max_turns must be >= 1")
        if self.tool_prompt not in TOOL_PROMPTS:
            raise ValueError(f"tool_prompt must be one of {sorted(TOOL_PROMPTS)}, not {self.tool_prompt!r}")
        self.env_kwargs = dict(self.env_kwargs)

    def key_fields(self) -> dict[str, Any]:
        """The settings that determine the weights (everything but ``progress``)."""
        d = asdict(self)
        d.pop("progress")
        return d


# ====================================================================================== tasks


def _split_of(inner: Any, split: str) -> str | None:
    """``split`` when the env has splits (``ValueError`` when it lacks that one), ``None`` when it has none."""
    names = list(inner.splits()) if hasattr(inner, "splits") else []
    if not names:
        return None
    if split not in names:
        raise ValueError(f"{type(inner).__name__} has no {split!r} split (its splits: {', '.join(names)}); "
                         "the warm start trains on 'train' and evaluates on 'test'")
    return split


def _tasks(env: Any, split: str, n: int, seed: int, *, shuffle: bool) -> list[Task]:
    """``n`` tasks of ``split`` (envs with splits: WebShop, Tau-bench) or of the env's task list (envs
    without: Lookup), cycling when ``n`` exceeds it."""
    inner = env.unwrapped
    has_split = _split_of(inner, split) is not None
    total = inner.num_tasks(split) if has_split else inner.num_tasks()
    if not total:
        raise ValueError(f"{type(inner).__name__} has no indexed tasks")
    order = list(range(total))
    if shuffle:
        random.Random(seed).shuffle(order)
    out = []
    for i in range(n):
        opts: dict[str, Any] = {"task_index": order[i % total]}
        if has_split:
            opts["split"] = split
        out.append(Task(seed=seed * 100_003 + i, options=opts))
    return out


# ====================================================================================== examples


@dataclass
class Example:
    """One training sequence: ``input_ids`` with a 0/1 ``loss_mask`` (1 = a target token)."""

    input_ids: list[int]
    loss_mask: list[int]


def build_examples(episodes: Sequence[Episode], tokenizer: Any, noisy: Sequence[bool] | None = None) -> list[Example]:
    """One example per demonstration episode: its token-exact ids with the loss on action tokens only.

    ``noisy`` (one flag per turn, episodes in order, as :attr:`ExpertPolicy.noisy`) removes noisy actions
    from the loss."""
    flags = list(noisy) if noisy is not None else None
    n_turns = sum(len(ep.turns) for ep in episodes)
    if flags is not None and len(flags) != n_turns:
        raise ValueError(f"noise flags do not match the episodes: {len(flags)} flags, {n_turns} turns")
    pos = 0
    out = []
    for ep in episodes:
        if not ep.turns:
            continue
        tok = tokenize_episode(ep, tokenizer)
        mask = list(tok.action_mask)
        for (s, e) in tok.turn_spans:
            if flags is not None and flags[pos]:
                mask[s:e] = [0] * (e - s)
            pos += 1
        if any(mask):
            out.append(Example(tok.input_ids, mask))
    return out


def recovery_examples(episodes: Sequence[Episode], env: Any, tokenizer: Any) -> tuple[list[Example], dict[str, int]]:
    """DAgger labels: replay each model episode in ``env`` and let the expert label its states.

    For every turn from the first one where the model's action differs from the expert's, the example is
    the model's recorded context followed by the expert's action (loss on the expert's tokens only).
    Replays must reproduce the recorded observations (the env must be deterministic given seed and
    options); an episode whose replay diverges is labelled only up to the divergence."""
    renderer = ChatRenderer(tokenizer)
    eot = int(renderer.end_of_turn_id)
    out: list[Example] = []
    stats = {"turns": 0, "labelled": 0, "disagreements": 0, "diverged": 0}
    for ep in episodes:
        if not ep.turns:
            continue
        env.reset(seed=ep.seed, options=dict(ep.options) or None)
        expert = make_expert(env)
        off = False
        for t in ep.turns:
            stats["turns"] += 1
            if t.context_token_ids is None:
                break
            label = expert.action()
            if label.strip() != t.action_text.strip():
                stats["disagreements"] += 1
                off = True
            if off:
                target = renderer.encode(label) + [eot]
                ctx = list(t.context_token_ids)
                out.append(Example(ctx + target, [0] * len(ctx) + [1] * len(target)))
                stats["labelled"] += 1
            if t.terminated or t.truncated:
                break
            obs, *_ = env.step(t.action_text)
            if obs != t.observation:
                stats["diverged"] += 1
                break
    return out, stats


# ====================================================================================== training


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    return decoder, base.get_output_embeddings()


def example_loss(model: Any, ex: Example, device: torch.device) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of ``ex``'s target tokens (teacher forcing) and their count. Only the target
    positions are projected onto the vocabulary."""
    decoder, head = _decoder_and_head(model)
    ids = torch.tensor([ex.input_ids], dtype=torch.long, device=device)
    hidden = decoder(input_ids=ids).last_hidden_state[0]
    tgt_pos = torch.tensor([i for i, m in enumerate(ex.loss_mask) if m and i > 0], dtype=torch.long, device=device)
    logits = head(hidden[tgt_pos - 1]).float()
    loss = torch.nn.functional.cross_entropy(logits, ids[0, tgt_pos], reduction="sum")
    return loss, int(tgt_pos.numel())



# ====================================================================================== evaluation


def evaluate_valid(policy: Any, cfg: WarmStartConfig, n_goals: int | None = None) -> dict[str, Any]:
    """Greedy evaluation on the first held-out tasks (the ``test`` split of an env with splits: WebShop,
    Tau-bench; the task list otherwise): success rate, mean reward, valid-action share (turns without
    ``action_error``: WebShop a parseable action whose button is on the page; Tau/Lookup a well-formed tool
    call or a message), mean turns."""
    import hero_gym

    from hero_gym.agents.trainer import evaluate

    n = cfg.eval_goals if n_goals is None else n_goals
    probe = hero_gym.make(cfg.env_id, **cfg.env_kwargs)
    try:
        split = _split_of(probe.unwrapped, "test")
        total = probe.unwrapped.num_tasks(split) if split else probe.unwrapped.num_tasks()
    finally:
        probe.close()
    kwargs = dict(cfg.env_kwargs)
    if split:
        kwargs["split"] = "test"
    t0 = time.perf_counter()
    res = evaluate(policy, cfg.env_id, kwargs, task_indices=list(range(min(n, total))),
                   max_new_tokens=cfg.max_new_tokens, max_turns=cfg.eval_max_turns,
                   tool_prompt=cfg.tool_prompt)  # type: ignore[arg-type]
    turns = [t for e in res.episodes for t in e.turns]
    valid = sum(1 for t in turns if not t.action_error)
    return {"episodes": len(res.episodes), "success_rate": res.success_rate, "mean_reward": res.mean_reward,
            "valid_action_rate": valid / max(1, len(turns)), "mean_turns": res.mean_turns,
            "seconds": time.perf_counter() - t0}


# ====================================================================================== the warm start


def cache_key(cfg: WarmStartConfig, base: str = "default") -> str:
    """A short hash of the recipe version, the base model name and ``cfg.key_fields()``. The names of the
    embedded default model (``"default"``, ``"smollm2"``, its full name) share one key."""
    if base in ("default", "smollm2", DEFAULT_MODEL_NAME):
        base = "default"
    blob = json.dumps({"recipe": RECIPE_VERSION, "base": base, **cfg.key_fields()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]




def warm_start(cfg: WarmStartConfig, *, base: str = "default", device: str | None = None) -> Path:
    """Build (once) and cache a warm-started model; return its directory.

    ``base`` is a name :func:`~hero_gym.agents.models.load_named_model` resolves (``"default"`` /
    ``"smollm2"``: SmolLM2-135M-Instruct; ``"tiny"``: the random tiny test model; an HF id or a local
    path). The directory, ``cache_dir() / "warmstart" / cache_key(cfg, base)``, holds the merged model
    (loadable with ``from_pretrained``), its tokenizer, ``warmstart.json`` and the unmerged adapter
    (``adapter/``). When it already exists nothing is trained; when the package ships an adapter with this
    key (:mod:`hero_gym.agents.warmstart_files`) it is merged onto the base instead of training; an
    interrupted build resumes from its checkpoint. See the module docstring for the recipe.
    """
    key = cache_key(cfg, base)
    target = cache_dir() / "warmstart" / key
    if files.is_built(target):
        return target
    log = _logger(cfg.progress)
    shipped = files.shipped_adapter(key)
    if shipped is not None:
        log(f"warm start: merging the shipped adapter {shipped} onto the base (no training) -> {target}")
        return files.materialise(shipped, target, base=base, device=device)
    from hero_gym.agents.warmstart_build import _Build

    return _Build(cfg, base, key, target, device, log).run()


def load_warm_started(cfg: WarmStartConfig, *, base: str = "default", device: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the warm-started model for ``cfg`` (built first when not cached)."""
    return load_model(str(warm_start(cfg, base=base, device=device)), device=device)


def _logger(enabled: bool) -> Any:
    def log(msg: str) -> None:
        if enabled:
            print(msg, file=sys.stderr, flush=True)

    return log
