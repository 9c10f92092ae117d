"""Suite-wide test settings.

The suite never touches the user's hero-gym cache: ``HERO_GYM_CACHE`` points at a temporary directory
removed at exit (converted models, warm starts and the tokenizer are rebuilt there; a few seconds). Set
``HERO_GYM_TEST_CACHE`` to a directory to reuse one across runs while developing.

Hypothesis runs from one fixed profile, ``hero-gym``: derandomized (the same examples on every run,
on every machine) and with no example database, so nothing found in one run is replayed in the next.
Its other on-disk caches go to a temporary directory removed at exit, so ``make test`` reads no
state from earlier runs: a fresh clone and a reused checkout run exactly the same tests. For
exploratory runs use ``HYPOTHESIS_PROFILE=explore`` (random examples, more of them, still no
database).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

_cache = os.environ.get("HERO_GYM_TEST_CACHE")
if not _cache:
    _cache = tempfile.mkdtemp(prefix="hero-gym-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ["HERO_GYM_CACHE"] = _cache  # subprocesses (CLI tests, workers) inherit it

_home = tempfile.mkdtemp(prefix="hero-gym-hypothesis-")
atexit.register(shutil.rmtree, _home, ignore_errors=True)
set_hypothesis_home_dir(_home)

settings.register_profile("hero-gym", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, database=None, deadline=None, max_examples=2000,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hero-gym"))
