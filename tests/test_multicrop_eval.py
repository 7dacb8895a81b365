"""Multi-crop evaluation (slf-mc / alf-mc): EMP-SSL's multi-patch embedding aggregation.

The tiny dual-BN CNN and the texture data of test_eval; its `normal` branch is made to differ
from `pgd`, so a forward on the wrong branch shows. Every classifier here is the real
`MultiCropEvalModel`; the attacks are the evaluation's own.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from robustssl.config import EvalConfig, from_dict
from robustssl.data.augment import resample
from robustssl.errors import ConfigError
from robustssl.eval import PROTOCOLS, evaluate_encoder, pgd_accuracy, train_slf, write_report
from robustssl.eval.multicrop import CropSet, MultiCropEvalModel, crop_views, train_alf_mc
from robustssl.models import DualBatchNorm, bn_branch

from .test_eval import calibrated_encoder, small_cfg, textures

pytestmark = pytest.mark.usefixtures("one_thread")

RATIO = (3 / 4, 4 / 3)


@pytest.fixture(scope="module")
def data():
    return textures(400, 0, "train"), textures(200, 1, "test")


@pytest.fixture(scope="module")
def encoder(data):
    """The calibrated tiny encoder, with the `normal` branch's BN shifted so that the two branches give
    different features (evaluation must use `pgd`, the calibrated one)."""
    model = calibrated_encoder(data[0])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DualBatchNorm):
                m.normal.bias.add_(0.3)
    return model


def mc_model(encoder, crops: CropSet) -> MultiCropEvalModel:
    return MultiCropEvalModel(copy.deepcopy(encoder), 10, crops)


@pytest.fixture(scope="module")
def trained_mc(data, encoder):
    """slf-mc's classifier (4 crops of area 0.5-1), its head trained by the SLF trainer on crop-mean features."""
    model = mc_model(encoder, CropSet.draw(4, (0.5, 1.0), RATIO, True, seed=1))
    train_slf(model, data[0], small_cfg(train_examples=200, linear_epochs=10), "cpu")
    return model


def test_features_are_the_mean_of_the_encoder_features_on_each_crop(data, encoder):
    crops = CropSet.draw(5, (0.08, 1.0), RATIO, True, seed=3)
    model = mc_model(encoder, crops)
    x = data[1].images[:6].float() / 255
    reference = copy.deepcopy(encoder).eval()
    with torch.no_grad(), bn_branch(reference, "pgd"):  # dual BN: evaluation runs on the pgd branch
        per_crop = [reference.features(resample(x, crops.theta[k].expand(6, 2, 3), 28)) for k in range(crops.n)]
        whole = reference.features(x)
        normal = copy.deepcopy(reference)
        with bn_branch(normal, "normal"):
            per_crop_normal = [normal.features(resample(x, crops.theta[k].expand(6, 2, 3), 28)) for k in range(crops.n)]
    expected = torch.stack(per_crop).mean(0)
    got = model.features(x)
    assert got.shape == (6, encoder.feature_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, whole, atol=1e-3)  # the crops matter: not the full image's features
    assert not torch.allclose(got, torch.stack(per_crop_normal).mean(0), atol=1e-3)  # and the branch is pgd
    model.train()  # a caller's train mode reaches the head only: the encoder stays in eval mode
    torch.testing.assert_close(model.features(x), expected, rtol=1e-5, atol=1e-5)
    # crop-major layout of the batched call: row k*B + b is crop k of image b
    views = crop_views(x, crops.theta)
    torch.testing.assert_close(views[2 * 6 + 4], resample(x[4:5], crops.theta[2:3], 28)[0])


