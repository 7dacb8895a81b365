import os

import pytest
import torch

# The suite is sized for 2 CPU cores; keep torch from oversubscribing them: one thread per
# pytest-xdist worker (scripts/test.sh runs one worker per core), else up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_spec():
    from robustssl.models import ModelSpec

    return ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                     mean=(0.5,), std=(0.25,))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny ops (modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`): they gain nothing from threads, and on
    a busy 2-core machine OpenMP spinning makes them up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
