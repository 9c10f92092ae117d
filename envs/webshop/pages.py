"""The shop's pages as a small state machine, and their three renderings.

Pages and buttons follow the WebShop site (Yao et al. 2022): a search page (a search bar), a
results page (``Back to Search``, ``< Prev``, ``Next >``, one button per product id, 10 products
a page, at most 50), an item page (option values, ``Description``, ``Features``, ``Reviews``,
``Buy Now``, ``< Prev`` back to the results) and its three sub-pages (``< Prev`` back to the item).
Actions are ``search[query]`` (only where the search bar is) and ``click[button]`` with the
button's text lower-cased. ``click[buy now]`` ends the episode.

A page is a list of *segments* ``(text, kind)`` with kind ``text``, ``button`` or ``selected``
(a chosen option value). The renderings:

* ``text``: segment texts joined by ``" [SEP] "`` (WebShop's simple text mode);
* ``text_rich``: one segment a line, buttons as ``[button] X [button_]`` and chosen options as
  ``[clicked button] X [clicked button_]``;
* ``html``: the HTML page that the HTTP server serves; every segment is an element of class ``seg``
  so that the browser mode reads exactly the same segments back from the live DOM.

The state is a frozen :class:`PageState` and can be written into and read back from a URL
(:func:`state_to_url`, :func:`state_from_url`), which is how the HTTP server stays stateless apart
from each session's goal.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from urllib.parse import quote, urlencode

from .search import PER_PAGE

__all__ = ["PageState", "Shop", "SEARCH_STATE", "render_text", "render_text_rich", "render_html",
           "state_to_url", "state_from_url", "SUB_PAGES"]

SUB_PAGES = ("description", "features", "reviews")
SEP = " [SEP] "


@dataclass(frozen=True)
class PageState:
    kind: str = "search"            # search | results | item | sub | done
    query: str = ""
    page: int = 1
    asin: str = ""
    options: tuple[tuple[str, str], ...] = ()   # chosen (option type, value), in the product's order
    sub: str = ""                   # description | features | reviews (kind == "sub")


SEARCH_STATE = PageState()

Segment = tuple[str, str]


class Shop:
    """Page logic over a (shared, read-only) catalog.

    ``max_results`` keeps only the top results of every search (``None``: all, as WebShop does);
    a small value such as 5 is an observation option for small models (one short results page).
    """

    def __init__(self, catalog, max_results: int | None = None):
        if max_results is not None and int(max_results) < 1:
            raise ValueError(f"max_results must be >= 1 or None, got {max_results!r}")
        self.catalog = catalog
        self.max_results = None if max_results is None else int(max_results)

    # ------------------------------------------------------------------ navigation
    def results(self, query: str) -> tuple[str, ...]:
        res = self.catalog.index.search(query)
        return res if self.max_results is None else res[: self.max_results]

    def num_pages(self, query: str) -> int:
        n = len(self.results(query))
        return max(1, -(-n // PER_PAGE))

    def page_asins(self, state: PageState) -> tuple[str, ...]:
        res = self.results(state.query)
        return res[(state.page - 1) * PER_PAGE: state.page * PER_PAGE]

    def transitions(self, state: PageState) -> dict[str, PageState]:
        """Every click available on ``state``: lower-cased button text -> next state."""
        out: dict[str, PageState] = {}
        if state.kind == "results":
            out["back to search"] = SEARCH_STATE
            if state.page > 1:
                out["< prev"] = replace(state, page=state.page - 1)
            if state.page < self.num_pages(state.query):
                out["next >"] = replace(state, page=state.page + 1)
            for asin in self.page_asins(state):
                out.setdefault(asin.lower(), PageState("item", state.query, state.page, asin, ()))
        elif state.kind == "item":
            out["back to search"] = SEARCH_STATE
            out["< prev"] = PageState("results", state.query, state.page)
            product = self.catalog.product(state.asin)
            chosen = dict(state.options)
            for otype, values in product.options:
                for v in values:
                    new = dict(chosen)
                    new[otype] = v
                    ordered = tuple((t, new[t]) for t, _ in product.options if t in new)
                    out.setdefault(v.lower(), replace(state, options=ordered))
            for sub in SUB_PAGES:
                out.setdefault(sub, replace(state, kind="sub", sub=sub))
            out.setdefault("buy now", replace(state, kind="done"))
        elif state.kind == "sub":
            out["back to search"] = SEARCH_STATE
            out["< prev"] = replace(state, kind="item", sub="")
        return out

    def has_search_bar(self, state: PageState) -> bool:
        return state.kind == "search"

    def available_actions(self, state: PageState) -> dict:
        """WebShop's ``available_actions``: whether the search bar is there, and the clickables."""
        return {"has_search_bar": self.has_search_bar(state), "clickables": list(self.transitions(state))}

    # ------------------------------------------------------------------ segments
    def segments(self, state: PageState, instruction: str, reward: float | None = None) -> list[Segment]:
        head: list[Segment] = [("WebShop", "text"), ("Instruction:", "text"), (instruction, "text")]
        if state.kind == "search":
            return head + [("Search", "button")]
        if state.kind == "results":
            res = self.results(state.query)
            segs = head + [("Back to Search", "button"),
                           (f"Page {state.page} (Total results: {len(res)})", "text")]
            if state.page > 1:
                segs.append(("< Prev", "button"))
            if state.page < self.num_pages(state.query):
                segs.append(("Next >", "button"))
            for asin in self.page_asins(state):
                p = self.catalog.product(asin)
                segs += [(p.asin, "button"), (p.title, "text"), (p.price_tag, "text")]
            return segs
        product = self.catalog.product(state.asin)
        if state.kind == "item":
            chosen = {v for _, v in state.options}
            segs = head + [("Back to Search", "button"), ("< Prev", "button")]
            for otype, values in product.options:
                segs.append((otype, "text"))
                segs += [(v, "selected" if v in chosen else "button") for v in values]
            segs += [(product.title, "text"), (f"Price: {product.price_tag}", "text"),
                     (f"Rating: {product.rating}", "text"), ("Description", "button"),
                     ("Features", "button"), ("Reviews", "button"), ("Buy Now", "button")]
            return segs
        if state.kind == "sub":
            segs = head + [("Back to Search", "button"), ("< Prev", "button")]
            if state.sub == "description":
                segs.append((product.description or "(no description)", "text"))
            elif state.sub == "features":
                segs += [(b, "text") for b in product.bullets] or [("(no features)", "text")]
            else:
                segs += [(f"{text} (rating {score}/5)", "text") for score, text in product.reviews] \
                    or [("(no reviews yet)", "text")]
            return segs
        if state.kind == "done":
            opts = "; ".join(f"{t}: {v}" for t, v in state.options) or "none"
            return [("Thank you for shopping with us!", "text"), ("Purchased", "text"), (product.asin, "text"),
                    (product.title, "text"), (f"Options: {opts}", "text"),
                    ("Your score (min 0.0, max 1.0)", "text"), (f"{(reward or 0.0):.4f}", "text")]
        raise ValueError(f"unknown page kind {state.kind!r}")


