"""`hero-gym bench --help` says what the presets run and reads as plain text."""

from hero_gym.agents.bench import PRESETS, build_parser


def _help() -> str:
    return " ".join(build_parser(prog="hero-gym bench").format_help().split())


def test_preset_help_matches_the_presets():
    text = _help()
    assert set(PRESETS["default"]["envs"]) == {"WebShop"} and set(PRESETS["cpu"]["envs"]) == {"WebShop"}
    assert "TauRetail" not in text.split("--preset", 1)[1].split("--quick", 1)[0]
    assert PRESETS["default"]["reference"] == "hero_rules" and "hero_rules in default" in text
    assert "HERO (rules) and its shuffled ablation" in text and "hero_rules_shuffled" in PRESETS["default"]["methods"]


def test_help_has_no_rst_markup():
    text = _help()
    assert "``" not in text and ":mod:" not in text and ":class:" not in text
