"""The ``hero-gym`` command line.

``hero-gym list``                 registered envs (shipped and plugins)
``hero-gym play ENV_ID``          play an env in the terminal: type actions, see observations
``hero-gym webshop-serve``        run the WebShop web server alone
``hero-gym serve ENV_ID``         serve an env over HTTP (sessions) and OpenEnv's WebSocket protocol
``hero-gym train`` / ``eval``     train a policy with HERO or a baseline / evaluate it
``hero-gym bench``                the HERO benchmark (``hero-gym bench --help``)
``hero-gym probe ENV_ID``         the mechanism probe: how each method's note moves the self-teacher

The core commands import no torch; ``train``, ``eval`` and ``bench`` import the trainer lazily.

Ordinary mistakes (an unknown env id, a bad ``--kwarg``, an unknown method, a missing adapter ...) end
with one line on stderr saying what was wrong and what is valid, and exit status 2 (usage) or 1 (anything
else). ``--debug`` (anywhere on the command line) or ``HERO_GYM_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

import hero_gym

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="hero-gym: multi-turn text envs and HERO. Add --debug to any command for tracebacks.")
console = Console(highlight=False, soft_wrap=True)


class CLIError(Exception):
    """A user mistake: :func:`main` prints its message as one line and exits with status 2."""


def _suggest(value: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid names, case-insensitive matches first."""
    close = [v for v in valid if v.lower() == value.lower()]
    close += [v for v in difflib.get_close_matches(value, list(valid), n=2, cutoff=0.6) if v not in close]
    return f" (did you mean {', '.join(repr(c) for c in close[:2])}?)" if close else ""


def _one_of(what: str, value: str, valid: Sequence[str]) -> CLIError:
    return CLIError(f"unknown {what} {value!r}{_suggest(value, valid)}; valid: {', '.join(sorted(valid))}")


def _check_env_id(env_id: str) -> None:
    envs = hero_gym.list_envs()
    if env_id not in envs:
        raise _one_of("env", env_id, envs)


def _init_params(cls: type) -> dict[str, Any]:
    """Constructor keyword parameters of ``cls`` and their type hints (``None`` when unknown),
    following ``**kwargs`` up the MRO."""
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable annotations: keep the names, skip the type check
            hints = {}
        sig = inspect.signature(init)
        for name, p in sig.parameters.items():
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(name, hints.get(name))
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            return params
    return params


def _accepts(t: type, value: Any) -> bool:
    if t in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if t is float else t)


def _check_value(where: str, name: str, value: Any, hint: Any) -> None:
    """Reject a value whose type plainly disagrees with a simple annotation (int, float, bool, str,
    optionally ``| None``); other annotations are left to the constructor."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [t for t in (typing.get_args(hint) if union else (hint,)) if t is not type(None)]
    if not options or any(t not in (int, float, bool, str) for t in options):
        return
    if value is None and union:
        return
    if not any(_accepts(t, value) for t in options):
        raise CLIError(f"{where} {name}={value!r}: expected {' | '.join(t.__name__ for t in options)}")


def _env_class(env_id: str) -> type | None:
    """The class a registered env id makes (``None`` when its entry point is not a class)."""
    import gymnasium as gym

    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry if isinstance(entry, type) else None


def _check_env_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Unknown or mistyped env constructor arguments, named before the env is built."""
    entry = _env_class(env_id)
    if entry is None:
        return
    params = _init_params(entry)
    for key, value in kwargs.items():
        if key not in params:
            raise _one_of(f"argument for {env_id}:", key, list(params))
        if params[key] is not None:
            _check_value(f"{env_id} argument", key, value, params[key])


