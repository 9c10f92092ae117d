"""BM25 search: settings, tokenisation, top-50 / 10 per page."""

from hero_gym.envs.webshop.catalog import get_catalog
from hero_gym.envs.webshop.search import B, K1, PER_PAGE, TOP_K, tokenize


def test_settings_follow_webshop():
    idx = get_catalog(1000, 0).index
    assert (K1, B, TOP_K, PER_PAGE) == (0.9, 0.4, 50, 10)
    assert idx.model.k1 == 0.9 and idx.model.b == 0.4


def test_tokenize_drops_stop_words_and_stems():
    assert tokenize("The Shampoos for dry hair") == ["shampoo", "dri", "hair"]
    assert tokenize("a of the") == []


def test_search_top50_ranked_and_deterministic():
    cat = get_catalog(1000, 0)
    res = cat.index.search("shampoo sulfate free")
    assert len(res) == 50 and len(set(res)) == 50
    assert res == cat.index.search("SHAMPOO   sulfate free")
    top = cat.product(res[0])
    assert "shampoo" in top.title.lower()
    # stemming: plural query finds the same products
    assert set(cat.index.search("shampoos")) == set(cat.index.search("shampoo"))
    assert cat.index.search("the of and") == ()
    assert cat.index.search("zzzqqq") == ()


def test_goal_products_are_findable_by_instruction():
    cat = get_catalog(1000, 0)
    goals = [cat.goals[i] for i in cat.splits["test"]]
    found = sum(g.asin in cat.index.search(g.instruction) for g in goals)
    assert found / len(goals) >= 0.95


def test_option_text_is_indexed():
    cat = get_catalog(1000, 0)
    p = next(p for p in cat.products if any("peanut butter" in v for _, vs in p.options for v in vs))
    assert p.asin in cat.index.search(f"peanut butter {p.title}")