# ---------------------------------------------------------------------- renderings
def render_text(segments: list[Segment]) -> str:
    return SEP.join(text for text, _ in segments)


def render_text_rich(segments: list[Segment]) -> str:
    lines = []
    for text, kind in segments:
        if kind == "button":
            lines.append(f"[button] {text} [button_]")
        elif kind == "selected":
            lines.append(f"[clicked button] {text} [clicked button_]")
        else:
            lines.append(text)
    return "\n".join(lines)


def state_to_url(state: PageState, sid: str, shop: Shop | None = None) -> str:
    """The server path of a page (session id first). Option choices are written as indices."""
    base = f"/{quote(sid)}"
    if state.kind == "search":
        return f"{base}/"
    params: list[tuple[str, str]] = [("q", state.query), ("page", str(state.page))]
    if state.kind == "results":
        return f"{base}/results?{urlencode(params)}"
    if state.options and shop is not None:
        product = shop.catalog.product(state.asin)
        types = [t for t, _ in product.options]
        for t, v in state.options:
            ti = types.index(t)
            params.append(("o", f"{ti}.{product.options[ti][1].index(v)}"))
    asin = quote(state.asin)
    if state.kind == "item":
        return f"{base}/item/{asin}?{urlencode(params)}"
    if state.kind == "sub":
        return f"{base}/item/{asin}/{state.sub}?{urlencode(params)}"
    if state.kind == "done":
        return f"{base}/buy/{asin}?{urlencode(params)}"
    raise ValueError(state.kind)