def test_crop_set_is_fixed_seeded_and_geometry_only(data, encoder):
    a, b = CropSet.draw(6, (0.08, 1.0), RATIO, True, seed=7), CropSet.draw(6, (0.08, 1.0), RATIO, True, seed=7)
    assert torch.equal(a.theta, b.theta)
    assert not torch.equal(a.theta, CropSet.draw(6, (0.08, 1.0), RATIO, True, seed=8).theta)
    # the crops follow the settings: area w*h within the scale range, flips drawn (some negative x-scales)
    area = (a.theta[:, 0, 0].abs() * a.theta[:, 1, 1])
    assert bool(((area >= 0.08 - 1e-6) & (area <= 1 + 1e-6)).all())
    assert bool((a.theta[:, 0, 0] < 0).any()) and bool((a.theta[:, 0, 0] > 0).any())

    cfg = EvalConfig(mc_crops=6, mc_seed=7, mc_crop_scale=[0.08, 1.0])
    torch.testing.assert_close(CropSet.from_config(cfg).theta, a.theta, rtol=0, atol=0)
    clf = PROTOCOLS["slf-mc"].classifier(copy.deepcopy(encoder), 10, "pgd", cfg)
    assert isinstance(clf, MultiCropEvalModel) and torch.equal(clf.crop_theta, a.theta)
    assert not isinstance(PROTOCOLS["slf"].classifier(copy.deepcopy(encoder), 10, "pgd", cfg), MultiCropEvalModel)

    x = data[1].images[:8].float() / 255
    first, second = clf(x), clf(x)
    assert torch.equal(first, second)  # the same crops on every call: a deterministic classifier
    other = PROTOCOLS["slf-mc"].classifier(copy.deepcopy(encoder), 10, "pgd", EvalConfig(mc_crops=6, mc_seed=8))
    other.head.load_state_dict(clf.head.state_dict())
    assert not torch.allclose(other(x), first)  # another seed, other crops, other logits
    # geometry only: a flat image stays the same flat image in every crop (no colour op)
    flat = torch.full((2, 1, 28, 28), 0.3)
    torch.testing.assert_close(crop_views(flat, a.theta), torch.full((12, 1, 28, 28), 0.3))


