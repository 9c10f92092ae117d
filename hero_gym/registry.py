"""Registration of environments under Gymnasium's registry.

Shipped envs live in the ``hero_gym/`` namespace with versioned ids (``hero_gym/TauRetail-v0``);
``hero_gym.envs`` registers them (``import hero_gym`` does it), so this module knows no env.
:func:`make` is ``gymnasium.make``; ``gymnasium.make("hero_gym/TauRetail-v0")`` works as soon
as ``hero_gym`` is imported (or use ``gymnasium.make("hero_gym:hero_gym/TauRetail-v0")``).

Third-party packages expose envs through the entry-point group ``hero_gym.envs``:

* ``"myns/MyEnv-v0" = "my_pkg.envs:MyEnv"`` — an env id mapped to its class (registered lazily,
  nothing is imported until the env is made), or
* ``"my_pkg" = "my_pkg:register_envs"`` — a name that is not an env id, mapped to a function that
  registers its envs itself.

Entry points are read once, on the first call of :func:`list_envs` or :func:`make`.
"""

from __future__ import annotations

import re
import warnings
from importlib.metadata import entry_points
from typing import Any

import gymnasium as gym

ENTRY_POINT_GROUP = "hero_gym.envs"
NAMESPACE = "hero_gym"

_ENV_ID = re.compile(r"^(?:[\w:.-]+/)?[\w:.-]+?-v\d+$")
_known: dict[str, str] = {}
_plugins_loaded = False


def register(id: str, entry_point: Any, **kwargs: Any) -> None:
    """Register an env with Gymnasium and hero-gym. ``kwargs`` are the default constructor kwargs.

    The env handles its own turn budget, so no ``TimeLimit`` wrapper is added.
    """
    if id in gym.registry:
        spec = gym.registry[id]
        if spec.entry_point == entry_point and spec.kwargs == kwargs:
            _known[id] = str(entry_point)
            return
        warnings.warn(f"Overriding the registration of {id!r}", stacklevel=2)
        del gym.registry[id]
    gym.register(id=id, entry_point=entry_point, kwargs=kwargs, disable_env_checker=False)
    _known[id] = str(entry_point)


def load_plugins(force: bool = False) -> list[str]:
    """Register the envs that installed packages expose in the ``hero_gym.envs`` group."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            if _ENV_ID.match(ep.name):
                register(ep.name, ep.value)
                found.append(ep.name)
            else:
                before = set(gym.registry)
                ep.load()()
                new = sorted(set(gym.registry) - before)
                _known.update({i: str(gym.registry[i].entry_point) for i in new})
                found += new
        except Exception as e:  # a broken plugin must not break hero_gym for everyone else
            warnings.warn(f"hero_gym: could not load env plugin {ep.name!r} ({ep.value}): {e}", stacklevel=2)
    return found


def list_envs() -> list[str]:
    """Ids of hero-gym's envs and of every plugin env, sorted."""
    load_plugins()
    return sorted(i for i in _known if i in gym.registry)


def make(id: str, **kwargs: Any) -> gym.Env:
    """Create a registered env (``gymnasium.make``); ``kwargs`` override the registered defaults."""
    load_plugins()
    return gym.make(id, **kwargs)
