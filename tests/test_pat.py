"""Perceptual adversarial training: the LPIPS distance against a float64 transcription (self-bound and a
network loaded from a file in the real on-disk formats), the perceptual attacks (bound, loss, parameter
gradients, mode), and the method (BN modes, only-correct attack, clipping, weights, ACS head gradients)."""
import copy

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from robustssl.attacks import PGDConfig
from robustssl.attacks.perceptual import fast_lpa, lpa, margin_loss, ppgd
from robustssl.config import ConfigError, CoresetConfig, load_config
from robustssl.coreset.acs import GradMatchSelector
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.losses.lpips import LPIPS, load_lpips_network
from robustssl.methods import PAT
from robustssl.methods.pat import PATSettings
from robustssl.models import ModelSpec, build_model
from robustssl.timer import PhaseTimer

from .datafiles import structured_images

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_layers=1, proj_out=10, proj_bn=False,
                 mean=(0.5,), std=(0.25,))
AUG = ContrastiveAugment(AugmentSpec(), 28, 1)
UNUSED_PGD = PGDConfig(0.1, 0.03, 2)


def _data(n: int = 64) -> ImageDataset:
    images, labels = structured_images(n, seed=3)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "synthetic", "train")


def _fitted(steps: int = 40):
    """A tiny CNN classifier trained with plain CE on the structured images (so attacks have work to do)."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    data = _data()
    x, y = data.images.float() / 255, data.labels
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def _lpips64(acts_a, acts_b, weights=None):
    """LPIPS's definition in float64: channel-normalized activations, weighted squared differences summed
    over channels, averaged over positions, summed over layers; the distance is its square root."""
    total = 0
    for i, (a, b) in enumerate(zip(acts_a, acts_b)):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        sq = (na - nb).pow(2)
        if weights is not None:
            sq = sq * weights[i].double().view(1, -1, 1, 1)
        total = total + sq.sum(1).mean(dim=(1, 2))
    return total.sqrt()


def test_self_bound_lpips_equals_a_float64_transcription_for_the_cnn_and_resnet():
    model, x, _ = _fitted(5)
    x2 = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    m64 = copy.deepcopy(model).double()

    def cnn_acts(t):
        h = m64.normalize(t.double())
        out = []
        for conv, bn in zip(m64.backbone.convs, m64.backbone.bns):
            h = F.relu(bn(conv(h)))
            out.append(h)
        return out

    got = LPIPS.of_model(model).distance(x, x2)
    assert torch.allclose(got.double(), _lpips64(cnn_acts(x), cnn_acts(x2)), rtol=1e-5, atol=1e-6)
    assert (got > 0).all() and torch.equal(LPIPS.of_model(model).distance(x, x), torch.zeros(len(x)))

    torch.manual_seed(1)
    res = build_model(ModelSpec(arch="resnet18", width=2, in_channels=1, dual_bn=False, proj_layers=1, proj_out=10,
                                proj_bn=False, mean=(0.5,), std=(0.25,))).eval()
    r64 = copy.deepcopy(res).double()

    def res_acts(t):
        h = r64.backbone.stem(r64.normalize(t.double()))
        out = []
        for i, block in enumerate(r64.backbone.layers):
            h = block(h)
            if i % 2 == 1:  # the end of each of the four stages
                out.append(h)
        return out

    got = LPIPS.of_model(res).distance(x[:8], x2[:8])
    assert torch.allclose(got.double(), _lpips64(res_acts(x[:8]), res_acts(x2[:8])), rtol=1e-5, atol=1e-6)


def _alexnet_state(lin: bool, imagenet: bool = False):
    """A small AlexNet-shaped network (narrow channels) as a state dict: PAT's CIFAR AlexNet (3x3 convs) or
    torchvision's ImageNet AlexNet (11x11, 5x5, then 3x3 convs)."""
    g = torch.Generator().manual_seed(0)
    chans = [3, 8, 12, 16, 16, 16]
    kernels = (11, 5, 3, 3, 3) if imagenet else (3, 3, 3, 3, 3)
    state = {}
    for i, idx in enumerate((0, 3, 6, 8, 10)):
        k = kernels[i]
        state[f"features.{idx}.weight"] = torch.randn(chans[i + 1], chans[i], k, k, generator=g) * 0.3
        state[f"features.{idx}.bias"] = torch.randn(chans[i + 1], generator=g) * 0.1
        if lin:
            state[f"lin{i}.model.1.weight"] = torch.rand(1, chans[i + 1], 1, 1, generator=g)
    return state


