"""Products and goals: a seeded synthetic generator and a loader for the official WebShop files.

A :class:`Catalog` is read-only once built and is shared by every env instance in a process (see
:func:`get_catalog`). Products are plain dataclasses; goals carry what the reward needs.

Facts about the original benchmark that this module follows (from the WebShop paper, Yao et al.
2022, and its public data release):

* products come from five categories (beauty, grocery, fashion, furniture, electronics) and carry an
  ASIN, a title, a breadcrumb category joined with " › ", a description, bullet points ("small
  description"), attributes mined from the text, customisation options and a price or price range;
* a synthetic goal names some of the product's attributes, one value of some of its option types and
  a price limit; the limit is one of the next multiples of $10 above the product price;
* a price range is turned into a concrete price by drawing uniformly inside the range;
* the official files are ``items_shuffle*.json`` (a list of products with the fields ``asin``,
  ``name``, ``category``, ``query``, ``product_category``, ``full_description``,
  ``small_description``, ``pricing``, ``customization_options``, ``average_rating``...),
  ``items_ins_v2*.json`` (asin -> ``attributes``, ``instruction``, ``instruction_attributes``,
  ``instruction_options``) and ``items_human_ins.json`` (asin -> list of human-written goals with
  ``instruction``, ``instruction_attributes``, ``instruction_options``).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lexicon

__all__ = ["DEFAULT_NUM_PRODUCTS", "Product", "Goal", "Catalog", "generate_catalog", "load_official", "get_catalog",
           "price_upper_choices"]

#: size of the generated catalog when none is given (the env, the server and the benchmark share it)
DEFAULT_NUM_PRODUCTS = 1000

_WS = re.compile(r"\s+")


def clean(text: Any) -> str:
    """Collapse whitespace (observations are compared as strings in text and browser mode)."""
    return _WS.sub(" ", str(text)).strip()


@dataclass(frozen=True)
class Product:
    asin: str
    title: str
    category: str                      # top-level: beauty / grocery / fashion / furniture / electronics
    breadcrumb: str                    # "A › B › C"
    query: str                         # the search term the product belongs to (type reward)
    description: str
    bullets: tuple[str, ...]
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]   # ((option type, (values...)), ...)
    price: float                       # concrete price used for the reward
    price_tag: str                     # "$12.99" or "$12.99 to $19.99" (shown on pages)
    rating: str = "N.A."
    reviews: tuple[tuple[int, str], ...] = ()
    nouns: tuple[str, ...] = ()        # title nouns in title order, repeats kept (type reward), precomputed

    def option_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.options)

    def option_type_of(self, value: str) -> str | None:
        value = value.lower()
        for otype, values in self.options:
            if value in values:
                return otype
        return None


@dataclass(frozen=True)
class Goal:
    goal_id: int
    asin: str
    instruction: str
    attributes: tuple[str, ...]        # goal attributes
    options: tuple[tuple[str, str], ...]   # ((option type, value), ...)
    price_upper: float
    query: str
    category: str
    breadcrumb: str
    nouns: tuple[str, ...]             # nouns of the goal product's title (in order, repeats kept)
    split: str = "train"
    typed_options: bool = True         # options are {type: value} (synthetic goals), not plain values (human)

    def to_dict(self) -> dict[str, Any]:
        return {"goal_id": self.goal_id, "asin": self.asin, "instruction": self.instruction,
                "attributes": list(self.attributes), "options": dict(self.options),
                "price_upper": self.price_upper, "query": self.query, "category": self.category,
                "split": self.split}


@dataclass
class Catalog:
    products: list[Product]
    goals: list[Goal]
    splits: dict[str, list[int]]               # split -> goal indices
    noun_lexicon: frozenset[str] | None        # None: official data (see reward.title_nouns)
    source: str = "generated"
    by_asin: dict[str, int] = field(default_factory=dict)
    _index: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.by_asin = {p.asin: i for i, p in enumerate(self.products)}

    def product(self, asin: str) -> Product:
        return self.products[self.by_asin[asin.upper()]]

    def has(self, asin: str) -> bool:
        return asin.upper() in self.by_asin

    @property
    def index(self):
        """The BM25 index (built on first use, then shared)."""
        if self._index is None:
            with self._lock:
                if self._index is None:
                    from hero_gym.envs.webshop.search import SearchIndex
                    self._index = SearchIndex(self.products)
        return self._index

    def split_goals(self, split: str) -> list[int]:
        if split not in self.splits:
            raise ValueError(f"Unknown split {split!r}; choose from {sorted(self.splits)}")
        return self.splits[split]


def price_upper_choices(price: float, n: int = 4) -> list[float]:
    """The next ``n`` multiples of $10 strictly above ``price`` (the WebShop way to set a limit)."""
    first = int(price // 10) + 1
    return [10.0 * k for k in range(first, first + n)]


def _split_indices(n_goals: int, seed: int) -> dict[str, list[int]]:
    """Fixed splits: a seeded shuffle, then test (10 %, at most 500), eval (10 %, at most 1000), train."""
    order = list(range(n_goals))
    random.Random(f"splits-{seed}").shuffle(order)
    n_test = min(500, max(1, n_goals // 10))
    n_eval = min(1000, max(1, n_goals // 10))
    return {"test": sorted(order[:n_test]), "eval": sorted(order[n_test:n_test + n_eval]),
            "train": sorted(order[n_test + n_eval:])}


# --------------------------------------------------------------------------- generator
_NOUN_LEXICON = frozenset(w for kinds in lexicon.KINDS.values() for noun, _, _ in kinds for w in noun.split())


def _title_nouns(title: str, lex: frozenset[str]) -> tuple[str, ...]:
    return tuple(w for w in re.findall(r"[a-z0-9\-]+", title.lower()) if w in lex)


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(lexicon.BRAND_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _asin(rng: random.Random, used: set[str]) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    while True:
        n = rng.randrange(36 ** 8)
        chars = []
        for _ in range(8):
            n, d = divmod(n, 36)
            chars.append(alphabet[d])
        asin = "B0" + "".join(chars)
        if asin not in used:
            used.add(asin)
            return asin


def _make_product(rng: random.Random, used: set[str], brands: list[str]) -> Product:
    category = rng.choice(lexicon.CATEGORIES)
    noun, tail, query = rng.choice(lexicon.KINDS[category])
    brand = rng.choice(brands)
    mods = rng.sample(lexicon.MODIFIERS[category], rng.randint(1, 2))
    attrs = rng.sample(lexicon.ATTRIBUTES[category], rng.randint(2, 4))
    # Some attributes go into the title, the rest only into bullets/description: the reward's
    # substring fallback must find them there.
    in_title = attrs[: rng.randint(0, min(2, len(attrs)))]
    title_words = [brand] + [m.title() for m in mods] + [noun.title()]
    if in_title:
        title_words.append("- " + ", ".join(a.title() for a in in_title))
    title = " ".join(title_words)   # generated text is already single-spaced

    opt_types = list(lexicon.OPTION_VALUES[category])
    n_types = rng.choice([0, 1, 1, 2, 2, 2, 3])
    chosen_types = sorted(rng.sample(opt_types, min(n_types, len(opt_types))), key=opt_types.index)
    options: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for otype in chosen_types:
        pool = [v for v in lexicon.OPTION_VALUES[category][otype] if v not in seen]
        k = min(len(pool), rng.randint(2, 5))
        if k < 2:
            continue
        vals = tuple(sorted(rng.sample(pool, k), key=lexicon.OPTION_VALUES[category][otype].index))
        seen.update(vals)
        options.append((otype, vals))

    lo, hi = lexicon.PRICE_RANGES[category]
    base = round(rng.uniform(lo, hi)) - 0.01
    base = max(base, 1.99)
    if rng.random() < 0.2:
        top = round(base * rng.uniform(1.15, 1.6)) - 0.01
        price_tag = f"${base:.2f} to ${top:.2f}"
        price = round(rng.uniform(base, top), 2)   # a range becomes a concrete price, drawn uniformly
    else:
        price_tag = f"${base:.2f}"
        price = base

    rest = [a for a in attrs if a not in in_title]
    bullets = []
    for a in rest:
        bullets.append(f"{a.upper()}: this {noun} is {a}, {rng.choice(lexicon.FILLER_SENTENCES).lower()}")
    for _ in range(rng.randint(1, 2)):
        bullets.append(rng.choice(lexicon.FILLER_SENTENCES))
    rng.shuffle(bullets)
    description = (f"The {brand} {' '.join(mods)} {noun} is a {category} essential. "
                   f"{rng.choice(lexicon.FILLER_SENTENCES)} {rng.choice(lexicon.FILLER_SENTENCES)}")
    n_rev = rng.randint(0, 3)
    reviews = tuple(rng.choice(lexicon.REVIEW_TEXTS) for _ in range(n_rev))
    rating = f"{sum(s for s, _ in reviews) / n_rev:.1f}" if n_rev else "N.A."
    return Product(
        asin=_asin(rng, used), title=title, category=category,
        breadcrumb=f"{lexicon.CATEGORY_ROOTS[category]} › {tail}", query=query,
        description=description, bullets=tuple(bullets), attributes=tuple(attrs), options=tuple(options),
        price=price, price_tag=price_tag, rating=rating, reviews=reviews,
        nouns=_title_nouns(title, _NOUN_LEXICON),
    )


def _make_goal(rng: random.Random, gid: int, p: Product, noun: str) -> Goal:
    attrs = tuple(rng.sample(p.attributes, rng.randint(1, min(3, len(p.attributes)))))
    opts = []
    for otype, values in p.options:
        if rng.random() < 0.85:
            opts.append((otype, rng.choice(values)))
    upper = rng.choice(price_upper_choices(p.price))
    prefix = rng.choice(lexicon.INSTRUCTION_PREFIXES)
    text = f"{prefix} {' and '.join(attrs)} {noun}"
    if opts:
        text += ", with " + " and ".join(f"{t}: {v}" for t, v in opts)
    text += f", and price lower than {upper:.2f} dollars"
    return Goal(goal_id=gid, asin=p.asin, instruction=clean(text), attributes=attrs, options=tuple(opts),
                price_upper=upper, query=p.query, category=p.category, breadcrumb=p.breadcrumb, nouns=p.nouns)


def generate_catalog(num_products: int = DEFAULT_NUM_PRODUCTS, seed: int = 0) -> Catalog:
    """A deterministic synthetic catalog: the same (num_products, seed) gives the same products,
    prices, goals and splits. One goal per product."""
    if num_products < 1:
        raise ValueError("num_products must be >= 1")
    rng = random.Random(f"webshop-catalog-{seed}")
    brands = sorted({_brand(rng) for _ in range(max(50, num_products // 20))})
    used: set[str] = set()
    products = [_make_product(rng, used, brands) for _ in range(num_products)]
    noun_of = {q: n for kinds in lexicon.KINDS.values() for n, _, q in kinds}
    grng = random.Random(f"webshop-goals-{seed}")
    goals = [_make_goal(grng, i, p, noun_of[p.query]) for i, p in enumerate(products)]
    splits = _split_indices(len(goals), seed)
    for name, idxs in splits.items():
        for i in idxs:
            object.__setattr__(goals[i], "split", name)
    return Catalog(products=products, goals=goals, splits=splits, noun_lexicon=_NOUN_LEXICON, source="generated")


# --------------------------------------------------------------------------- official loader
# Facts from the original's loader and goal builder (``web_agent_site/engine/engine.py``
# ``load_products`` / ``generate_product_prices`` and ``engine/goal.py``), reproduced here:
PRICE_BOUNDS = [10.0 * i for i in range(1, 100)]   # the original's PRICE_RANGE: 10, 20, ..., 990
NO_PRICE_BOUND = 1000000                           # the bound when fewer than two multiples are left
GOAL_SHUFFLE_SEED = 233                            # goals are shuffled with random.seed(233)
OFFICIAL_SPLITS = (("test", 0, 500), ("eval", 500, 1500), ("train", 1500, None))   # goal positions
DUMMY_ATTRIBUTE = "DUMMY_ATTR"                     # attributes of a product missing from items_ins_v2


def official_pricing(pricing: Any, asin: str = "?") -> tuple[list[float], str]:
    """The original's price parsing: ``"$12.99"`` -> [12.99] ("$12.99"); ``"$12.99 - $19.99"`` ->
    [12.99, 19.99] ("$12.99 to $19.99"); each "$"-separated piece keeps only digits and dots; no
    pricing -> [100.0] ("$100.0"). The tag uses Python's float text, as the original's page does."""
    if pricing is None or pricing == "" or pricing == []:
        return [100.0], "$100.0"
    if not isinstance(pricing, str):
        raise ValueError(f"product {asin}: pricing must be a string like '$12.99', got {pricing!r}")
    values = []
    for piece in pricing.split("$")[1:]:
        digits = re.sub(r"[^\d.]", "", piece)
        try:
            values.append(float(digits))
        except ValueError:
            raise ValueError(f"product {asin}: unreadable price {piece!r} in {pricing!r}") from None
    if not values:
        raise ValueError(f"product {asin}: no '$' price in {pricing!r}")
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def official_option_value(value: Any) -> str:
    """The original's option-value text: stripped, "/" -> " | ", lower-cased."""
    return str(value).strip().replace("/", " | ").lower()


