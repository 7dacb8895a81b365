import pytest
import torch

from robustssl.models import DualBatchNorm, ModelSpec, bn_branch, build_model, current_branch, export_encoder, load_encoder


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
    with pytest.raises(ValueError, match="normal, pgd"), bn_branch(model, "adv"):
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
    path = export_encoder(model, tiny_spec, tmp_path / "enc.safetensors", trained_branches=["normal"])
    loaded, spec = load_encoder(path)
    assert spec == tiny_spec
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model.features(x), loaded.features(x))


def test_loaded_dual_bn_encoder_gives_the_features_of_the_branch_its_report_used(tmp_path, tiny_spec):
    """Issue #21, item 4: `load_encoder` in user code used the `normal` branch of an ACL encoder,
    while `evaluate` (and its report) used the trained robust `pgd` branch."""
    from robustssl.eval.classifier import choose_branch

    torch.manual_seed(0)
    model = build_model(tiny_spec).train()
    for branch in ("normal", "pgd"):  # different statistics per branch, as after ACL training
        with bn_branch(model, branch):
            model(torch.rand(8, 1, 12, 12) * (1.0 if branch == "normal" else 0.3))
    path = export_encoder(model.eval(), tiny_spec, tmp_path / "acl.safetensors", trained_branches=["normal", "pgd"])
    loaded, _ = load_encoder(path)  # user code: two lines from the file to features
    x = torch.rand(3, 1, 12, 12)
    feats = loaded.features(x)
    used, _ = choose_branch(loaded, None, ["normal", "pgd"])  # the branch evaluate and its report use
    assert current_branch(loaded) == used == "pgd"
    assert not loaded.training  # eval mode: BN running statistics, as evaluated
    with torch.no_grad(), bn_branch(model, used):
        assert torch.equal(feats, model.features(x))
    with torch.no_grad(), bn_branch(model, "normal"):
        assert not torch.allclose(feats, model.features(x))
    normal, _ = load_encoder(path, branch="normal")  # another branch, on request
    with torch.no_grad(), bn_branch(model, "normal"):
        assert torch.equal(normal.features(x), model.features(x))


def test_load_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="robustssl pretrain"):
        load_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="3 input channels"):
        build_model(ModelSpec(arch="cnn", in_channels=3, mean=(0.5,), std=(0.5,)))


# --- export metadata and damaged exports ------------------------------------------------------


def test_export_records_trained_branches_atomically(tmp_path, tiny_spec):
    from robustssl.models.export import read_export_metadata

    model = build_model(tiny_spec)
    path = export_encoder(model, tiny_spec, tmp_path / "enc.safetensors", trained_branches=["normal"])
    meta = read_export_metadata(path)
    assert meta["trained_branches"] == ["normal"] and meta["spec"]["arch"] == "cnn"
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # no temp file left behind
    # Exports that do not record the branches (older ones, or trained_branches=None) read as unknown.
    old = export_encoder(model, tiny_spec, tmp_path / "old.safetensors")
    assert read_export_metadata(old)["trained_branches"] is None
    assert load_encoder(old)[1] == tiny_spec
    with pytest.raises(ValueError, match="normal, pgd"):
        export_encoder(model, tiny_spec, tmp_path / "bad.safetensors", trained_branches=["adv"])


def _one_line_run_error(path, match):
    from robustssl.errors import RunError

    with pytest.raises(RunError, match=match) as info:
        load_encoder(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "robustssl pretrain" in message
    # no safetensors/JSON traceback chained to it
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_load_encoder_rejects_junk_file(tmp_path):
    junk = tmp_path / "encoder.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all" * 20)
    _one_line_run_error(junk, "not a safetensors file")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    _one_line_run_error(tiny, "not a safetensors file")


def test_load_encoder_rejects_truncated_export(tmp_path, tiny_spec):
    full = export_encoder(build_model(tiny_spec), tiny_spec, tmp_path / "full.safetensors").read_bytes()
    half = tmp_path / "encoder.safetensors"
    half.write_bytes(full[: len(full) // 2])
    _one_line_run_error(half, "truncated")


def test_load_encoder_rejects_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "encoder.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    _one_line_run_error(foreign, "not a robustssl encoder export")
