
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, CoresetConfig, load_config
from robustssl.coreset import divergence, rcs
from robustssl.coreset.embeddings import candidate_gradients
from robustssl.coreset.greedy import greedy_select
from robustssl.coreset.head import HeadView
from robustssl.coreset.rcs import RCSSettings
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.data import DeviceLoader, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.methods import build_method
from robustssl.models import DualBatchNorm, ModelSpec, bn_branch, build_model, current_branch, model_mode
from robustssl.timer import PhaseTimer
from robustssl.train.checkpoint import load_checkpoint

from .datafiles import structured_images, write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume


def test_greedy_matches_brute_force_with_one_simulated_step_per_pick():
    torch.manual_seed(0)
    n, dim, budget, eta = 12, 6, 5, 0.3
    grads = torch.randn(n, dim)
    w0 = torch.randn(dim)
    target = torch.randn(dim)
    seen_w = []

    def val_gradient(w):  # gradient of 0.5*||w - target||^2 * scale, nonlinear in the picks
        seen_w.append(w.clone())
        return (w - target) * (1 + w.pow(2).sum())

    result = greedy_select(grads, w0, val_gradient, budget, eta, refresh_every=1)
    # Brute force: evaluate every remaining candidate's score at every step.
    w, taken, expected = w0.clone(), set(), []
    for _ in range(budget):
        g_val = (w - target) * (1 + w.pow(2).sum())
        best = max((i for i in range(n) if i not in taken), key=lambda i: float(grads[i] @ g_val))
        expected.append(best)
        taken.add(best)
        w = w - eta * grads[best]
    assert result.picks.tolist() == expected
    # The head is stepped exactly once, with step eta, between picks (not twice: RCS code defect 1).
    for t in range(1, budget):
        assert torch.allclose(seen_w[t], seen_w[t - 1] - eta * grads[expected[t - 1]], atol=1e-6)
    assert torch.equal(seen_w[0], w0) and result.refreshes == budget


def test_greedy_refresh_every_r_equals_top_r_between_refreshes():
    torch.manual_seed(1)
    grads, w0 = torch.randn(20, 4), torch.randn(4)
    fixed = torch.randn(4)
    result = greedy_select(grads, w0, lambda w: fixed, 8, 0.1, refresh_every=8)
    assert result.picks.tolist() == torch.topk(grads @ fixed, 8).indices.tolist()
    assert result.refreshes == 1
    with pytest.raises(ValueError, match="budget"):
        greedy_select(grads, w0, lambda w: fixed, 21, 0.1)


class SoftmaxCEMethod:
    """A supervised-style objective: CE of a softmax over the projector output (the SAT-RCS case)."""

    name, supervised, supports_groups = "softmax-ce", False, False

    def __init__(self, labels):
        self.labels = labels
        self.attack_cfg = None

    def training_loss(self, model, batch, attack=None, timer=None):
        return F.cross_entropy(model(batch.images), self.labels[batch.positions])


def test_softmax_ce_head_gradient_embeddings_are_not_zero():
    torch.manual_seed(0)
    spec = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_hidden=16, proj_out=10, proj_layers=2,
                     proj_bn=False, mean=(0.5,), std=(0.5,))
    model = build_model(spec).eval()
    images, labels = structured_images(16, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(16), "s", "train")
    view = HeadView(model)
    units = list(torch.arange(16).unbind())
    grads = candidate_gradients(model, SoftmaxCEMethod(data.labels), data, units, "sample", view, chunk=16)
    assert grads.shape == (16, view.dim)
    assert (grads.norm(dim=1) > 1e-4).all()
    # The RCS code's compression (mean over output units) is identically zero for such a head:
    weight_grads = grads[:, : view.head.weight.numel()].view(16, 10, -1)
    assert weight_grads.mean(dim=1).abs().max() < 1e-6
    # Per-sample rows are an exact decomposition of the batch gradient.
    batch = candidate_gradients(model, SoftmaxCEMethod(data.labels), data, [torch.arange(16)], "batch", view, chunk=16)
    assert torch.allclose(grads.sum(0) / 16, batch[0], atol=1e-6)


