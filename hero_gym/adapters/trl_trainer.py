"""HERO inside TRL: :class:`HEROTrainer`, a ``trl.GRPOTrainer`` whose loss is hero-gym's per-turn self-distillation.

Tested with ``trl==1.16.0`` (the version in the locked test set). One training step:

1. **Rollouts** by TRL itself: its generation (``transformers`` on a CPU, or vLLM with ``use_vllm=True``) and its
   tool loop run the model against one env per rollout from
   :func:`~hero_gym.adapters.trl.environment_factory` (any registered env); TRL scores them (the env reward is
   logged as ``rewards/<Env>/mean``) and computes its GRPO advantages as usual.
2. **Episodes**: each completion is split into assistant replies and spliced-in observations with TRL's
   ``tool_mask`` and turned into a hero-gym :class:`~hero_gym.records.Episode`, one turn per reply, with the exact
   context ids the model saw and the sampled ids (:mod:`hero_gym.adapters.trl_episodes`).
3. **Notes** from hero-gym's method registry (:mod:`hero_gym.agents.methods`): ``hero_rules``, ``envfb_sd``,
   ``full_demo``, ``hero`` (the model reflector, generating through the trainer's own model), and the shuffled
   ablations ``hero_shuffled`` / ``hero_rules_shuffled``.
   Turn ``t``'s note goes into turn ``t``'s context only, right before that turn's action
   (``ChatRenderer.note_ids``), exactly as in :func:`hero_gym.agents.trainer.train`.
4. **Loss**: the teacher (by default the EMA of the trainable weights, rate 0.05 as in SDPO, updated after
   every optimizer step) scores each turn's sampled action tokens in its noted context
   (:func:`hero_gym.agents.scoring.teacher_logits_prefix_cache`); the loss is hero-gym's generalised JSD over the
   student's top-k tokens plus a tail bucket, weighted by importance ratios clipped at ``is_clip``, on model
   tokens only, averaged over the distilled tokens of the whole generation batch. It is computed by the very
   functions :func:`hero_gym.agents.update.update` runs (``plan_losses``, ``teacher_scores``, ``chunk_loss``),
   so the two implementations cannot drift (``tests/adapters/test_trl_trainer.py`` checks equality to 1e-5).
   ``grpo_weight = w > 0`` blends in TRL's own GRPO loss: ``(1 - w) L_distill + w L_grpo``; ``method="grpo"`` is
   plain ``GRPOTrainer``.

Behaviour log-probs (for the importance weights): vLLM's sampling log-probs when TRL has them, else TRL's
``old_per_token_logps`` (computed when a batch is reused), else none (the batch is on-policy: weight 1). They
are used only at ``temperature=1``, where they are the model's own log-probs.

Limits: one process (the distillation forwards run on the unwrapped model, outside DDP/DeepSpeed wrappers;
``accelerate launch`` with several processes is refused); the model reflector generates with
``transformers`` even when rollouts use vLLM; TRL checkpoints carry the EMA teacher (``hero_teacher.pt``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from hero_gym.adapters.trl_episodes import rollout_to_episode
from hero_gym.agents.methods import get_method
from hero_gym.agents.scoring import build_layout, student_hidden
from hero_gym.agents.teachers import SuccessBuffer, TeacherWeights
from hero_gym.agents.trainer import TrainConfig, make_reflector, note_options, reflect
from hero_gym.agents.update import chunk_loss, micro_batches, plan_losses, teacher_scores, teacher_contexts_for
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode

__all__ = ["HEROConfig", "HEROTrainer", "HeroBatch"]

TEACHER_FILE = "hero_teacher.pt"


@dataclass
class HEROConfig(GRPOConfig):
    """``GRPOConfig`` plus hero-gym's distillation settings (names and defaults of
    :class:`hero_gym.agents.trainer.TrainConfig`; ``distill_topk`` is ``TrainConfig.topk``, since ``top_k`` is TRL's
    sampling setting). Every ``GRPOConfig`` field works as in TRL (generation, vLLM, batch sizes, logging)."""

    method: str = field(default="hero", metadata={"help": "A hero-gym method (agents/methods.py): hero, hero_rules, "
                                                            "hero_shuffled, hero_rules_shuffled, envfb_sd, full_demo, "
                                                            "grpo."})
    distill_loss: Literal["jsd", "forward_kl", "reverse_kl", "sampled"] = field(
        default="jsd", metadata={"help": "Per-token divergence (TrainConfig.loss)."})
    jsd_alpha: float = field(default=0.5, metadata={"help": "Generalised JSD interpolation weight."})
    distill_topk: int | None = field(default=100, metadata={"help": "Student top-k tokens + a tail bucket."})
    topk_source: Literal["student", "teacher"] = field(default="student", metadata={"help": "Whose top-k."})
    is_clip: float | None = field(default=2.0, metadata={"help": "Importance-weight truncation (None: off)."})
    teacher: Literal["ema", "live", "base"] = field(default="ema", metadata={"help": "Teacher weights."})
    teacher_ema_rate: float = field(default=0.05, metadata={"help": "EMA rate of the teacher (SDPO: 0.05)."})
    min_confidence: Literal["high", "medium", "low"] = field(
        default="medium", metadata={"help": "HERO diagnoses below this confidence are masked."})
    reflector: Literal["rules", "model", "llm"] | None = field(
        default=None, metadata={"help": "Override the method's reflector."})
    reflector_max_new_tokens: int = field(default=768, metadata={"help": "Model reflector generation length."})
    reflector_retries: int = field(default=2, metadata={"help": "Model reflector retries."})
    reflector_batch_size: int = field(default=8, metadata={"help": "Episodes per model-reflector generate call."})
    envfb_max_chars: int = field(default=600, metadata={"help": "Characters of env-feedback notes."})
    demo_max_chars: int = field(default=2000, metadata={"help": "Characters of full-demo notes."})
    grpo_weight: float = field(default=0.0, metadata={"help": "Weight w of TRL's GRPO loss: (1-w) distill + w GRPO."})
    loss_chunk_tokens: int = field(default=256, metadata={"help": "Action tokens per chunk of the vocabulary loss."})
    micro_batch_episodes: int = field(default=1, metadata={"help": "Episodes per distillation forward."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hero_train_config()   # validates the hero-gym fields

    def hero_train_config(self) -> TrainConfig:
        """The :class:`~hero_gym.agents.trainer.TrainConfig` with the same distillation settings (GRPO weight 0:
        the GRPO term, if any, is TRL's)."""
        return TrainConfig(
            method=self.method, seed=self.seed, loss=self.distill_loss, jsd_alpha=self.jsd_alpha,
            topk=self.distill_topk, topk_source=self.topk_source, is_clip=self.is_clip, teacher=self.teacher,
            ema_rate=self.teacher_ema_rate, min_confidence=self.min_confidence, reflector=self.reflector,
            reflector_max_new_tokens=self.reflector_max_new_tokens, reflector_retries=self.reflector_retries,
            envfb_max_chars=self.envfb_max_chars, demo_max_chars=self.demo_max_chars, grpo_weight=0.0,
            clip_eps=self.epsilon, max_grad_norm=self.max_grad_norm, lr=self.learning_rate,
            loss_chunk_tokens=self.loss_chunk_tokens, micro_batch_episodes=self.micro_batch_episodes,
            gradient_checkpointing=False)


@dataclass
class HeroBatch:
    """The episodes of one generation batch (row ``i`` = TRL's row ``i``) with their notes and teacher contexts.

    ``distill_tokens``: action tokens with a note over the whole batch (the loss's denominator)."""

    episodes: list[Episode]
    notes: list[list[str | None]]
    teacher_contexts: list[list[list[int] | None]]
    distill_tokens: int


class _TrainerPolicy:
    """What hero-gym's trainer helpers need of a policy (``model``, ``tokenizer``, ``pad_token_id``, the chat
    renderer), and ``generate_text`` for the model reflector: generation through the trainer's own model."""

    def __init__(self, trainer: HEROTrainer):
        self.trainer = trainer
        self.tokenizer = trainer._tokenizer
        self.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0
        template = trainer.chat_template or self.tokenizer.chat_template
        if trainer.chat_template and trainer.chat_template != self.tokenizer.chat_template:
            import copy

            tok = copy.copy(self.tokenizer)
            tok.chat_template = template
        else:
            tok = self.tokenizer
        self._hero_renderer = ChatRenderer(tok, check=False)   # read by the trainer's _renderer_for

    @property
    def model(self) -> Any:
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    @torch.no_grad()
    def generate_text(self, chats: list[list[dict[str, str]]], *, max_new_tokens: int, temperature: float) -> list[str]:
        tr, tok = self.trainer, self.tokenizer
        out: list[str] = []
        step = max(1, tr.args.reflector_batch_size)
        for b in range(0, len(chats), step):
            ids = [self._hero_renderer.prompt_ids(c) for c in chats[b:b + step]]
            width = max(len(x) for x in ids)
            inp = torch.tensor([[self.pad_token_id] * (width - len(x)) + x for x in ids], device=tr.accelerator.device)
            att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=tr.accelerator.device)
            sample = temperature > 0
            with unwrap_model_for_generation(tr.model_wrapped, tr.accelerator,
                                             gradient_checkpointing_kwargs=tr.args.gradient_checkpointing_kwargs) as m:
                was = m.training
                m.eval()
                try:
                    gen = m.generate(input_ids=inp, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=sample,
                                     temperature=temperature if sample else None, top_k=0 if sample else None,
                                     top_p=1.0 if sample else None, eos_token_id=list(tr.eos_token_ids),
                                     pad_token_id=self.pad_token_id)
                finally:
                    m.train(was)
            out.extend(tok.decode(g[width:], skip_special_tokens=True) for g in gen.tolist())
        return out


