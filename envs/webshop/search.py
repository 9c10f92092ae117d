"""BM25 product search with ``bm25s``.

Settings follow the WebShop search engine (a Lucene BM25 index): k1 = 0.9, b = 0.4, English stop
words removed, Snowball/Porter-style English stemming (PyStemmer). Each product is indexed by its
title, description, first bullet point and the text of its option values. A search returns at most
``TOP_K = 50`` products, shown 10 per results page.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

__all__ = ["SearchIndex", "TOP_K", "PER_PAGE", "tokenize"]

TOP_K = 50
PER_PAGE = 10
K1, B = 0.9, 0.4

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_stemmer = None
_stopwords: frozenset[str] | None = None
_stem_cache: dict[str, str] = {}


def _setup():
    global _stemmer, _stopwords
    if _stemmer is None:
        import Stemmer
        from bm25s.tokenization import STOPWORDS_EN
        _stopwords = frozenset(STOPWORDS_EN)
        _stemmer = Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """Lower-case, split on word characters (2+), drop English stop words, stem."""
    _setup()
    out = []
    for tok in _TOKEN.findall(text.lower()):
        if tok in _stopwords:
            continue
        stem = _stem_cache.get(tok)
        if stem is None:
            stem = _stemmer.stemWord(tok)
            if len(_stem_cache) < 500_000:
                _stem_cache[tok] = stem
        out.append(stem)
    return out


def _doc_text(p) -> str:
    opts = " ".join(v for _, values in p.options for v in values)
    first_bullet = p.bullets[0] if p.bullets else ""
    return f"{p.title} {p.description} {first_bullet} {opts}"


class SearchIndex:
    """A read-only BM25 index over a product list, with a small LRU cache of query results."""

    def __init__(self, products: Sequence, cache_size: int = 4096):
        import bm25s

        self.asins = [p.asin for p in products]
        corpus = [tokenize(_doc_text(p)) for p in products]
        # an empty document would make bm25s complain; give it a token that no query produces
        corpus = [toks or ["__empty__"] for toks in corpus]
        self.model = bm25s.BM25(k1=K1, b=B)
        self.model.index(corpus, show_progress=False)
        self._cache: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def search(self, query: str, k: int = TOP_K) -> tuple[str, ...]:
        """ASINs of the top ``k`` products for ``query`` (best first; ties broken by catalog order)."""
        key = f"{k}\x00{query.lower().strip()}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        ids = self.model.get_tokens_ids(tokenize(query))
        if not ids:
            result: tuple[str, ...] = ()
        else:
            scores = self.model.get_scores(ids)
            n = len(scores)
            kk = min(k, n)
            top = np.argpartition(-scores, kk - 1)[:kk] if kk < n else np.arange(n)
            top = top[scores[top] > 0]
            order = np.lexsort((top, -scores[top]))
            result = tuple(self.asins[i] for i in top[order])
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result
