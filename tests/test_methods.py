"""Methods: ACL's routing, per-image weights, method state and multi-update lr schedules, and the
registries that make a new method or selector one file plus one line."""
from dataclasses import dataclass

import pytest
import torch

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, load_config
from robustssl.coreset.registry import SELECTORS
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.coreset.selectors import RandomSelector, Selection
from robustssl.data import AugmentSpec, ContrastiveAugment, DeviceLoader, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.losses import nt_xent
from robustssl.methods import ACL, METHODS, SimCLR, build_method
from robustssl.methods.base import ContrastiveSettings, NoSettings, Views
from robustssl.models import ModelSpec, bn_branch, build_model, current_branch
from robustssl.settings import positive
from robustssl.timer import PhaseTimer
from robustssl.train.checkpoint import load_checkpoint

from . import tiny
from .datafiles import structured_images, write_fashion_mnist

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                 mean=(0.5,), std=(0.25,))
TINY = tiny.run("train.log_every_steps=1", "attack.steps=1", cnn=True)


def _data(n=64):
    images, labels = structured_images(n, 0)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train")


def _acl(steps=2):
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0), 28, 1)
    return ACL(ContrastiveSettings(tau=0.5), aug, PGDConfig(0.1, 0.04, steps))


def _trained_acl_model(data, steps=4):
    """A dual-BN model after real ACL steps: its `normal` and `pgd` branches differ."""
    torch.manual_seed(0)
    model, method = build_model(SPEC), _acl()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loader = DeviceLoader(data, 32, seed=0)
    done = 0
    while done < steps:
        for batch in loader.epoch(torch.arange(len(data)), done):
            method.step(model, opt, sched, batch, PhaseTimer())
            done += 1
    return model, method


def test_acl_attacks_on_pgd_in_eval_mode_and_trains_natural_on_normal_adversarial_on_pgd():
    data = _data()
    model, method = _trained_acl_model(data)
    batch = make_batch(data, torch.arange(16))
    torch.manual_seed(1)
    views = method.make_views(batch)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append((current_branch(m), m.training)))
    model.train()
    views = method.attack(model, views, method.attack_cfg)
    hook.remove()
    assert seen and set(seen) == {("pgd", False)}, f"attack forwards ran as {set(seen)}"
    assert model.training, "the attack must restore train mode"

    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, parts = method.loss(model, views, None)
    model.load_state_dict(state)  # the forwards above moved the running stats; start again from the same state

    def nt(branch, x):
        with bn_branch(model, branch):
            return nt_xent(model(torch.cat(x)), 2, 0.5)

    l_nat, l_adv = nt("normal", views.natural), nt("pgd", views.adversarial)
    assert torch.allclose(loss, 0.5 * l_nat + 0.5 * l_adv, atol=1e-6)
    assert parts["loss_nat"] == pytest.approx(float(l_nat.detach()), abs=1e-6)
    assert parts["loss_adv"] == pytest.approx(float(l_adv.detach()), abs=1e-6)
    model.load_state_dict(state)
    swapped = 0.5 * nt("pgd", views.natural) + 0.5 * nt("normal", views.adversarial)
    assert not torch.allclose(loss, swapped, atol=1e-4), "the branches do not differ: this test could not see a wrong routing"
    assert not torch.allclose(loss, l_nat, atol=1e-4) and not torch.allclose(loss, l_adv, atol=1e-4)


def test_nt_xent_weights_scale_each_images_anchors():
    torch.manual_seed(0)
    z = torch.randn(12, 5)
    assert torch.allclose(nt_xent(z, 2, 0.5, torch.ones(6)), nt_xent(z, 2, 0.5))
    w = torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 1.0])
    per_anchor = torch.stack([nt_xent(z, 2, 0.5, torch.eye(6)[i]) * 12 / 2 for i in range(6)])  # each image's 2 anchors
    assert torch.allclose(nt_xent(z, 2, 0.5, w), (w * per_anchor).sum() * 2 / 12, atol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        nt_xent(z, 2, 0.5, torch.ones(5))


def test_batch_weights_reach_the_update():
    """A step on weights 2 moves plain SGD exactly twice as far as the unweighted step."""
    data = _data(32)
    aug = ContrastiveAugment(AugmentSpec(), 28, 1)
    moves = []
    for weights in (None, torch.full((32,), 2.0)):
        torch.manual_seed(0)
        model, method = build_model(SPEC), SimCLR(ContrastiveSettings(), aug, PGDConfig(0.1, 0.04, 1))
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        method.step(model, opt, sched, make_batch(data, torch.arange(32), weights), PhaseTimer())
        moves.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]))
    assert moves[0].abs().sum() > 0
    assert torch.allclose(moves[1], 2 * moves[0], atol=1e-6, rtol=1e-4)


class WeightedRandom(RandomSelector):
    """A weighted selector for the test: weight = position / 100, so weights name their positions."""

    name = "weighted_random_test"

    def select(self, model, method, data, pool, val, budget, batch_size):
        positions = super().select(model, method, data, pool, val, budget, batch_size).positions
        return Selection(positions, positions.float() / 100)


