"""Word lists for the synthetic WebShop catalog.

Everything here is hand-written for hero-gym, except :data:`COLORS` (the original's colour list). The five top-level categories are the ones the
WebShop paper scraped (beauty, grocery, fashion, furniture, electronics); the product kinds,
attributes and option values are plausible shop vocabulary, not data from the original release.

``KINDS[category]`` is a list of ``(noun, breadcrumb tail, query)``: the noun is the product's head
noun (its words form the generator's noun lexicon, used by the type reward), the breadcrumb tail is
appended to the category root, and the query is the "search term the product was found with"
(WebShop products carry such a ``query`` field; the type reward compares it).
"""

from __future__ import annotations

CATEGORY_ROOTS = {
    "beauty": "Beauty & Personal Care",
    "grocery": "Grocery & Gourmet Food",
    "fashion": "Clothing, Shoes & Jewelry",
    "furniture": "Home & Kitchen › Furniture",
    "electronics": "Electronics",
}

CATEGORIES = list(CATEGORY_ROOTS)

KINDS: dict[str, list[tuple[str, str, str]]] = {
    "beauty": [
        ("shampoo", "Hair Care › Shampoos", "shampoo"),
        ("conditioner", "Hair Care › Conditioners", "conditioner"),
        ("hair oil", "Hair Care › Hair Oils", "hair oil"),
        ("face moisturizer", "Skin Care › Face › Moisturizers", "face moisturizer"),
        ("face serum", "Skin Care › Face › Serums", "face serum"),
        ("facial cleanser", "Skin Care › Face › Cleansers", "facial cleanser"),
        ("sunscreen", "Skin Care › Sun Care", "sunscreen"),
        ("lipstick", "Makeup › Lips › Lipstick", "lipstick"),
        ("mascara", "Makeup › Eyes › Mascara", "mascara"),
        ("eyeliner", "Makeup › Eyes › Eyeliner", "eyeliner"),
        ("nail polish", "Foot, Hand & Nail Care › Nail Polish", "nail polish"),
        ("body lotion", "Skin Care › Body › Lotions", "body lotion"),
        ("deodorant", "Personal Care › Deodorants", "deodorant"),
        ("perfume", "Fragrance › Perfume", "perfume"),
    ],
    "grocery": [
        ("coffee", "Beverages › Coffee", "coffee"),
        ("green tea", "Beverages › Tea", "green tea"),
        ("dark chocolate", "Snacks & Sweets › Chocolate", "dark chocolate"),
        ("cookies", "Snacks & Sweets › Cookies", "cookies"),
        ("potato chips", "Snacks & Sweets › Chips & Crisps", "potato chips"),
        ("granola", "Breakfast Foods › Granola", "granola"),
        ("almonds", "Snacks & Sweets › Nuts & Seeds", "almonds"),
        ("pasta", "Pantry Staples › Pasta", "pasta"),
        ("olive oil", "Pantry Staples › Cooking Oils", "olive oil"),
        ("honey", "Pantry Staples › Honey & Syrups", "honey"),
        ("protein bars", "Snacks & Sweets › Nutrition Bars", "protein bars"),
        ("beef jerky", "Snacks & Sweets › Jerky", "beef jerky"),
        ("crackers", "Snacks & Sweets › Crackers", "crackers"),
        ("popcorn", "Snacks & Sweets › Popcorn", "popcorn"),
    ],
    "fashion": [
        ("dress", "Women › Clothing › Dresses", "women dress"),
        ("t-shirt", "Men › Clothing › Shirts", "men t-shirt"),
        ("jeans", "Men › Clothing › Jeans", "men jeans"),
        ("sneakers", "Men › Shoes › Sneakers", "men sneakers"),
        ("boots", "Women › Shoes › Boots", "women boots"),
        ("jacket", "Men › Clothing › Jackets & Coats", "men jacket"),
        ("hoodie", "Women › Clothing › Sweatshirts", "women hoodie"),
        ("sweater", "Women › Clothing › Sweaters", "women sweater"),
        ("leggings", "Women › Clothing › Leggings", "women leggings"),
        ("socks", "Men › Clothing › Socks", "men socks"),
        ("shorts", "Men › Clothing › Shorts", "men shorts"),
        ("sandals", "Women › Shoes › Sandals", "women sandals"),
        ("baseball cap", "Men › Accessories › Hats & Caps", "baseball cap"),
        ("scarf", "Women › Accessories › Scarves", "women scarf"),
    ],
    "furniture": [
        ("office chair", "Home Office Furniture › Chairs", "office chair"),
        ("sofa", "Living Room Furniture › Sofas", "sofa"),
        ("computer desk", "Home Office Furniture › Desks", "computer desk"),
        ("bookcase", "Living Room Furniture › Bookcases", "bookcase"),
        ("coffee table", "Living Room Furniture › Tables", "coffee table"),
        ("nightstand", "Bedroom Furniture › Nightstands", "nightstand"),
        ("ottoman", "Living Room Furniture › Ottomans", "ottoman"),
        ("bar stool", "Kitchen & Dining Furniture › Stools", "bar stool"),
        ("dresser", "Bedroom Furniture › Dressers", "dresser"),
        ("bed frame", "Bedroom Furniture › Beds & Frames", "bed frame"),
        ("storage cabinet", "Living Room Furniture › Cabinets", "storage cabinet"),
        ("wall shelf", "Living Room Furniture › Shelves", "wall shelf"),
        ("entryway bench", "Entryway Furniture › Benches", "entryway bench"),
        ("floor mirror", "Bedroom Furniture › Mirrors", "floor mirror"),
    ],
    "electronics": [
        ("headphones", "Headphones › Over-Ear Headphones", "headphones"),
        ("earbuds", "Headphones › Earbud Headphones", "earbuds"),
        ("bluetooth speaker", "Portable Audio › Speakers", "bluetooth speaker"),
        ("phone charger", "Accessories › Chargers", "phone charger"),
        ("charging cable", "Accessories › Cables", "charging cable"),
        ("keyboard", "Computers › Keyboards", "keyboard"),
        ("mouse", "Computers › Mice", "mouse"),
        ("monitor", "Computers › Monitors", "monitor"),
        ("webcam", "Computers › Webcams", "webcam"),
        ("router", "Computers › Networking › Routers", "router"),
        ("tablet case", "Accessories › Tablet Cases", "tablet case"),
        ("power bank", "Accessories › Power Banks", "power bank"),
        ("smartwatch", "Wearable Technology › Smartwatches", "smartwatch"),
        ("microphone", "Audio › Microphones", "microphone"),
    ],
}

