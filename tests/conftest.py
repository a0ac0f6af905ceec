import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run the test under each backend (tn.set_backend), restoring the previous one after."""
    import tapernn as tn
    from tapernn.backends import numba_available

    if request.param == "numba" and not numba_available():
        pytest.skip("numba is not installed (pip install -e '.[fast]')")
    before = tn.get_backend()
    tn.set_backend(request.param)
    yield request.param
    tn.set_backend(before)
