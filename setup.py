"""Maps the top-level ``envs/`` and ``agents/`` folders into the ``hero_gym`` namespace.

The repository keeps the product layout (``hero_gym/`` core, ``envs/``, ``agents/``) while users
import ``hero_gym.envs.tau_bench`` and ``hero_gym.agents``. Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

_MAPPED = {"envs": "hero_gym.envs", "agents": "hero_gym.agents"}


def _packages() -> list[str]:
    pkgs = ["hero_gym", *(f"hero_gym.{p}" for p in find_packages("hero_gym"))]
    for folder, dotted in _MAPPED.items():
        pkgs.append(dotted)
        pkgs += [f"{dotted}.{p}" for p in find_packages(folder)]
    return pkgs


setup(
    packages=_packages(),
    package_dir={"hero_gym": "hero_gym", **{v: k for k, v in _MAPPED.items()}},
)
