"""Supervised adversarial training (PGD-AT, TRADES, fast AT) and the ACS selectors wired into the
trainer: the closed-form head gradients a selector uses equal autograd's on the method's own
objective, TRADES's update runs BN in train mode (its attack in eval mode), weighted losses,
selection leaves parameters and buffers untouched, the classifier export and the `direct`
protocol, the config rules, and SIGKILL-resume after a selection."""
import pytest
import torch
from torch.nn import functional as F

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, CoresetConfig, load_config
from robustssl.coreset.acs import CraigSelector, GradMatchSelector
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.eval.robust import pgd_accuracy
from robustssl.losses import trades_kl
from robustssl.methods import PGDAT, TRADES, FastAT
from robustssl.methods.supervised import AdversarialTrainingSettings, TRADESSettings
from robustssl.models import ModelSpec, build_model, load_encoder
from robustssl.timer import PhaseTimer
from robustssl.train.checkpoint import load_checkpoint

from .datafiles import structured_images, write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_layers=1, proj_out=10, proj_bn=False,
                 mean=(0.5,), std=(0.25,))
TINY = ["model.width=4", "optim.batch_size=16", "train.progress=false", "train.log_every_steps=1", "attack.steps=2",
        "eval.n_examples=32", "eval.attacks=[pgd20]", "eval.eps_curve=[]"]
AUG = ContrastiveAugment(AugmentSpec(), 28, 1)  # unused by supervised methods (they crop and flip themselves)


def _data(n: int = 48) -> ImageDataset:
    images, labels = structured_images(n, seed=3)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "synthetic", "train")


def _trained(method, steps: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(SPEC)
    data = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for i in range(steps):
        method.step(model, opt, sched, make_batch(data, torch.arange(16 * (i % 3), 16 * (i % 3) + 16)), PhaseTimer())
    return model, data


@pytest.mark.parametrize("name", ["pgd_at", "trades"])
def test_head_gradients_equal_autograd_of_the_methods_own_objective(name):
    attack = PGDConfig(0.1, 0.03, 2, random_start=False)  # deterministic: the autograd side sees the same x_adv
    method = PGDAT(AdversarialTrainingSettings(), AUG, attack) if name == "pgd_at" else TRADES(TRADESSettings(beta=6.0), AUG, attack)
    model, data = _trained(method)
    batch = make_batch(data, torch.arange(10))
    torch.manual_seed(5)  # TRADES's attack starts from x + 0.001 N(0, 1): the same draw on both sides
    rows = method.head_gradients(model, batch)
    head = model.projector[0]
    model.eval()
    torch.manual_seed(5)
    x_adv = method.adversarial(model, batch.images, batch.labels, attack)
    assert rows.shape == (10, head.weight.numel() + head.bias.numel())
    for i in range(10):
        xi, ai, yi = batch.images[i:i + 1], x_adv[i:i + 1], batch.labels[i:i + 1]
        if name == "pgd_at":
            loss = F.cross_entropy(model(ai), yi)
        else:
            loss = F.cross_entropy(model(xi), yi) + 6.0 * trades_kl(model(ai), model(xi))
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        assert torch.allclose(rows[i], torch.cat([gw.flatten(), gb]), atol=1e-5), i


def test_trades_updates_with_bn_in_train_mode_and_attacks_in_eval_mode():
    method = TRADES(TRADESSettings(beta=6.0), AUG, PGDConfig(0.1, 0.03, 2))
    torch.manual_seed(0)
    model = build_model(SPEC)
    modes: list[tuple[str, bool]] = []
    phase = {"now": "attack"}
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda m, i: modes.append((phase["now"], m.training)))
    real_loss = TRADES.loss

    def loss(self, model, views, weights):
        phase["now"] = "update"
        return real_loss(self, model, views, weights)

    method.loss = loss.__get__(method)  # record which phase each BN forward belongs to
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method.step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), make_batch(_data(), torch.arange(16)),
                PhaseTimer())
    attack_modes = {t for p, t in modes if p == "attack"}
    update_modes = {t for p, t in modes if p == "update"}
    assert attack_modes == {False}, "TRADES's KL attack runs in eval mode"
    assert update_modes == {True}, "the update's forwards (natural and adversarial) run BN in train mode"