MODIFIERS = {
    "beauty": ["argan oil", "tea tree", "vitamin c", "charcoal", "aloe vera", "rose water", "hyaluronic acid",
               "coconut", "shea butter", "keratin", "collagen", "matte", "waterproof", "herbal"],
    "grocery": ["gourmet", "artisan", "premium", "classic", "roasted", "whole grain", "crunchy",
                "family size", "imported", "small batch", "wild", "smoked", "traditional", "italian"],
    "fashion": ["casual", "classic", "athletic", "vintage", "cotton", "knit", "denim", "fleece",
                "lightweight", "summer", "winter", "running", "oversized", "stretch"],
    "furniture": ["modern", "rustic", "industrial", "ergonomic", "upholstered", "farmhouse", "compact",
                  "adjustable", "scandinavian", "tufted", "round", "folding", "wooden", "minimalist"],
    "electronics": ["wireless", "portable", "gaming", "ultra slim", "rechargeable", "smart", "mini",
                    "professional", "magnetic", "ergonomic", "compact", "4k", "dual", "rugged"],
}

ATTRIBUTES = {
    "beauty": ["sulfate free", "paraben free", "cruelty free", "long lasting", "natural ingredients",
               "dry skin", "sensitive skin", "hair growth", "anti aging", "fragrance free", "travel size",
               "easy to use", "oil free", "dermatologist tested"],
    "grocery": ["gluten free", "sugar free", "non gmo", "low carb", "keto friendly", "usda organic",
                "high protein", "plant based", "individually wrapped", "dairy free", "caffeine free",
                "ready to eat", "low calorie", "resealable bag"],
    "fashion": ["machine washable", "slim fit", "relaxed fit", "long sleeve", "short sleeve", "quick drying",
                "moisture wicking", "button closure", "elastic waistband", "rubber sole", "water resistant",
                "lace up", "hand wash only", "soft material"],
    "furniture": ["easy assembly", "solid wood", "living room", "mid century", "storage space", "space saving",
                  "metal frame", "heavy duty", "faux leather", "high density foam", "non slip", "engineered wood",
                  "assembly required", "wood finish"],
    "electronics": ["noise cancelling", "fast charging", "high speed", "bluetooth 5.0", "usb c",
                    "long battery life", "easy to carry", "plug and play", "high definition", "water resistant",
                    "stereo sound", "dual band", "aluminum alloy", "touch control"],
}