def json_or_str(value: str) -> Any:
    """A command-line ``key=value`` value: its JSON reading when it parses (``5``, ``true``, ``[1, 2]``),
    else the string itself (``max_results=5`` gives 5, ``split=test`` gives ``"test"``)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CLIError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = json_or_str(value)
    return out


@app.command("list")
def list_cmd() -> None:
    """List the registered environments."""
    for env_id in hero_gym.list_envs():
        console.print(env_id)


def _say(label: str, text: str, style: str = "bold") -> None:
    """``label`` styled, ``text`` verbatim: env text is never read as Rich markup (``search[...]`` stays)."""
    console.print(f"[{style}]{label}[/{style}]", end=" " if text else "\n")
    if text:
        console.print(text, markup=False)


def _show_tools(tools: list[dict]) -> None:
    console.print("[bold]Tools:[/bold]")
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters", {}).get("properties", {})
        required = set(fn.get("parameters", {}).get("required", []))
        args = ", ".join(f"{p}{'' if p in required else '?'}" for p in params)
        doc = fn.get("description", "").splitlines()[0] if fn.get("description") else ""
        console.print(f"  {fn['name']}({args})  {doc}", markup=False)


PLAY_HELP = (
    "Type an action and press Enter. Tool calls: name(arg=\"value\"), a JSON object "
    "{\"name\": ..., \"arguments\": {...}}, <tool_call>...</tool_call> or search[...]/click[...]; "
    "anything else is a message. Commands: :system, :tools, :reset, :quit."
)
SYSTEM_PREVIEW_CHARS = 1500


def _show_system(prompt: str, full: bool) -> None:
    prompt = prompt.strip()
    if full or len(prompt) <= SYSTEM_PREVIEW_CHARS:
        _say("System:", prompt)
    else:
        _say("System:", prompt[:SYSTEM_PREVIEW_CHARS] + f" ... [{len(prompt)} characters; :system shows all]")


@app.command()
def play(
    env_id: str = typer.Argument(..., help="e.g. hero_gym/TauRetail-v0"),
    seed: Optional[int] = typer.Option(None, help="seed of reset()"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", metavar="KEY=VALUE", help="reset option key=value"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", metavar="KEY=VALUE", help="env constructor key=value"),
    parser: str = typer.Option("auto", help="how typed actions are parsed (auto accepts every format)"),
) -> None:
    """Play an environment by typing actions (reads stdin, so it can be scripted with a pipe).

    Env text is printed verbatim. Piped actions are echoed after the prompt; at the end of the input
    (or :quit) an episode summary is printed."""
    from hero_gym.parsers import PARSERS

    _check_env_id(env_id)
    if parser not in PARSERS:
        raise _one_of("parser", parser, list(PARSERS))
    env_kwargs = _parse_kv(kwarg)
    _check_env_kwargs(env_id, env_kwargs)
    env = hero_gym.make(env_id, parser=parser, **env_kwargs)
    options = _parse_kv(option)
    echo = not sys.stdin.isatty()
    try:
        obs, info = env.reset(seed=seed, options=options)
        console.print(PLAY_HELP, style="dim", markup=False)
        if info.get("system_prompt"):
            _show_system(info["system_prompt"], full=False)
        _show_tools(info["tools"])
        _say("Observation:", obs, "bold cyan")
        total, turns, ended = 0.0, 0, ""
        while True:
            console.print("[bold]>[/bold]", end=" ")
            line = sys.stdin.readline()
            if not line:
                console.print()
                break
            action = line.rstrip("\n")
            if echo:
                console.print(action, markup=False)
            command = action.strip()
            if command == ":quit":
                break
            if command in (":tools", ":system"):
                _show_tools(info["tools"]) if command == ":tools" else _show_system(info.get("system_prompt", ""), True)
                continue
            if command == ":reset":
                obs, info = env.reset(seed=seed, options=options)
                total, turns = 0.0, 0
                _say("Observation:", obs, "bold cyan")
                continue
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            turns += 1
            if info.get("action_error"):
                console.print(f"Action error ({info['action_error']['kind']})", style="red", markup=False)
            _say("Observation:", obs, "bold cyan")
            console.print(f"turn {info['turn']}/{info['max_turns']}  reward {reward:g}", style="dim", markup=False)
            if terminated or truncated:
                ended = "terminated" if terminated else "truncated (turn budget used up)"
                console.print(f"Episode {ended}. Total reward: {total:g}", style="bold", markup=False)
                if "reward_info" in info:
                    console.print(f"reward_info: {json.dumps(info['reward_info'], default=str)}", markup=False)
                break
        console.print(f"Summary: {env_id}, {turns} turn(s), total reward {total:g}, "
                      f"{ended or 'not finished (input ended)'}.", markup=False)
    finally:
        env.close()


@app.command("webshop-serve")
def webshop_serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(0, help="0 picks a free port"),
    num_products: int = typer.Option(1000, help="products in the generated catalog"),
    seed: int = typer.Option(0),
) -> None:
    """Run the WebShop HTTP server alone (blocking)."""
    from hero_gym.envs.webshop.server import serve

    serve(host=host, port=port, num_products=num_products, seed=seed)


@app.command()
def serve(
    env_id: str = typer.Argument(..., help="a registered env id, e.g. hero_gym/TauRetail-v0"),
    host: str = typer.Option("127.0.0.1", help="interface to bind (loopback by default)"),
    port: int = typer.Option(8000),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", metavar="KEY=VALUE", help="env constructor key=value"),
    max_sessions: int = typer.Option(64, help="concurrent sessions (HTTP and WebSocket)"),
    session_timeout: float = typer.Option(600.0, help="close sessions idle for this many seconds"),
) -> None:
    """Serve an env over HTTP+JSON sessions and OpenEnv's WebSocket protocol (blocking)."""
    from hero_gym.serve import serve as run_server

    _check_env_id(env_id)
    env_kwargs = _parse_kv(kwarg)
    _check_env_kwargs(env_id, env_kwargs)
    console.print(f"Serving {env_id} on http://{host}:{port} (OpenEnv: ws://{host}:{port}/ws)")
    run_server(env_id, env_kwargs, host=host, port=port, max_sessions=max_sessions,
               session_timeout=session_timeout)


