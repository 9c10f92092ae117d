"""HERO agents: policies, token-exact rollouts, reflection, self-distillation and the baselines.

Importing this package imports torch (the core ``hero_gym`` package does not).
"""

from hero_gym.agents.models import (
    DEFAULT_MODEL_NAME,
    cache_dir,
    default_device,
    default_dtype,
    default_model_dir,
    find_smollm2_gguf,
    load_default_model,
    load_default_tokenizer,
    load_model,
    load_named_model,
    load_tokenizer,
    tiny_model,
)
from hero_gym.agents.policy import DEFAULT_LORA, Generation, HFPolicy, SamplingConfig, default_lora_config
from hero_gym.agents.rollout import Task, TurnBudget, collect, default_tool_prompt
from hero_gym.agents.vllm_policy import VLLMPolicy, vllm_available

# --- HERO training: reflection, teachers, losses, scoring, trainer ---
from hero_gym.agents import losses
from hero_gym.agents.reflector import (
    FunctionReflector,
    LLMReflector,
    Reflection,
    Reflector,
    RuleReflector,
    TurnReflection,
    build_reflection_messages,
    parse_reflection,
)
from hero_gym.agents.scoring import (
    TokenLayout,
    build_layout,
    student_hidden,
    student_logits,
    teacher_logits_from_cache,
    teacher_logits_naive,
    teacher_logits_prefix_cache,
)
from hero_gym.agents.teachers import NOTE_STYLES, SuccessBuffer, TeacherWeights, demo_note, envfb_note, hero_note
from hero_gym.agents.methods import METHODS, MethodSpec, NoteOptions, build_notes, get_method
from hero_gym.agents.checkpoint import list_snapshots, load_snapshot, snapshot_for_budget
from hero_gym.agents.trainer import EvalResult, TrainConfig, TrainResult, UpdateStats, evaluate, train, update
