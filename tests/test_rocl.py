"""RoCL: the 3-view loss and its regularizer against a float64 loop reference, the instance-wise
attack (only t(x) perturbed, eps ball, [0,1], eval mode restored), the published projector and
config rules, and RCS / random coresets trained through RoCL's own loss."""
import math

import pytest
import torch
from torch import nn

from robustssl.attacks import PGDConfig
from robustssl.config import ConfigError, load_config
from robustssl.coreset.embeddings import candidate_gradients
from robustssl.coreset.head import HeadView
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset
from robustssl.losses import nt_xent
from robustssl.methods import RoCL, build_method
from robustssl.methods.base import Views
from robustssl.methods.rocl import RoCLSettings
from robustssl.models import ModelSpec, build_model
from robustssl.train.metrics import read_metrics

from . import tiny
from .coreset_runs import run_with_one_selection
from .datafiles import structured_images, write_fashion_mnist

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_hidden=16, proj_out=8, proj_layers=2,
                 proj_bn=False, mean=(0.5,), std=(0.25,))
TINY = tiny.run("train.log_every_steps=1", "attack.steps=1")


def _rocl(lam=256.0, steps=3):
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0), 28, 1)
    return RoCL(RoCLSettings(tau=0.5, lam=lam), aug, PGDConfig(0.1, 0.04, steps))


def _data(n):
    images, labels = structured_images(n, 0)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train")


def rocl_reference(z: torch.Tensor, tau: float, lam: float, w: list[float]) -> float:
    """RoCL's loss written out in float64, one anchor and one positive at a time.

    z: rows [t(x); t'(x); t(x)_adv] of B images. Contrastive part: every row a is an anchor whose two
    positives are the other views of its image, each contributing -log(exp(s_ap/tau) / sum_{k != a} exp(s_ak/tau));
    anchors are averaged (weighted by their image's w). Regularizer: the same over the 2B rows
    [t(x)_adv; t'(x)] alone, one positive each, divided by lambda.
    """
    z = torch.nn.functional.normalize(z.double(), dim=1)
    b = z.shape[0] // 3

    def contrastive(rows: list[int]) -> float:
        total = 0.0
        for a in rows:
            denom = sum(math.exp(float(z[a] @ z[k]) / tau) for k in rows if k != a)
            positives = [p for p in rows if p != a and p % b == a % b]
            total += w[a % b] * sum(-math.log(math.exp(float(z[a] @ z[p]) / tau) / denom) for p in positives)
        return total / len(rows)

    return contrastive(list(range(3 * b))) + contrastive(list(range(2 * b, 3 * b)) + list(range(b, 2 * b))) / lam


@pytest.mark.parametrize("weighted", [False, True])
def test_rocl_loss_matches_a_float64_loop_reference(weighted):
    data = _data(6)
    torch.manual_seed(0)
    model, method = build_model(SPEC).train(), _rocl(lam=3.0)
    x = data.images.float() / 255
    views = method.attack(model, Views([method.augment(x), method.augment(x)]), method.attack_cfg)
    w = [0.5, 2.0, 0.0, 1.0, 3.0, 1.5] if weighted else [1.0] * 6
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, parts = method.loss(model, views, torch.tensor(w) if weighted else None)
    model.load_state_dict(state)  # the same BN batch statistics for the reference's forward
    z = model(torch.cat([*views.natural, *views.adversarial])).detach()
    ref = rocl_reference(z, 0.5, 3.0, w)
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert parts["loss_con"] + parts["loss_reg"] / 3.0 == pytest.approx(ref, rel=1e-5)
    # Each part matters, so the comparison above sees a wrong form of either.
    assert abs(float(loss.detach()) - rocl_reference(z, 0.5, 1e12, w)) > 1e-2, "the regularizer must show"
    mean_positives = float(nt_xent(z, 3, 0.5, torch.tensor(w)))
    assert abs(parts["loss_con"] - mean_positives) > 1e-2, "the two positives are summed, not averaged"
    with pytest.raises(ValueError, match="positives must be one of mean, sum"):
        nt_xent(z, 3, 0.5, positives="max")


