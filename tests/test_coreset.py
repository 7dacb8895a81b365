
import pytest
import torch
from torch.nn import functional as F

from robustssl.config import CoresetConfig, load_config
from robustssl.coreset.embeddings import candidate_gradients
from robustssl.coreset.greedy import greedy_select
from robustssl.coreset.head import HeadView
from robustssl.coreset.schedule import CoresetSchedule
from robustssl.data import DeviceLoader, ImageDataset
from robustssl.methods import build_method
from robustssl.models import ModelSpec, build_model
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

    def __init__(self, labels):
        self.labels = labels
        self.attack_cfg = None

    def training_loss(self, model, batch, attack=None):
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
    cfg = CoresetConfig(method="random", fraction=0.2, warmup_epochs=1, every=2, unit="sample")
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
    batch_cfg = CoresetConfig(method="random", fraction=0.3, unit="batch", warmup_epochs=0)
    sb = CoresetSchedule(batch_cfg, epochs=1, n=1000, batch_size=64, seed=0)
    assert sb.budget() == round(0.3 * (1000 // 64)) and sb.coreset_size() == sb.budget() * 64
    assert sb.summary()["fraction_real"] == pytest.approx(sb.coreset_size() / 1000)
    rcs = CoresetSchedule(CoresetConfig(method="rcs", val_fraction=0.01), epochs=1, n=1000, batch_size=64, seed=0)
    assert len(rcs.val) == 10 and len(rcs.pool) == 990 and not set(rcs.val.tolist()) & set(rcs.pool.tolist())


@pytest.mark.parametrize("unit", ["batch", "sample"])
def test_validation_images_are_never_trained_on(unit):
    torch.manual_seed(0)
    cfg = load_config("acl_fmnist_cpu", ["model.width=4", "model.proj_hidden=16", "model.proj_out=8", "attack.steps=1",
                                         "coreset.method=rcs", f"coreset.unit={unit}", "coreset.warmup_epochs=1",
                                         "coreset.every=1", "coreset.val_fraction=0.1", "coreset.fraction=0.5"])
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


def test_sigkill_after_selection_resumes_on_the_same_subset(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=256, n_test=16)
    overrides = [f"data.root={root}", "model.width=4", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=32",
                 "train.progress=false", "attack.steps=1", "train.epochs=4", "train.checkpoint_every_steps=1",
                 "coreset.method=rcs", "coreset.warmup_epochs=1", "coreset.every=2", "coreset.fraction=0.5",
                 "coreset.val_fraction=0.05", "coreset.rd_steps=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides)
    # Kill inside epoch 2, after the epoch-1 selection.
    killed = kill_when(run, overrides, lambda ck: ck["epoch"] == 2 and ck["batch"] >= 1)
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
                                         "coreset.method=rcs", "coreset.val_fraction=0.02", "coreset.fraction=0.25"])
    images, labels = structured_images(64, 0)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(64), "s", "train")
    spec = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=3, mean=(0.5,), std=(0.5,))
    model = build_model(spec).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sched = CoresetSchedule(cfg.coreset, epochs=1, n=64, batch_size=16, seed=0)
    assert len(sched.val) == 1  # a single validation image must work (eval-mode BN)
    sel = sched.select(0, model, build_method(cfg, 28, 1), data)
    assert len(sel.positions) == sched.coreset_size()
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"selection changed {k}"
