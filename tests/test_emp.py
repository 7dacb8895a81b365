"""EMP-SSL, robust EMP-SSL and CF-AMC-SSL: the robust attack leaves parameter gradients alone, the
free step's single backward against a hand-computed reference (parameters and delta, delta carried
to the next batch), the lr schedule counting every replay, exact SIGKILL resume mid-epoch with the
free perturbation in the checkpoint, the settings' checks, and coreset runs through EMP's loss."""
import copy
import itertools
import math

import pytest
import torch

from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, load_config
from robustssl.data import AugmentSpec, ContrastiveAugment
from robustssl.data.batch import Batch
from robustssl.losses import emp_ssl_loss
from robustssl.methods import CFAMC, EMPSSL, RobustEMPSSL, build_method
from robustssl.methods.cfamc import CFAMCSettings
from robustssl.methods.emp import EMPSettings, RobustEMPSettings
from robustssl.models import ModelSpec, build_model
from robustssl.timer import PhaseTimer
from robustssl.train.checkpoint import load_checkpoint
from robustssl.train.metrics import read_metrics
from robustssl.train.optim import lr_factor

from .coreset_runs import run_with_one_selection
from .datafiles import write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, pre_feature=16, proj_hidden=16, proj_out=8,
                 proj_layers=2, proj_last_bn=False, mean=(0.5,), std=(0.25,))
TINY = ["model.width=4", "model.pre_feature=16", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=16",
        "augment.crop_size=12", "train.progress=false", "train.log_every_steps=1", "eval.n_examples=16"]
STILL = AugmentSpec(crop_scale=(1.0, 1.0), flip=False, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, grayscale_p=0.0)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC)


def _batch(n: int = 6, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(positions=torch.arange(n), images=torch.rand(n, 1, 12, 12, generator=g))


def test_robust_emp_attack_leaves_parameter_gradients_and_mode_untouched():
    model = _model().train()
    attack = PGDConfig(0.1, 0.04, 3, random_start=False)
    method = RobustEMPSSL(RobustEMPSettings(n_crops=3), ContrastiveAugment(AugmentSpec(crop_scale=(0.5, 1.0)), 12, 1), attack)
    sentinel = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    views = method.make_views(_batch())
    adv = method.attack(model, views, attack)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), f"the attack changed {n}.grad"
    assert model.training, "the caller's mode is restored"
    x, x_adv = torch.cat(views.natural), torch.cat(adv.adversarial)
    assert x_adv.shape == x.shape == (18, 1, 12, 12)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and (x_adv - x).abs().max() > 0.05
    # The loss it trains on is the EMP loss of the attacked crops, higher than the natural crops'.
    with torch.no_grad():
        assert float(method.loss(model, adv, None)[0]) > float(method.loss(model, views, None)[0])