class _TeacherEMA(TrainerCallback):
    """Folds the trainable weights into the EMA teacher after every optimizer step (as ``update`` does)."""

    def __init__(self, teacher: TeacherWeights):
        self.teacher = teacher

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.teacher.update()


class HEROTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` with hero-gym's multi-turn self-distillation loss (see the module docstring).

    Takes ``GRPOTrainer``'s arguments; ``args`` must be a :class:`HEROConfig`. ``reflector`` overrides the method's
    reflector (anything with ``reflect(episodes) -> list[Reflection]``). With only an
    :func:`~hero_gym.adapters.trl.environment_factory` whose class defines ``get_reward`` no ``reward_funcs`` are
    needed (TRL then uses the env reward)."""

    def __init__(self, model: Any, reward_funcs: Any = None, args: HEROConfig | None = None, *pos: Any,
                 reflector: Any = None, **kwargs: Any):
        if args is None:
            args = HEROConfig(output_dir="hero-trl")
        if not isinstance(args, HEROConfig):
            raise TypeError(f"HEROTrainer needs args=HEROConfig(...), got {type(args).__name__}")
        super().__init__(model, reward_funcs, args, *pos, **kwargs)
        self.hero_config = args.hero_train_config()
        self.hero_spec = get_method(args.method)
        if self.hero_spec.distills and self.accelerator.num_processes > 1:
            raise NotImplementedError("HEROTrainer's distillation runs in one process only (its forwards bypass the "
                                      "DDP/DeepSpeed wrapper); use one GPU, or method='grpo'.")
        self.hero_teacher = TeacherWeights(self.accelerator.unwrap_model(self.model), args.teacher,
                                           args.teacher_ema_rate)
        self.add_callback(_TeacherEMA(self.hero_teacher))
        self.hero_policy = _TrainerPolicy(self)
        self.hero_reflector = reflector if reflector is not None else make_reflector(
            self.hero_spec, self.hero_policy, self.hero_config)
        self.hero_success_buffer = SuccessBuffer()
        self._hero_batch: HeroBatch | None = None
        self._hero_generation: tuple[Any, ...] | None = None
        self._hero_pending: list[float] = []
        self._hero_warned_temperature = False

    # ------------------------------------------------------------------ rollouts -> episodes -> notes
    def _generate(self, prompts: list) -> tuple:
        out = super()._generate(prompts)
        self._hero_generation = (prompts, out)
        return out

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if not self.hero_spec.distills:
            return output
        prompts, (prompt_ids, completion_ids, tool_mask, completions, logprobs, *_rest) = self._hero_generation
        episodes = self.hero_episodes(inputs, prompts, prompt_ids, completion_ids, tool_mask, completions,
                                      self._behaviour_logprobs(logprobs, output, completion_ids))
        notes = self.hero_notes(episodes)
        if self.mask_truncated_completions:   # TRL leaves truncated completions out of its loss: so do we
            eos = {*self.eos_token_ids, self._tokenizer.pad_token_id}
            notes = [n if ids and ids[-1] in eos else [None] * len(n) for n, ids in zip(notes, completion_ids)]
        self._hero_batch = self.hero_batch(episodes, notes)
        output["hero_index"] = torch.arange(len(episodes), device=output["prompt_ids"].device)
        self._hero_log_batch(self._hero_batch)
        return output

    def _behaviour_logprobs(self, sampling: list[list[float]] | None, output: dict[str, Any],
                            completion_ids: list[list[int]]) -> list[list[float]] | None:
        if self.temperature != 1.0:
            if not self._hero_warned_temperature:
                warnings.warn("HEROTrainer: temperature != 1, so the sampling log-probs are not the model's and the "
                              "importance weights are left out (weight 1).", stacklevel=2)
                self._hero_warned_temperature = True
            return None
        if sampling is not None:
            return [[float("nan") if x is None else float(x) for x in row] for row in sampling]
        old = output.get("old_per_token_logps")
        if old is not None:
            return [old[i, :len(ids)].float().tolist() for i, ids in enumerate(completion_ids)]
        return None

    def hero_episodes(self, inputs: list[dict[str, Any]], prompts: list[Any], prompt_ids: list[list[int]],
                      completion_ids: list[list[int]], tool_mask: list[list[int]] | None, completions: list[Any],
                      logprobs: list[list[float]] | None = None) -> list[Episode]:
        """The generation batch as hero-gym episodes (row ``i`` -> episode ``i``; see :mod:`.trl_episodes`)."""
        envs = self.environments or [None] * len(prompt_ids)
        episodes = []
        for i, ids in enumerate(completion_ids):
            env, row, prompt = envs[i], inputs[i], prompts[i]
            messages = completions[i] if isinstance(completions[i], list) else [
                {"role": "assistant", "content": str(completions[i])}]
            system = next((m["content"] for m in prompt if m.get("role") == "system"), None) \
                if isinstance(prompt, list) else None
            first = env.observations[0] if env is not None and getattr(env, "observations", None) else (
                prompt[-1]["content"] if isinstance(prompt, list) else str(prompt))
            env_id = getattr(env, "env_id", "") or (type(env).__name__ if env is not None else "trl")
            if row.get("task_index") is not None:
                task_id = f"{env_id}:{row.get('split') or ''}:{int(row['task_index'])}"
            else:
                task_id = "prompt:" + hashlib.sha1(f"{system}\n{first}".encode()).hexdigest()[:16]
            episodes.append(rollout_to_episode(
                prompt_ids=prompt_ids[i], completion_ids=ids, tool_mask=None if tool_mask is None else tool_mask[i],
                messages=messages, decode=lambda x: self._tokenizer.decode(x, skip_special_tokens=True),
                env=env if hasattr(env, "steps") else None, logprobs=None if logprobs is None else logprobs[i],
                env_id=env_id, task_id=task_id, system_prompt=system, initial_observation=first,
                metadata={"trl_step": self.state.global_step, "trl_row": i}))
        return episodes

    def hero_notes(self, episodes: list[Episode]) -> list[list[str | None]]:
        """Per-turn notes by the method registry (reflections first for the HERO methods; a model reflector's
        diagnoses that copy a later turn are dropped, as in hero-gym's trainer)."""
        reflections, _dropped = reflect(self.hero_reflector, episodes)
        notes = self.hero_spec.notes(episodes, reflections, self.hero_success_buffer,
                                     note_options(self.hero_config, self.state.global_step))
        self.hero_success_buffer.add(episodes)
        return notes

    def hero_batch(self, episodes: list[Episode], notes: list[list[str | None]]) -> HeroBatch:
        """Teacher contexts (turn ``t``: its own context + note ``t`` + generation prompt) and the token count."""
        tctx = teacher_contexts_for(self.hero_policy._hero_renderer, episodes, notes)
        n = sum(len(t.action_token_ids or []) for ep, row in zip(episodes, tctx)
                for t, c in zip(ep.turns, row) if c is not None)
        return HeroBatch(list(episodes), [list(r) for r in notes], tctx, n)

    def _hero_log_batch(self, batch: HeroBatch) -> None:
        mode = "train" if self.model.training else "eval"
        turns = [len(ep.turns) for ep in batch.episodes]
        scored = sum(c is not None for row in batch.teacher_contexts for c in row)
        m = self._metrics[mode]
        m["hero/turns_per_episode"].append(sum(turns) / max(1, len(turns)))
        m["hero/scored_turns"].append(float(scored))
        m["hero/masked_turns"].append(float(sum(turns) - scored))
        m["hero/distill_tokens"].append(float(batch.distill_tokens))
        m["hero/env_success"].append(sum(ep.success for ep in batch.episodes) / max(1, len(batch.episodes)))

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        if return_outputs:
            raise ValueError("HEROTrainer does not support returning outputs")
        if not self.hero_spec.distills:
            return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        w = float(self.args.grpo_weight)
        mode = "train" if self.model.training else "eval"
        steps = self.args.steps_per_generation if mode == "train" else 1
        accumulation = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        scale = steps / accumulation if mode == "train" else 1.0
        loss, value = self.hero_distill_loss(model, [int(i) for i in inputs["hero_index"].tolist()])
        self._hero_pending.append(value)
        if len(self._hero_pending) >= steps:
            self._metrics[mode]["hero/distill_loss"].append(sum(self._hero_pending))
            self._hero_pending = []
        total = (1.0 - w) * scale * loss
        if w > 0:
            total = total + w * self._compute_loss(model, inputs)
        return total

    def hero_distill_loss(self, model: Any, rows: list[int]) -> tuple[torch.Tensor, float]:
        """The distillation loss of rows ``rows`` of the current generation batch: their tokens' share of the
        batch's mean (so the rows of one batch sum to hero-gym's ``update`` loss on it). Returns a tensor whose
        gradient is the loss's (built without ever holding a ``[N, V]`` table with gradient) and its value."""
        batch, cfg = self._hero_batch, self.hero_config
        if batch is None:
            raise RuntimeError("no generation batch: hero_distill_loss runs after _generate_and_score_completions")
        model = self.accelerator.unwrap_model(model)
        eps = [batch.episodes[r] for r in rows]
        notes = [batch.notes[r] for r in rows]
        layout = build_layout(eps)
        plan = plan_losses(self.hero_policy, eps, notes, layout, cfg)
        if plan.n_distill == 0 or batch.distill_tokens == 0:
            return torch.zeros((), device=self.accelerator.device, requires_grad=True), 0.0
        plan.distill_denom = batch.distill_tokens
        pad = self.hero_policy.pad_token_id
        micro = list(micro_batches(layout, cfg.micro_batch_episodes))
        # every teacher pass before any student graph exists (the EMA swap writes into the weights in place)
        scored = [teacher_scores(model, self.hero_teacher, eps, layout, plan, cidx, tok, pad, cfg)
                  for cidx, tok in micro]
        sums = {"distill": 0.0, "grpo": 0.0}
        total = None
        for (cidx, _tok), tb in zip(micro, scored):
            hidden, head = student_hidden(model, eps, layout, chain_indices=cidx, pad_id=pad)
            part = _chunked_surrogate(hidden, head, lambda sl, z, tb=tb: chunk_loss(sl, z, tb, plan, cfg, sums),
                                      cfg.loss_chunk_tokens)
            if part is not None:
                total = part if total is None else total + part
        if total is None:
            return torch.zeros((), device=self.accelerator.device, requires_grad=True), 0.0
        return total, sums["distill"]

    # ------------------------------------------------------------------ the EMA teacher in checkpoints
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if os.path.isdir(folder) and self.accelerator.is_main_process:
            torch.save(self.hero_teacher.state_dict(), os.path.join(folder, TEACHER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, TEACHER_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            self.hero_teacher.load_state_dict(torch.load(path, map_location=self.accelerator.device))


def _chunked_surrogate(hidden: torch.Tensor, head: Any, loss_fn: Any, chunk: int) -> torch.Tensor | None:
    """A tensor equal in value to ``sum_chunks loss_fn(slice, head(hidden[slice]))`` whose gradient is that sum's.

    Like :func:`hero_gym.agents.update._chunked_backward`, the vocabulary-sized logits exist one chunk at a time:
    each chunk's gradient w.r.t. the hidden states (and the output head's weights) is taken at once, and the
    returned surrogate ``<hidden, g_h> + sum_p <p, g_p>`` (value corrected to the loss) carries exactly those
    gradients into TRL's own ``backward`` (gradient accumulation, clipping and the optimizer stay TRL's)."""
    leaf = hidden.detach().requires_grad_(True)
    params = [p for p in getattr(head, "parameters", lambda: [])() if p.requires_grad]
    g_h = torch.zeros_like(leaf)
    g_p = [torch.zeros_like(p) for p in params]
    value = None
    for s in range(0, leaf.shape[0], max(1, chunk)):
        sl = slice(s, min(leaf.shape[0], s + max(1, chunk)))
        val = loss_fn(sl, head(leaf[sl]))
        if val is None:
            continue
        grads = torch.autograd.grad(val, [leaf, *params], allow_unused=True)
        if grads[0] is not None:
            g_h += grads[0]
        for acc, g in zip(g_p, grads[1:]):
            if g is not None:
                acc += g
        value = val.detach() if value is None else value + val.detach()
    if value is None:
        return None
    surrogate = (hidden * g_h).sum()
    for p, g in zip(params, g_p):
        surrogate = surrogate + (p * g).sum()
    return surrogate - surrogate.detach() + value
