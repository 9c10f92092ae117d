"""Suite-wide test settings.

Hypothesis runs from one fixed profile, ``hero-gym``: derandomized (the same examples on every run,
on every machine) and with no example database, so nothing found in one run is replayed in the next:
``make test`` gives the same result in a fresh clone and in a reused checkout. For exploratory runs
use ``HYPOTHESIS_PROFILE=explore`` (random examples, more of them, still no database).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("hero-gym", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, database=None, deadline=None, max_examples=2000,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hero-gym"))
