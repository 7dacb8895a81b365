"""The backbones of robust learning (issue #21, item 8): WideResNet-d-k, ResNet-50 (CIFAR and ImageNet
stems) with dual BN wherever BN is, selectable by model.arch, named in recipes, built and trained at
tiny widths; a timm model where timm imports."""
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustssl import api
from robustssl.config import ConfigError, load_config
from robustssl.models import DualBatchNorm, ModelSpec, bn_branch, build_model, export_encoder, load_encoder
from robustssl.models.dual_bn import convert_dual_bn
from robustssl.models.timm_backbone import timm_unavailable

from .datafiles import write_cifar10, write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TIMM_MISSING = timm_unavailable()
SKIP_TIMM = f"timm does not import here ({TIMM_MISSING}): it pulls torchvision, which needs a torch build it matches"


def plain_bns(model: nn.Module) -> list[nn.Module]:
    """BatchNorms that are not a branch of a DualBatchNorm."""
    inside = {id(m) for d in model.modules() if isinstance(d, DualBatchNorm) for m in (d.normal, d.pgd)}
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and id(m) not in inside]


@pytest.mark.parametrize(("arch", "extra", "features", "n_bn"), [
    ("wrn", {"depth": 10, "widen": 1}, 64, 3 * 2 + 1),  # 1 block per group, 2 BNs each, the final BN
    ("wrn", {"depth": 16, "widen": 2}, 128, 6 * 2 + 1),
    ("resnet50", {"width": 4, "stem": "cifar"}, 128, 1 + 16 * 3 + 4),  # stem, 16 bottlenecks, 4 shortcuts
    ("resnet50", {"width": 4, "stem": "imagenet"}, 128, 1 + 16 * 3 + 4),
])
def test_backbone_builds_with_dual_bn_everywhere_and_each_branch_keeps_its_own_statistics(arch, extra, features, n_bn):
    spec = ModelSpec(arch=arch, in_channels=3, dual_bn=True, proj_hidden=16, proj_out=8, **extra)
    torch.manual_seed(0)
    model = build_model(spec)
    assert model.feature_dim == features and not plain_bns(model)
    duals = [m for m in model.backbone.modules() if isinstance(m, DualBatchNorm)]
    assert len(duals) == n_bn
    x = torch.rand(4, 3, 32, 32)
    assert model.features(x).shape == (4, features) and model(x).shape == (4, 8)
    normal_before = duals[0].normal.running_mean.clone()
    with bn_branch(model, "pgd"):
        model(x)  # train mode: only the pgd branch's statistics move
    assert torch.equal(duals[0].normal.running_mean, normal_before)
    assert not torch.equal(duals[0].pgd.running_mean, normal_before)
    single = build_model(ModelSpec(arch=arch, in_channels=3, dual_bn=False, proj_hidden=16, proj_out=8, **extra))
    assert not any(isinstance(m, DualBatchNorm) for m in single.modules()) and plain_bns(single)


def test_full_size_backbones_have_the_published_parameter_counts():
    def count(**kw):
        backbone = build_model(ModelSpec(in_channels=3, dual_bn=False, **kw)).backbone
        return sum(p.numel() for p in backbone.parameters())
    assert round(count(arch="wrn", depth=28, widen=10) / 1e6, 1) == 36.5  # WRN-28-10
    assert round(count(arch="wrn", depth=34, widen=10) / 1e6, 1) == 46.2  # WRN-34-10
    assert round(count(arch="resnet50", stem="imagenet") / 1e6, 1) == 23.5  # torchvision's 25.6 M less its 2.05 M fc


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(ConfigError, match=r"model.depth=27: .*6n \+ 4"):
        load_config("trades_wrn34_cifar10", ["model.depth=27"])


def test_new_architectures_export_and_load_back(tmp_path):
    spec = ModelSpec(arch="wrn", depth=10, widen=1, in_channels=1, mean=(0.5,), std=(0.25,), proj_hidden=16, proj_out=8)
    model = build_model(spec).eval()
    path = export_encoder(model, spec, tmp_path / "wrn.safetensors", trained_branches=["normal", "pgd"])
    loaded, got = load_encoder(path)
    assert got == spec
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad(), bn_branch(model, "pgd"):
        assert torch.equal(loaded.features(x), model.features(x))