# Colour normalisation in the reward: the original's colour list, in its order (a fact reproduced from
# WebShop's ``web_agent_site/engine/normalize.py``, ``COLOR_SET``). Normalisation returns the first
# entry that occurs in the string, so "navy blue" -> "blue" ("blue" comes first), "light blue" ->
# "blue", "grey heather" -> "grey"; "grey" and "gray" stay two different words.
COLORS = [
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure",
    "banana", "beige", "black", "blue", "blush", "bordeaux", "bronze",
    "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee",
    "cognac", "copper", "coral", "cranberry", "cream", "crystal", "dark",
    "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite",
    "grape", "graphite", "grass", "gray", "green", "grey", "heather", "indigo",
    "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac",
    "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive",
    "orange", "peach", "pewter", "pink", "plum", "purple", "rainbow", "red",
    "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver", "skull",
    "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal",
    "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
]

OPTION_VALUES = {
    "beauty": {
        "size": ["1 fl oz", "2 fl oz", "3.4 fl oz", "8 fl oz", "16 fl oz", "33.8 fl oz", "pack of 2", "pack of 3"],
        "scent": ["lavender", "vanilla", "coconut milk", "rose", "unscented", "citrus", "fresh mint", "sandalwood"],
        "color": ["red", "nude", "pink", "berry", "coral", "plum", "black", "brown"],
    },
    "grocery": {
        "flavor name": ["original", "chocolate", "vanilla bean", "strawberry", "sea salt", "honey roasted",
                        "caramel", "peanut butter", "spicy chili", "mango"],
        "size": ["8 ounce", "12 ounce", "16 ounce", "2 pound", "pack of 6", "pack of 12", "24 count", "48 count"],
    },
    "fashion": {
        "size": ["x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large"],
        "color": ["black", "white", "navy blue", "light blue", "gray", "grey heather", "red", "beige",
                  "olive green", "dark brown", "pink", "burgundy", "khaki"],
        "fit type": ["regular", "big & tall", "petite", "plus size"],
    },
    "furniture": {
        "color": ["white", "black", "walnut", "light oak", "gray", "espresso", "natural", "navy blue", "teal"],
        "size": ["small", "medium", "large", "2-tier", "3-tier", "5-tier", "set of 2", "set of 4"],
        "style": ["modern", "classic", "with drawers", "without drawers", "with wheels", "armless"],
    },
    "electronics": {
        "color": ["black", "white", "silver", "space gray", "blue", "rose gold", "red", "green"],
        "size": ["3 ft", "6 ft", "10 ft", "2 pack", "3 pack", "10000mah", "20000mah", "small", "large"],
        "style": ["standard", "pro", "max", "lite", "with case", "without case"],
    },
}

PRICE_RANGES = {"beauty": (4.0, 60.0), "grocery": (3.0, 45.0), "fashion": (9.0, 90.0),
                "furniture": (25.0, 450.0), "electronics": (8.0, 300.0)}

BRAND_SYLLABLES = ["lu", "mo", "ra", "vex", "ka", "zi", "no", "tor", "bel", "sa", "fin", "do", "qui", "mar",
                   "pel", "xo", "ri", "sun", "ta", "vi", "lo", "ne", "gra", "hal", "co", "dex", "ly", "pri"]

FILLER_SENTENCES = [
    "Designed for everyday use at home or on the go.",
    "Backed by our satisfaction promise and friendly customer service.",
    "Carefully packaged to arrive in perfect condition.",
    "A thoughtful gift for friends and family.",
    "Made with attention to detail and quality control.",
    "Simple to store and easy to keep clean.",
    "Loved by thousands of customers worldwide.",
    "Please check the size chart and details before ordering.",
]

REVIEW_TEXTS = [
    (5, "Exactly what I was looking for, would buy again."),
    (4, "Good quality for the price, shipping was quick."),
    (3, "It is okay, does the job but nothing special."),
    (2, "Not as described, a bit disappointed."),
    (5, "Great value and it looks even better in person."),
    (4, "Works well so far, happy with the purchase."),
    (1, "Arrived damaged and customer service was slow."),
]

INSTRUCTION_PREFIXES = ["i need", "i am looking for", "i want", "find me", "i would like", "help me find",
                        "i'm searching for", "get me"]
