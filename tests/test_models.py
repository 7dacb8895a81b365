import pytest
import torch

from robustssl.models import DualBatchNorm, ModelSpec, bn_branch, build_model, export_encoder, load_encoder


def test_dual_bn_routes_statistics_to_the_chosen_branch(tiny_spec):
    torch.manual_seed(0)
    model = build_model(tiny_spec).train()
    bns = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    assert bns and all(m.branch == "normal" for m in bns)
    x = torch.rand(8, 1, 12, 12)
    with bn_branch(model, "pgd"):
        assert all(m.branch == "pgd" for m in bns)
        model(x)
    assert all(m.branch == "normal" for m in bns)
    for m in bns:
        assert m.pgd.num_batches_tracked.item() == 1 and m.normal.num_batches_tracked.item() == 0
    model(x)
    assert all(m.normal.num_batches_tracked.item() == 1 for m in bns)


def test_dual_bn_branches_give_different_outputs_in_eval(tiny_spec):
    torch.manual_seed(0)
    model = build_model(tiny_spec).train()
    with bn_branch(model, "pgd"):
        model(torch.rand(16, 1, 12, 12) * 0.2)  # different statistics in the pgd branch
    model(torch.rand(16, 1, 12, 12))
    model.eval()
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        a = model.features(x)
        with bn_branch(model, "pgd"):
            b = model.features(x)
    assert not torch.allclose(a, b)


def test_bn_branch_rejects_unknown_branch(tiny_spec):
    model = build_model(tiny_spec)
    with pytest.raises(ValueError, match="normal, pgd"):
        with bn_branch(model, "adv"):
            pass


@pytest.mark.parametrize("arch,stem,size", [("resnet18", "cifar", 16), ("resnet18", "imagenet", 32), ("cnn", "cifar", 28)])
def test_backbones_shapes(arch, stem, size):
    spec = ModelSpec(arch=arch, width=4, stem=stem, in_channels=3, dual_bn=False, proj_hidden=8, proj_out=5, proj_layers=2)
    model = build_model(spec)
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 5)
    assert model.features(torch.rand(2, 3, size, size)).shape == (2, model.feature_dim)
    assert model.head().out_features == 5


def test_export_round_trip(tmp_path, tiny_spec):
    torch.manual_seed(0)
    model = build_model(tiny_spec).train()
    model(torch.rand(8, 1, 12, 12))  # move BN running stats off their init
    model.eval()
    path = export_encoder(model, tiny_spec, tmp_path / "enc.safetensors")
    loaded, spec = load_encoder(path)
    assert spec == tiny_spec
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model.features(x), loaded.eval().features(x))


def test_load_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="robustssl pretrain"):
        load_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="3 input channels"):
        build_model(ModelSpec(arch="cnn", in_channels=3, mean=(0.5,), std=(0.5,)))
