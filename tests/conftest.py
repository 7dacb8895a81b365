import os

import pytest
import torch

# The suite is sized for 2 CPU cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_spec():
    from robustssl.models import ModelSpec

    return ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                     mean=(0.5,), std=(0.25,))
