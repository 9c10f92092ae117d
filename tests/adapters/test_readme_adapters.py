"""The server example of docs/adapters.md runs as written."""

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openenv.core")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adapters.md"


def test_server_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    code = next(b for b in blocks if "start_server" in b)
    ns: dict = {}
    exec(compile(code, "docs/adapters.md", "exec"), ns)
    assert ns["result"].reward == 1.0 and ns["result"].done