def _alexnet_acts64(state, x, lpips_scaling):
    if lpips_scaling:  # the LPIPS package: inputs in [-1, 1], then (x - shift) / scale
        shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
        h = (2 * x.double() - 1 - shift) / scale
    else:
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
        h = (x.double() - mean) / std
    imagenet = state["features.0.weight"].shape[-1] == 11
    out = []
    for i, idx in enumerate((0, 3, 6, 8, 10)):
        w, b = state[f"features.{idx}.weight"].double(), state[f"features.{idx}.bias"].double()
        if imagenet:  # torchvision's AlexNet: 11x11 stride 4 pad 2, 5x5 pad 2, 3x3 pad 1; 3x3 stride-2 max-pools
            stride, pad = (4, 2) if i == 0 else (1, w.shape[-1] // 2)
        else:  # PAT's CIFAR AlexNet: 3x3 stride 2 pad 1, then 3x3 pad 1; 2x2 max-pools
            stride, pad = (2 if i == 0 else 1), 1
        h = F.relu(F.conv2d(h, w, b, stride=stride, padding=pad))
        out.append(h)
        if i in (0, 1):
            h = F.max_pool2d(h, 3, 2) if imagenet else F.max_pool2d(h, 2)
    return out


@pytest.mark.parametrize(("fmt", "imagenet"), [("pt", False), ("safetensors", False), ("safetensors", True)])
@pytest.mark.parametrize("lin", [True, False])
def test_loaded_lpips_network_equals_a_float64_transcription(tmp_path, fmt, imagenet, lin):
    state = _alexnet_state(lin, imagenet)
    path = tmp_path / f"alex.{fmt}"
    if fmt == "pt":
        torch.save({"model": {f"model.{k}": v for k, v in state.items()}}, path)  # a checkpoint wrapping the weights
    else:
        save_file(state, str(path))
    net = load_lpips_network(path)
    g = torch.Generator().manual_seed(1)
    side = 72 if imagenet else 32
    x = torch.rand(4, 3, side, side, generator=g)
    x2 = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    weights = [state[f"lin{i}.model.1.weight"].flatten() for i in range(5)] if lin else None
    ref = _lpips64(_alexnet_acts64(state, x, lin), _alexnet_acts64(state, x2, lin), weights)
    assert torch.allclose(net.distance(x, x2).double(), ref, rtol=1e-5, atol=1e-6)
    assert not net.self_bound and all(not p.requires_grad for p in net.network.parameters())
    gray = x[:, :1]  # one-channel images are repeated to the network's three
    assert torch.allclose(net.distance(gray, x2[:, :1]).double(),
                          _lpips64(_alexnet_acts64(state, gray.expand(-1, 3, -1, -1), lin),
                                   _alexnet_acts64(state, x2[:, :1].expand(-1, 3, -1, -1), lin), weights), rtol=1e-5, atol=1e-6)


def test_lpips_network_file_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_lpips_network(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ConfigError, match="not an AlexNet state dict"):
        load_lpips_network(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read"):
        load_lpips_network(junk)
    with pytest.raises(ConfigError, match="is not a file"):
        load_config("pat_fmnist_cpu", [f"method.pat.lpips_model={tmp_path / 'nope.pt'}"])


ATTACKS = {
    "fast_lpa+bisection": lambda m, x, y, L, b: fast_lpa(m, x, y, L, b, 10, projection="bisection"),
    "lpa": lambda m, x, y, L, b: lpa(m, x, y, L, b, 10, rounds=2),
    "ppgd": lambda m, x, y, L, b: ppgd(m, x, y, L, b, 10),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_stays_within_its_lpips_bound_and_raises_the_loss(name):
    model, x, y = _fitted()
    x, y = x[:24], y[:24]
    lp = LPIPS.of_model(model)
    x_adv = ATTACKS[name](model, x, y, lp, 0.5)
    with torch.no_grad():
        d = lp.distance(x, x_adv)
        clean, adv = margin_loss(model(x), y), margin_loss(model(x_adv), y)
        acc_clean, acc_adv = (model(x).argmax(1) == y).float().mean(), (model(x_adv).argmax(1) == y).float().mean()
    assert float(acc_clean) > 0.5, "the fitted model classifies most images"
    assert float(d.max()) <= 0.5 + 1e-5, f"{name} left the LPIPS ball: {float(d.max())}"
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert float(adv.mean()) > float(clean.mean()) + 0.1 and float(acc_adv) < float(acc_clean)


def test_fast_lpa_without_projection_is_pats_soft_bound():
    model, x, y = _fitted()
    lp = LPIPS.of_model(model)
    torch.manual_seed(0)
    soft = fast_lpa(model, x[:24], y[:24], lp, 0.25, 10)
    torch.manual_seed(0)
    hard = fast_lpa(model, x[:24], y[:24], lp, 0.25, 10, projection="bisection")
    with torch.no_grad():
        d_soft, d_hard = lp.distance(x[:24], soft), lp.distance(x[:24], hard)
    assert float(d_hard.max()) <= 0.25 + 1e-5 and float(d_soft.max()) > 0.25, "the penalty alone does not hold the bound"
    inside = d_soft <= 0.25
    assert torch.equal(hard[inside], soft[inside]), "the projection leaves examples inside the ball as they are"


@pytest.mark.parametrize("name", ["lpa", "ppgd"])
def test_bound_zero_returns_the_clean_inputs(name):
    model, x, y = _fitted(5)
    out = ATTACKS[name](model, x[:8], y[:8], LPIPS.of_model(model), 0.0)
    assert torch.equal(out, x[:8])


def test_attacks_touch_no_parameter_gradient_and_restore_the_mode():
    model, x, y = _fitted(5)
    model.train()
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    for attack in ATTACKS.values():
        attack(model, x[:8], y[:8], LPIPS.of_model(model), 0.5)
    assert model.training
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n]), n
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), f"BN statistics changed: the attack ran in train mode ({k})"