TRAIN_EXTRA_HINT = "this command needs the training extra: pip install 'hero-gym[train]' (and torch)"
BASE_MODEL_FILE = "hero_cli.json"  # written next to a CLI-trained adapter: which base model it belongs to


def _train_modules() -> Any:
    """``hero_gym.agents``, or a one-line hint when torch/transformers/peft are not installed."""
    try:
        return importlib.import_module("hero_gym.agents")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("torch", "transformers", "peft", "safetensors", "gguf"):
            raise CLIError(f"{TRAIN_EXTRA_HINT} (missing module {e.name!r})") from e
        raise


def _check_adapter(adapter: Path, model: str) -> None:
    if not adapter.is_dir():
        raise CLIError(f"adapter directory not found: {adapter}")
    if not any(adapter.glob("*.safetensors")):
        raise CLIError(f"{adapter} holds no weights (*.safetensors); pass the adapter/ folder `hero-gym train` wrote")
    meta = adapter / BASE_MODEL_FILE
    if meta.exists():
        trained_on = json.loads(meta.read_text()).get("model")
        if trained_on and trained_on != model:
            raise CLIError(f"{adapter} was trained on base model {trained_on!r}, not {model!r}; "
                           f"pass --model {trained_on}")


def _policy(model: str, device: str | None, adapter: Path | None = None) -> Any:
    agents = _train_modules()
    if adapter is not None:
        _check_adapter(adapter, model)
    try:
        base, tokenizer = agents.load_named_model(model, device=device)
    except (OSError, FileNotFoundError) as e:
        raise CLIError(f"cannot load model {model!r}: {str(e).splitlines()[0]} "
                       f"(built-in names: smollm2, tiny; or a local directory / cached Hugging Face id)") from e
    policy = agents.HFPolicy(base, tokenizer, device=device)
    if adapter is not None:
        policy.load(adapter)
    return policy


ROLLOUT_HELP = ("hf | vllm: who generates rollouts (and the model reflector's text); vllm needs vLLM and a GPU and "
                "gets the adapter after every update")


def _rollout_backend(rollout: str, model: str, tokenizer: Any, memory: float, max_model_len: int | None) -> Any:
    """``None`` for ``--rollout hf``; a VLLMPolicy for ``--rollout vllm`` (one-line errors for bad input)."""
    from hero_gym.agents import vllm_policy

    if rollout not in ("hf", "vllm"):
        raise _one_of("rollout backend", rollout, ["hf", "vllm"])
    try:
        return vllm_policy.make_rollout_policy(rollout, model, tokenizer, gpu_memory_utilization=memory,
                                               max_model_len=max_model_len)
    except (ImportError, ValueError) as e:
        raise CLIError(str(e).splitlines()[0]) from e


