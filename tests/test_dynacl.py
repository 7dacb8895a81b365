"""DynACL: the strength schedule and loss weights against the paper's formulas, the augmenter
receiving the annealed parameters, the run's length reaching the method, exact resume across a
strength change (SIGKILL), and RCS / random coresets trained through DynACL's own loss."""
import math

import pytest
import torch

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, load_config
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.losses import nt_xent
from robustssl.methods import DynACL, build_method
from robustssl.methods.dynacl import DynACLSettings
from robustssl.models import ModelSpec, bn_branch, build_model
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics

from .coreset_runs import run_with_one_selection
from .datafiles import structured_images, write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                 mean=(0.5,), std=(0.25,))
TINY = ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32", "train.progress=false",
        "train.log_every_steps=1", "attack.steps=1"]


def paper_strength(e: int, E: int, K: int) -> float:
    """s(e) = 1 - floor((e-1)/K) * K/E for the 1-based epoch e (methods.md, DynACL)."""
    return 1 - math.floor((e - 1) / K) * K / E


def _dynacl(epochs, k, spec=None, size=28, channels=1):
    aug = ContrastiveAugment(spec or AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0), size, channels)
    return DynACL(DynACLSettings(tau=0.5, k=k), aug, PGDConfig(0.1, 0.04, 1), epochs=epochs)


@pytest.mark.parametrize("E,K,e,expected", [
    (1000, 50, 1, 1.0), (1000, 50, 50, 1.0), (1000, 50, 51, 0.95), (1000, 50, 950, 0.1), (1000, 50, 951, 0.05),
    (1000, 50, 1000, 0.05), (5, 1, 1, 1.0), (5, 1, 2, 0.8), (5, 1, 5, 0.2), (5, 2, 2, 1.0), (5, 2, 3, 0.6),
    (5, 2, 5, 0.2), (7, 3, 4, 4 / 7), (7, 3, 7, 1 / 7), (10, 20, 10, 1.0), (1, 1, 1, 1.0),
])
def test_strength_and_loss_weight_follow_the_formulas(E, K, e, expected):
    assert paper_strength(e, E, K) == pytest.approx(expected)
    method = _dynacl(E, K)
    method.start_epoch(e - 1)  # the trainer's epochs are 0-based
    assert method.strength == pytest.approx(expected, abs=1e-12)
    assert method.w == pytest.approx(2 / 3 * (1 - expected), abs=1e-12)


def test_the_runs_epochs_reach_dynacl_and_bad_epochs_are_refused():
    cfg = load_config("dynacl_fmnist_cpu", ["train.epochs=8", "method.dynacl.k=3"])
    method = build_method(cfg, 28, 1)
    assert isinstance(method, DynACL) and method.epochs == 8 and method.settings.k == 3
    assert method.strength == 1.0
    method.start_epoch(3)
    assert method.strength == pytest.approx(1 - 3 / 8)
    with pytest.raises(ValueError, match="outside the run's epochs 0..7"):
        method.start_epoch(8)
    with pytest.raises(ValueError, match="pass epochs="):
        DynACL(DynACLSettings(), method.augment, method.attack_cfg)
    with pytest.raises(ConfigError, match="method dynacl needs attack.steps >= 1"):
        load_config("dynacl_fmnist_cpu", ["attack.steps=0"])
    with pytest.raises(ConfigError, match="method.dynacl.k must be > 0"):
        load_config("dynacl_fmnist_cpu", ["method.dynacl.k=0"])
    with pytest.raises(ConfigError, match="method.dynacl.k: expected an integer"):
        load_config("dynacl_fmnist_cpu", ["method.dynacl.k=2.5"])


def test_the_augmenter_receives_the_annealed_parameters():
    spec = AugmentSpec(crop_scale=(0.1, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2)
    method = _dynacl(10, 2, spec, size=16, channels=3)
    for epoch in (0, 1, 2, 5, 9):
        method.start_epoch(epoch)
        s = paper_strength(epoch + 1, 10, 2)
        aug = method.augment
        assert aug.strength == pytest.approx(s)
        assert aug.scale == pytest.approx((1 - 0.9 * s, 1.0)), "DynACL's crop lower bound is 1 - 0.9 s"
        assert (aug.brightness, aug.contrast, aug.saturation, aug.hue) == pytest.approx((0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s))
        assert aug.jitter_p == pytest.approx(0.8 * s) and aug.grayscale_p == pytest.approx(0.2 * s)

    # The method's views really follow the bound. Without colour jitter, a view of a horizontal ramp spans
    # the values c, the crop's width fraction, and the clamped aspect ratio keeps c >= area >= the lower bound.
    crop_only = _dynacl(10, 2, AugmentSpec(crop_scale=(0.1, 1.0), jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0), 16, 3)
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8).view(1, 1, 1, 16).expand(256, 3, 16, 16).contiguous()
    batch = make_batch(ImageDataset(ramp, None, torch.arange(256), "ramp", "train"), torch.arange(256))
    spans = {}
    for epoch in (0, 9):
        crop_only.start_epoch(epoch)
        torch.manual_seed(0)
        views = torch.cat(crop_only.make_views(batch).natural)[:, 0]
        spans[epoch] = views.amax(dim=(1, 2)) - views.amin(dim=(1, 2))
    assert spans[9].min() >= 1 - 0.9 * 0.2 - 0.01, "at s = 0.2 every crop keeps at least 82% of the area"
    assert spans[0].min() < 0.5, "at full strength crops go down to 10% of the area"


