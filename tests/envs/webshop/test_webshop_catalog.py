"""Catalog generator, official-format loader and the shared-catalog cache."""

import json
import random
from pathlib import Path

import pytest

from hero_gym.envs.webshop import lexicon
from hero_gym.envs.webshop.catalog import (generate_catalog, get_catalog, load_official,
                                           price_upper_choices)


def test_same_seed_same_catalog_goals_prices():
    a, b = generate_catalog(300, seed=7), generate_catalog(300, seed=7)
    assert a.products == b.products
    assert a.goals == b.goals
    assert a.splits == b.splits
    c = generate_catalog(300, seed=8)
    assert [p.asin for p in a.products] != [p.asin for p in c.products]
    assert [p.price for p in a.products] != [p.price for p in c.products]


def test_products_have_all_fields_and_five_categories():
    cat = generate_catalog(500, seed=0)
    assert {p.category for p in cat.products} == set(lexicon.CATEGORIES)
    assert len({p.asin for p in cat.products}) == 500
    for p in cat.products:
        assert len(p.asin) == 10 and p.asin.startswith("B0") and p.asin.isupper()
        assert p.title and p.description and p.bullets and p.attributes
        assert p.breadcrumb.startswith(lexicon.CATEGORY_ROOTS[p.category])
        assert " › " in p.breadcrumb
        assert p.price > 0 and p.price_tag.startswith("$")
        assert p.nouns, p.title   # the head noun is always in the title
        values = [v for _, vs in p.options for v in vs]
        assert len(values) == len(set(values)), "option values must be unique within a product"
    # some products have a price range; the concrete price lies inside it
    ranged = [p for p in cat.products if " to " in p.price_tag]
    assert ranged
    for p in ranged:
        lo, hi = (float(x.strip("$")) for x in p.price_tag.split(" to "))
        assert lo <= p.price <= hi
    assert any(p.options for p in cat.products) and any(not p.options for p in cat.products)


def test_price_upper_is_one_of_the_next_multiples_of_ten():
    assert price_upper_choices(23.5) == [30.0, 40.0, 50.0, 60.0]
    assert price_upper_choices(30.0) == [40.0, 50.0, 60.0, 70.0]
    cat = generate_catalog(400, seed=1)
    for g in cat.goals:
        p = cat.product(g.asin)
        assert g.price_upper in price_upper_choices(p.price)
        assert g.price_upper > p.price
        assert f"price lower than {g.price_upper:.2f} dollars" in g.instruction


def test_goals_name_attributes_and_options_of_their_product():
    cat = generate_catalog(400, seed=2)
    for g in cat.goals:
        p = cat.product(g.asin)
        assert set(g.attributes) <= set(p.attributes)
        for otype, value in g.options:
            assert value in p.option_dict()[otype]
            assert f"{otype}: {value}" in g.instruction
        for a in g.attributes:
            assert a in g.instruction


def test_fixed_disjoint_splits():
    cat = generate_catalog(1000, seed=0)
    test, ev, train = (set(cat.splits[s]) for s in ("test", "eval", "train"))
    assert len(test) == 100 and len(ev) == 100 and len(train) == 800
    assert not (test & ev) and not (test & train) and not (ev & train)
    assert all(cat.goals[i].split == "test" for i in test)
    with pytest.raises(ValueError):
        cat.split_goals("nope")


def test_get_catalog_is_shared():
    assert get_catalog(200, 3) is get_catalog(200, 3)
    assert get_catalog(200, 3) is not get_catalog(200, 4)


def test_catalog_scales_to_10k_quickly():
    import time
    t = time.perf_counter()
    cat = generate_catalog(10_000, seed=0)
    assert len(cat.products) == 10_000 and len(cat.goals) == 10_000
    assert time.perf_counter() - t < 20


@pytest.mark.slow
def test_catalog_scales_to_100k():
    cat = generate_catalog(100_000, seed=0)
    assert len(cat.by_asin) == 100_000
    assert cat.index.search("shampoo")


FIXTURE = Path(__file__).parent / "official_fixture"
ITEMS, INS, HUMAN = (FIXTURE / n for n in ("items_shuffle_fixture.json", "items_ins_v2_fixture.json",
                                           "items_human_ins.json"))
BOUNDS = [10.0 * i for i in range(1, 100)]   # the original's PRICE_RANGE