def _pat(**kw) -> PAT:
    return PAT(PATSettings(**{"steps": 3, **kw}), AUG, UNUSED_PGD)


def test_pat_attacks_in_eval_mode_and_updates_with_bn_in_train_mode():
    method = _pat(only_attack_correct=False)
    model, _, _ = _fitted(5)
    modes: list[tuple[str, bool]] = []
    phase = {"now": "attack"}
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda m, i: modes.append((phase["now"], m.training)))
    real_loss = PAT.loss

    def loss(self, model, views, weights):
        phase["now"] = "update"
        return real_loss(self, model, views, weights)

    method.loss = loss.__get__(method)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method.step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), make_batch(_data(), torch.arange(16)),
                PhaseTimer())
    attack_modes = [t for p, t in modes if p == "attack"]
    update_modes = [t for p, t in modes if p == "update"]
    assert len(attack_modes) > 3 and set(attack_modes) == {False}, "Fast-LPA runs in eval mode"
    assert update_modes == [True], "one update forward, on the adversarial view, BN in train mode (PAT's code)"


def test_pat_attacks_only_the_correctly_classified_examples():
    model, x, y = _fitted()
    y_wrong = y.clone()
    y_wrong[:8] = (y[:8] + 1) % 10  # these are now misclassified
    torch.manual_seed(0)
    x_adv = _pat().adversarial(model, x[:24], y_wrong[:24], UNUSED_PGD)
    with torch.no_grad():
        correct = model(x[:24]).argmax(1) == y_wrong[:24]
    assert torch.equal(x_adv[~correct], x[:24][~correct]) and (~correct).sum() >= 8
    assert (x_adv[correct] - x[:24][correct]).flatten(1).abs().amax(1).min() > 0
    torch.manual_seed(0)
    every = _pat(only_attack_correct=False).adversarial(model, x[:24], y_wrong[:24], UNUSED_PGD)
    assert not torch.equal(every[~correct], x[:24][~correct])