@pytest.mark.parametrize("cls", [PGDAT, FastAT])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pgd_at_and_fast_at_attack_in_the_configured_bn_mode_train_by_default(cls, mode):
    """The ACS code and Wong et al. attack with BN in train mode: the attack's forwards use batch
    statistics and move the running statistics; attack_mode=eval keeps them (TRADES is the test above)."""
    assert AdversarialTrainingSettings().attack_mode == "train"
    attack = PGDConfig(0.1, 0.125, 1) if cls is FastAT else PGDConfig(0.1, 0.03, 2)
    method = cls(AdversarialTrainingSettings(attack_mode=mode), AUG, attack)
    torch.manual_seed(0)
    model = build_model(SPEC).train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    modes: list[bool] = []
    bn.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    views = method.make_views(make_batch(_data(), torch.arange(16)))
    before = bn.running_mean.clone(), int(bn.num_batches_tracked)
    method.attack(model, views, method.attack_cfg)
    assert model.training and bn.training, "the caller's mode is restored after the attack"
    assert set(modes) == {mode == "train"} and len(modes) == attack.steps
    moved = not torch.equal(bn.running_mean, before[0])
    assert moved == (mode == "train") and int(bn.num_batches_tracked) - before[1] == (attack.steps if mode == "train" else 0)


def test_weighted_losses_scale_each_examples_term():
    method = TRADES(TRADESSettings(beta=2.0), AUG, PGDConfig(0.1, 0.03, 1, random_start=False))
    torch.manual_seed(0)
    model = build_model(SPEC).train()
    batch = make_batch(_data(), torch.arange(8))
    views = method.attack(model, method.make_views(batch), method.attack_cfg)
    w = torch.arange(1.0, 9.0)
    loss, _ = method.loss(model, views, w)
    z_nat, z_adv, y = model(views.natural[0]), model(views.adversarial[0]), batch.labels
    per = F.cross_entropy(z_nat, y, reduction="none") + 2.0 * trades_kl(z_adv, z_nat, reduction="none")
    assert float(loss) == pytest.approx(float((w * per).mean()), rel=1e-5)
    pgd_method = PGDAT(AdversarialTrainingSettings(), AUG, PGDConfig(0.1, 0.03, 1, random_start=False))
    loss, _ = pgd_method.loss(model, views, w)
    assert float(loss) == pytest.approx(float((w * F.cross_entropy(model(views.adversarial[0]), y, reduction="none")).mean()),
                                        rel=1e-5)