def _original_draws(seed, human=False):
    """The original's draws, replayed by hand on ``random.Random(seed)`` (its global generator seeded
    with ``seed``): prices of ranged products in product order (B0FIX00002 "$20.00 - $40.00",
    B0FIX00009 "$5.00 - $7.00"), then one bound per goal-building step that has two or more of the
    next four multiples of $10 above the price (products above $980 draw nothing)."""
    r = random.Random(seed)
    p2, p9 = r.uniform(20.0, 40.0), r.uniform(5.0, 7.0)
    if human:   # human goals: B0FIX00001's first instruction (the second has no attributes); B0FIX00004 > $980
        return {"p2": p2, "p9": p9, "b1": sorted(r.sample([20.0, 30.0, 40.0, 50.0], 2))[1]}
    b1 = sorted(r.sample([20.0, 30.0, 40.0, 50.0], 2))[1]                          # B0FIX00001 at $12.50
    b2 = sorted(r.sample([b for b in BOUNDS if b > p2][:4], 2))[1]                 # B0FIX00002
    b9 = sorted(r.sample([10.0, 20.0, 30.0, 40.0], 2))[1]                          # B0FIX00009 at $5-7
    return {"p2": p2, "p9": p9, "b1": b1, "b2": b2, "b9": b9}


def test_official_products_are_processed_like_the_original():
    cat = load_official(ITEMS, INS, seed=0)
    # "nan" and the repeated B0FIX00001 are skipped
    assert [p.asin for p in cat.products] == ["B0FIX00001", "B0FIX00002", "B0FIX00003", "B0FIX00004",
                                              "B0FIX00007", "B0FIX00008", "B0FIX00009"]
    p = cat.product("B0FIX00001")
    assert p.query == "shampoo"                                  # lower-cased and stripped
    assert p.options == (("size", ("8 fl oz", "16 fl oz")), ("color", ("navy blue", "black | white")))   # "/" -> " | "
    assert p.attributes == ("sulfate free", "paraben free") and p.price == 12.5 and p.price_tag == "$12.5"
    d = _original_draws(0)
    assert cat.product("B0FIX00002").price == d["p2"] and cat.product("B0FIX00002").price_tag == "$20.0 to $40.0"
    assert cat.product("B0FIX00009").price == d["p9"]
    assert cat.product("B0FIX00003").price == 100.0 and cat.product("B0FIX00003").price_tag == "$100.0"
    assert cat.product("B0FIX00008").price == 1299.99           # "$1,299.99": digits and dots kept
    assert cat.product("B0FIX00007").attributes == ("DUMMY_ATTR",)   # not in items_ins_v2
    assert cat.product("B0FIX00002").bullets == ("Noise cancelling",)   # a string becomes one bullet


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_official_synthetic_goals_follow_the_original_procedure(seed):
    cat = load_official(ITEMS, INS, seed=seed)
    d = _original_draws(seed)
    # B0FIX00001: color x size = 2 x 2; B0FIX00002: no options -> 1; B0FIX00003: no attributes -> 0;
    # B0FIX00004: 2 sizes; B0FIX00007: no instruction; B0FIX00008: an empty option list -> 0;
    # B0FIX00009: 3 flavours. Option types in sorted order.
    s1 = "i need a sulfate free shampoo"
    t1 = f", and price lower than {d['b1']:.2f} dollars"
    expected = [
        ("B0FIX00001", (("color", "navy blue"), ("size", "8 fl oz")), d["b1"], f"{s1} with color: navy blue, and size: 8 fl oz{t1}"),
        ("B0FIX00001", (("color", "navy blue"), ("size", "16 fl oz")), d["b1"], f"{s1} with color: navy blue, and size: 16 fl oz{t1}"),
        ("B0FIX00001", (("color", "black | white"), ("size", "8 fl oz")), d["b1"], f"{s1} with color: black | white, and size: 8 fl oz{t1}"),
        ("B0FIX00001", (("color", "black | white"), ("size", "16 fl oz")), d["b1"], f"{s1} with color: black | white, and size: 16 fl oz{t1}"),
        ("B0FIX00002", (), d["b2"], f"i want wireless headphones, and price lower than {d['b2']:.2f} dollars"),
        ("B0FIX00004", (("size", "small"),), 1000000, "i need a solid wood dining table with size: small"),
        ("B0FIX00004", (("size", "large"),), 1000000, "i need a solid wood dining table with size: large"),
        ("B0FIX00009", (("flavor name", "honey"),), d["b9"], f"i want gluten free granola with flavor name: honey, and price lower than {d['b9']:.2f} dollars"),
        ("B0FIX00009", (("flavor name", "cocoa"),), d["b9"], f"i want gluten free granola with flavor name: cocoa, and price lower than {d['b9']:.2f} dollars"),
        ("B0FIX00009", (("flavor name", "berry"),), d["b9"], f"i want gluten free granola with flavor name: berry, and price lower than {d['b9']:.2f} dollars"),
    ]
    random.Random(233).shuffle(expected)        # the original shuffles all goals with seed 233
    got = [(g.asin, g.options, g.price_upper, g.instruction) for g in cat.goals]
    assert got == expected
    assert all(g.typed_options for g in cat.goals)
    assert [g.attributes for g in cat.goals if g.asin == "B0FIX00009"][0] == ("gluten free", "non gmo")
    # 10 goals: all in the original's test split (positions 0-499)
    assert cat.splits == {"test": list(range(10)), "eval": [], "train": []}
    assert [g.goal_id for g in cat.goals] == list(range(10)) and {g.split for g in cat.goals} == {"test"}


