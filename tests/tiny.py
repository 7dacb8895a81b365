"""The tiny run settings the suite trains with: one list, composed by each module with its own extras.

`run(...)` gives a width-4 network (a small projector) on the recipe's architecture (`cnn=True`
forces the small CNN), batch `batch`, no progress bar, then the module's own keys. Modules add
what their test is about (attack steps, epochs, evaluation sizes) after it.
"""
from __future__ import annotations

NETWORK = ["model.width=4", "model.proj_hidden=16", "model.proj_out=8"]


def run(*extra: str, batch: int = 32, cnn: bool = False) -> list[str]:
    """Overrides of a tiny training run: ["model.arch=cnn"] if cnn, NETWORK, the batch, no progress bar, extra."""
    return [*(["model.arch=cnn"] if cnn else []), *NETWORK, f"optim.batch_size={batch}", "train.progress=false", *extra]
