"""The WebShop reward: every term, and the fuzzy-matching quirks it keeps on purpose."""

from dataclasses import replace

import pytest
from rapidfuzz import fuzz

from hero_gym.envs.webshop.catalog import Goal, Product
from hero_gym.envs.webshop.reward import (attribute_matches, get_reward, normalize_color, option_matches,
                                          type_reward)


def product(**kw):
    base = dict(asin="B0AAAAAAAA", title="Acme Argan Oil Shampoo - Sulfate Free", category="beauty",
                breadcrumb="Beauty & Personal Care › Hair Care › Shampoos", query="shampoo",
                description="A gentle shampoo for everyday use.",
                bullets=("PARABEN FREE formula", "Smells like rain"), attributes=("sulfate free", "long lasting"),
                options=(("size", ("8 fl oz", "16 fl oz")), ("color", ("navy blue", "grey"))),
                price=18.99, price_tag="$18.99", nouns=frozenset({"shampoo"}))
    base.update(kw)
    return Product(**base)


def goal(**kw):
    base = dict(goal_id=0, asin="B0AAAAAAAA", instruction="x", attributes=("sulfate free", "paraben free"),
                options=(("size", "16 fl oz"), ("color", "navy blue")), price_upper=20.0, query="shampoo",
                category="beauty", breadcrumb="Beauty & Personal Care › Hair Care › Shampoos",
                nouns=frozenset({"shampoo"}))
    base.update(kw)
    return Goal(**base)


def test_perfect_purchase_is_one():
    r, info = get_reward(goal(), product(), {"size": "16 fl oz", "color": "navy blue"})
    assert r == 1.0
    assert info["r_type"] == 1.0 and info["r_att"] == 1.0 and info["r_option"] == 1.0 and info["r_price"] == 1.0


def test_formula_counts_each_term():
    # 2 attributes + 2 options + price = 5 terms
    r, info = get_reward(goal(), product(), {"size": "8 fl oz", "color": "navy blue"})
    assert r == pytest.approx(4 / 5) and info["matched_options"] == ["navy blue"]
    r, info = get_reward(goal(), product(), {})
    assert r == pytest.approx(3 / 5) and info["r_option"] == 0.0
    r, info = get_reward(goal(price_upper=10.0), product(), {"size": "16 fl oz", "color": "navy blue"})
    assert r == pytest.approx(4 / 5) and info["r_price"] == 0.0
    r, info = get_reward(goal(attributes=("sulfate free", "vegan")), product(),
                         {"size": "16 fl oz", "color": "navy blue"})
    assert r == pytest.approx(4 / 5) and info["matched_attributes"] == ["sulfate free"]
    r, info = get_reward(goal(attributes=(), options=()), product(), {})
    assert r == 1.0   # only the price term: 1/1


def test_attribute_matching_fuzzy_then_substring():
    p = product()
    assert attribute_matches("sulfate free", p)              # exact attribute
    assert attribute_matches("sulphate free", p)             # fuzzy token-set ratio > 85 (spelling)
    assert attribute_matches("long lasting formula", p)      # token superset of an attribute: 100
    assert attribute_matches("paraben free", p)              # substring of a bullet (case-insensitive)
    assert attribute_matches("argan oil", p)                 # substring of the title
    assert attribute_matches("everyday use", p)              # substring of the description
    assert not attribute_matches("vegan", p)
    # token-set ratio: a goal attribute whose tokens are a subset of a product attribute matches fully
    assert fuzz.token_set_ratio("lasting", "long lasting") == 100
    assert attribute_matches("lasting", replace(p, title="t", description="d", bullets=()))


def test_option_quirks():
    # token-set ratio treats a subset as a full match
    assert fuzz.token_set_ratio("16 fl oz", "16 fl oz pack of 2") == 100
    assert option_matches("16 fl oz", ["16 fl oz pack of 2"])
    # "grey" and "gray" are different colour words: no match
    assert normalize_color("grey") == "grey" and normalize_color("gray") == "gray"
    assert not option_matches("grey", ["gray"])
    # colour normalisation picks the first colour word of the list: navy (before blue)
    assert normalize_color("navy blue") == "navy"
    assert normalize_color("light blue") == "blue"
    assert normalize_color("Dark Blue Denim") == "blue"
    assert not option_matches("light blue", ["navy blue"])
    assert option_matches("sky blue", ["light blue"])          # both normalise to "blue"
    assert option_matches("blue", ["blue heather"])
    assert normalize_color("x-large") == "x-large"
    assert not option_matches("large", ["x-large"])            # ratio 83 < 85


def test_type_reward_levels():
    g = goal()
    assert type_reward(g, product())["r_type"] == 1.0
    # same noun, other query and category -> title_score 1 > 0.2: still 1.0
    assert type_reward(g, product(query="q", breadcrumb="X › Y"))["r_type"] == 1.0
    # partial noun overlap below 0.2 and no query/category match -> 0.5 ... or lower
    g2 = goal(nouns=frozenset({"shampoo", "oil", "argan", "hair", "bottle", "pump"}))
    t = type_reward(g2, product(query="q", breadcrumb="X › Y", nouns=frozenset({"shampoo"})))
    assert t["title_score"] == pytest.approx(1 / 6) and t["r_type"] == 0.5
    g3 = goal(nouns=frozenset({f"n{i}" for i in range(11)} | {"shampoo"}))
    t = type_reward(g3, product(query="q", breadcrumb="X › Y", nouns=frozenset({"shampoo"})))
    assert t["title_score"] < 0.1 and t["r_type"] == 0.1
    # category match alone does not help when no title noun is shared: 0
    t = type_reward(g, product(query="q", nouns=frozenset({"conditioner"})))
    assert t["category_match"] and t["title_score"] == 0.0 and t["r_type"] == 0.0
    r, info = get_reward(g, product(nouns=frozenset({"conditioner"})), {"size": "16 fl oz", "color": "navy blue"})
    assert r == 0.0 and info["r_type"] == 0.0


def test_type_reward_scales_everything():
    # title_score 1/6 and no query/category match: r_type 0.5 halves a perfect match
    g = goal(nouns=frozenset({"shampoo", "a1", "a2", "a3", "a4", "a5"}), query="other", breadcrumb="Z › W")
    r, info = get_reward(g, product(), {"size": "16 fl oz", "color": "navy blue"})
    assert info["r_type"] == 0.5 and r == pytest.approx(0.5)