def test_loss_is_the_strength_weighted_mix_and_logs_s_and_w():
    images, labels = structured_images(16, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(16), "s", "train")
    torch.manual_seed(0)
    model, method = build_model(SPEC), _dynacl(4, 1)
    method.start_epoch(2)  # e = 3 of 4, K = 1: s = 0.5, w = 1/3
    views = method.attack(model, method.make_views(make_batch(data, torch.arange(16))), method.attack_cfg)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, parts = method.loss(model, views, None)
    model.load_state_dict(state)
    with bn_branch(model, "normal"):
        l_nat = nt_xent(model(torch.cat(views.natural)), 2, 0.5)
    with bn_branch(model, "pgd"):
        l_adv = nt_xent(model(torch.cat(views.adversarial)), 2, 0.5)
    assert torch.allclose(loss, ((1 - 1 / 3) * l_nat + (1 + 1 / 3) * l_adv) / 2, atol=1e-6)
    assert not torch.allclose(loss, 0.5 * (l_nat + l_adv), atol=1e-4), "the weights must differ from ACL's"
    assert parts["strength"] == 0.5 and parts["w"] == pytest.approx(1 / 3)
    assert parts["loss_nat"] == pytest.approx(float(l_nat.detach())) and parts["loss_adv"] == pytest.approx(float(l_adv.detach()))


def test_sigkill_before_a_strength_change_resumes_to_the_same_weights(tmp_path):
    """K = 1 of 4 epochs: s = 1, 0.75, 0.5, 0.25. Killed at the checkpoint that ends epoch 1 (after two
    strength changes, before the next), the resumed run must train epochs 2-3 as the uninterrupted one."""
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=4", "method.dynacl.k=1", "train.seed=1",
                        "train.checkpoint_every_steps=0", "train.checkpoint_every_epochs=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="dynacl_fmnist_cpu")
    killed = kill_when(run, overrides, lambda ck: ck["epoch"] >= 2, recipe="dynacl_fmnist_cpu")
    assert 2 <= killed["epoch"] < 4 and killed["batch"] == 0, "the run must be killed at an epoch end before it finished"
    assert not (run / "encoder.safetensors").exists()
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt")["model"], load_checkpoint(run / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for folder in (ref, run):
        logged = sorted({(r["epoch"], r["strength"], r["w"]) for r in read_metrics(folder / "metrics.jsonl") if r["type"] == "step"})
        assert logged == [(e, 1 - e / 4, pytest.approx(2 / 3 * e / 4)) for e in range(4)]


@pytest.mark.parametrize("selector", ["rcs", "random"])
def test_coreset_runs_train_dynacl_through_its_own_loss(selector, tmp_path, monkeypatch):
    """Warm-up epoch 0, a selection at epoch 1 (K = 1 of 2: s = 1, then 0.5). RCS scores candidates with
    DynACL's training_loss at the strength of the selection's epoch, in eval mode; random needs no loss."""
    root = write_fashion_mnist(tmp_path / "fm", n_train=80, n_test=16)
    calls = []
    real = DynACL.training_loss

    def spy(self, model, batch, attack=None, timer=None):
        calls.append((round(self.strength, 6), model.training))
        return real(self, model, batch, attack, timer)

    monkeypatch.setattr(DynACL, "training_loss", spy)
    run = tmp_path / "run"
    run_with_one_selection("dynacl_fmnist_cpu", run, selector, TINY + [f"data.root={root}", "method.dynacl.k=1"])
    if selector == "random":
        assert calls == []
        return
    assert calls and {c[0] for c in calls} == {0.5} and not any(training for _, training in calls)
    # `robustssl select` on the finished run scores with the strength of its last epoch, not the initial one.
    calls.clear()
    api.select(run)
    assert calls and {c[0] for c in calls} == {0.5}