def _train_config(agents: Any, env_id: str, method: str, budget: int, out: Path,
                  kwarg: list[str] | None, config: list[str] | None) -> Any:
    from hero_gym.agents.methods import METHODS

    methods = list(METHODS)
    if method not in methods:
        raise _one_of("method", method, methods)
    fields = [f.name for f in dataclasses.fields(agents.TrainConfig)]
    overrides = _parse_kv(config)
    for key in overrides:
        if key not in fields:
            raise _one_of("TrainConfig field", key, fields)
    env_kwargs = _parse_kv(kwarg)
    _check_env_kwargs(env_id, env_kwargs)
    if budget <= 0:   # before TrainConfig, whose own check (>= 0, for the Python API) says less
        raise CLIError(f"--budget must be > 0 turns, got {budget}")
    try:
        return agents.TrainConfig(method=method, env_id=env_id, env_kwargs=env_kwargs, turn_budget=budget,
                                  checkpoint_dir=str(out / "checkpoint"), progress=True, **overrides)
    except (TypeError, ValueError) as e:
        raise CLIError(f"invalid training config: {e}") from e


BUDGET_HELP = ("training budget in environment turns (global over ranks), counted in whole batches: a batch plays "
               "tasks_per_update x group_size episodes to their end and a new one starts while fewer than TURNS "
               "are spent, so the last batch may overshoot; at least one batch's episode count")


def _check_budget(cfg: Any) -> None:
    """Refuse a budget that cannot be spent (<= 0, or fewer turns than one batch's episodes) and say how
    far a budget smaller than one full batch will overshoot."""
    episodes = cfg.tasks_per_update * cfg.group_size
    if cfg.turn_budget <= 0:
        raise CLIError(f"--budget must be > 0 turns, got {cfg.turn_budget}")
    if cfg.turn_budget < episodes:
        raise CLIError(f"--budget {cfg.turn_budget} is below one batch: a batch plays tasks_per_update x group_size "
                       f"= {episodes} episodes of at least one turn each, and budgets count whole batches; "
                       f"pass --budget >= {episodes} or lower them with -c")
    cap = cfg.max_turns or cfg.env_kwargs.get("max_turns") or getattr(_env_class(cfg.env_id), "default_max_turns", 0)
    if cap and cfg.turn_budget < episodes * cap:
        console.print(f"note: budgets count whole batches; one batch here is {episodes} episodes of up to {cap} "
                      f"turns, so this run spends between {episodes} and {episodes * cap} turns per batch "
                      f"(a budget of {cfg.turn_budget} buys one batch)", markup=False)