def test_official_human_goals_keep_their_text():
    cat = load_official(ITEMS, INS, HUMAN, human_goals=True, seed=3)
    d = _original_draws(3, human=True)
    got = sorted((g.asin, g.instruction, g.price_upper, g.options) for g in cat.goals)
    assert got == [
        ("B0FIX00001", f"I want a Navy Blue shampoo for dry hair, 16 fl oz, and price lower than {d['b1']:.2f} dollars",
         d["b1"], (("color", "navy blue"), ("size", "16 fl oz"))),
        ("B0FIX00004", "Large Oak table", 1000000, (("size", "large"),)),       # "..." stripped, no price text
    ]
    assert not any(g.typed_options for g in cat.goals)
    assert cat.splits["test"] == [0, 1]


def test_official_split_positions(tmp_path):
    """One product with 40 x 40 option values: 1600 goals -> test 0-499, eval 500-1499, train 1500-1599."""
    item = {"asin": "B0FIXSPLIT", "name": "Many Option Shirt", "category": "fashion", "query": "shirt",
            "product_category": "Clothing › Shirts", "full_description": "", "small_description": [],
            "pricing": "$15.00", "images": [""],
            "customization_options": {"Color": [{"value": f"c{i}"} for i in range(40)],
                                      "Size": [{"value": f"s{i}"} for i in range(40)]}}
    (tmp_path / "items.json").write_text(json.dumps([item]))
    (tmp_path / "ins.json").write_text(json.dumps({"B0FIXSPLIT": {
        "attributes": ["cotton"], "instruction": "a shirt", "instruction_attributes": ["cotton"]}}))
    cat = load_official(tmp_path / "items.json", tmp_path / "ins.json", seed=0)
    assert len(cat.goals) == 1600
    assert cat.splits["test"] == list(range(500)) and cat.splits["eval"] == list(range(500, 1500))
    assert cat.splits["train"] == list(range(1500, 1600))
    unshuffled = [(("color", f"c{i}"), ("size", f"s{j}")) for i in range(40) for j in range(40)]
    random.Random(233).shuffle(unshuffled)
    assert [g.options for g in cat.goals[:5]] == unshuffled[:5]


def test_official_loader_errors_are_clear(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="list of products"):
        load_official(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([{"asin": "B0X", "pricing": "$abc"}]))
    with pytest.raises(ValueError, match="B0X"):
        load_official(tmp_path / "bad2.json")


def test_official_data_through_the_env():
    from hero_gym.envs.webshop.env import WebShopEnv

    env = WebShopEnv(data_dir=str(FIXTURE), split="test")
    obs, info = env.reset(options={"goal_id": 0})
    assert "Instruction:" in obs
    goal = env.catalog.goals[0]
    env.step(f"search[{env.catalog.product(goal.asin).title}]")
    obs, *_ , info = env.step(f"click[{goal.asin.lower()}]")
    for _, v in goal.options:
        env.step(f"click[{v}]")
    obs, reward, term, trunc, info = env.step("click[buy now]")
    assert term and reward == 1.0 and info["success"]


def test_generation_is_identical_across_processes():
    """No dependence on Python's per-process hash seed (string/set ordering)."""
    import os
    import subprocess
    import sys

    code = ("import dataclasses, hashlib\n"
            "from hero_gym.envs.webshop.catalog import generate_catalog\n"
            "c = generate_catalog(300, 5)\n"
            "norm = lambda d: {k: sorted(v) if isinstance(v, frozenset) else v for k, v in dataclasses.asdict(d).items()}\n"
            "print(hashlib.sha1(repr(([norm(p) for p in c.products], [norm(g) for g in c.goals], c.splits))"
            ".encode()).hexdigest())\n")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(s)}).stdout for s in (1, 2)}
    assert len(outs) == 1
