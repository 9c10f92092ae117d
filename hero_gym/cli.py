"""The ``hero-gym`` command line.

``hero-gym list``                 registered envs (shipped and plugins)
``hero-gym play ENV_ID``          play an env in the terminal: type actions, see observations
``hero-gym webshop-serve``        run the WebShop web server alone
``hero-gym train`` / ``eval``     train a policy with HERO or a baseline / evaluate it
``hero-gym bench``                the benchmark matrix (``benchmarks/run_all.py``)

The core commands import no torch; ``train``, ``eval`` and ``bench`` import the trainer lazily.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

import hero_gym

app = typer.Typer(add_completion=False, no_args_is_help=True, help="hero-gym: multi-turn text envs and HERO.")
console = Console(highlight=False, soft_wrap=True)


def _parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command("list")
def list_cmd() -> None:
    """List the registered environments."""
    for env_id in hero_gym.list_envs():
        console.print(env_id)


def _show_tools(tools: list[dict]) -> None:
    console.print("[bold]Tools:[/bold]")
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters", {}).get("properties", {})
        required = set(fn.get("parameters", {}).get("required", []))
        args = ", ".join(f"{p}{'' if p in required else '?'}" for p in params)
        console.print(f"  {fn['name']}({args})  {fn.get('description', '').splitlines()[0] if fn.get('description') else ''}")


PLAY_HELP = (
    "Type an action and press Enter. Tool calls: name(arg=\"value\"), a JSON object "
    "{\"name\": ..., \"arguments\": {...}}, <tool_call>...</tool_call> or search[...]/click[...]; "
    "anything else is a message. Commands: :tools, :reset, :quit."
)


@app.command()
def play(
    env_id: str = typer.Argument(..., help="e.g. hero_gym/TauRetail-v0"),
    seed: Optional[int] = typer.Option(None, help="seed of reset()"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="reset option key=value"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", help="env constructor key=value"),
    parser: str = typer.Option("auto", help="how typed actions are parsed (auto accepts every format)"),
) -> None:
    """Play an environment by typing actions (reads stdin, so it can be scripted with a pipe)."""
    env = hero_gym.make(env_id, parser=parser, **_parse_kv(kwarg))
    options = _parse_kv(option)
    try:
        obs, info = env.reset(seed=seed, options=options)
        console.print(f"[dim]{PLAY_HELP}[/dim]")
        if info.get("system_prompt"):
            first = info["system_prompt"].strip().splitlines()[0]
            console.print(f"[bold]System:[/bold] {first} ...")
        _show_tools(info["tools"])
        console.print(f"[bold cyan]Observation:[/bold cyan] {obs}")
        total = 0.0
        while True:
            console.print("[bold]> [/bold]", end="")
            line = sys.stdin.readline()
            if not line:
                break
            action = line.rstrip("\n")
            if action.strip() == ":quit":
                break
            if action.strip() == ":tools":
                _show_tools(info["tools"])
                continue
            if action.strip() == ":reset":
                obs, info = env.reset(seed=seed, options=options)
                total = 0.0
                console.print(f"[bold cyan]Observation:[/bold cyan] {obs}")
                continue
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            if info.get("action_error"):
                console.print(f"[red]Action error ({info['action_error']['kind']})[/red]")
            console.print(f"[bold cyan]Observation:[/bold cyan] {obs}")
            console.print(f"[dim]turn {info['turn']}/{info['max_turns']}  reward {reward:g}[/dim]")
            if terminated or truncated:
                why = "terminated" if terminated else "truncated (turn budget used up)"
                console.print(f"[bold]Episode {why}. Total reward: {total:g}[/bold]")
                for key in ("reward_info",):
                    if key in info:
                        console.print(f"{key}: {json.dumps(info[key], default=str)}")
                break
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


def _policy(model: str, device: str | None, adapter: Path | None = None) -> Any:
    from hero_gym.agents import HFPolicy, load_named_model

    base, tokenizer = load_named_model(model, device=device)
    policy = HFPolicy(base, tokenizer, device=device)
    if adapter is not None:
        policy.load(adapter)
    return policy


@app.command()
def train(
    env_id: str = typer.Argument(..., help="a registered env id"),
    method: str = typer.Option("hero", help="hero | envfb_sd | full_demo | grpo"),
    budget: int = typer.Option(200, help="training budget in environment turns"),
    model: str = typer.Option("smollm2", help="smollm2 (embedded default) | tiny | HF id or local path"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    out: Path = typer.Option(Path("runs/train"), help="checkpoints, episodes.jsonl, metrics.jsonl, adapter/"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", help="env constructor key=value"),
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", help="TrainConfig field=value"),
) -> None:
    """Train a policy with HERO or a baseline; resumes from OUT if it holds a checkpoint."""
    from hero_gym.agents import TrainConfig
    from hero_gym.agents import train as run_train

    cfg = TrainConfig(method=method, env_id=env_id, env_kwargs=_parse_kv(kwarg), turn_budget=budget,
                      checkpoint_dir=str(out / "checkpoint"), progress=True, **_parse_kv(config))
    policy = _policy(model, device)
    result = run_train(policy, cfg)
    policy.save(out / "adapter")
    console.print(f"updates {result.updates}, turns used {result.turns_used}, episodes {result.episodes}, "
                  f"training success {result.train_success_rate:.3f}; adapter saved to {out / 'adapter'}")


@app.command("eval")
def eval_cmd(
    env_id: str = typer.Argument(..., help="a registered env id"),
    model: str = typer.Option("smollm2", help="smollm2 | tiny | HF id or local path"),
    adapter: Optional[Path] = typer.Option(None, help="a trained adapter directory (from `hero-gym train`)"),
    episodes: int = typer.Option(10, help="number of episodes (task indices 0..N-1)"),
    device: Optional[str] = typer.Option(None),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", help="env constructor key=value"),
    out: Optional[Path] = typer.Option(None, help="write the episodes to this JSONL file"),
) -> None:
    """Evaluate a policy (greedy) and print success rate, mean reward and mean turns."""
    from hero_gym.agents import evaluate

    policy = _policy(model, device, adapter)
    result = evaluate(policy, env_id, _parse_kv(kwarg), task_indices=list(range(episodes)), progress=True)
    if out is not None:
        hero_gym.save_jsonl(result.episodes, out)
    console.print(json.dumps(result.summary(), indent=2))


@app.command()
def warmstart(
    env_id: str = typer.Argument(..., help="hero_gym/WebShop-v0 or hero_gym/Lookup-v0"),
    model: str = typer.Option("smollm2", help="base model: smollm2 | tiny | HF id or local path"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k",
                                              help="env constructor key=value, e.g. -k max_results=5"),
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", help="WarmStartConfig field=value"),
) -> None:
    """Warm-start a model by behaviour cloning the env's expert (cached); print where and the held-out eval."""
    from hero_gym.agents.warmstart import WarmStartConfig, read_report, warm_start

    try:
        cfg = WarmStartConfig(env_id=env_id, env_kwargs=_parse_kv(kwarg), progress=True, **_parse_kv(config))
    except (TypeError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    path = warm_start(cfg, base="default" if model == "smollm2" else model, device=device)
    report = read_report(path)
    console.print(f"warm-started model cached at {path}")
    console.print(json.dumps({"eval": report.get("eval"), "train_seconds": report.get("train_seconds")}, indent=2))


def _bench_main(argv: list[str]) -> None:
    root = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
    if not root.exists():
        raise typer.BadParameter("benchmarks/run_all.py is not available (run from a source checkout)")
    import runpy

    sys.argv = [str(root), *argv]
    runpy.run_path(str(root), run_name="__main__")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run the benchmark matrix: the same options as ``python benchmarks/run_all.py``."""
    _bench_main(list(ctx.args))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