@pytest.mark.parametrize("selector", [CraigSelector, GradMatchSelector])
def test_acs_selection_leaves_parameters_and_buffers_untouched_and_weights_average_one(selector):
    method = PGDAT(AdversarialTrainingSettings(), AUG, PGDConfig(0.1, 0.03, 2))
    model, data = _trained(method)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sel = selector(CoresetConfig(selector=selector.name, unit="sample", fraction=0.25), seed=0)
    pool = torch.arange(40)
    result = sel.select(model, method, data, pool, torch.arange(0), 12, 16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"selection changed {k}"
    assert model.training, "the caller's mode is restored"
    assert len(result.positions) == 12 and len(set(result.positions.tolist())) == 12
    assert set(result.positions.tolist()) <= set(pool.tolist())
    assert result.weights is not None and float(result.weights.mean()) == pytest.approx(1.0) and (result.weights > 0).all()
    classes = data.labels[result.positions].bincount(minlength=10)
    assert classes.sum() == 12 and (data.labels[pool].bincount(minlength=10) > 0).sum() > 1


def test_pgd_with_restarts_is_the_per_example_worst_case():
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    data = _data(32)
    x, y = data.images.float() / 255, data.labels
    one = pgd_accuracy(model, x, y, 0.1, 0.03, 5, seed=1)
    many = pgd_accuracy(model, x, y, 0.1, 0.03, 5, seed=1, restarts=4)
    assert many.extra["restarts"] == 4
    assert bool((many.flags <= one.flags).all()), "the first restart is the single run: a survivor of all restarts survives it"


@pytest.mark.slow
def test_supervised_run_exports_its_classifier_and_direct_evaluates_it(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=96, n_test=32)
    run = tmp_path / "run"
    api.pretrain("pgd_at_fmnist_cpu", run, overrides=TINY + [f"data.root={root}", "train.epochs=2"])
    model, _ = load_encoder(run / "encoder.safetensors")
    ck = load_checkpoint(run / "checkpoint.pt")["model"]
    assert model.head_trained and torch.equal(model.projector[0].weight, ck["projector.0.weight"])
    report = api.evaluate(run)
    direct = report["protocols"]["direct"]
    assert direct["training"]["direct"] and {c["name"] for c in direct["sanity"]} >= {"eps_zero", "large_eps"}
    assert 0.0 <= direct["clean"]["accuracy"] <= 1.0
    compared = api.compare([run], tmp_path / "compare")  # `robustssl compare` takes supervised runs too
    assert [r["protocol"] for r in compared["rows"]] == ["DIRECT"]
    ssl = tmp_path / "ssl"
    api.pretrain("acl_fmnist_cpu", ssl, overrides=["model.width=4", "optim.batch_size=16", "train.progress=false",
                                                  f"data.root={root}", "train.epochs=1", "attack.steps=1"])
    with pytest.raises(ConfigError, match="no trained classifier layer"):
        api.evaluate(ssl, overrides=["eval.protocols=[direct]", "eval.n_examples=8", "eval.attacks=[pgd20]"])


def test_direct_protocol_attacks_exactly_the_trained_model(tmp_path):
    from robustssl.eval.registry import PROTOCOLS

    method = PGDAT(AdversarialTrainingSettings(), AUG, PGDConfig(0.1, 0.03, 2))
    model, data = _trained(method)
    model.head_trained = True
    clf = PROTOCOLS["direct"].classifier(model, 10, None)
    PROTOCOLS["direct"].train(clf, data, load_config("pgd_at_fmnist_cpu").eval, "cpu")
    x = data.images.float() / 255
    model.eval()
    with torch.no_grad():
        assert torch.allclose(clf(x), model(x), atol=1e-5)


def test_supervised_config_rules():
    with pytest.raises(ConfigError, match="proj_layers=1"):
        load_config("pgd_at_fmnist_cpu", ["model.proj_layers=3"])
    with pytest.raises(ConfigError, match="supervised loss"):
        load_config("acl_fmnist_cpu", ["coreset.selector=craig", "coreset.unit=sample"])
    with pytest.raises(ConfigError, match="attack.steps=1"):
        load_config("pgd_at_fmnist_cpu", ["method.name=fast_at", "attack.steps=3"])
    assert load_config("pgd_at_fmnist_cpu", ["method.name=fast_at", "attack.steps=1", "attack.alpha=0.125"]).method.name == "fast_at"
    published = load_config("trades_gradmatch_cifar10")
    e, kappa, f = 100, 0.6, published.coreset.fraction  # ACS's shipped config and run_train_TRADES.py: kappa 0.6, E 100, c = f
    kappa_epochs = int(kappa * e)  # ACS trains round(c kappa_epochs) full epochs, skips to kappa_epochs, then coreset epochs
    assert published.coreset.warmup_epochs == round(f * kappa_epochs) == 18
    assert published.train.epochs == 18 + e - kappa_epochs
    assert published.coreset.unit == "batch" and published.coreset.params.batch_size == 128  # GradMatchPB on ACS's loader


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["gradmatch", "rcs"])
def test_sigkill_after_a_selection_resumes_to_the_same_weights(selector, tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=96, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=4", "coreset.warmup_epochs=1", "coreset.every=1",
                        f"coreset.selector={selector}", "coreset.rcs.val_fraction=0.1", "coreset.fraction=0.6", "train.seed=2",
                        "train.checkpoint_every_steps=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="trades_fmnist_cpu")
    killed = kill_when(run, overrides, "ck['coreset']['selected_at'] >= 1 and ck['batch'] >= 1",
                       recipe="trades_fmnist_cpu")
    assert killed["coreset"]["selected_at"] >= 1 and killed["epoch"] < 4, "killed after a selection, before the end"
    if selector == "gradmatch":
        assert killed["coreset"]["weights"] is not None
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["coreset"]["current"], b["coreset"]["current"])


