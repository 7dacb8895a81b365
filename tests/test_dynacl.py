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

from . import tiny
from .coreset_runs import run_with_one_selection
from .datafiles import structured_images, write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                 mean=(0.5,), std=(0.25,))
TINY = tiny.run("train.log_every_steps=1", "attack.steps=1")


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


@pytest.mark.slow
def test_sigkill_before_a_strength_change_resumes_to_the_same_weights(tmp_path):
    """K = 1 of 4 epochs: s = 1, 0.75, 0.5, 0.25. Killed at the checkpoint that ends epoch 1 (after two
    strength changes, before the next), the resumed run must train epochs 2-3 as the uninterrupted one."""
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=4", "method.dynacl.k=1", "train.seed=1",
                        "train.checkpoint_every_steps=0", "train.checkpoint_every_epochs=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="dynacl_fmnist_cpu")
    killed = kill_when(run, overrides, "ck['epoch'] >= 2", recipe="dynacl_fmnist_cpu")
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


# --- the momentum encoder (method.dynacl.momentum > 0, the DynACL code) ----------------------------
def _ema_dynacl(momentum=0.9):
    torch.manual_seed(0)
    model = build_model(SPEC)
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0)), 28, 1)
    method = DynACL(DynACLSettings(tau=0.5, k=1, momentum=momentum), aug, PGDConfig(0.1, 0.04, 1), epochs=4)
    method.attach(model)
    return model, method


def _batch(n=16):
    images, labels = structured_images(n, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train")
    return make_batch(data, torch.arange(n))


def test_ema_update_is_m_ema_plus_one_minus_m_online_with_the_pre_step_weights():
    """One step: theta_ema <- m theta_ema + (1 - m) theta_online, with the online weights the loss was
    computed with (the DynACL code updates the EMA before optimizer.step); its BN buffers are its own."""
    from robustssl.methods.ema import ema_update_
    from robustssl.timer import PhaseTimer

    model, method = _ema_dynacl(0.9)
    ema = method.parts["ema"]
    assert all(not p.requires_grad for p in ema.parameters())
    with torch.no_grad():  # make the copy differ from the online model, so the formula is visible
        for p in ema.parameters():
            p.add_(0.1)
    ema0 = {k: v.clone() for k, v in ema.named_parameters()}
    online0 = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    method.step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), _batch(), PhaseTimer())
    for k, p in ema.named_parameters():
        assert torch.allclose(p, 0.9 * ema0[k] + 0.1 * online0[k], atol=1e-7, rtol=0), k
        assert not torch.allclose(p, 0.9 * ema0[k] + 0.1 * dict(model.named_parameters())[k], atol=1e-6), k
    assert any(not torch.equal(v, online0[k]) for k, v in model.named_parameters()), "the online model was updated"
    # the helper alone, buffers untouched
    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.fill_(2.0), b.weight.fill_(4.0), b.running_mean.fill_(7.0)
    ema_update_(a, 0.75, b)
    assert torch.allclose(a.weight, torch.full((3,), 0.75 * 2.0 + 0.25 * 4.0)) and torch.equal(a.running_mean, torch.zeros(3))
    with pytest.raises(ConfigError, match="momentum must be < 1"):
        load_config("dynacl_fmnist_cpu", ["method.dynacl.momentum=1.0"])


def test_swapped_forward_view_one_online_view_two_ema_gradients_online_only():
    model, method = _ema_dynacl(0.9)
    ema = method.parts["ema"]
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(1.5)  # a different network, so that the swap matters
    seen: dict[str, list[torch.Tensor]] = {"online": [], "ema": []}
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda m, i: seen["online"].append(i[0].detach()))

    def on_ema(m, i):
        seen["ema"].append(i[0].detach())
        modes.append(m.training)

    ema.register_forward_pre_hook(on_ema)
    model.train()
    views = method.attack(model, method.make_views(_batch()), method.attack_cfg)
    # the attack ran the pair too (eval mode, as ACL's): each PGD forward split into view 1 (online) and view 2 (EMA)
    assert len(seen["online"]) == len(seen["ema"]) == method.attack_cfg.steps and modes == [False]
    seen["online"].clear(), seen["ema"].clear()
    model.train()
    loss, _ = method.loss(model, views, None)
    assert [x.shape[0] for x in seen["online"]] == [16, 16] and [x.shape[0] for x in seen["ema"]] == [16, 16]
    assert torch.equal(seen["online"][0], views.natural[0]) and torch.equal(seen["ema"][0], views.natural[1])
    assert torch.equal(seen["online"][1], views.adversarial[0]) and torch.equal(seen["ema"][1], views.adversarial[1])
    assert ema.training, "the EMA copy runs in the online model's mode"
    loss.backward()
    assert all(p.grad is None for p in ema.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    with bn_branch(model, "normal"), bn_branch(ema, "normal"):
        z = torch.cat([model(views.natural[0]), ema(views.natural[1])])
    assert method.network(model)(torch.cat(views.natural)).shape == z.shape
    no_ema = _ema_dynacl(0.0)[1]
    assert len(no_ema.parts) == 0 and no_ema.network(model) is model


@pytest.mark.slow
def test_momentum_run_exports_the_ema_encoder_and_resumes_exactly_after_sigkill(tmp_path):
    """The export holds the EMA copy's encoder (metadata and run.json say parts.ema); a run killed at
    an epoch end and resumed ends bit-identical, model and EMA copy (it is in the checkpoint)."""
    from safetensors.torch import load_file

    from robustssl.models.export import read_export_metadata

    root = write_fashion_mnist(tmp_path / "fm", n_train=96, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=3", "method.dynacl.k=1", "train.seed=1",
                        "method.dynacl.momentum=0.9", "train.checkpoint_every_epochs=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="dynacl_fmnist_cpu")
    killed = kill_when(run, overrides, "ck['epoch'] >= 1", recipe="dynacl_fmnist_cpu")
    assert 1 <= killed["epoch"] < 3 and killed["parts"], "killed at an epoch end, with the EMA copy checkpointed"
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for key in ("model", "parts"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    exported = load_file(run / "encoder.safetensors")
    ema = {k[len("ema."):]: v for k, v in b["parts"].items() if k.startswith("ema.")}
    assert exported.keys() and all(torch.equal(v, ema[k]) for k, v in exported.items())
    assert any(not torch.equal(v, b["model"][k]) for k, v in exported.items()), "the EMA encoder, not the online one"
    assert read_export_metadata(run / "encoder.safetensors")["encoder"] == "parts.ema"
    assert '"encoder": "parts.ema"' in (run / "run.json").read_text()