def test_rocl_attack_perturbs_only_t_x_within_the_ball_in_eval_mode():
    torch.manual_seed(0)
    model, method = build_model(SPEC), _rocl(steps=4)
    t, t_pos = torch.rand(8, 1, 28, 28), torch.rand(8, 1, 28, 28)
    t[:, :, :5], t[:, :, -5:] = 0.0, 1.0  # pixels on both bounds: the clamp to [0,1] must hold
    t_before, t_pos_before = t.clone(), t_pos.clone()
    with torch.no_grad():  # BN running statistics of these images, so eval-mode embeddings differ between images
        for _ in range(30):
            model.train()(torch.cat([t, t_pos]))
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].detach().clone())))
    model.train()
    views = method.attack(model, Views([t, t_pos]), method.attack_cfg)
    hook.remove()
    assert model.training, "the attack must restore train mode"
    assert len(seen) == 4 and all(not training for training, _ in seen), "every attack forward runs in eval mode"
    for _, x in seen:  # each step's loss sees [t(x) + delta; t'(x)]: the positive is never perturbed
        assert x.shape[0] == 16 and torch.equal(x[8:], t_pos_before)
    assert torch.equal(t, t_before) and torch.equal(t_pos, t_pos_before), "the natural views are left as they were"
    assert views.natural[0] is t and views.natural[1] is t_pos
    (x_adv,) = views.adversarial
    assert x_adv.shape == t.shape and not x_adv.requires_grad
    assert 0 < (x_adv - t).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv[:, :, :5] > 0).any() and (x_adv[:, :, -5:] < 1).any(), "pixels on a bound move inwards only"

    def objective(x):
        with torch.no_grad():
            return float(nt_xent(model.eval()(torch.cat([x, t_pos])), 2, 0.5))

    assert objective(x_adv) > objective(t) + 1e-2, "the attack maximizes NT-Xent(t(x)_adv, t'(x))"
    model.eval()
    method.attack(model, Views([t, t_pos]), method.attack_cfg)
    assert not model.training, "a caller in eval mode stays in eval mode"


def test_rocl_projector_and_config_rules():
    for recipe, dims in (("rocl_cifar10", (512, 2048, 128)), ("rocl_fmnist_cpu", (64, 256, 16))):
        cfg = load_config(recipe)
        model = build_model(model_spec_for(cfg))
        layers = list(model.projector)
        assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear], recipe
        assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == dims
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.projector.modules())
        assert HeadView(model).head is layers[2]
        method = build_method(cfg, 32, 3)
        assert isinstance(method, RoCL) and not method.needs_dual_bn and method.settings.lam == 256.0
    c10 = load_config("rocl_cifar10")
    assert (c10.attack.steps, c10.attack.alpha, c10.attack.eps, c10.optim.lr) == (7, 0.007, 0.0314, 1.5)
    with pytest.raises(ConfigError, match="method rocl uses a projector without BatchNorm.*model.proj_bn=false"):
        load_config("rocl_fmnist_cpu", ["model.proj_bn=true"])
    with pytest.raises(ConfigError, match="method rocl needs attack.steps >= 1"):
        load_config("rocl_fmnist_cpu", ["attack.steps=0"])
    with pytest.raises(ConfigError, match="method.rocl.lam must be > 0"):
        load_config("rocl_fmnist_cpu", ["method.rocl.lam=0"])


def model_spec_for(cfg):
    """The spec a run of `cfg` builds, for 3-channel CIFAR or 1-channel Fashion-MNIST."""
    channels = 3 if cfg.data.name == "cifar10" else 1
    return ModelSpec.from_config(cfg.model, channels, (0.5,) * channels, (0.5,) * channels)


def test_rcs_sample_rows_of_rocl_sum_to_its_batch_gradient():
    """RoCL's head sees a 3B-row training forward and 2B-row attack forwards; the per-sample split
    (row r belongs to image r % B) must still add up to the batch gradient exactly."""
    data = _data(16)
    torch.manual_seed(0)
    model, method = build_model(SPEC).eval(), _rocl(lam=2.0, steps=2)
    view = HeadView(model)
    torch.manual_seed(1)
    per = candidate_gradients(model, method, data, list(torch.arange(16).unbind()), "sample", view, chunk=16)
    torch.manual_seed(1)
    batch = candidate_gradients(model, method, data, [torch.arange(16)], "batch", view, chunk=16)
    assert per.shape == (16, view.dim) and per.abs().sum() > 0
    assert torch.allclose(per.sum(0) / 16, batch[0], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("selector,unit", [("rcs", "sample"), ("random", "batch")])
def test_coreset_runs_train_rocl_through_its_own_loss(selector, unit, tmp_path, monkeypatch):
    """Warm-up epoch 0, a selection at epoch 1, then training on the coreset. RCS scores candidates with
    RoCL's own training_loss in eval mode; random needs no loss."""
    root = write_fashion_mnist(tmp_path / "fm", n_train=80, n_test=16)
    calls = []
    real = RoCL.training_loss

    def spy(self, model, batch, attack=None, timer=None):
        calls.append(model.training)
        return real(self, model, batch, attack, timer)

    monkeypatch.setattr(RoCL, "training_loss", spy)
    run = tmp_path / "run"
    run_with_one_selection("rocl_fmnist_cpu", run, selector, TINY + [f"data.root={root}", f"coreset.unit={unit}"])
    steps = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    assert steps and all({"loss_con", "loss_reg"} <= set(r) for r in steps)
    if selector == "random":
        assert calls == []
    else:
        assert calls and not any(calls), "RCS scores candidates with RoCL's loss, in eval mode"

