"""WebShop as Gymnasium environments: a text shop, a real HTTP shop server and a browser mode.

``hero_gym/WebShop-v0`` (:class:`~hero_gym.envs.webshop.env.WebShopEnv`) simulates the shop
in-process (observation modes ``text``, ``text_rich``, ``html``); ``hero_gym/WebShopBrowser-v0``
(:class:`~hero_gym.envs.webshop.browser.WebShopBrowserEnv`) drives headless Chromium against the
HTTP server in :mod:`hero_gym.envs.webshop.server`. Both share one read-only catalog and BM25
index per process (:func:`~hero_gym.envs.webshop.catalog.get_catalog`).

Heavy modules (flask, selenium, bm25s) are imported lazily.
"""

from .catalog import Catalog, Goal, Product, generate_catalog, get_catalog, load_official

__all__ = ["Catalog", "Goal", "Product", "generate_catalog", "get_catalog", "load_official"]
