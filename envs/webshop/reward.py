"""The WebShop purchase reward.

    reward = r_type * (matched attributes + matched options + [price <= price_upper])
                    / (goal attributes + goal options + 1)

as defined in the WebShop paper (Yao et al. 2022, section 3.2 and appendix). The pieces:

* **attributes**: a goal attribute matches when its fuzzy token-set ratio with one of the product's
  attributes is > 85 (rapidfuzz ``token_set_ratio``, 0..100), otherwise when it occurs as a
  substring of the product title, a bullet point or the description (lower-cased);
* **options**: each goal option value and each chosen option value are colour-normalised
  (:func:`normalize_color`: the first colour word of :data:`~hero_gym.envs.webshop.lexicon.COLORS`
  found in the string replaces it) and then match at token-set ratio > 85;
* **price**: 1 when the product's price is at most the goal's ``price_upper``;
* **r_type** (is it the right kind of product at all?): ``query_match`` (same source query),
  ``category_match`` (the breadcrumbs share at least two levels) and ``title_score`` (fraction of
  the goal product's title nouns that occur among the bought product's title nouns):
  1.0 if any of the three holds (title_score > 0.2), else 0.5; then 0.1 if title_score < 0.1 and
  0.0 if title_score == 0.

Known quirks kept on purpose (tested): token-set ratio scores a token subset as a full match
("16 fl oz" vs "16 fl oz pack of 2" = 100); "grey" and "gray" are different colour words and do not
match; colour normalisation maps "navy blue" to "navy" (listed first) and "light blue" to "blue".

Title nouns: on generated data the generator's own noun lexicon is used. On official data an
optional POS tagger is used when ``nltk`` and its ``averaged_perceptron_tagger`` data are installed;
otherwise the documented fallback takes every alphabetic title word of 3+ letters that is not an
English stop word (a superset of the nouns, so title_score is an upper bound of the tagged one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from rapidfuzz import fuzz

from hero_gym.envs.webshop.lexicon import COLORS

__all__ = ["normalize_color", "attribute_matches", "option_matches", "type_reward", "get_reward",
           "title_nouns", "FUZZY_THRESHOLD"]

FUZZY_THRESHOLD = 85


def normalize_color(text: str) -> str:
    """Return the first word of :data:`COLORS` (in list order) that occurs in ``text``, else ``text``."""
    low = text.lower()
    for color in COLORS:
        if color in low:
            return color
    return low


def attribute_matches(attr: str, product) -> bool:
    attr = attr.lower()
    for pa in product.attributes:
        if fuzz.token_set_ratio(attr, pa.lower()) > FUZZY_THRESHOLD:
            return True
    if attr in product.title.lower() or attr in product.description.lower():
        return True
    return any(attr in b.lower() for b in product.bullets)


def option_matches(goal_value: str, chosen_values: Iterable[str]) -> bool:
    g = normalize_color(goal_value)
    return any(fuzz.token_set_ratio(g, normalize_color(v)) > FUZZY_THRESHOLD for v in chosen_values)


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


def title_nouns(title: str, lexicon: frozenset[str] | None) -> frozenset[str]:
    """Nouns of a title: lexicon words if a lexicon is given, else POS-tagged nouns or the fallback."""
    words = re.findall(r"[a-z0-9\-]+", title.lower())
    if lexicon is not None:
        return frozenset(w for w in words if w in lexicon)
    tagger = _pos_tagger()
    if tagger is not None:  # pragma: no cover - optional
        return frozenset(w for w, tag in tagger(words) if tag.startswith("NN"))
    global _STOP
    if _STOP is None:
        from bm25s.tokenization import STOPWORDS_EN
        _STOP = frozenset(STOPWORDS_EN)
    return frozenset(w for w in words if w.isalpha() and len(w) >= 3 and w not in _STOP)


def type_reward(goal, product) -> dict[str, Any]:
    query_match = bool(goal.query) and goal.query == product.query
    g_levels = {s.strip().lower() for s in goal.breadcrumb.split("›") if s.strip()}
    p_levels = {s.strip().lower() for s in product.breadcrumb.split("›") if s.strip()}
    category_match = len(g_levels & p_levels) >= 2
    if goal.nouns:
        title_score = len(goal.nouns & product.nouns) / len(goal.nouns)
    else:
        title_score = 1.0 if (query_match or category_match) else 0.0
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
    matched_opts = [v for _, v in goal.options if option_matches(v, chosen)]
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
