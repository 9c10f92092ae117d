"""``python -m hero_gym.agents.train``: the ``hero-gym train`` command, runnable under ``torchrun``.

One process::

    python -m hero_gym.agents.train hero_gym/Lookup-v0 --method grpo --budget 200 --model tiny --out runs/a

Data-parallel on K processes (gloo on CPU, NCCL on GPUs; see :mod:`hero_gym.agents.distributed`)::

    torchrun --nproc_per_node=K -m hero_gym.agents.train hero_gym/Lookup-v0 --method hero --budget 2000

Each rank collects its share of every batch's tasks, the gradients are summed over ranks, the turn budget
is global and rank 0 alone writes ``OUT/checkpoint`` and ``OUT/adapter``. ``--pool subprocess|ray`` runs the
rollout envs in worker processes or Ray actors (``--ray-address`` joins a cluster). Options are those of
``hero-gym train``; ``--config field=value`` sets any :class:`~hero_gym.agents.trainer.TrainConfig` field.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Optional

import typer

from hero_gym import cli

from . import distributed as D

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    env_id: str = typer.Argument(..., help="a registered env id"),
    method: str = typer.Option("hero", help="grpo | envfb_sd | full_demo | hero_rules | hero | hero_shuffled"),
    budget: int = typer.Option(200, help="training budget in environment turns (global over ranks)"),
    model: str = typer.Option("smollm2", help="smollm2 (embedded default) | tiny | HF id or local path"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda:LOCAL_RANK if available)"),
    out: Path = typer.Option(Path("runs/train"), help="checkpoint/, episodes.jsonl, metrics.jsonl, adapter/"),
    pool: str = typer.Option("inprocess", help="where rollout envs run: inprocess | subprocess | ray"),
    ray_address: Optional[str] = typer.Option(None, help="ray.init address for --pool ray (default: local)"),
    backend: Optional[str] = typer.Option(None, help="torch.distributed backend (default nccl on GPU, else gloo)"),
    kwarg: Optional[list[str]] = typer.Option(None, "--kwarg", "-k", help="env constructor key=value"),
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", help="TrainConfig field=value"),
) -> None:
    """Train a policy with HERO or a baseline, data-parallel when launched by torchrun."""
    try:
        agents = cli._train_modules()
        cli._check_env_id(env_id)
        overrides = [*(config or []), f"env_pool={pool}", *([f"ray_address={ray_address}"] if ray_address else [])]
        cfg = cli._train_config(agents, env_id, method, budget, out, kwarg, overrides)
    except cli.CLIError as e:
        raise SystemExit(f"error: {e}") from None
    distributed = D.init_from_env(backend)
    try:
        if device is None and distributed and _cuda():
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        cfg.progress = D.is_main()
        try:
            policy = cli._policy(model, device)
        except cli.CLIError as e:
            raise SystemExit(f"error: {e}") from None
        from .trainer import train

        result = train(policy, cfg)
        if D.is_main():
            policy.save(out / "adapter")
            (out / "adapter" / cli.BASE_MODEL_FILE).write_text(json.dumps({"model": model}))
            print(f"ranks {D.world_size()}, updates {result.updates}, turns used {result.turns_used}, "
                  f"episodes {result.episodes}, training success {result.train_success_rate:.3f}; "
                  f"adapter saved to {out / 'adapter'}")
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _CallableModule(types.ModuleType):
    """Importing this module rebinds the package attribute ``hero_gym.agents.train`` (the training function)
    to the module; calling the module forwards to :func:`hero_gym.agents.trainer.train`, so
    ``hero_gym.agents.train(policy, config)`` keeps working after ``import hero_gym.agents.train``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .trainer import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    app()
