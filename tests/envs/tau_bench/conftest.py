"""Shared fixtures for the Tau-bench tests. Official-data tests need $HERO_GYM_TAUBENCH_DIR
(CI sets it when the data is available); without it they skip with a clear reason."""

import pytest

from _tau_common import DATA_DIR, HAVE_OFFICIAL, SKIP_REASON


@pytest.fixture(scope="session")
def data_dir():
    if not HAVE_OFFICIAL:
        pytest.skip(SKIP_REASON)
    return DATA_DIR


@pytest.fixture(scope="session")
def retail_ds(data_dir):
    from hero_gym.envs.tau_bench.data import load_official
    return load_official("retail", data_dir)


@pytest.fixture(scope="session")
def airline_ds(data_dir):
    from hero_gym.envs.tau_bench.data import load_official
    return load_official("airline", data_dir)
