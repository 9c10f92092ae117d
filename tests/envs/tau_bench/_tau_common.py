"""Helpers shared by the Tau-bench tests (a uniquely named module, importable from the tests)."""

import os
from pathlib import Path

import pytest

DATA_DIR = os.environ.get("HERO_GYM_TAUBENCH_DIR")
HAVE_OFFICIAL = bool(DATA_DIR) and (Path(DATA_DIR) / "retail" / "users.json").is_file() \
    and (Path(DATA_DIR) / "conformance").is_dir()
SKIP_REASON = ("official Tau-bench data not available: set HERO_GYM_TAUBENCH_DIR to the data folder "
               "(it holds retail/, airline/ and conformance/) to run the conformance/official-data tests")
needs_official = pytest.mark.skipif(not HAVE_OFFICIAL, reason=SKIP_REASON)


