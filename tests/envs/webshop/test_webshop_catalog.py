"""Catalog generator, official-format loader and the shared-catalog cache."""

import json

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


def _write_official(tmp_path):
    items = [
        {"asin": "B000TEST01", "name": "Acme Sulfate Free Shampoo for Dry Hair", "category": "beauty",
         "query": "shampoo", "product_category": "Beauty & Personal Care › Hair Care › Shampoos",
         "full_description": "A gentle shampoo.", "small_description": ["Paraben free formula", "Smells nice"],
         "pricing": "$12.50", "customization_options": {"Size": [{"value": "8 Fl Oz", "image": None},
                                                                  {"value": "16 Fl Oz", "image": None}]},
         "average_rating": 4.5},
        {"asin": "B000TEST02", "name": "Zed Wireless Headphones", "category": "electronics",
         "query": "headphones", "product_category": "Electronics › Headphones",
         "full_description": "Over-ear.", "small_description": "Noise cancelling",
         "pricing": "$20.00 - $40.00", "customization_options": None},
        {"asin": "B000TEST03", "name": "No Price Mug", "category": "furniture", "query": "mug",
         "product_category": "Home & Kitchen", "full_description": "", "small_description": [],
         "pricing": None, "customization_options": {}},
    ]
    ins = {
        "B000TEST01": {"attributes": ["sulfate free", "paraben free"], "instruction": "i need a sulfate free shampoo",
                       "instruction_attributes": ["sulfate free"], "instruction_options": ["16 fl oz"]},
        "B000TEST02": {"attributes": ["noise cancelling"], "instruction": "wireless headphones please",
                       "instruction_attributes": ["noise cancelling"], "instruction_options": []},
    }
    human = {"B000TEST01": [{"asin": "B000TEST01", "instruction": "Shampoo for dry hair, 8 fl oz",
                             "instruction_attributes": ["dry hair"], "instruction_options": ["8 fl oz"],
                             "assignment_id": "x", "worker_id": "y"}]}
    (tmp_path / "items_shuffle_1000.json").write_text(json.dumps(items))
    (tmp_path / "items_ins_v2_1000.json").write_text(json.dumps(ins))
    (tmp_path / "items_human_ins.json").write_text(json.dumps(human))
    return tmp_path


def test_official_loader_reads_the_official_schema(tmp_path):
    d = _write_official(tmp_path)
    cat = load_official(d / "items_shuffle_1000.json", d / "items_ins_v2_1000.json", seed=0)
    assert len(cat.products) == 3 and cat.source == "official" and cat.noun_lexicon is None
    p = cat.product("B000TEST01")
    assert p.title == "Acme Sulfate Free Shampoo for Dry Hair"
    assert p.breadcrumb == "Beauty & Personal Care › Hair Care › Shampoos"
    assert p.bullets == ("Paraben free formula", "Smells nice")
    assert p.options == (("size", ("8 fl oz", "16 fl oz")),)
    assert p.attributes == ("sulfate free", "paraben free")
    assert p.price == 12.5 and p.price_tag == "$12.50"
    q = cat.product("B000TEST02")
    assert 20.0 <= q.price <= 40.0 and q.price_tag == "$20.00 to $40.00"
    assert q.bullets == ("Noise cancelling",)
    assert cat.product("B000TEST03").price == 100.0
    assert len(cat.goals) == 2
    g = next(g for g in cat.goals if g.asin == "B000TEST01")
    assert g.options == (("size", "16 fl oz"),) and g.attributes == ("sulfate free",)
    assert g.price_upper in price_upper_choices(12.5)
    assert "price lower than" in g.instruction
    human = load_official(d / "items_shuffle_1000.json", d / "items_ins_v2_1000.json",
                          d / "items_human_ins.json", human_goals=True)
    assert [g.instruction.split(",")[0] for g in human.goals] == ["shampoo for dry hair"]


def test_official_data_through_the_env(tmp_path):
    from hero_gym.envs.webshop.env import WebShopEnv

    d = _write_official(tmp_path)
    env = WebShopEnv(data_dir=str(d), split="train")
    obs, info = env.reset(options={"goal_id": 0})
    assert "Instruction:" in obs
    goal = env.catalog.goals[0]
    env.step("search[sulfate free shampoo]")
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