def test_trades_wrn34_recipe_trains_a_step_at_tiny_width(tmp_path):
    """The recipe itself (data format, method, attack, optimizer), with only the size turned down."""
    write_cifar10(tmp_path / "c10", per_batch=8, n_test=4)
    cfg = load_config("trades_wrn34_cifar10")
    assert (cfg.model.arch, cfg.model.depth, cfg.model.widen) == ("wrn", 34, 10)
    result = api.pretrain("trades_wrn34_cifar10", tmp_path / "run", overrides=[
        f"data.root={tmp_path / 'c10'}", "data.download=false", "model.depth=10", "model.widen=1", "optim.batch_size=8",
        "attack.steps=1", "train.epochs=1", "train.device=cpu", "train.progress=false"])
    assert result.steps == 5
    loaded, spec = load_encoder(tmp_path / "run" / "encoder.safetensors")
    assert spec.arch == "wrn" and spec.depth == 10 and loaded.head_trained


@pytest.mark.parametrize(("recipe", "arch"), [("acl_resnet50_cifar10", "resnet50"), ("acl_rcs_wrn28_imagenet32", "wrn")])
def test_acl_with_the_new_backbones_trains_at_tiny_width(tmp_path, recipe, arch):
    assert load_config(recipe).model.arch == arch
    root = write_fashion_mnist(tmp_path / "fm", n_train=32, n_test=8)
    tiny = {"resnet50": ["model.width=2"], "wrn": ["model.depth=10", "model.widen=1"]}[arch]
    api.pretrain(recipe, tmp_path / "run", overrides=[
        "data.name=fashion-mnist", f"data.root={root}", "data.image_size=null", "data.channels=null", "data.stream=false",
        "coreset.selector=full", "model.proj_hidden=16", "model.proj_out=8", "optim.batch_size=16", "attack.steps=1",
        "train.epochs=1", "train.device=cpu", "train.progress=false", *tiny])
    assert load_encoder(tmp_path / "run" / "encoder.safetensors")[1].arch == arch


class BNReLU(nn.BatchNorm2d):
    """A BatchNorm fused with its activation, as libraries define them (timm's BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def test_convert_dual_bn_makes_every_batchnorm_dual_and_keeps_fused_activations():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), BNReLU(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 8, 8)
    ref = net.eval()(x)
    convert_dual_bn(net.train())
    assert not plain_bns(net) and sum(isinstance(m, DualBatchNorm) for m in net.modules()) == 2
    assert torch.equal(net.eval()(x), ref)  # the normal branch is the original layer, activation included
    with bn_branch(net, "pgd"):
        assert torch.equal(net(x), ref)  # the pgd branch starts as a copy of it


@pytest.mark.skipif(TIMM_MISSING is not None, reason=SKIP_TIMM)
def test_a_timm_model_is_a_dual_bn_backbone_where_timm_imports():
    spec = ModelSpec(arch="timm", timm_name="resnet10t", in_channels=1, mean=(0.5,), std=(0.25,), proj_hidden=16, proj_out=8)
    model = build_model(spec)
    assert not plain_bns(model) and any(isinstance(m, DualBatchNorm) for m in model.modules())
    assert model.features(torch.rand(2, 1, 32, 32)).shape == (2, model.feature_dim)


@pytest.mark.skipif(TIMM_MISSING is None, reason="timm imports here; the config accepts model.arch=timm")
def test_arch_timm_without_timm_is_a_config_error_that_says_why():
    with pytest.raises(ConfigError, match="model.arch=timm needs the timm package, which does not import here"):
        load_config("acl_fmnist_cpu", ["model.arch=timm", "model.timm_name=resnet10t"])
    with pytest.raises(ConfigError, match="needs model.timm_name"):
        load_config("acl_fmnist_cpu", ["model.arch=timm"])