def test_pat_clips_gradient_values_before_the_step():
    model, _, _ = _fitted(2)
    batch = make_batch(_data(), torch.arange(16))
    for clip, bound in ((1e-4, 1e-4), (None, None)):
        m = copy.deepcopy(model)
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        torch.manual_seed(0)
        _pat(clip_grad=clip).step(m, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), batch, PhaseTimer())
        change = max(float((p.detach() - before[n]).abs().max()) for n, p in m.named_parameters())
        if bound is None:
            assert change > 1e-3
        else:
            assert change <= bound + 1e-6  # float32 rounding of p - lr g


def test_pat_clips_after_a_gradient_hook_registered_before_training():
    """torchrun's gradient averaging is an optimizer pre-hook registered when training starts; the clip
    must see its result. A stand-in hook that scales the gradients by 1000 runs first, then the clip."""
    model, _, _ = _fitted(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    def scale(optimizer, args, kwargs):
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.mul_(1000.0)

    opt.register_step_pre_hook(scale)
    torch.manual_seed(0)
    _pat(clip_grad=1e-4).step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                              make_batch(_data(), torch.arange(16)), PhaseTimer())
    change = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    assert 5e-5 < change <= 1e-4 + 1e-6


def test_pat_weighted_loss_and_acs_head_gradients_at_its_own_examples():
    method = _pat()
    model, _, _ = _fitted()
    data = _data()
    batch = make_batch(data, torch.arange(10))
    torch.manual_seed(5)
    rows = method.head_gradients(model, batch)
    torch.manual_seed(5)  # the same random start: the same Fast-LPA examples
    x_adv = method.adversarial(model, batch.images, batch.labels, UNUSED_PGD)
    head = model.projector[0]
    for i in range(10):
        loss = F.cross_entropy(model(x_adv[i:i + 1]), batch.labels[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        assert torch.allclose(rows[i], torch.cat([gw.flatten(), gb]), atol=1e-5), i
    # a weighted GradMatch coreset selected on those gradients; its weights reach PAT's loss per example
    sel = GradMatchSelector(CoresetConfig(selector="gradmatch", unit="sample", fraction=0.25), seed=0)
    result = sel.select(model, method, data, torch.arange(40), torch.arange(0), 12, 16)
    assert result.weights is not None and float(result.weights.mean()) == pytest.approx(1.0)
    views = method.attack(model, method.make_views(make_batch(data, result.positions)), UNUSED_PGD)
    model.train()
    loss, _ = method.loss(model, views, result.weights)
    ce = F.cross_entropy(model(views.adversarial[0]), data.labels[result.positions], reduction="none")
    assert float(loss.detach()) == pytest.approx(float((result.weights * ce).mean().detach()), rel=1e-5)
    assert float(loss.detach()) != pytest.approx(float(ce.mean().detach()), rel=1e-3), "the weights are not all equal"


def test_pat_config_rules():
    cfg = load_config("pat_fmnist_cpu")
    assert cfg.method.name == "pat" and cfg.method.params.bound == 0.5
    with pytest.raises(ConfigError, match="candidate_attack_steps"):
        load_config("pat_fmnist_cpu", ["coreset.selector=rcs", "coreset.rcs.candidate_attack_steps=1"])
    with pytest.raises(ConfigError, match="proj_layers=1"):
        load_config("pat_fmnist_cpu", ["model.proj_layers=3"])
    published = load_config("pat_cifar10")
    e, kappa, f = 100, 0.5, published.coreset.fraction  # ACS's warm start (c = f), PAT's re-selection every 15
    assert published.coreset.selector == "gradmatch" and published.coreset.every == 15
    assert published.coreset.warmup_epochs == round(f * kappa * e) and published.train.epochs == 25 + round((1 - kappa) * e)