def test_budget_arithmetic_and_random_reselection():
    cfg = CoresetConfig(selector="random", fraction=0.2, warmup_epochs=1, every=2, unit="sample")
    sched = CoresetSchedule(cfg, epochs=6, n=1003, batch_size=10, seed=0)
    assert sched.budget() == round(0.2 * 1003) == sched.coreset_size()
    assert len(sched.val) == 0 and len(sched.pool) == 1003
    seen = {}
    for e in range(6):
        pos, weights = sched.positions_for_epoch(e, None, None, None)
        assert weights is None
        seen[e] = pos.clone()
    assert torch.equal(seen[0], sched.pool)
    assert len(seen[1]) == 201 and len(set(seen[1].tolist())) == 201
    assert torch.equal(seen[1], seen[2]) and not torch.equal(seen[1], seen[3]), "random must re-sample at each selection"
    assert [s["epoch"] for s in sched.selections] == [1, 3, 5]
    # run.json says how much of each re-selected coreset the previous one held (random: about the fraction)
    kept = [float(torch.isin(seen[e], seen[e - 2]).float().mean()) for e in (3, 5)]
    assert "kept" not in sched.selections[0] and [s["kept"] for s in sched.selections[1:]] == [round(k, 4) for k in kept]
    assert all(0.1 < k < 0.3 for k in kept)
    batch_cfg = CoresetConfig(selector="random", fraction=0.3, unit="batch", warmup_epochs=0)
    sb = CoresetSchedule(batch_cfg, epochs=1, n=1000, batch_size=64, seed=0)
    assert sb.budget() == round(0.3 * (1000 // 64)) and sb.coreset_size() == sb.budget() * 64
    assert sb.summary()["fraction_real"] == pytest.approx(sb.coreset_size() / 1000)
    rcs = CoresetSchedule(CoresetConfig(selector="rcs", settings={"rcs": RCSSettings(val_fraction=0.01)}), epochs=1, n=1000, batch_size=64, seed=0)
    assert len(rcs.val) == 10 and len(rcs.pool) == 990 and not set(rcs.val.tolist()) & set(rcs.pool.tolist())


@pytest.mark.parametrize("unit", ["batch", "sample"])
def test_validation_images_are_never_trained_on(unit):
    torch.manual_seed(0)
    cfg = load_config("acl_fmnist_cpu", ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "attack.steps=1",
                                         "coreset.selector=rcs", f"coreset.unit={unit}", "coreset.warmup_epochs=1",
                                         "coreset.every=1", "coreset.rcs.val_fraction=0.1", "coreset.fraction=0.5"])
    images, labels = structured_images(96, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(96), "s", "train")
    spec = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3, mean=(0.5,), std=(0.5,))
    model = build_model(spec)
    method = build_method(cfg, 28, 1)
    sched = CoresetSchedule(cfg.coreset, epochs=4, n=96, batch_size=16, seed=0)
    loader = DeviceLoader(data, 16, seed=0)
    val = set(sched.val.tolist())
    assert len(val) == 10
    trained = set()
    for epoch in range(4):
        positions, _ = sched.positions_for_epoch(epoch, model, method, data)
        for batch in loader.epoch(positions, epoch):
            trained |= set(batch.positions.tolist())
    assert trained and not trained & val
    assert len(sched.selections) == 3


