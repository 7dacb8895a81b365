"""A tiny pretraining run with one coreset selection, shared by the per-method coreset tests."""
import json

from robustssl import api
from robustssl.train.metrics import read_metrics

ONE_SELECTION = ["train.epochs=2", "coreset.warmup_epochs=1", "coreset.every=1", "coreset.fraction=0.5",
                 "coreset.rcs.val_fraction=0.05", "coreset.rcs.rd_steps=1", "optim.batch_size=16"]


def run_with_one_selection(recipe, run, selector, overrides):
    """Pretrain `recipe` into `run` for 2 epochs: full warm-up epoch 0, one `selector` selection at
    epoch 1, then that epoch on the coreset; checks exactly that happened. Returns run.json's coreset record."""
    api.pretrain(recipe, run, overrides=[*overrides, *ONE_SELECTION, f"coreset.selector={selector}"])
    summary = json.loads((run / "run.json").read_text())["coreset"]
    assert summary["selector"] == selector and [s["epoch"] for s in summary["selections"]] == [1]
    epochs = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["pool_size"] for r in epochs] == [summary["pool_size"], summary["coreset_size"]]
    assert summary["coreset_size"] < summary["pool_size"]
    return summary
