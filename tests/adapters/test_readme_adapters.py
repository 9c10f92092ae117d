"""The README's server example ("Use our envs from another framework") runs as written."""

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openenv.core")

README = Path(__file__).resolve().parents[2] / "README.md"


def test_server_example_runs():
    section = README.read_text().split("## Use our envs from another framework", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    code = next(b for b in blocks if "start_server" in b)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["result"].reward == 1.0 and ns["result"].done