def test_selection_weights_are_used_for_training(monkeypatch):
    monkeypatch.setitem(SELECTORS, WeightedRandom.name, WeightedRandom)
    cfg = load_config("acl_fmnist_cpu", [f"coreset.selector={WeightedRandom.name}", "coreset.warmup_epochs=0", "coreset.unit=sample"])
    data = _data()
    sched = CoresetSchedule(cfg.coreset, epochs=1, n=len(data), batch_size=16, seed=0)
    positions, weights = sched.positions_for_epoch(0, None, None, data)
    assert weights is not None
    for batch in DeviceLoader(data, 16, seed=0).epoch(positions, 0, weights=weights):
        assert torch.allclose(batch.weights, batch.positions.float() / 100)


@dataclass
class CountingSettings:
    tau: float = positive(0.5)
    updates: int = positive(3)


class CountingSimCLR(SimCLR):
    """SimCLR that makes `updates` optimizer updates per batch and counts batches in its state."""

    name = "counting_test"
    Settings = CountingSettings
    updates_per_batch = 3

    def __init__(self, settings, augment, attack, *, epochs=None):
        super().__init__(settings, augment, attack, epochs=epochs)
        self.batches = 0

    def step(self, model, optimizer, scheduler, batch, timer):
        views = self.make_views(batch)
        model.train()
        for _ in range(self.updates_per_batch):
            loss, _ = self.loss(model, views, batch.weights)
            self.update(optimizer, scheduler, loss)
        self.batches += 1
        return {"loss": float(loss.detach())}

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def test_method_state_is_checkpointed_and_multi_update_methods_step_the_lr_per_update(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, CountingSimCLR.name, CountingSimCLR)
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=16)
    run = tmp_path / "run"
    overrides = TINY + [f"data.root={root}", f"method.name={CountingSimCLR.name}", "method.counting_test.tau=0.3",
                        "train.epochs=2", "optim.warmup_epochs=0"]
    api.pretrain("simclr_fmnist_cpu", run, overrides=overrides)
    ck = load_checkpoint(run / "checkpoint.pt")
    batches = 2 * (128 // 32)
    assert ck["method"] == {"batches": batches}
    assert ck["scheduler"]["updates"] == 3 * batches, "the lr schedule must step once per optimizer update"
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9), "the cosine must end exactly at the run's end"
    with pytest.raises(ConfigError, match="method.counting_test.updates must be > 0"):
        load_config("simclr_fmnist_cpu", [f"method.name={CountingSimCLR.name}", "method.counting_test.updates=0"])


def test_registries_are_the_vocabularies(monkeypatch, capsys):
    from robustssl.cli import main

    with pytest.raises(ConfigError, match="choose one of: simclr, acl"):
        load_config("acl_fmnist_cpu", ["method.name=byol"])
    monkeypatch.setitem(METHODS, CountingSimCLR.name, CountingSimCLR)
    assert load_config("acl_fmnist_cpu", [f"method.name={CountingSimCLR.name}"]).method.params == CountingSettings()
    with pytest.raises(ConfigError, match=r"valid keys here: method.acl.tau"):
        load_config("acl_fmnist_cpu", ["method.acl.lam=256"])
    with pytest.raises(ConfigError, match=r"unknown config key 'method.byol'.*method.acl.<key>.*method.rocl.<key>"):
        load_config("acl_fmnist_cpu", ["method.byol.lam=256"])
    assert load_config("acl_fmnist_cpu", ["method.rocl.lam=128"]).method.settings["rocl"].lam == 128
    monkeypatch.setitem(SELECTORS, WeightedRandom.name, WeightedRandom)
    assert load_config("acl_fmnist_cpu", [f"coreset.selector={WeightedRandom.name}"]).coreset.selector == WeightedRandom.name
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    assert WeightedRandom.name in capsys.readouterr().out


def test_acl_rules_live_in_acl_and_run_at_load_time():
    with pytest.raises(ConfigError, match="method acl needs attack.steps >= 1"):
        load_config("acl_fmnist_cpu", ["attack.steps=0"])
    assert load_config("simclr_fmnist_cpu", ["attack.steps=0"]).attack.steps == 0


def test_selectors_pass_their_attack_without_touching_the_method():
    data = _data(32)
    model, method = build_model(SPEC).eval(), _acl(steps=3)
    attack_before = method.attack_cfg
    seen = []
    real = method.attack

    def spy(model, views, attack):
        seen.append(attack.steps)
        return real(model, views, attack)

    method.attack = spy
    method.training_loss(model, make_batch(data, torch.arange(8)), PGDConfig(0.1, 0.04, 1))
    method.training_loss(model, make_batch(data, torch.arange(8)))
    assert seen == [1, 3] and method.attack_cfg is attack_before


def test_build_method_assembles_explicit_parts():
    cfg = load_config("acl_fmnist_cpu", ["method.acl.tau=0.2", "attack.steps=4"])
    method = build_method(cfg, 28, 1)
    assert isinstance(method, ACL) and method.settings.tau == 0.2 and method.attack_cfg.steps == 4
    assert method.epochs == cfg.train.epochs, "the run's length reaches the method explicitly"
    assert not hasattr(method, "cfg"), "a method must not hold the whole run config"
    with pytest.raises(TypeError, match="ContrastiveSettings"):
        ACL(NoSettings(), method.augment, method.attack_cfg)
    assert isinstance(Views([torch.zeros(1)]).adversarial, list)