def test_robust_emp_selection_attack_runs_in_eval_mode_and_leaves_bn_statistics_alone():
    model = _model().eval()
    method = RobustEMPSSL(RobustEMPSettings(n_crops=2, attack_mode="train"), ContrastiveAugment(STILL, 12, 1),
                          PGDConfig(0.1, 0.04, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.training_loss(model, _batch())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"selection changed {k}"
    assert not model.training


def _reference_replay(model, opt_lr, x, delta, cfg, settings):
    """One free replay by hand: loss at clamp(x + delta), plain-SGD parameter step, delta ascent."""
    delta = delta.clone().requires_grad_(True)
    z = model((x + delta).clamp(0, 1))
    loss = emp_ssl_loss(z, settings.n_crops, eps=settings.tcr_eps, inv_weight=settings.inv_weight,
                        tcr_weight=settings.tcr_weight)[0]
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params + [delta])
    with torch.no_grad():
        for p, g in zip(params, grads[:-1]):
            p -= opt_lr * g
        new = (delta + cfg.alpha * grads[-1].sign()).clamp(-cfg.eps, cfg.eps)
        new = (x + new).clamp(0, 1) - x
    return new.detach()


def test_free_step_one_backward_gives_parameter_and_delta_steps_and_delta_carries_to_the_next_batch():
    settings = CFAMCSettings(n_crops=2, replays=3)
    cfg = PGDConfig(0.1, 0.05, 1)
    method = CFAMC(settings, ContrastiveAugment(STILL, 12, 1), cfg)
    assert method.updates_per_batch == 3
    model, ref = _model().double(), _model().double()  # fp64: the two paths differ only by update rounding
    ref.load_state_dict(model.state_dict())
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    forwards, backwards = [], []
    model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    model.register_full_backward_hook(lambda m, gi, go: backwards.append(1))
    delta = torch.zeros(12, 1, 12, 12, dtype=torch.float64)
    for seed in (1, 2):  # two batches: the second starts from the first's delta
        batch = _batch(6, seed)
        batch.images = batch.images.double()
        x = torch.cat(method.make_views(batch).natural)  # the still augmentation: every crop is the whole image
        forwards.clear()
        backwards.clear()
        method.step(model, opt, sched, batch, PhaseTimer())
        assert forwards == [12, 12, 12] and len(backwards) == 3, "one forward and one backward per replay, nothing else"
        for _ in range(3):
            delta = _reference_replay(ref, lr, x, delta, cfg, settings)
        assert torch.allclose(method.free.delta, delta, atol=1e-12)
        for (n, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.allclose(p, q, atol=1e-10), n
        assert sched.last_epoch == 3 * seed, "one lr-schedule step per replay"
    assert method.free.delta.abs().max() > 0
    state = method.state_dict()
    fresh = CFAMC(settings, ContrastiveAugment(STILL, 12, 1), cfg)
    fresh.load_state_dict(copy.deepcopy(state))
    assert torch.equal(fresh.free.delta, method.free.delta)


@pytest.mark.slow
def test_cfamc_lr_schedule_spans_every_replay(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    run = tmp_path / "run"
    overrides = TINY + [f"data.root={root}", "train.epochs=2", "method.cfamc.replays=3", "method.cfamc.n_crops=2",
                        "optim.warmup_epochs=0"]
    pretrain(run, overrides, recipe="cfamc_fmnist_cpu")
    ck = load_checkpoint(run / "checkpoint.pt")
    batches = ck["step"]
    assert batches == 2 * (64 // 16)
    assert ck["scheduler"]["updates"] == 3 * batches  # m updates per batch, each a schedule step
    lrs = [r["lr"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    cfg = load_config("cfamc_fmnist_cpu", overrides)
    expected = [cfg.optim.lr * lr_factor(3 * (s + 1), 3 * batches, 0, "cosine") for s in range(batches)]
    assert lrs == pytest.approx(expected, abs=1e-9)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # one cosine half-period over the run, not m of them
    assert min(lrs) >= 0 and all(a >= b for a, b in itertools.pairwise(lrs))


@pytest.mark.slow
def test_cfamc_sigkill_mid_epoch_resumes_the_free_perturbation_to_the_same_weights(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=96, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=2", "method.cfamc.n_crops=2", "train.seed=3",
                        "train.checkpoint_every_steps=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="cfamc_fmnist_cpu")
    killed = kill_when(run, overrides, "ck['epoch'] == 0 and ck['batch'] >= 2", recipe="cfamc_fmnist_cpu")
    assert killed["epoch"] == 0 and 2 <= killed["batch"] < 6, "killed mid-epoch"
    assert killed["method"]["free"]["delta"].abs().max() > 0, "the checkpoint holds the free perturbation"
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["method"]["free"]["delta"], b["method"]["free"]["delta"])


def test_emp_family_settings_and_config_checks():
    cfg = load_config("robust_emp_fmnist_cpu", ["method.robust_emp.n_crops=5"])
    method = build_method(cfg, 28, 1)
    assert isinstance(method, RobustEMPSSL) and method.n_views == 5 and method.augment.size == cfg.augment.crop_size
    assert len(method.make_views(_batch(3)).natural) == 5
    with pytest.raises(ConfigError, match="model.dual_bn=false"):
        load_config("emp_fmnist_cpu", ["model.dual_bn=true"])
    with pytest.raises(ConfigError, match="attack.steps"):
        load_config("robust_emp_fmnist_cpu", ["attack.steps=0"])
    with pytest.raises(ConfigError, match="attack.alpha"):
        load_config("cfamc_fmnist_cpu", ["attack.alpha=0"])
    with pytest.raises(ConfigError, match="method.cfamc.replays"):
        load_config("cfamc_fmnist_cpu", ["method.cfamc.replays=0"])
    with pytest.raises(ConfigError, match="attack_mode"):
        load_config("robust_emp_fmnist_cpu", ["method.robust_emp.attack_mode=sometimes"])
    for name in ("emp_cifar10", "robust_emp_cifar10", "cfamc_cifar10"):
        published = load_config(name)
        assert published.model.pre_feature == 4096 and published.model.proj_out == 1024
        assert published.optim.lars_clip and published.optim.nesterov
    assert load_config("cfamc_cifar10").train.epochs * 3 == load_config("robust_emp_cifar10").train.epochs


def test_clean_emp_trains_on_natural_crops_and_lowers_its_loss():
    torch.manual_seed(0)
    model = _model()
    method = EMPSSL(EMPSettings(n_crops=4), ContrastiveAugment(AugmentSpec(crop_scale=(0.3, 1.0)), 12, 1), PGDConfig(0, 0, 0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = _batch(16)
    losses = [method.step(model, opt, sched, batch, PhaseTimer())["loss"] for _ in range(15)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("recipe,selector", [("robust_emp_fmnist_cpu", "rcs"), ("cfamc_fmnist_cpu", "random"),
                                             ("emp_fmnist_cpu", "rcs")])
def test_coreset_runs_train_emp_methods_through_their_own_loss(recipe, selector, tmp_path, monkeypatch):
    root = write_fashion_mnist(tmp_path / "fm", n_train=80, n_test=16)
    calls = []
    real = EMPSSL.emp_loss

    def spy(self, model, crops, weights, groups=1):
        calls.append((self.name, model.training))
        return real(self, model, crops, weights, groups)

    monkeypatch.setattr(EMPSSL, "emp_loss", spy)
    name = recipe.removesuffix("_fmnist_cpu")
    run_with_one_selection(recipe, tmp_path / "run", selector,
                           TINY + [f"data.root={root}", f"method.{name}.n_crops=2", "attack.steps=1"])
    assert {c[0] for c in calls} == {name}
    if selector == "rcs":
        assert any(not training for _, training in calls), "candidates are scored (in eval mode) through EMP's loss"
