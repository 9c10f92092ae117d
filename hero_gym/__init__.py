"""hero-gym: multi-turn text Gymnasium environments and HERO agentic self-distillation.

Core (no torch): :class:`MultiTurnEnv`, tool calls and parsers, episode records, the registry
(:func:`make`, :func:`list_envs`, :func:`register`) and :func:`check_env`. Environments live in
``hero_gym.envs``; training code (HERO and baselines) in ``hero_gym.agents``.
"""

from hero_gym.checker import EnvCheckError, check_env
from hero_gym.core import MultiTurnEnv, StepResult, TextMessage
from hero_gym.envs import register_envs
from hero_gym.parsers import PARSERS, ParsedReply, get_parser, parse_reply
from hero_gym.records import Episode, Message, Turn, load_jsonl, save_jsonl
from hero_gym.registry import list_envs, load_plugins, make, register
from hero_gym.spaces import AnyText
from hero_gym.tools import ToolCall, ToolCallError, ToolSpec, validate_call

__version__ = "0.1.0"

register_envs()   # the shipped envs, by id and class path: no env module is imported here

__all__ = [
    "AnyText", "EnvCheckError", "Episode", "Message", "MultiTurnEnv", "PARSERS", "ParsedReply",
    "StepResult", "TextMessage", "ToolCall", "ToolCallError", "ToolSpec", "Turn", "check_env",
    "get_parser", "list_envs", "load_jsonl", "load_plugins", "make", "parse_reply", "register",
    "save_jsonl", "validate_call",
]