@pytest.mark.slow
def test_sigkill_after_selection_resumes_on_the_same_subset(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=256, n_test=16)
    overrides = [f"data.root={root}", "model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32",
                 "train.progress=false", "attack.steps=1", "train.epochs=4", "train.checkpoint_every_steps=1",
                 "coreset.selector=rcs", "coreset.warmup_epochs=1", "coreset.every=2", "coreset.fraction=0.5",
                 "coreset.rcs.val_fraction=0.05", "coreset.rcs.rd_steps=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides)
    # Kill inside epoch 2, after the epoch-1 selection.
    killed = kill_when(run, overrides, "ck['epoch'] == 2 and ck['batch'] >= 1")
    assert killed["coreset"]["selected_at"] == 1 and killed["step"] < load_checkpoint(ref / "checkpoint.pt")["step"]
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert torch.equal(a["coreset"]["current"], b["coreset"]["current"])
    assert [s["epoch"] for s in a["coreset"]["selections"]] == [s["epoch"] for s in b["coreset"]["selections"]] == [1, 3]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_rcs_selection_leaves_the_model_untouched():
    torch.manual_seed(0)
    cfg = load_config("acl_fmnist_cpu", ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "attack.steps=1",
                                         "coreset.selector=rcs", "coreset.rcs.val_fraction=0.02", "coreset.fraction=0.25"])
    images, labels = structured_images(64, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(64), "s", "train")
    spec = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3, mean=(0.5,), std=(0.5,))
    model = build_model(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = CoresetSchedule(cfg.coreset, epochs=1, n=64, batch_size=16, seed=0)
    assert len(sched.val) == 1  # a single validation image must work (eval-mode BN)
    sel = sched.select(0, model, build_method(cfg, 28, 1), data)
    assert len(sel.positions) == sched.coreset_size()
    # the cost breakdown is recorded with the selection, and its parts add up to no more than the selection
    parts = sched.selections[-1]["phases"]
    assert set(parts) == {"validation_rd", "candidate_attack", "candidate_augment", "candidate_forward_backward", "greedy"}
    assert parts["candidate_attack"] > 0 and parts["validation_rd"] > 0 and parts["greedy"] > 0
    assert sum(parts.values()) <= sched.selections[-1]["seconds"]
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"selection changed {k}"


# --- fidelity: RD's BN branches, the projector scope, re-attacks, the per-sample step ---------------------
DUAL_SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3,
                      mean=(0.5,), std=(0.5,))
TINY_ACL = ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "attack.steps=1"]


def _images(n):
    images, labels = structured_images(n, 0)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train")


@pytest.fixture(scope="module")
def _trained():
    """One dual-BN model after real ACL steps (its `normal` and `pgd` branches differ: checked), shared by the module."""
    data = _images(64)
    torch.manual_seed(0)
    model, method = build_model(DUAL_SPEC), build_method(load_config("acl_fmnist_cpu", TINY_ACL), 28, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for s in range(3):
        method.step(model, opt, sched, make_batch(data, torch.arange(32 * s, 32 * s + 32) % len(data)), PhaseTimer())
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    assert duals
    for m in duals:  # otherwise a wrong routing would be invisible
        assert not torch.allclose(m.normal.running_mean, m.pgd.running_mean, atol=1e-4)
        assert not torch.allclose(m.normal.weight, m.pgd.weight, atol=1e-4)
    return data, model, method


@pytest.fixture
def acl_trained(_trained):
    """(data, a fresh copy of the trained model in train mode, the ACL method)."""
    data, model, method = _trained
    return data, copy.deepcopy(model).train(), method


def _kl(z_nat, z_adv):
    """Mean over rows of KL(softmax(z_nat) || softmax(z_adv)), written out."""
    p = F.softmax(z_nat, dim=1)
    return (p * (F.log_softmax(z_nat, dim=1) - F.log_softmax(z_adv, dim=1))).sum(1).mean()


def _projector_params(model, scope):
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    linears = linears[-1:] if scope == "last" else linears
    return [p for layer in linears for p in (layer.weight, layer.bias) if p is not None]


def _end_to_end_rd(model, x, x_adv, nat="normal", adv="pgd"):
    """RD from full model forwards in eval mode: x on `nat`, x_adv on `adv`."""
    with model_mode(model, "eval"):
        with bn_branch(model, nat):
            z_nat = model(x)
        with bn_branch(model, adv):
            z_adv = model(x_adv)
    return _kl(z_nat, z_adv)


def _with_params(model, scope, w):
    """A copy of model whose differentiated projector parameters are w (flat, in order)."""
    m = copy.deepcopy(model)
    params = _projector_params(m, scope)
    with torch.no_grad():
        for p, chunk in zip(params, w.split([p.numel() for p in params])):
            p.copy_(chunk.view_as(p))
    return m, params


def test_rcs_validation_rd_is_end_to_end_rd_natural_on_normal_adversarial_on_pgd(monkeypatch, acl_trained):
    """g_val and RD(V; W0) of a real selection equal RD computed from full forwards (eval mode,
    natural on `normal`, adversarial on `pgd`), on a model whose branches differ."""
    data, model, method = acl_trained
    seen = {"x_adv": []}
    real_attack, real_greedy = divergence.virtual_adversarial, rcs.greedy_select

    def attack(*args, **kwargs):
        seen["x_adv"].append(real_attack(*args, **kwargs))
        return seen["x_adv"][-1]

    def greedy(grads, w0, val_gradient, *args, **kwargs):
        seen["w0"], seen["rd"] = w0.clone(), val_gradient.__self__
        return real_greedy(grads, w0, val_gradient, *args, **kwargs)

    monkeypatch.setattr(divergence, "virtual_adversarial", attack)
    monkeypatch.setattr(rcs, "greedy_select", greedy)
    cfg = CoresetConfig(selector="rcs", fraction=0.25, settings={"rcs": RCSSettings(val_fraction=0.125, rd_eps=0.1, rd_alpha=0.04, rd_steps=2)})
    sched = CoresetSchedule(cfg, epochs=1, n=64, batch_size=16, seed=0)
    sched.select(0, model, method, data)
    (x_adv,) = seen["x_adv"]
    x_val = data.images[sched.val].float() / 255
    params = _projector_params(model, "last")
    ref = _end_to_end_rd(model, x_val, x_adv)
    ref_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, params)])
    rd, w0 = seen["rd"], seen["w0"]
    assert torch.allclose(rd.value(w0), ref, atol=1e-6, rtol=1e-4)
    assert torch.allclose(rd.gradient(w0), ref_grad, atol=1e-6, rtol=1e-4)
    # The other conventions give other numbers, so the check above could see a wrong routing.
    for nat, adv in (("pgd", "pgd"), ("normal", "normal"), ("pgd", "normal")):
        assert not torch.allclose(_end_to_end_rd(model, x_val, x_adv, nat, adv), ref, atol=1e-5, rtol=1e-3), (nat, adv)


