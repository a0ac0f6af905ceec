import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _strided_regions_at_any_size():
    """The planner writes into strided regions only in large storages (speed); the tests' small
    models would never reach that path, so every test plans as if they were large."""
    from tapernn import regions

    saved = regions.STRIDED_MIN_BYTES, regions.STRIDED_MIN_RUN
    regions.STRIDED_MIN_BYTES, regions.STRIDED_MIN_RUN = 0, 1
    yield
    regions.STRIDED_MIN_BYTES, regions.STRIDED_MIN_RUN = saved
