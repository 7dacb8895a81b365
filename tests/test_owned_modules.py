"""A method that owns a trainable module, registered from this test module (not by editing the
package): built with the model, optimized with it, checkpointed and resumed exactly, exported as
the model, evaluated end to end through the API."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustssl import api
from robustssl.losses import nt_xent
from robustssl.methods import METHODS
from robustssl.methods.simclr import SimCLR
from robustssl.models.export import load_encoder, read_export_metadata
from robustssl.settings import positive
from robustssl.train import trainer
from robustssl.train.checkpoint import load_checkpoint

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run(
    "train.log_every_steps=1", "train.epochs=2", "method.name=predictor_test", "eval.n_examples=32", "eval.attacks=[pgd20]", "eval.eps_curve=[]", "eval.linear_epochs=1", "eval.train_examples=64", batch=16, cnn=True,
)


@dataclass
class PredictorSettings:
    tau: float = positive(0.5)


class PredictorSimCLR(SimCLR):
    """SimCLR with an owned predictor (a Linear on the projections of view 1, BYOL-style asymmetry)."""

    name = "predictor_test"
    Settings = PredictorSettings

    def build_parts(self, model):
        d = model.head().out_features
        predictor = nn.Linear(d, d)
        with torch.no_grad():
            predictor.weight.copy_(torch.eye(d))
            predictor.bias.zero_()
        return {"predictor": predictor}

    def loss(self, model, views, weights):
        z = model(torch.cat(views.natural))
        first, second = z.chunk(2)
        loss = nt_xent(torch.cat([self.parts["predictor"](first), second]), 2, self.settings.tau, weights)
        return loss, {}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, PredictorSimCLR.name, PredictorSimCLR)


def test_a_method_with_an_owned_trainable_module_trains_checkpoints_resumes_and_evaluates(tmp_path, registered,
                                                                                      monkeypatch):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=32)
    overrides = TINY + [f"data.root={root}"]
    ref = tmp_path / "ref"
    api.pretrain("simclr_fmnist_cpu", ref, overrides=overrides)
    ck = load_checkpoint(ref / "checkpoint.pt")
    d = 8
    assert set(ck["parts"]) == {"predictor.weight", "predictor.bias"}
    assert not torch.equal(ck["parts"]["predictor.weight"], torch.eye(d)), "the predictor was optimized"
    n_model = len(list(load_encoder(ref / "encoder.safetensors")[0].parameters()))
    n_optimized = sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
    assert n_optimized == len(ck["optimizer"]["state"]) == n_model + 2, "the model's and the predictor's parameters"
    assert read_export_metadata(ref / "encoder.safetensors")["encoder"] == "model"

    # Interrupted after its first epoch (checkpoint written), then resumed: the same run, predictor included.
    real, calls = trainer.train_epoch, []

    def stop_after_one(state, run):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        real(state, run)

    run = tmp_path / "run"
    monkeypatch.setattr(trainer, "train_epoch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        api.pretrain("simclr_fmnist_cpu", run, overrides=overrides)
    monkeypatch.setattr(trainer, "train_epoch", real)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    api.pretrain(None, run, resume=True)
    got = load_checkpoint(run / "checkpoint.pt")
    for key in ("model", "parts"):
        for k in ck[key]:
            assert torch.equal(ck[key][k], got[key][k]), (key, k)

    with pytest.warns(UserWarning):  # a 2-epoch encoder and a 1-epoch probe: the sanity checks say so
        report = api.evaluate(run)
    assert 0 <= report["protocols"]["slf"]["clean"]["accuracy"] <= 1 and (run / "report.md").is_file()