def test_virtual_adversarial_targets_on_normal_and_attacks_on_pgd_in_eval_mode(acl_trained):
    data, model, _ = acl_trained
    x = data.images[:8].float() / 255
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append((current_branch(m), m.training, torch.is_grad_enabled())))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = divergence.virtual_adversarial(model, x, PGDConfig(0.1, 0.04, 2))
    hook.remove()
    assert seen == [("normal", False, False), ("pgd", False, True), ("pgd", False, True)]
    assert model.training and current_branch(model) == "normal", "the caller's mode and branch are restored"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "eval mode: no running-stat update"
    assert 0 < (x_adv - x).abs().max() <= 0.1 + 1e-6
    rd = divergence.representational_divergence(model, x, x_adv)
    assert torch.allclose(rd, _end_to_end_rd(model, x, x_adv), atol=1e-6) and model.training


def test_projector_scope_matches_a_brute_force_greedy_on_full_forwards(acl_trained):
    """coreset.head=projector: candidate rows, every g_val refresh and the picks equal a brute-force
    loop on full model forwards with all projector Linears simulated; sample rows sum to the batch row."""
    data, model, method = acl_trained
    model.eval()  # as in a selection
    view = HeadView(model, "projector")
    params = _projector_params(model, "projector")
    assert view.dim == sum(p.numel() for p in params) > HeadView(model).dim
    x_val = data.images[:8].float() / 255
    units = [torch.arange(8 + 8 * i, 16 + 8 * i) for i in range(6)]
    rd = divergence.ValidationRD(model, view, x_val, PGDConfig(0.1, 0.04, 2, random_start=False))
    torch.manual_seed(4)
    grads = candidate_gradients(model, method, data, units, "batch", view, chunk=8)
    torch.manual_seed(4)
    ref_grads = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(method.training_loss(model, make_batch(data, u)), params)])
        for u in units
    ])
    assert torch.allclose(grads, ref_grads, atol=1e-6, rtol=1e-4)

    def ref_val_gradient(w):
        m, ps = _with_params(model, "projector", w)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(_end_to_end_rd(m, x_val, rd.x_adv), ps)])

    # A step that moves the head by a third of its norm at most: large enough that the refreshed
    # g_val reorders the candidates (checked below), whatever the trained gradients' scale.
    budget, w0 = 4, view.flat()
    eta = float(w0.norm() / grads.norm(dim=1).max()) / 3
    result = greedy_select(grads, w0, rd.refresh, budget, eta)
    w, expected = w0.clone(), []
    for _ in range(budget):
        g_val = ref_val_gradient(w)
        assert torch.allclose(rd.gradient(w), g_val, atol=1e-6, rtol=1e-4)
        expected.append(max((i for i in range(len(units)) if i not in expected), key=lambda i: float(grads[i] @ g_val)))
        w = w - eta * grads[expected[-1]]
    assert result.picks.tolist() == expected and torch.allclose(result.w, w)
    assert expected != torch.topk(grads @ ref_val_gradient(w0), budget).indices.tolist(), "eta too small to test refreshes"
    # Sample units: each image's share over all projector Linears; the shares add up to the batch gradient.
    torch.manual_seed(5)
    per = candidate_gradients(model, method, data, list(torch.arange(16).unbind()), "sample", view, chunk=16)
    torch.manual_seed(5)
    batch = candidate_gradients(model, method, data, [torch.arange(16)], "batch", view, chunk=16)
    assert per.shape == (16, view.dim) and torch.allclose(per.sum(0) / 16, batch[0], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("scope", ["last", "projector"])
def test_reattack_every_re_attacks_the_validation_split_with_the_simulated_parameters(scope, acl_trained):
    data, model, _ = acl_trained
    model.eval()
    x_val = data.images[:8].float() / 255
    attack = PGDConfig(0.1, 0.04, 2, random_start=False)  # deterministic: x_adv depends on the parameters only
    view = HeadView(model, scope)
    w0 = view.flat()
    w1 = w0 + torch.randn(view.dim, generator=torch.Generator().manual_seed(0)) * w0.abs().mean()
    m1, _ = _with_params(model, scope, w1)
    ref = divergence.ValidationRD(m1, HeadView(m1, scope), x_val, attack)  # attacked from scratch at w1
    g = {}
    for k in (0, 1, 2):
        rd = divergence.ValidationRD(model, view, x_val, attack, reattack_every=k)
        g[k] = [rd.refresh(w) for w in (w0, w1, w1)]
    assert torch.allclose(g[1][1], ref.gradient(w1), atol=1e-6, rtol=1e-4)
    assert not torch.allclose(g[0][1], ref.gradient(w1), atol=1e-4, rtol=1e-3), "x_adv at w0 and w1 must differ"
    assert torch.equal(g[0][1], g[0][2]) and torch.equal(g[2][1], g[0][1]), "k=0 never re-attacks; k=2 not at refresh 2"
    assert torch.allclose(g[2][2], ref.gradient(w1), atol=1e-6, rtol=1e-4), "k=2 re-attacks at refresh 3"
    assert torch.equal(g[1][0], g[0][0]), "the first refresh is at W0, which is already attacked"


def test_sample_units_scale_eta_so_a_whole_batch_of_picks_is_one_batch_step(monkeypatch):
    data = _images(64)
    torch.manual_seed(0)
    model, method = build_model(DUAL_SPEC).eval(), build_method(load_config("acl_fmnist_cpu", TINY_ACL), 28, 1)
    b, eta = 16, 0.5
    sample = rcs.RCSSelector(CoresetConfig(selector="rcs", unit="sample", settings={"rcs": RCSSettings(eta=eta, head="projector", reattack_every=1)}), 0)
    batch = rcs.RCSSelector(CoresetConfig(selector="rcs", unit="batch", settings={"rcs": RCSSettings(eta=eta)}), 0)
    assert sample.step_size(b) == eta / b and batch.step_size(b) == eta
    view = HeadView(model)
    torch.manual_seed(1)
    per = candidate_gradients(model, method, data, list(torch.arange(b).unbind()), "sample", view, chunk=b)
    torch.manual_seed(1)
    row = candidate_gradients(model, method, data, [torch.arange(b)], "batch", view, chunk=b)
    fixed = torch.randn(view.dim)
    all_samples = greedy_select(per, view.flat(), lambda w: fixed, b, sample.step_size(b))
    one_batch = greedy_select(row, view.flat(), lambda w: fixed, 1, batch.step_size(b))
    assert sorted(all_samples.picks.tolist()) == list(range(b))
    assert torch.allclose(all_samples.w, one_batch.w, atol=1e-6, rtol=1e-4) and not torch.equal(one_batch.w, view.flat())
    # A real selection passes the scaled step, and the head scope and re-attack period, to the greedy loop.
    seen = {}
    real_greedy = rcs.greedy_select

    def greedy(grads, w0, val_gradient, budget, step, *args):
        seen.update(dim=grads.shape[1], eta=step, rd=val_gradient.__self__)
        return real_greedy(grads, w0, val_gradient, budget, step, *args)

    monkeypatch.setattr(rcs, "greedy_select", greedy)
    sample.select(model, method, data, torch.arange(8, 40), torch.arange(8), 4, b)
    assert seen["eta"] == eta / b and seen["dim"] == HeadView(model, "projector").dim
    assert seen["rd"].view.scope == "projector" and seen["rd"].reattack_every == 1


def test_head_and_reattack_every_are_validated_config_keys():
    cfg = load_config("acl_fmnist_cpu", ["coreset.rcs.head=projector", "coreset.rcs.reattack_every=3"])
    assert cfg.coreset.settings["rcs"].head == "projector" and cfg.coreset.settings["rcs"].reattack_every == 3
    defaults = load_config("acl_fmnist_cpu", ["coreset.selector=rcs"])
    assert defaults.coreset.params.head == "last" and defaults.coreset.params.reattack_every == 0
    with pytest.raises(ConfigError, match="coreset.rcs.head"):
        load_config("acl_fmnist_cpu", ["coreset.rcs.head=fc3"])
    with pytest.raises(ConfigError, match="coreset.rcs.reattack_every"):
        load_config("acl_fmnist_cpu", ["coreset.rcs.reattack_every=-1"])


@pytest.mark.parametrize("scope,name", [("last", "acl"), ("projector", "acl"), ("last", "rocl"), ("last", "robust_emp")])
def test_stacked_candidate_batches_give_the_rows_of_one_forward_each(scope, name, acl_trained):
    """coreset.candidates_per_forward: in eval mode, stacking candidate batches into one grouped
    forward (attack, loss, head backward) gives each candidate the row of its own forward.
    Deterministic views and attack, so the two runs draw nothing that could differ."""
    from robustssl.data.augment import AugmentSpec, ContrastiveAugment
    from robustssl.methods.acl import ACL
    from robustssl.methods.base import ContrastiveSettings
    from robustssl.methods.rocl import RoCL, RoCLSettings

    data, model, _ = acl_trained
    model.eval()
    still = AugmentSpec(crop_scale=(1.0, 1.0), flip=False, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, grayscale_p=0.0)
    attack = PGDConfig(0.1, 0.04, 2, random_start=False)
    augment = ContrastiveAugment(still, 28, 1)
    from robustssl.methods.emp import RobustEMPSettings, RobustEMPSSL

    method = {"acl": lambda: ACL(ContrastiveSettings(0.5), augment, attack),
              "rocl": lambda: RoCL(RoCLSettings(0.5, 4.0), augment, attack),
              "robust_emp": lambda: RobustEMPSSL(RobustEMPSettings(n_crops=2), augment, attack)}[name]()
    view = HeadView(model, scope)
    units = [torch.arange(8 * i, 8 * i + 8) for i in range(7)]
    one = candidate_gradients(model, method, data, units, "batch", view, chunk=8)
    stacked = candidate_gradients(model, method, data, units, "batch", view, chunk=8, per_forward=3)  # 3 + 3 + 1
    assert stacked.shape == one.shape == (7, view.dim)
    assert torch.allclose(stacked, one, atol=1e-6, rtol=1e-4)
    # relative to the rows' size (candidate gradients are ~1e-4 here; their scale varies by CPU)
    assert (one[0] - one[1]).norm() > 0.1 * one[:2].norm(dim=1).min(), "candidates must differ for the test to see a mix-up"
    # A method without group support runs one candidate per forward instead of mixing them in one loss.
    method.supports_groups = False  # type: ignore[misc]
    assert torch.allclose(candidate_gradients(model, method, data, units, "batch", view, chunk=8, per_forward=3), one, atol=1e-6)
    with pytest.raises(ValueError, match="grouped batches"):
        method.training_loss(model, make_batch(data, torch.arange(16), groups=2))
    assert load_config("acl_fmnist_cpu", ["coreset.rcs.candidates_per_forward=4"]).coreset.settings["rcs"].candidates_per_forward == 4
    with pytest.raises(ConfigError, match="candidates_per_forward"):
        load_config("acl_fmnist_cpu", ["coreset.rcs.candidates_per_forward=0"])