def test_supervised_rcs_validation_is_the_full_ce_gradient_at_pgd_examples():
    from robustssl.coreset.divergence import ValidationCE
    from robustssl.coreset.head import HeadView

    method = PGDAT(AdversarialTrainingSettings(), AUG, PGDConfig(0.1, 0.03, 2))
    model, data = _trained(method)
    model.eval()
    x, y = data.images[:12].float() / 255, data.labels[:12]
    cfg = PGDConfig(0.1, 0.1, 1, random_start=False)  # one step (RCS's SAT variant)
    view = HeadView(model, "last")
    val = ValidationCE(model, view, x, y, cfg)
    x_adv = x + 0.0
    x_adv.requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
    x_adv = (x + 0.1 * g.sign()).clamp(0, 1).detach()
    head = model.projector[0]
    gw, gb = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [head.weight, head.bias])
    expected = torch.cat([gw.flatten(), gb])
    got = val.gradient(view.flat())
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.view(-1)[: gw.numel()].view_as(gw).mean(0).abs().max() < 1e-6, "the per-output mean the RCS code used is ~0"
    assert got.abs().max() > 1e-3, "the full gradient is not"


def test_l2_evaluation_attacks_in_the_l2_ball_with_its_own_large_radius():
    from dataclasses import replace

    from robustssl.eval.evaluate import evaluate_classifier
    from robustssl.eval.registry import PROTOCOLS
    from robustssl.eval.sanity import large_eps

    method = PGDAT(AdversarialTrainingSettings(), AUG, PGDConfig(0.1, 0.03, 2))
    model, data = _trained(method, steps=40)  # a classifier that learned: the large-eps check needs real predictions
    model.head_trained = True
    base = load_config("pgd_at_fmnist_cpu").eval
    cfg = replace(base, norm="l2", eps=0.5, pgd_alpha=0.1, attacks=["pgd20"], eps_curve=[], n_examples=None)
    clf = PROTOCOLS["direct"].classifier(model, 10, None)
    PROTOCOLS["direct"].train(clf, data, cfg, "cpu")
    x, y = data.images.float() / 255, data.labels
    out = evaluate_classifier(clf, x, y, cfg, 10)
    assert out["attacks"][0]["norm"] == "l2" and out["sanity_attacks"]["large_eps"]["norm"] == "l2"
    assert out["sanity_attacks"]["large_eps"]["eps"] == pytest.approx(large_eps(0.5, "l2", 28 * 28)) == pytest.approx(14.0)
    linf = evaluate_classifier(clf, x, y, replace(cfg, norm="linf", eps=0.1, pgd_alpha=0.025), 10)
    assert linf["attacks"][0]["norm"] == "linf"
    checks = {c["name"]: c["passed"] for c in out["sanity"]}
    assert checks["eps_zero"] and checks["large_eps"]


def test_a_classifier_narrower_than_the_labels_is_refused_before_any_step(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="set model.proj_out to the number of classes"):
        api.pretrain("pgd_at_fmnist_cpu", run, overrides=TINY + [f"data.root={root}", "train.epochs=1", "model.proj_out=5"])
    assert not (run / "checkpoint.pt").exists()