@app.command()
def train(
    env_id: str = typer.Argument(..., help="a registered env id"),
    method: str = typer.Option("hero", help="a key of hero_gym.agents.methods.METHODS (grpo, envfb_sd, full_demo, hero_rules, hero, hero_shuffled)"),
    budget: int = typer.Option(200, metavar="TURNS", help=BUDGET_HELP),
    model: str = typer.Option("smollm2", help="smollm2 (embedded default) | tiny | HF id or local path"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda[:LOCAL_RANK] if available)"),
    out: Path = typer.Option(Path("runs/train"), help="checkpoints, episodes.jsonl, metrics.jsonl, adapter/"),
    pool: str = typer.Option("inprocess", help="where the rollout envs run: inprocess | subprocess | ray"),
    ray_address: Optional[str] = typer.Option(None, help="ray.init address for --pool ray (default: local)"),
    backend: Optional[str] = typer.Option(None, help="torch.distributed backend under torchrun (default: nccl on GPU, else gloo)"),
    sharding: str = typer.Option("none", help="none | fsdp: under torchrun, shard the weights and optimiser state over the ranks (FSDP2)"),
    rollout: str = typer.Option("hf", help=ROLLOUT_HELP),
    vllm_memory: float = typer.Option(0.35, help="--rollout vllm: share of the GPU's memory the vLLM engine may take"),
    max_model_len: Optional[int] = typer.Option(None, help="--rollout vllm: context window (also the rollouts' context cap)"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", metavar="KEY=VALUE", help="env constructor key=value"),
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", metavar="KEY=VALUE", help="TrainConfig field=value"),
) -> None:
    """Train a policy with HERO or a baseline; resumes from OUT if it holds a checkpoint.

    Launched by `torchrun --nproc_per_node=K -m hero_gym.cli train ...` it trains data-parallel: each rank \
collects its share of every batch, gradients are summed over ranks, the turn budget is global and rank 0 \
alone writes OUT (see hero_gym.agents.distributed)."""
    agents = _train_modules()
    import torch

    from hero_gym.agents import distributed

    _check_env_id(env_id)
    overrides = [*(config or []), f"env_pool={pool}", *([f"ray_address={ray_address}"] if ray_address else []),
                 *([f"sharding={sharding}"] if sharding != "none" else [])]
    cfg = _train_config(agents, env_id, method, budget, out, kwarg, overrides)
    _check_budget(cfg)
    started = distributed.init_from_env(backend)
    if cfg.sharding == "fsdp" and not started:
        raise CLIError("--sharding fsdp needs several ranks: launch with torchrun --nproc_per_node=K (K >= 2)")
    try:
        if device is None and started and torch.cuda.is_available():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        cfg.progress = distributed.is_main()
        policy = _policy(model, device)
        if rollout != "hf" and distributed.world_size() > 1:
            raise CLIError("--rollout vllm runs in one process (no torchrun)")
        backend = _rollout_backend(rollout, model, policy.tokenizer, vllm_memory, max_model_len)
        result = agents.train(policy, cfg, rollout_policy=backend)
        distributed.save_policy(policy, out / "adapter")   # rank 0 writes (FSDP: every rank gathers)
        if distributed.is_main():
            (out / "adapter" / BASE_MODEL_FILE).write_text(json.dumps({"model": model}))
            console.print(f"ranks {distributed.world_size()}, updates {result.updates}, turns used {result.turns_used}, "
                          f"episodes {result.episodes}, training success {result.train_success_rate:.3f}; "
                          f"adapter saved to {out / 'adapter'}", markup=False)
    finally:
        if started:
            torch.distributed.destroy_process_group()


@app.command("eval")
def eval_cmd(
    env_id: str = typer.Argument(..., help="a registered env id"),
    model: str = typer.Option("smollm2", help="smollm2 | tiny | HF id or local path"),
    adapter: Optional[Path] = typer.Option(None, help="a trained adapter directory (from `hero-gym train`)"),
    episodes: int = typer.Option(10, help="number of episodes (task indices 0..N-1)"),
    device: Optional[str] = typer.Option(None),
    rollout: str = typer.Option("hf", help="hf | vllm: who generates (vllm needs vLLM and a GPU; the adapter is served as a LoRA)"),
    vllm_memory: float = typer.Option(0.9, help="--rollout vllm: share of the GPU's memory the vLLM engine may take"),
    max_model_len: Optional[int] = typer.Option(None, help="--rollout vllm: context window (also the context cap)"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", metavar="KEY=VALUE", help="env constructor key=value"),
    out: Optional[Path] = typer.Option(None, help="write the episodes to this JSONL file"),
) -> None:
    """Evaluate a policy (greedy) and print success rate, mean reward and mean turns."""
    agents = _train_modules()
    _check_env_id(env_id)
    env_kwargs = _parse_kv(kwarg)
    _check_env_kwargs(env_id, env_kwargs)
    if rollout != "hf":   # vLLM alone: no transformers copy of the model on the GPU
        if adapter is not None:
            _check_adapter(adapter, model)
        policy = _rollout_backend(rollout, model, None, vllm_memory, max_model_len)
        if adapter is not None:
            policy.set_lora(adapter)
    else:
        policy = _policy(model, device, adapter)
    result = agents.evaluate(policy, env_id, env_kwargs, task_indices=list(range(episodes)), progress=True)
    if out is not None:
        hero_gym.save_jsonl(result.episodes, out)
    console.print(json.dumps(result.summary(), indent=2), markup=False)


@app.command()
def warmstart(
    env_id: str = typer.Argument(..., help="hero_gym/WebShop-v0, hero_gym/TauRetail-v0, hero_gym/TauAirline-v0 or hero_gym/Lookup-v0"),
    model: str = typer.Option("smollm2", help="base model: smollm2 | tiny | HF id or local path"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", metavar="KEY=VALUE",
                                              help="env constructor key=value, e.g. -k max_results=5"),
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", metavar="KEY=VALUE", help="WarmStartConfig field=value"),
) -> None:
    """Warm-start a model by behaviour cloning the env's expert (cached); print where and the held-out eval."""
    _train_modules()
    from hero_gym.agents.warmstart import WarmStartConfig, read_report, warm_start

    _check_env_id(env_id)
    env_kwargs = _parse_kv(kwarg)
    _check_env_kwargs(env_id, env_kwargs)
    overrides = _parse_kv(config)
    fields = [f.name for f in dataclasses.fields(WarmStartConfig)]
    for key in overrides:
        if key not in fields:
            raise _one_of("WarmStartConfig field", key, fields)
    try:
        cfg = WarmStartConfig(env_id=env_id, env_kwargs=env_kwargs, progress=True, **overrides)
    except (TypeError, ValueError) as e:
        raise CLIError(f"invalid warm-start config: {e}") from e
    path = warm_start(cfg, base="default" if model == "smollm2" else model, device=device)
    report = read_report(path)
    console.print(f"warm-started model cached at {path}", markup=False)
    console.print(json.dumps({"eval": report.get("eval"), "train_seconds": report.get("train_seconds")}, indent=2), markup=False)


@app.command(add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the HERO benchmark (methods x envs x nested budgets x seeds); `hero-gym bench --help` lists
    its options (the same as `python benchmarks/run_all.py`)."""
    try:
        from hero_gym.agents import bench as bench_module
    except ImportError as e:
        raise SystemExit(f"hero-gym bench needs the training extra: pip install 'hero-gym[train]' ({e})") from None
    bench_module.main(list(ctx.args), parser=bench_module.build_parser(prog="hero-gym bench"))


@app.command(add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def probe(ctx: typer.Context) -> None:
    """The mechanism probe (forward passes only): how each method's note moves the self-teacher's log-probs of
    the student's and the oracle's actions; `hero-gym probe --help` lists its options."""
    try:
        from hero_gym.agents import probe_cli as probe_module
    except ImportError as e:
        raise SystemExit(f"hero-gym probe needs the training extra: pip install 'hero-gym[train]' ({e})") from None
    probe_module.main(list(ctx.args), parser=probe_module.build_parser(prog="hero-gym probe"))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 1000 else text[:1000] + " ..."


INTERRUPTED = ("hero-gym: interrupted; what finished is kept (training checkpoints, warm-start checkpoints, "
               "finished benchmark cells): run the same command again to continue")


def _plain_help_types() -> None:
    """Help without Typer's ``<bool>`` / ``<list[str]>`` type tags: an option shows its metavar, else the
    upper-case type name of its value (TEXT, INTEGER, PATH, ...); flags and arguments show none."""
    core = getattr(typer, "core", None)
    base = getattr(core, "_TyperParameter", None)
    if base is None or not hasattr(base, "display_type_rich"):   # another Typer: leave its help alone
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "metavar", None):
            return self.metavar
        if getattr(self, "is_flag", False) or getattr(self, "param_type_name", "") == "argument":
            return None
        try:
            label = self.display_type(ctx).strip("<>")
        except Exception:  # noqa: BLE001 - a help nicety must never break the help
            return None
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        return {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": None}.get(label, label.upper())

    for cls in (base, getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)):
        if cls is not None and "display_type_rich" in cls.__dict__:
            cls.display_type_rich = display_type_rich


_plain_help_types()


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: runs the Typer app and turns exceptions into one-line errors.

    Usage mistakes (:class:`CLIError`, click's usage errors) exit 2, other failures exit 1; with
    ``--debug`` on the command line or ``HERO_GYM_DEBUG=1`` the traceback is shown instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("HERO_GYM_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"] or ["--help"]
    try:
        code = app(args=args, prog_name="hero-gym", standalone_mode=False)
        if code == 130:   # Typer turns Ctrl-C (KeyboardInterrupt) into this exit code without raising
            print(INTERRUPTED, file=sys.stderr)
            return 130
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except click_exceptions.ClickException as e:
        if debug:
            raise
        print(f"hero-gym: error: {_one_line(Exception(e.format_message()))}", file=sys.stderr)
        return 2
    except CLIError as e:
        if debug:
            raise
        print(f"hero-gym: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the one place that turns failures into one line
        if debug:
            raise
        print(f"hero-gym: error: {type(e).__name__}: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
