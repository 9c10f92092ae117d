"""The WebShop purchase reward, with the original's semantics.

    reward = r_type * (matched attributes + matched options + [price <= price_upper])
                    / (goal attributes + goal options + 1)

as defined in the WebShop paper (Yao et al. 2022, section 3.2) and computed by the original's
``web_agent_site/engine/goal.py`` (``get_reward`` and its helpers). Facts followed here, each
tested with values derived by hand from that code:

* **Fuzzy matching** is thefuzz's ``token_set_ratio`` with its default processing (the original's
  library): both sides are turned into text with ``str()``, lower-cased, every non-alphanumeric
  character becomes a space, and the score is rounded to an integer; a match needs a score > 85.
  So "3x-large" vs "large" is 100 (token subset), "non-gmo" equals "non gmo", and 85.4 is no match.
* **Attributes**: a goal attribute matches when its score with one of the product's attributes is
  > 85, otherwise when the goal attribute as written (not lower-cased) is a substring of the
  lower-cased title, of the lower-cased bullets *joined with a space* (a match may span two
  bullets) or of the lower-cased description.
* **Options**: every chosen value and every goal option go through :func:`normalize_color` (the
  first word of the original's colour list that occurs in the string; not lower-cased), then each
  goal option matches when its score with some chosen value is > 85. Synthetic goals keep their
  options as ``{type: value}`` and the original passes them as ``(type, value)`` pairs: such a pair
  is normalised only when the type or the value *is* a colour word, and otherwise scored as the
  text "type value" (the type word joins the token set). Human goals carry plain values.
* **Price**: 1 when the product's price is at most ``price_upper``.
* **r_type**: ``query_match`` (same query), ``category_match`` (the " › "-separated category levels,
  stripped, share at least two distinct values; case-sensitive) and ``title_score`` = (number of
  distinct nouns shared by the two titles) / (number of nouns of the goal title, repeats counted);
  0.2 when the goal title has no noun. r_type is 1.0 if any of the three holds (title_score > 0.2),
  else 0.5; then 0.1 if title_score < 0.1 and 0.0 if title_score == 0.

Title nouns (the documented substitution for the original's spaCy ``en_core_web_sm`` tagger, which
this package does not download): on generated data the generator's own noun lexicon; on official
data nltk's perceptron tagger when ``nltk`` and its data are installed, otherwise every alphabetic
title word of 3+ letters that is not an English stop word. Nouns are kept as a list in title order
(repeats count), as the original's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from thefuzz import fuzz

from .lexicon import COLORS

__all__ = ["normalize_color", "fuzzy_score", "attribute_matches", "option_matches", "goal_option_keys",
           "type_reward", "get_reward", "title_nouns", "FUZZY_THRESHOLD"]

FUZZY_THRESHOLD = 85


def fuzzy_score(a: Any, b: Any) -> int:
    """thefuzz's ``token_set_ratio`` with its default processing (an int 0..100)."""
    return fuzz.token_set_ratio(a, b)


def normalize_color(value: Any) -> Any:
    """The first word of the original's colour list that occurs ``in`` ``value``, else ``value``.

    For a string this is a (case-sensitive) substring test; for a ``(type, value)`` pair it is an
    element test, so only a pair whose type or value equals a colour word is normalised."""
    for color in COLORS:
        if color in value:
            return color
    return value


def attribute_matches(attr: str, product) -> bool:
    """Whether one goal attribute is matched by the product (see the module docstring)."""
    if any(fuzzy_score(pa, attr) > FUZZY_THRESHOLD for pa in product.attributes):
        return True
    return (attr in product.title.lower() or attr in " ".join(product.bullets).lower()
            or attr in product.description.lower())


def option_matches(goal_option: Any, chosen_values: Iterable[str]) -> bool:
    """Whether one goal option (a value, or a ``(type, value)`` pair) is matched by a chosen value."""
    g = normalize_color(goal_option)
    return any(fuzzy_score(normalize_color(v), g) > FUZZY_THRESHOLD for v in chosen_values)


def goal_option_keys(goal) -> list[Any]:
    """What the original matches for each goal option: ``(type, value)`` pairs for synthetic goals
    (``typed_options``), plain values for human goals."""
    if getattr(goal, "typed_options", True):
        return [(t, v) for t, v in goal.options]
    return [v for _, v in goal.options]


_STOP: frozenset[str] | None = None
_TAGGER_TRIED = False
_TAGGER = None


def _pos_tagger():
    """nltk's perceptron tagger if it and its data are installed (no downloads), else None."""
    global _TAGGER_TRIED, _TAGGER
    if not _TAGGER_TRIED:
        _TAGGER_TRIED = True
        try:  # pragma: no cover - depends on optional data
            import nltk
            nltk.pos_tag(["test"])
            _TAGGER = nltk.pos_tag
        except Exception:
            _TAGGER = None
    return _TAGGER


def title_nouns(title: str, lexicon: frozenset[str] | None) -> tuple[str, ...]:
    """Nouns of a title in title order, repeats kept: lexicon words if a lexicon is given, else
    POS-tagged nouns or the fallback (see the module docstring)."""
    words = re.findall(r"[a-z0-9\-]+", title.lower())
    if lexicon is not None:
        return tuple(w for w in words if w in lexicon)
    tagger = _pos_tagger()
    if tagger is not None:  # pragma: no cover - optional
        return tuple(w for w, tag in tagger(words) if tag.startswith("NN"))
    global _STOP
    if _STOP is None:
        from bm25s.tokenization import STOPWORDS_EN
        _STOP = frozenset(STOPWORDS_EN)
    return tuple(w for w in words if w.isalpha() and len(w) >= 3 and w not in _STOP)


def _levels(breadcrumb: str) -> set[str]:
    return {s.strip() for s in breadcrumb.split("›")}


def type_reward(goal, product) -> dict[str, Any]:
    query_match = product.query == goal.query
    category_match = len(_levels(product.breadcrumb) & _levels(goal.breadcrumb)) >= 2
    desired: Sequence[str] = goal.nouns
    if len(desired) == 0:
        title_score = 0.2
    else:
        title_score = len(set(product.nouns) & set(desired)) / len(desired)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def get_reward(goal, product, chosen_options: Mapping[str, str] | None) -> tuple[float, dict[str, Any]]:
    """Reward of buying ``product`` with ``chosen_options`` ({option type: value}) for ``goal``."""
    chosen = list((chosen_options or {}).values())
    t = type_reward(goal, product)
    matched_attrs = [a for a in goal.attributes if attribute_matches(a, product)]
    keys = goal_option_keys(goal)
    matched_opts = [v for (_, v), key in zip(goal.options, keys) if option_matches(key, chosen)]
    r_price = 1.0 if product.price <= goal.price_upper else 0.0
    denom = len(goal.attributes) + len(goal.options) + 1
    reward = t["r_type"] * (len(matched_attrs) + len(matched_opts) + r_price) / denom
    info = {
        **t,
        "r_att": len(matched_attrs) / len(goal.attributes) if goal.attributes else None,
        "matched_attributes": matched_attrs,
        "goal_attributes": list(goal.attributes),
        "r_option": len(matched_opts) / len(goal.options) if goal.options else None,
        "matched_options": matched_opts,
        "goal_options": [v for _, v in goal.options],
        "chosen_options": dict(chosen_options or {}),
        "r_price": r_price,
        "price": product.price,
        "price_upper": goal.price_upper,
        "purchased_asin": product.asin,
        "goal_asin": goal.asin,
        "reward": reward,
    }
    return reward, info
