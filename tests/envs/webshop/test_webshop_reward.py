"""The WebShop reward: every term, and each behaviour of the original's ``engine/goal.py`` and
``engine/normalize.py``. Expected values are derived by hand from the original's code (noted next
to each assertion), not from our implementation."""

from dataclasses import replace

import pytest

from hero_gym.envs.webshop.catalog import Goal, Product
from hero_gym.envs.webshop.lexicon import COLORS
from hero_gym.envs.webshop.reward import (attribute_matches, fuzzy_score, get_reward, normalize_color,
                                          option_matches, title_nouns, type_reward)


def product(**kw):
    base = dict(asin="B0AAAAAAAA", title="Acme Argan Oil Shampoo - Sulfate Free", category="beauty",
                breadcrumb="Beauty & Personal Care › Hair Care › Shampoos", query="shampoo",
                description="A gentle shampoo for everyday use.",
                bullets=("PARABEN FREE formula", "Smells like rain"), attributes=("sulfate free", "long lasting"),
                options=(("size", ("8 fl oz", "16 fl oz")), ("color", ("navy blue", "grey"))),
                price=18.99, price_tag="$18.99", nouns=("shampoo",))
    base.update(kw)
    return Product(**base)


def goal(**kw):
    base = dict(goal_id=0, asin="B0AAAAAAAA", instruction="x", attributes=("sulfate free", "paraben free"),
                options=(("size", "16 fl oz"), ("color", "navy blue")), price_upper=20.0, query="shampoo",
                category="beauty", breadcrumb="Beauty & Personal Care › Hair Care › Shampoos",
                nouns=("shampoo",))
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


# ------------------------------------------------------------- class 2: thefuzz default processing
def test_fuzzy_matching_uses_thefuzz_processing():
    # lower-case, punctuation -> space, then token sets: a token subset scores 100
    assert fuzzy_score("large", "3x-large") == 100            # {"large"} within {"3x", "large"}
    assert fuzzy_score("non-gmo", "non gmo") == 100
    assert fuzzy_score("7", "0.7 ounce (pack of 4)") == 100    # "7" is a token of "0 7 ounce pack of 4"
    assert fuzzy_score("Sulfate FREE", "sulfate free") == 100
    # the score is rounded to an int before "> 85": 40/47 = 85.1 -> 85, no match
    assert fuzzy_score("waterproofbackpack12", "waterproofbackpack12xlarge1") == 85
    p = product(attributes=("waterproofbackpack12xlarge1",), title="t", description="d", bullets=())
    assert not attribute_matches("waterproofbackpack12", p)
    assert attribute_matches("non gmo", replace(p, attributes=("non-gmo",)))
    assert option_matches("7", ["0.7 ounce (pack of 4)"])


# ------------------------------------------------------- class 1: synthetic options as pairs
def test_synthetic_goal_options_are_type_value_pairs():
    # human goal (plain value): "large" vs "x-large" -> {"large"} within {"x", "large"}: 100, match
    assert option_matches("large", ["x-large"])
    # synthetic goal: ("size", "large") is scored as "size large" vs "x large": sect "large",
    # "large x" vs "large size" ... best ratio("large", "large x") = 10/12 = 83 -> no match
    assert not option_matches(("size", "large"), ["x-large"])
    assert fuzzy_score("x-large", ("size", "large")) == 83
    # colour normalisation of a pair is an element test: ("color", "dark grey") is not normalised
    # and keeps "grey" as a token; the plain value "dark grey" normalises to "dark" (listed first)
    assert normalize_color(("color", "dark grey")) == ("color", "dark grey")
    assert normalize_color(("color", "black")) == "black"
    assert option_matches(("color", "dark grey"), ["grey"])
    assert not option_matches("dark grey", ["grey"])
    # through get_reward: the same goal, typed (synthetic) vs untyped (human)
    g = goal(attributes=("sulfate free",), options=(("size", "large"),))
    assert get_reward(g, product(), {"size": "x-large"})[1]["matched_options"] == []
    assert get_reward(replace(g, typed_options=False), product(), {"size": "x-large"})[1]["matched_options"] == \
        ["large"]