def state_from_url(kind: str, args, shop: Shop, asin: str = "", sub: str = "") -> PageState:
    """Inverse of :func:`state_to_url` (``args``: a mapping with ``get``/``getlist``). Raises
    ``ValueError``/``KeyError`` on a malformed URL."""
    query = str(args.get("q", ""))
    page = int(args.get("page", "1"))
    if kind == "search":
        return SEARCH_STATE
    if kind == "results":
        return PageState("results", query, max(1, min(page, shop.num_pages(query))))
    product = shop.catalog.product(asin)
    opts: dict[str, str] = {}
    for item in args.getlist("o"):
        ti, vi = (int(x) for x in item.split(".", 1))
        otype, values = product.options[ti]
        opts[otype] = values[vi]
    ordered = tuple((t, opts[t]) for t, _ in product.options if t in opts)
    if kind == "item":
        return PageState("item", query, page, product.asin, ordered)
    if kind == "sub":
        if sub not in SUB_PAGES:
            raise ValueError(f"unknown sub page {sub!r}")
        return PageState("sub", query, page, product.asin, ordered, sub)
    if kind == "done":
        return PageState("done", query, page, product.asin, ordered)
    raise ValueError(kind)


_CSS = """
body{font-family:sans-serif;max-width:960px;margin:1em auto;padding:0 1em;color:#222}
.seg{display:block;margin:.25em 0}
a.btn,button.btn{display:inline-block;padding:.2em .6em;margin:.2em .3em .2em 0;border:1px solid #888;
border-radius:4px;background:#f3f3f3;color:#124;text-decoration:none;font-size:1em;cursor:pointer}
a.selected{background:#234;color:#fff}
.instruction{background:#fffbe6;padding:.5em;border:1px solid #eed}
.query{color:#666;font-style:italic}
"""


def render_html(state: PageState, segments: list[Segment], sid: str, shop: Shop,
                reward: float | None = None) -> str:
    """A complete HTML page (no scripts, no external assets); every user string is escaped."""
    e = html.escape
    nexts = shop.transitions(state)
    parts = []
    for text, kind in segments:
        if kind in ("button", "selected"):
            if state.kind == "search" and text == "Search":
                parts.append('<button type="submit" class="seg btn" id="search_button" data-kind="button">'
                             f'{e(text)}</button>')
                continue
            target = nexts.get(text.lower())
            href = state_to_url(target, sid, shop) if target is not None else "#"
            cls = "seg btn selected" if kind == "selected" else "seg btn"
            parts.append(f'<a class="{cls}" data-kind="{kind}" href="{e(href)}">{e(text)}</a>')
        else:
            parts.append(f'<span class="seg" data-kind="text">{e(text)}</span>')
    body = "\n".join(parts)
    if state.kind == "search":
        # the search box sits before the button; submitting the form is the search action
        body = body.replace(
            '<button type="submit"',
            f'<form id="search_form" method="get" action="{e(f"/{quote(sid)}/results")}">'
            '<input type="text" name="q" id="search_input" aria-label="Search" autocomplete="off" size="60">'
            '<input type="hidden" name="page" value="1"> <button type="submit"', 1) + "</form>"
    extra = ""
    if state.query and state.kind in ("results", "item", "sub"):
        extra = f'<p class="query">Results for: {e(state.query)}</p>'
    reward_attr = f' data-reward="{reward!r}"' if reward is not None else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>WebShop</title><style>{_CSS}</style></head>"
            f'<body data-page="{e(state.kind)}"{reward_attr}>\n{extra}\n{body}\n</body></html>')
