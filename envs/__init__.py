"""Environments shipped with hero-gym (imported as ``hero_gym.envs``).

Each env lives in its own subpackage: ``example`` (Lookup, a tiny tool-use env for tests and
tutorials), ``tau_bench`` (retail, airline) and ``webshop`` (text, server, browser).

:func:`register_envs` registers the shipped envs by id and ``module:Class`` path; it imports no
env module (``hero_gym.make`` loads them on demand). ``import hero_gym`` calls it, and it is also
exposed in the ``hero_gym.envs`` entry-point group, the same way a third-party package adds envs.
"""

from __future__ import annotations

# id -> class, relative to this package
SHIPPED_ENVS: dict[str, str] = {
    "hero_gym/Lookup-v0": "example.lookup:LookupEnv",
    "hero_gym/TauRetail-v0": "tau_bench.env:TauRetailEnv",
    "hero_gym/TauAirline-v0": "tau_bench.env:TauAirlineEnv",
    "hero_gym/WebShop-v0": "webshop.env:WebShopEnv",
    "hero_gym/WebShopBrowser-v0": "webshop.browser:WebShopBrowserEnv",
}


def register_envs() -> None:
    """Register the shipped envs with Gymnasium and hero-gym (idempotent, lazy)."""
    from hero_gym.registry import register

    for env_id, target in SHIPPED_ENVS.items():
        register(env_id, f"{__name__}.{target}")