# ------------------------------------------------------------ class 3: the original's colour list
def test_colour_normalisation_uses_the_original_list_and_order():
    assert len(COLORS) == 102 and COLORS[:3] == ["alabaster", "apricot", "aqua"] and COLORS[-1] == "yellow"
    assert normalize_color("navy blue") == "blue"        # "blue" precedes "navy"
    assert normalize_color("light blue") == "blue"
    assert normalize_color("grey heather") == "grey"
    assert normalize_color("olive green") == "green"
    assert normalize_color("rose gold") == "gold"
    assert normalize_color("Dark Blue Denim") == "Dark Blue Denim"   # case-sensitive substring test
    assert normalize_color("x-large") == "x-large"
    assert normalize_color("grey") == "grey" and normalize_color("gray") == "gray"
    assert not option_matches("grey", ["gray"])
    assert option_matches("light blue", ["navy blue"])   # both normalise to "blue"
    assert not option_matches("navy", ["navy blue"])     # "navy" vs "blue"


# ----------------------------------------------------------- class 4: title nouns as a list
def test_title_nouns_count_repeats():
    assert title_nouns("Shampoo Oil Shampoo", frozenset({"shampoo", "oil"})) == ("shampoo", "oil", "shampoo")
    # goal nouns [shampoo, shampoo, oil, hair, bottle]: 1 shared distinct noun / 5 = 0.2, not > 0.2
    g = goal(nouns=("shampoo", "shampoo", "oil", "hair", "bottle"), query="other", breadcrumb="Z › W")
    t = type_reward(g, product())
    assert t["title_score"] == pytest.approx(0.2) and t["r_type"] == 0.5     # a set would give 1/4 -> 1.0
    # duplicates on the product side do not count twice
    t = type_reward(goal(nouns=("shampoo", "oil")), product(nouns=("shampoo", "shampoo")))
    assert t["title_score"] == 0.5


def test_goal_title_without_nouns_scores_point_two():
    t = type_reward(goal(nouns=(), query="other", breadcrumb="Z › W"), product())
    assert t["title_score"] == 0.2 and t["r_type"] == 0.5
    t = type_reward(goal(nouns=()), product())
    assert t["title_score"] == 0.2 and t["r_type"] == 1.0      # query match


def test_type_reward_levels():
    g = goal()
    assert type_reward(g, product())["r_type"] == 1.0
    assert type_reward(g, product(query="q", breadcrumb="X › Y"))["r_type"] == 1.0   # title_score 1
    g3 = goal(nouns=tuple(f"n{i}" for i in range(11)) + ("shampoo",))
    t = type_reward(g3, product(query="q", breadcrumb="X › Y"))
    assert t["title_score"] == pytest.approx(1 / 12) and t["r_type"] == 0.1
    t = type_reward(g, product(query="q", nouns=("conditioner",)))
    assert t["category_match"] and t["title_score"] == 0.0 and t["r_type"] == 0.0
    r, info = get_reward(g, product(nouns=("conditioner",)), {"size": "16 fl oz", "color": "navy blue"})
    assert r == 0.0 and info["r_type"] == 0.0


def test_category_levels_are_case_sensitive_and_distinct():
    # the original strips the levels but does not lower-case them; "a › a › b" has 2 distinct levels
    g = goal(breadcrumb="a › b › c", query="q1")
    assert type_reward(g, product(breadcrumb="a › a › b", query="q2"))["category_match"]
    assert not type_reward(g, product(breadcrumb="a › a › d", query="q2"))["category_match"]
    assert not type_reward(g, product(breadcrumb="A › B › C", query="q2"))["category_match"]


# ------------------------------------------------------------ class 5: bullets joined
def test_attributes_match_across_joined_bullets_and_as_written():
    p = product(attributes=())
    assert attribute_matches("formula smells", p)   # "paraben free formula" + " " + "smells like rain"
    assert attribute_matches("paraben free", p)     # lower-cased bullets
    assert attribute_matches("argan oil", p)        # title
    assert attribute_matches("everyday use", p)     # description
    assert not attribute_matches("Paraben Free", p)   # the goal attribute is not lower-cased
    assert not attribute_matches("vegan", p)
    assert attribute_matches("sulphate free", product())    # fuzzy: 92 > 85
    assert attribute_matches("lasting", product(title="t", description="d", bullets=()))   # token subset


def test_original_option_reward_examples():
    """The cases of the original's own tests (tests/web-agent-site/engine/test_goal.py)."""
    def n_matches(goal_vals, bought):
        return sum(option_matches(g, bought) for g in goal_vals)
    assert n_matches(["grey", "XL", "pack of 12"], ["pack of 12", "grey", "XL"]) == 3
    assert n_matches(["grey", "XL", "pack of 12"], ["pack of 12", "blue", "XL"]) == 2
    assert n_matches(["cool powder snow", "XL", "pack of 12"], ["pack of 12", "powder snow", "XL"]) == 3