def record_calls(model: MultiCropEvalModel) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Hooks recording every image the classifier is called on and every batch the encoder sees."""
    images: list[torch.Tensor] = []
    encoder_inputs: list[torch.Tensor] = []
    handles = [
        model.register_forward_pre_hook(lambda _m, args: images.append(args[0].detach().clone())),
        model.encoder.normalize.register_forward_pre_hook(lambda _m, args: encoder_inputs.append(args[0].detach().clone())),
    ]
    return images, encoder_inputs, handles


def assert_crops_of_images(model: MultiCropEvalModel, images: list[torch.Tensor], encoder_inputs: list[torch.Tensor]) -> None:
    """Every encoder call saw exactly the fixed crops of the one image the classifier was called on."""
    assert len(images) == len(encoder_inputs) > 0
    for img, seen in zip(images, encoder_inputs):
        assert seen.shape[0] == model.crops.n * img.shape[0]
        torch.testing.assert_close(seen, crop_views(img, model.crop_theta), rtol=0, atol=1e-6)


def test_robust_evaluation_perturbs_the_image_once_then_crops(data, trained_mc):
    """PGD through the evaluation's own pgd_accuracy: every encoder input is the crop set of one
    image-space x_adv within the eps-ball (a delta per crop would give crops that are not crops
    of any attacked image, or encoder calls that are not the classifier's), and the robust flags
    are the classifier's predictions on the last x_adv."""
    model = trained_mc
    test = data[1]
    x, y = test.images[:16].float() / 255, test.labels[:16]
    eps = 8 / 255
    images, encoder_inputs, handles = record_calls(model)
    try:
        result = pgd_accuracy(model, x, y, eps, eps / 4, 5, seed=0, batch_size=16)
    finally:
        for h in handles:
            h.remove()
    assert len(images) == 5 + 1  # 5 attack steps + the prediction on x_adv
    assert_crops_of_images(model, images, encoder_inputs)
    for img in images[1:]:  # every attacked image: one delta, within the ball and [0, 1]
        assert float((img - x).abs().max()) <= eps + 1e-6 and float(img.min()) >= 0 and float(img.max()) <= 1
    x_adv = images[-1]
    assert float((x_adv - x).abs().max()) > eps / 2  # the attack moved the image
    with torch.no_grad():
        assert torch.equal(result.flags, model(x_adv).argmax(1) == y)
    clean = (model(x).argmax(1) == y)
    assert int(result.flags.sum()) < int(clean.sum())  # and it hurt


def test_alf_mc_trains_on_image_space_examples(data, encoder):
    model = mc_model(encoder, CropSet.draw(3, (0.5, 1.0), RATIO, True, seed=2))
    cfg = small_cfg(train_examples=32, linear_epochs=2, linear_batch_size=16, alf_steps=2)
    images, encoder_inputs, handles = record_calls(model)
    try:
        record = train_alf_mc(model, data[0], cfg, "cpu")
    finally:
        for h in handles:
            h.remove()
    assert record["protocol"] == "alf-mc" and record["multicrop"]["crops"] == 3 and record["multicrop"]["seed"] == 2
    assert len(images) == 2 * 2 * (2 + 1)  # epochs x batches x (attack steps + the head's step)
    assert_crops_of_images(model, images, encoder_inputs)


def test_multicrop_config_keys_are_validated():
    cfg = from_dict({}, ["eval.protocols=[slf,slf-mc,alf-mc]", "eval.mc_crops=8", "eval.mc_crop_scale=[0.25,0.25]"])
    assert cfg.eval.protocols == ["slf", "slf-mc", "alf-mc"] and cfg.eval.mc_crops == 8
    assert CropSet.from_config(cfg.eval).n == 8
    area = CropSet.from_config(cfg.eval).theta[:, 0, 0].abs() * CropSet.from_config(cfg.eval).theta[:, 1, 1]
    torch.testing.assert_close(area, torch.full((8,), 0.25))  # EMP-SSL's fixed-scale patches
    for bad, match in [
        ("eval.mc_crops=0", "eval.mc_crops must be > 0"),
        ("eval.mc_crop_scale=[0.5,0.2]", r"eval.mc_crop_scale must be \[low, high\] with 0 < low <= high <= 1"),
        ("eval.mc_crop_scale=[0.0,1.0]", "eval.mc_crop_scale must be"),
        ("eval.mc_crop_scale=[0.1,1.5]", "eval.mc_crop_scale must be"),
        ("eval.mc_crop_scale=[0.1]", "for example eval.mc_crop_scale="),
        ("eval.mc_crop_ratio=[2.0,1.0]", "eval.mc_crop_ratio must be"),
        ("eval.mc_seed=-1", "eval.mc_seed must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict({}, [bad])


@pytest.mark.slow
def test_evaluate_encoder_reports_slf_and_slf_mc(data, encoder, tmp_path):
    """The whole evaluation with both protocols. eps 0.2 (a smaller eps on the curve) and a well-trained
    probe, so that AutoAttack breaks its 4 examples within APGD and the test stays fast (Square's 5000
    queries on a surviving example take seconds on a CPU)."""
    cfg = small_cfg(
        protocols=["slf", "slf-mc"], attacks=["pgd20", "autoattack"], eps=0.2, pgd_alpha=0.05, eps_curve=[2 / 255],
        n_examples=24, autoattack_examples=4, linear_epochs=25, linear_standardize=True, linear_lr=0.2,
        mc_crops=4, mc_crop_scale=[0.5, 1.0], mc_seed=3,
    )
    report = evaluate_encoder(encoder, data[0], data[1], cfg, "cpu")
    paths = write_report(report, tmp_path)
    rj = json.loads(paths["json"].read_text())
    assert list(rj["protocols"]) == ["slf", "slf-mc"]
    assert rj["settings"]["mc_crops"] == 4 and rj["settings"]["mc_seed"] == 3
    assert "multicrop" not in rj["protocols"]["slf"]["training"]
    mc = rj["protocols"]["slf-mc"]["training"]["multicrop"]
    assert mc["crops"] == 4 and mc["seed"] == 3 and mc["scale"] == [0.5, 1.0] and "one l_inf delta on the image" in mc["threat_model"]
    for p in rj["protocols"].values():
        accs = {r["attack"]: r for r in p["attacks"]}
        assert set(accs) == {"pgd20", "autoattack"} and accs["autoattack"]["n_examples"] == 4
        assert all(math.isfinite(r["accuracy"]) for r in [p["clean"], *p["attacks"], *p["curve"]])
        assert [r["eps"] for r in p["curve"]] == [0.0, 2 / 255, 0.2]
        names = {c["name"] for c in p["sanity"]}
        assert names == {"eps_zero", "attack_order", "attack_order_autoattack_subset", "large_eps", "above_chance"}
    checks = {c["name"]: c["passed"] for c in rj["protocols"]["slf-mc"]["sanity"]}
    assert all(checks.values())  # eps_zero included: a fixed (deterministic) classifier
    assert not rj["protocols"]["slf-mc"]["attacks"][1]["autoattack_warnings"]  # AutoAttack saw no randomness
    md = paths["markdown"].read_text()
    assert "## SLF-MC" in md and "4 fixed crops (seed 3" in md and "one l_inf delta on the image" in md


def test_crops_take_the_training_crop_size_when_set():
    # a model trained on augment.crop_size views is evaluated on crops of that size (eval.mc_crop_size)
    crops = CropSet.draw(3, (0.2, 1.0), (0.75, 4 / 3), True, seed=1, size=12)
    x = torch.rand(2, 1, 28, 28)
    assert crop_views(x, crops.theta, crops.size).shape == (6, 1, 12, 12)
    assert crop_views(x, crops.theta).shape == (6, 1, 28, 28)
    assert crops.record()["size"] == 12