def draw_price_bound(rng: random.Random, price: float) -> tuple[float, str]:
    """The original's goal price bound: the next four multiples of $10 above the price; with at
    least two of them, the larger of two drawn without replacement (``random.sample``), and the
    instruction gets ", and price lower than X.XX dollars"; else 1,000,000 and no text (no draw)."""
    choices = [b for b in PRICE_BOUNDS if b > price][:4]
    if len(choices) >= 2:
        _, upper = sorted(rng.sample(choices, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return NO_PRICE_BOUND, ""


def official_split_indices(n_goals: int) -> dict[str, list[int]]:
    """The original's split of the shuffled goal list: test = positions 0-499, eval = 500-1499,
    train = the rest (a small catalog may leave eval/train empty)."""
    return {name: list(range(lo, n_goals if hi is None else min(hi, n_goals))) for name, lo, hi in OFFICIAL_SPLITS}


def _load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclass
class _RawProduct:
    """What goal building needs from one official product record, as the original processes it."""

    product: Product
    options: dict[str, list[str]]      # option type -> values (original processing, repeats kept)


def _official_product(item: dict[str, Any], info: dict[str, Any] | None, price: float, tag: str) -> _RawProduct:
    from hero_gym.envs.webshop.reward import title_nouns

    asin = str(item["asin"]).upper()
    raw_opts: dict[str, list[str]] = {}
    for otype, contents in (item.get("customization_options") or {}).items():
        if contents is None:
            continue
        raw_opts[str(otype).lower()] = [official_option_value(c["value"] if isinstance(c, dict) else c)
                                        for c in contents]
    # The pages show each value once (a click names a value): later repeats are dropped there.
    shown: list[tuple[str, tuple[str, ...]]] = []
    used: set[str] = set()
    for otype, values in raw_opts.items():
        vals = []
        for v in values:
            text = clean(v)
            if text and text not in used:
                used.add(text)
                vals.append(text)
        if vals:
            shown.append((clean(otype), tuple(vals)))
    small = item.get("small_description")
    bullets = tuple(clean(b) for b in (small if isinstance(small, list) else [small]) if b is not None)
    attrs = info["attributes"] if info is not None and "attributes" in info else [DUMMY_ATTRIBUTE]
    title = clean(item.get("name") or "")
    reviews = []
    for r in item.get("Reviews") or item.get("reviews") or []:
        if isinstance(r, dict):
            try:
                score = int(float(r.get("score", r.get("stars", 0))))
            except (TypeError, ValueError):
                score = 0
            reviews.append((score, clean(r.get("body") or r.get("review") or r.get("title") or "")))
    rating = item.get("average_rating") or item.get("Rating") or "N.A."
    product = Product(
        asin=asin, title=title, category=clean(item.get("category", "")).lower(),
        breadcrumb=clean(item.get("product_category", "")), query=str(item.get("query", "")).lower().strip(),
        description=clean(item.get("full_description") or ""), bullets=bullets,
        attributes=tuple(clean(a) for a in attrs), options=tuple(shown),
        price=price, price_tag=tag, rating=clean(rating), reviews=tuple(reviews),
        nouns=title_nouns(title, None),
    )
    return _RawProduct(product, {k: [clean(v) for v in vals] for k, vals in raw_opts.items()})


def _synthetic_goals(raw: _RawProduct, info: dict[str, Any] | None, rng: random.Random) -> list[dict[str, Any]]:
    """The original's synthetic goals of one product: one goal per combination of its option values
    (option types in sorted order), all sharing one drawn price bound."""
    if info is None or info.get("instruction") is None:
        return []
    attributes = list(info.get("instruction_attributes") or [])
    if not attributes:
        return []      # the original asserts there is at least one; we skip the product
    upper, price_text = draw_price_bound(rng, raw.product.price)
    names = sorted(raw.options)
    goals = []
    for combo in itertools.product(*(raw.options[n] for n in names)):
        options = tuple(zip(names, combo))
        option_text = ", and ".join(f"{k}: {v}" for k, v in options)
        option_text = f" with {option_text}" if option_text else ""
        goals.append({"instruction": f"{info['instruction']}{option_text}{price_text}",
                      "attributes": tuple(attributes), "options": options, "price_upper": upper,
                      "typed_options": True})
    return goals


def _human_goals(raw: _RawProduct, instructions: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The original's human goals of one product: one per instruction with a non-empty attribute
    list (others are skipped), the instruction's text kept (trailing dots stripped), a price bound
    drawn per goal, the instruction's options as plain values."""
    goals = []
    for ins in instructions:
        attributes = list(ins.get("instruction_attributes") or [])
        if not attributes:
            continue
        upper, price_text = draw_price_bound(rng, raw.product.price)
        values = [clean(v) for v in ins.get("instruction_options") or []]
        options = tuple((raw.product.option_type_of(v) or "", v) for v in values)
        goals.append({"instruction": str(ins.get("instruction", "")).strip(".") + price_text,
                      "attributes": tuple(attributes), "options": options, "price_upper": upper,
                      "typed_options": False})
    return goals


def load_official(items_path: str | Path, attrs_path: str | Path | None = None,
                  human_path: str | Path | None = None, *, human_goals: bool = False,
                  num_products: int | None = None, seed: int = 0) -> Catalog:
    """Load products and build goals from the official WebShop files, the original's way.

    ``items_path``: ``items_shuffle*.json`` (a list of products); ``attrs_path``:
    ``items_ins_v2*.json`` (asin -> ``attributes``, ``instruction``, ``instruction_attributes``);
    ``human_path``: ``items_human_ins.json`` (asin -> list of instructions; used when
    ``human_goals``). Products: the first ``num_products`` records, skipping an asin of "nan" or
    longer than 10 characters and repeats; option values as :func:`official_option_value`.

    Randomness follows the original's order of draws on one generator, ``random.Random(seed)``:
    a price range becomes ``uniform(first, second)`` for each ranged product in product order, then
    each goal's price bound is drawn (:func:`draw_price_bound`) in goal-building order. The goals
    are then shuffled with ``random.Random(233)`` and split by position (test 0-499, eval 500-1499,
    train the rest). The original draws prices and bounds from Python's unseeded global generator;
    seeding it with ``seed`` first gives exactly these values.

    Synthetic goals (default): every product with an ``instruction`` and a non-empty
    ``instruction_attributes`` gives one goal per combination of its option values. Human goals:
    one per human instruction with attributes.
    """
    raw_items = _load_json(Path(items_path))
    if not isinstance(raw_items, list):
        raise ValueError(f"{items_path}: expected a list of products (items_shuffle format)")
    if num_products is not None:
        raw_items = raw_items[:num_products]
    attrs_map = _load_json(Path(attrs_path)) if attrs_path else {}
    human_map = _load_json(Path(human_path)) if (human_path and human_goals) else {}
    rng = random.Random(seed)
    kept: list[tuple[dict[str, Any], list[float], str]] = []
    seen: set[str] = set()
    for item in raw_items:
        asin = str(item.get("asin", ""))
        if not asin or asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, tag = official_pricing(item.get("pricing"), asin)
        kept.append((item, pricing, tag))
    raws = []
    for item, pricing, tag in kept:     # prices are drawn after loading, in product order
        price = pricing[0] if len(pricing) == 1 else rng.uniform(*pricing[:2])
        raws.append(_official_product(item, attrs_map.get(item["asin"]), price, tag))
    built: list[tuple[_RawProduct, dict[str, Any]]] = []
    for raw, (item, _, _) in zip(raws, kept):
        if human_goals:
            goals_of = _human_goals(raw, human_map.get(item["asin"]) or [], rng)
        else:
            goals_of = _synthetic_goals(raw, attrs_map.get(item["asin"]), rng)
        built += [(raw, g) for g in goals_of]
    random.Random(GOAL_SHUFFLE_SEED).shuffle(built)
    splits = official_split_indices(len(built))
    split_of = {i: name for name, idxs in splits.items() for i in idxs}
    goals = [Goal(goal_id=i, asin=raw.product.asin, instruction=g["instruction"], attributes=g["attributes"],
                  options=g["options"], price_upper=g["price_upper"], query=raw.product.query,
                  category=raw.product.category, breadcrumb=raw.product.breadcrumb, nouns=raw.product.nouns,
                  split=split_of[i], typed_options=g["typed_options"])
             for i, (raw, g) in enumerate(built)]
    return Catalog(products=[r.product for r in raws], goals=goals, splits=splits, noun_lexicon=None,
                   source="official")


# --------------------------------------------------------------------------- shared cache
_CACHE: dict[tuple, Catalog] = {}
_CACHE_LOCK = threading.Lock()


def get_catalog(num_products: int = DEFAULT_NUM_PRODUCTS, seed: int = 0, data_dir: str | Path | None = None,
                human_goals: bool = False) -> Catalog:
    """The process-wide shared catalog for these settings (built once, read-only afterwards).

    With ``data_dir`` the official files are loaded from it (``items_shuffle*.json``,
    ``items_ins_v2*.json``, ``items_human_ins.json``; the first match of each pattern is used).
    """
    key = (num_products, seed, str(data_dir) if data_dir else None, human_goals)
    with _CACHE_LOCK:
        cat = _CACHE.get(key)
        if cat is None:
            if data_dir is not None:
                d = Path(data_dir)
                items = sorted(d.glob("items_shuffle*.json"))
                ins = sorted(d.glob("items_ins_v2*.json"))
                human = d / "items_human_ins.json"
                if not items:
                    raise FileNotFoundError(f"no items_shuffle*.json in {d}")
                cat = load_official(items[0], ins[0] if ins else None, human if human.exists() else None,
                                    human_goals=human_goals, num_products=num_products, seed=seed)
            else:
                cat = generate_catalog(num_products, seed)
            _CACHE[key] = cat
        return cat
