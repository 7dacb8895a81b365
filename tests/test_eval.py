"""Evaluation package: linear probes, robust accuracy, gradient-masking sanity checks, report.

A tiny dual-BN CNN (random weights, BatchNorm statistics calibrated on the data) on
synthetic 28x28 images: 10 classes of binary textures (stripes, checkerboards, dots) at
random phases, so random conv features + global pooling separate them linearly.
"""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

from robustssl.config import EvalConfig
from robustssl.data.dataset import ImageDataset
from robustssl.eval import (
    AttackResult,
    LinearEvalModel,
    SanityCheckWarning,
    autoattack_accuracy,
    check_attack_order,
    clean_accuracy,
    evaluate_classifier,
    evaluate_encoder,
    format_table,
    lr_at,
    pgd_accuracy,
    summary_rows,
    train_alf,
    train_slf,
    train_subset,
    write_report,
)
from robustssl.models import ModelSpec, bn_branch, build_model, current_branch, export_encoder
from robustssl.run_setup import hardware

EPS = 2 / 255
SPEC = ModelSpec(
    arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=2, mean=(0.5,), std=(0.5,)
)


pytestmark = pytest.mark.usefixtures("one_thread")


def textures(n: int, seed: int, split: str) -> ImageDataset:
    """n binary 28x28 images, class k = texture k in the central 16x16 square at a random phase."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    r = torch.arange(28).view(28, 1).expand(28, 28)
    c = torch.arange(28).view(1, 28).expand(28, 28)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        pr, pc = torch.randint(0, 12, (2,), generator=g).tolist()
        rr, cc = r + pr, c + pc
        patterns = [
            torch.ones(28, 28, dtype=torch.bool), (rr // 2) % 2 == 0, (cc // 2) % 2 == 0, (rr // 2 + cc // 2) % 2 == 0,
            (rr // 4) % 2 == 0, (cc // 4) % 2 == 0, (rr // 4 + cc // 4) % 2 == 0, ((rr + cc) // 3) % 2 == 0,
            ((rr - cc + 60) // 3) % 2 == 0, (rr % 6 == 0) & (cc % 6 == 0),
        ]
        images[i, 0, 6:22, 6:22] = patterns[int(labels[i])][6:22, 6:22].to(torch.uint8) * 255
    return ImageDataset(images, labels, torch.arange(n), "textures", split, [str(k) for k in range(10)])


def calibrated_encoder(train: ImageDataset):
    """A random tiny encoder whose BN running statistics (both branches) are the data's."""
    torch.manual_seed(0)
    model = build_model(SPEC)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the statistics
    model.train()
    x = train.images.float() / 255
    with torch.no_grad():
        for branch in ("normal", "pgd"):
            with bn_branch(model, branch):
                model.features(x)
    return model.eval()


def small_cfg(**kw) -> EvalConfig:
    base = dict(
        protocols=["slf"], attacks=["pgd20"], eps=EPS, pgd_alpha=EPS / 4, linear_lr=0.5, linear_epochs=25,
        linear_batch_size=64, batch_size=200, seed=0,
    )
    base.update(kw)
    return EvalConfig(**base)


@pytest.fixture(scope="module")
def data():
    return textures(400, 0, "train"), textures(200, 1, "test")


@pytest.fixture(scope="module")
def encoder(data):
    return calibrated_encoder(data[0])


@pytest.fixture(scope="module")
def test_xy(data):
    test = data[1]
    return test.images.float() / 255, test.labels


@pytest.fixture(scope="module")
def slf_model(data, encoder):
    model = LinearEvalModel(copy.deepcopy(encoder), 10)
    summary = train_slf(model, data[0], small_cfg(), "cpu")
    return model, summary


class Rounding(nn.Module):
    """Gradient masking by input quantization: round() has zero gradient, so PGD never moves
    past its random start, and on binary images rounding also undoes that random start."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x))


class Noisy(nn.Module):
    """A randomized model (noise at test time): two passes over the same input disagree."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + 0.15 * torch.randn_like(x))


def failed(result: dict) -> list[str]:
    return [c["name"] for c in result["sanity"] if not c["passed"]]


# --- linear probes ---------------------------------------------------------------------------


def test_lr_schedule_drops_at_40_and_80_percent():
    lrs = [lr_at(e, 0.01, 25) for e in range(25)]
    assert lrs[:10] == [0.01] * 10
    assert all(abs(v - 0.001) < 1e-12 for v in lrs[10:20])
    assert all(abs(v - 0.0001) < 1e-12 for v in lrs[20:])


def test_slf_learns(slf_model, test_xy):
    model, summary = slf_model
    acc = clean_accuracy(model, *test_xy).accuracy
    assert acc > 0.4, f"SLF clean accuracy {acc} is not well above chance (0.1)"
    assert summary["epoch_loss"][-1] < summary["epoch_loss"][0]
    assert summary["train_examples"] == 400 and summary["lr_milestones"] == [10, 20]


def test_slf_is_deterministic_and_subset_is_seeded(data, encoder):
    cfg = small_cfg(linear_epochs=3, train_examples=100)
    heads = []
    for _ in range(2):
        model = LinearEvalModel(copy.deepcopy(encoder), 10)
        train_slf(model, data[0], cfg, "cpu")
        heads.append(model.head.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    a, b = train_subset(data[0], 100, 0), train_subset(data[0], 100, 0)
    assert len(a) == 100 and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, train_subset(data[0], 100, 1).indices)


def test_linear_eval_model_frozen_eval_mode_pgd_branch(encoder, test_xy):
    enc = copy.deepcopy(encoder)
    model = LinearEvalModel(enc, 10)
    assert model.branch == "pgd"
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert not model.encoder.training and model.head.training

    x = test_xy[0][:8]
    with torch.no_grad(), bn_branch(enc, "pgd"):
        expected = enc.eval().features(x)
    # Even with the encoder forced into train mode on the normal branch, features use eval + pgd,
    # leave the running statistics alone, and restore the encoder's flags.
    enc.train()
    with bn_branch(enc, "normal"):
        stats = [b.clone() for b in enc.buffers()]
        with torch.no_grad():
            got = model.features(x)
        assert current_branch(enc) == "normal" and enc.training
        assert all(torch.equal(a, b) for a, b in zip(stats, enc.buffers()))
    enc.eval()
    assert torch.allclose(got, expected)

    # Input gradients flow (attacks need them), parameter gradients are not accumulated.
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())

    single = build_model(
        ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_hidden=16, proj_out=8, mean=(0.5,), std=(0.5,))
    )
    assert LinearEvalModel(single, 10).branch is None
    with pytest.raises(ValueError):
        LinearEvalModel(single, 10, branch="pgd")


def test_alf_trains_head_on_adversarial_examples(data, encoder):
    cfg = small_cfg(protocols=["alf"], linear_epochs=2, train_examples=96, alf_steps=3)
    runs = []
    for _ in range(2):
        model = LinearEvalModel(copy.deepcopy(encoder), 10)
        summary = train_alf(model, data[0], cfg, "cpu")
        runs.append(model.head.weight.detach().clone())
    # the encoder (weights and BN statistics) is untouched by ALF training
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), model.encoder.state_dict().values()))
    assert torch.equal(runs[0], runs[1])  # seeded: attacks and shuffling repeat
    assert summary["attack"]["steps"] == 3 and summary["train_examples"] == 96
    assert all(torch.isfinite(torch.tensor(summary["epoch_loss"])))


# --- robust accuracy and sanity checks ------------------------------------------------------


def test_pgd_at_eps_zero_equals_clean(slf_model, test_xy):
    model, _ = slf_model
    x, y = test_xy[0][:64], test_xy[1][:64]
    clean = clean_accuracy(model, x, y, batch_size=32)
    zero = pgd_accuracy(model, x, y, 0.0, EPS / 4, 20, batch_size=32)
    assert torch.equal(clean.flags, zero.flags)
    attacked = pgd_accuracy(model, x, y, EPS, EPS / 4, 20, batch_size=32, seed=3)
    again = pgd_accuracy(model, x, y, EPS, EPS / 4, 20, batch_size=32, seed=3)
    assert torch.equal(attacked.flags, again.flags)
    assert attacked.accuracy < clean.accuracy
    rec = attacked.record()
    assert {"attack", "norm", "eps", "steps", "accuracy", "n_examples", "seed"} <= set(rec)
    assert rec["steps"] == 20 and rec["n_examples"] == 64 and rec["seed"] == 3


@pytest.fixture(scope="module")
def honest_with_autoattack(slf_model, test_xy):
    """evaluate_classifier with AutoAttack on 16 examples (the only AutoAttack run: ~10 s on a CPU);
    a spy keeps AutoAttack's per-example result."""
    import robustssl.eval.robust as robust_module

    model, _ = slf_model
    x, y = test_xy[0][:16], test_xy[1][:16]
    seen: dict[str, AttackResult] = {}

    def spy(*args, **kwargs):
        seen["autoattack"] = autoattack_accuracy(*args, **kwargs)
        return seen["autoattack"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(robust_module, "autoattack_accuracy", spy)
        result = evaluate_classifier(model, x, y, small_cfg(attacks=["pgd20", "autoattack"], batch_size=16))
    return result, seen["autoattack"], clean_accuracy(model, x, y)


@pytest.mark.slow
def test_autoattack_is_at_most_pgd20(honest_with_autoattack):
    result, aa_result, clean = honest_with_autoattack
    by_name = {r["attack"]: r for r in result["attacks"]}
    aa, pgd20 = by_name["autoattack"], by_name["pgd20"]
    assert aa["accuracy"] <= pgd20["accuracy"] <= result["clean"]["accuracy"]
    assert pgd20["accuracy"] > 0  # eps small enough that some examples survive, so all 4 sub-attacks run
    assert aa["steps"] == "standard" and aa["norm"] == "linf" and aa["n_examples"] == 16 and aa["seed"] == 0
    assert aa["sub_attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # Per-example worst case: an example counts as robust only if it was also classified correctly.
    assert aa_result.accuracy == aa["accuracy"]
    assert not (aa_result.flags & ~clean.flags).any()


def test_sanity_checks_pass_on_honest_model(honest_with_autoattack):
    result = honest_with_autoattack[0]
    assert failed(result) == []
    assert result["sanity_passed"]
    assert [c["name"] for c in result["sanity"]] == ["eps_zero", "attack_order", "large_eps", "above_chance"]
    assert "autoattack" in result["sanity"][1]["detail"] and "fgsm" in result["sanity"][1]["detail"]


def test_gradient_masking_fails_large_eps_check(slf_model, test_xy):
    model, _ = slf_model
    x, y = test_xy[0][:64], test_xy[1][:64]
    with pytest.warns(SanityCheckWarning, match="large_eps"):
        result = evaluate_classifier(Rounding(model), x, y, small_cfg(batch_size=64))
    # Zero gradients: PGD at eps=0.5 leaves the masked model as accurate as on clean data.
    assert failed(result) == ["large_eps"]
    assert result["sanity_attacks"]["large_eps"]["accuracy"] == result["clean"]["accuracy"] > 0.1
    assert not result["sanity_passed"]


def test_randomized_model_fails_eps_zero_check(slf_model, test_xy):
    model, _ = slf_model
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_classifier(Noisy(model), test_xy[0][:64], test_xy[1][:64], small_cfg(batch_size=64))
    # The noise makes the eps=0 pass disagree with the clean pass (other checks may fail too).
    assert "eps_zero" in failed(result)
    assert any(w.category is SanityCheckWarning and "'eps_zero' FAILED" in str(w.message) for w in caught)


def test_cw_attack_maximizes_the_clamped_margin_and_is_reported(slf_model, test_xy):
    from robustssl.eval.cw import margin_loss

    class Fixed(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    x = torch.tensor([[[[1.0, 3.0, 0.0]]], [[[0.0, 0.5, 90.0]]]])
    # example 0: y=0, best other 3 -> margin 2; example 1: y=1, best other 90 -> margin 89.5, clamped at kappa 50
    assert margin_loss(50.0)(Fixed(), torch.tensor([0, 1]))(x).item() == pytest.approx(2.0 + 50.0)

    model, _ = slf_model
    x, y = test_xy[0][:64], test_xy[1][:64]
    cfg = small_cfg(attacks=["pgd20", "cw"], batch_size=64)
    cfg.components["cw"] = cfg.component("cw").__class__(steps=10, kappa=5.0)
    result = evaluate_classifier(model, x, y, cfg)
    cw = {r["attack"]: r for r in result["attacks"]}["cw"]
    assert cw["steps"] == 10 and cw["loss"] == "CW margin, kappa 5" and cw["label"] == "CW (margin PGD)"
    assert cw["accuracy"] < result["clean"]["accuracy"] and result["sanity_passed"]
    assert "cw" in result["sanity"][1]["detail"]  # in the attack-order chain of its threat model


def test_attack_order_check_flags_inversions():
    def res(name: str, correct: int, n: int = 100) -> AttackResult:
        return AttackResult(name, "linf", EPS, 20, 0, torch.arange(n) < correct)

    clean, pgd = res("clean", 60), res("pgd20", 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SanityCheckWarning)
        assert check_attack_order(clean, pgd, res("autoattack", 38), res("fgsm", 45))["passed"]
        bad = check_attack_order(clean, pgd, res("autoattack", 41))  # AutoAttack: tolerance 0
        assert not bad["passed"] and "pgd20 0.4000 < autoattack 0.4100" in bad["detail"]
        assert not check_attack_order(clean, res("pgd20", 61))["passed"]  # PGD above clean
        # PGD-20 may exceed FGSM by one example or 1 %, not more.
        assert check_attack_order(clean, pgd, fgsm=res("fgsm", 39))["passed"]
        assert not check_attack_order(clean, pgd, fgsm=res("fgsm", 38))["passed"]


# --- the whole pipeline and the report --------------------------------------------------------


@pytest.fixture(scope="module")
def report(data, encoder):
    cfg = small_cfg(
        protocols=["slf", "alf"], n_examples=32, train_examples=160, linear_epochs=5, alf_steps=3,
        eps_curve=[1 / 255, 4 / 255],
    )
    before = [t.clone() for t in encoder.state_dict().values()]
    out = evaluate_encoder(encoder, data[0], data[1], cfg, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.state_dict().values()))
    assert all(p.requires_grad for p in encoder.parameters())  # the caller's model is untouched
    return out


def test_report_files_and_fields(report, tmp_path):
    paths = write_report(report, tmp_path, extra={"train_seconds": 1.5})
    assert paths["curve"].stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "SUBSET EVALUATION" in md and "PASS" in md and "## SLF" in md and "## ALF" in md

    rj = json.loads(paths["json"].read_text())
    assert rj["extra"] == {"train_seconds": 1.5}
    assert rj["test_subset"] == {"used": True, "n_examples": 32, "n_total": 200}
    assert rj["data"]["train"]["n_used"] == 160
    assert rj["encoder"]["bn_branch"] == "pgd" and rj["encoder"]["n_classes"] == 10
    assert rj["settings"]["eps"] == EPS and rj["settings"]["linear_epochs"] == 5
    assert rj["settings"]["hardware"] == hardware(torch.device("cpu"))  # the CPU and its kernels' instruction set
    assert set(rj["protocols"]) == {"slf", "alf"}
    for p in rj["protocols"].values():
        assert p["clean"]["n_examples"] == 32
        (pgd20,) = p["attacks"]
        for key in ("attack", "norm", "eps", "steps", "accuracy", "n_examples", "seed"):
            assert key in pgd20
        assert pgd20["attack"] == "pgd20" and pgd20["steps"] == 20 and pgd20["eps"] == EPS
        assert [r["eps"] for r in p["curve"]] == [0.0, 1 / 255, EPS, 4 / 255]
        assert p["curve"][2]["accuracy"] == pgd20["accuracy"]
        assert {c["name"] for c in p["sanity"]} == {"eps_zero", "attack_order", "large_eps", "above_chance"}
        assert all(isinstance(c["passed"], bool) and c["detail"] for c in p["sanity"])
    assert rj["sanity_passed"] == all(c["passed"] for p in rj["protocols"].values() for c in p["sanity"])


def test_format_table(report):
    text = format_table(summary_rows(report))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["protocol", "clean", "pgd20"]
    assert len(lines) == 4 and lines[2].startswith("SLF") and lines[3].startswith("ALF")


# --- registry ------------------------------------------------------------------------------------
# New names are imported inside the tests, so each test fails on its own on code that lacks them.


def test_registry_tables_drive_evaluation_and_import_cheaply():
    import subprocess
    import sys

    import robustssl.eval.evaluate as evaluate_module
    from robustssl.errors import ConfigError
    from robustssl.eval import train_aff
    from robustssl.eval.direct import train_direct
    from robustssl.eval.knn import train_knn
    from robustssl.eval.multicrop import multicrop_classifier, train_alf_mc, train_slf_mc
    from robustssl.eval.registry import ATTACKS, PROTOCOLS

    assert {n: p.train for n, p in PROTOCOLS.items()} == {
        "slf": train_slf, "alf": train_alf, "aff": train_aff, "slf-mc": train_slf_mc, "alf-mc": train_alf_mc,
        "direct": train_direct, "knn": train_knn,
    }
    assert list(ATTACKS) == ["pgd20", "autoattack", "pgd50x10", "cw", "ppgd", "lpa", "union"]
    assert [a.label for a in ATTACKS.values()] == ["PGD-20", "AutoAttack", "PGD-50x10", "CW (margin PGD)", "PPGD", "LPA", "Union"]
    assert ATTACKS["autoattack"].rank > ATTACKS["pgd50x10"].rank > ATTACKS["pgd20"].rank
    assert [n for n, p in PROTOCOLS.items() if p.finetunes_encoder] == ["aff"]
    assert [n for n, p in PROTOCOLS.items() if p.build is multicrop_classifier] == ["slf-mc", "alf-mc"]
    assert evaluate_module.PROTOCOLS is PROTOCOLS and evaluate_module.ATTACKS is ATTACKS  # one table, not a copy
    assert not hasattr(evaluate_module, "TRAINERS")
    with pytest.raises(ConfigError, match="valid protocols: slf, alf, aff, slf-mc, alf-mc, direct, knn; valid attacks: "
                                          "pgd20, autoattack, pgd50x10, cw, ppgd, lpa, union"):
        evaluate_encoder(None, None, None, small_cfg(protocols=["slf"], attacks=["nope"]), "cpu")
    code = "import sys, robustssl.eval.registry; print([m for m in sys.modules if 'autoattack' in m or 'matplotlib' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the above-chance check -------------------------------------------------------------------


def test_chance_level_encoder_fails_above_chance_check(data):
    """An encoder whose BN running variances are inf maps every image to the same features, so the
    probe predicts one class: 10 % clean on the balanced test set. It has no input gradients, so the
    masking checks all pass; only the above-chance check catches it."""
    broken = calibrated_encoder(data[0])
    for m in broken.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(float("inf"))
    cfg = small_cfg(n_examples=100, train_examples=100, linear_epochs=3)
    with pytest.warns(SanityCheckWarning, match="above_chance"):
        report = evaluate_encoder(broken, data[0], data[1], cfg, "cpu")
    slf = report["protocols"]["slf"]
    assert slf["clean"]["accuracy"] <= 0.15
    assert failed(slf) == ["above_chance"] and not report["sanity_passed"]
    assert report["settings"]["above_chance"]["min_clean_accuracy"] == pytest.approx(0.15)


# --- probe convergence ----------------------------------------------------------------------------


def test_probe_convergence_rule():
    from robustssl.eval.linear import probe_convergence

    lrs = [lr_at(e, 0.01, 25) for e in range(25)]
    # The Fashion-MNIST quickstart probe at lr 0.01: epoch 10 still made 3.4 % of the phase's decrease.
    underfit = [2.1889, 1.9412, 1.7685, 1.6605, 1.5860, 1.5300, 1.4858, 1.4493, 1.4182, 1.3913, 1.3770, 1.3747,
                1.3725, 1.3703, 1.3681, 1.3659, 1.3638, 1.3617, 1.3596, 1.3575, 1.3563, 1.3561, 1.3559, 1.3557, 1.3555]
    verdict = probe_convergence(underfit, lrs)
    assert not verdict["converged"] and verdict["first_phase_epochs"] == 10
    assert verdict["share_at_cut"] == pytest.approx((1.4182 - 1.3913) / (2.1889 - 1.3913))
    assert "epoch 10" in verdict["detail"] and "eval.linear_lr" in verdict["detail"]
    flat = [1.0, 0.7, 0.62, 0.6, 0.595, 0.594, 0.5935, 0.593, 0.5928, 0.5927] + [0.58] * 15
    assert probe_convergence(flat, lrs)["converged"]
    noisy = flat[:9] + [0.60] + [0.58] * 15  # a loss that rises at the cut (noise at a large lr) is flat
    assert probe_convergence(noisy, lrs)["converged"]
    small = [0.5 * v for v in flat]  # scale-free: the same shape at a smaller loss is as converged
    assert probe_convergence(small, lrs)["share_at_cut"] == pytest.approx(probe_convergence(flat, lrs)["share_at_cut"])
    steady = [2.3 - 0.001 * e for e in range(25)]  # a tiny lr: a slow, steady fall
    assert not probe_convergence(steady, lrs)["converged"]
    assert not probe_convergence([2.3] * 25, lrs)["converged"]  # the loss never fell
    assert not probe_convergence([2.3], [0.001])["converged"]  # one epoch cannot show convergence


def test_undertrained_probe_is_flagged_and_trained_probe_is_not(data, encoder, tmp_path):
    from robustssl.eval.linear import ProbeNotConvergedWarning

    well = small_cfg(linear_epochs=40, linear_lr=0.5)
    well.linear_standardize = True  # this encoder's raw features are ill-conditioned (see the next test)
    summary = train_slf(LinearEvalModel(copy.deepcopy(encoder), 10), data[0], well, "cpu")
    assert summary["convergence"]["converged"], summary["convergence"]["detail"]

    cfg = small_cfg(n_examples=50, train_examples=100, linear_epochs=1, linear_lr=1e-4)
    with pytest.warns(ProbeNotConvergedWarning, match="SLF linear probe did not converge"):
        report = evaluate_encoder(encoder, data[0], data[1], cfg, "cpu")
    assert not report["protocols"]["slf"]["training"]["convergence"]["converged"]
    assert any("did not converge" in note for note in report["notes"])
    paths = write_report(report, tmp_path)
    assert "THE PROBE DID NOT CONVERGE" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["protocols"]["slf"]["training"]["convergence"]["converged"] is False
    assert "NOT CONVERGED" in format_table(summary_rows(report))


def test_raw_features_probe_of_the_fixture_is_flagged(slf_model):
    """The fixture's probe (raw features, lr 0.5, 25 epochs) learns (test_slf_learns) but is still
    falling steeply when the lr is cut: the rule reports it, in the training summary."""
    conv = slf_model[1]["convergence"]
    assert not conv["converged"] and conv["share_at_cut"] > 0.02


def test_standardized_probe_folds_into_one_exact_linear_layer(data, encoder, test_xy):
    """With eval.linear_standardize the head trains on standardized features; the fold into W, b
    is exact, and what is evaluated and attacked is a plain linear head on the raw features."""
    cfg = small_cfg(linear_epochs=3, train_examples=100)
    cfg.linear_standardize = True  # the key the config adds; read with getattr
    model = LinearEvalModel(copy.deepcopy(encoder), 10)
    summary = train_slf(model, data[0], cfg, "cpu")
    assert summary["standardized_features"] and model.feature_mean is None and model.feature_std is None

    probe = LinearEvalModel(copy.deepcopy(encoder), 10)
    with torch.no_grad():
        feats = probe.features(test_xy[0][:40])
        probe.set_standardization(feats)
        probe.head.weight.normal_()
        expected = probe.logits(feats)
        probe.fold_standardization()
        assert probe.feature_mean is None
        assert torch.allclose(probe.logits(feats), expected, atol=1e-4, rtol=1e-5)
        assert torch.allclose(probe.head(feats), expected, atol=1e-4, rtol=1e-5)


# --- BN branch of dual-BN encoders ------------------------------------------------------------------


def test_export_with_trained_normal_branch_is_evaluated_on_normal(data, encoder, tmp_path):
    from robustssl.eval.classifier import UntrainedBranchWarning
    from robustssl.models import load_encoder
    from robustssl.models.export import read_export_metadata

    path = export_encoder(encoder, SPEC, tmp_path / "encoder.safetensors", trained_branches=["normal"])
    loaded, _ = load_encoder(path)
    trained = read_export_metadata(path)["trained_branches"]
    assert trained == ["normal"]
    cfg = small_cfg(n_examples=20, train_examples=60, linear_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedBranchWarning)  # the default branch is a trained one
        warnings.simplefilter("ignore", SanityCheckWarning)
        report = evaluate_encoder(loaded, data[0], data[1], cfg, "cpu", trained_branches=trained)
    assert report["encoder"]["bn_branch"] == "normal" and report["settings"]["bn_branch"] == "normal"
    assert report["encoder"]["branch_trained"] is True and report["settings"]["trained_branches"] == ["normal"]
    assert not any("branch" in note for note in report["notes"])

    with pytest.warns(UntrainedBranchWarning, match="'pgd' BN branch was never trained"):
        report = evaluate_encoder(loaded, data[0], data[1], cfg, "cpu", branch="pgd", trained_branches=trained)
    assert report["encoder"]["bn_branch"] == "pgd" and report["encoder"]["branch_trained"] is False
    assert any("'pgd' BN branch was never trained" in note for note in report["notes"])
    assert "'pgd' BN branch was never trained" in write_report(report, tmp_path)["markdown"].read_text()


def test_default_branch_rules(encoder):
    from robustssl.eval.classifier import default_branch

    assert default_branch(encoder) == "pgd"  # unknown: the published convention
    assert default_branch(encoder, ["normal", "pgd"]) == "pgd"
    assert default_branch(encoder, ["normal"]) == "normal"
    single = build_model(
        ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_hidden=16, proj_out=8, mean=(0.5,), std=(0.5,))
    )
    assert default_branch(single, ["normal"]) is None


# --- ALF trains on adversarial inputs ---------------------------------------------------------------


def test_alf_first_update_is_the_step_on_adversarial_inputs(data, encoder):
    """One batch, one epoch: SGD's first step is theta1 = theta0 - lr (grad + wd theta0), so the head
    after train_alf reveals the gradient ALF stepped on. It must not be the clean images' gradient,
    and the recorded loss (on the inputs trained on) must exceed the clean loss of the same head."""
    from torch.nn import functional as F

    from robustssl.eval.linear import WEIGHT_DECAY

    n = 64
    cfg = small_cfg(protocols=["alf"], linear_epochs=1, linear_batch_size=n, train_examples=n, eps=8 / 255,
                    pgd_alpha=2 / 255, alf_steps=5)
    model = LinearEvalModel(copy.deepcopy(encoder), 10)
    summary = train_alf(model, data[0], cfg, "cpu")

    ref = LinearEvalModel(copy.deepcopy(encoder), 10)
    ref.reset_head(cfg.seed)  # the head train_alf started from
    w0 = ref.head.weight.detach().clone()
    subset = train_subset(data[0], n, cfg.seed)
    clean_loss = F.cross_entropy(ref(subset.images.float() / 255), subset.labels)
    (g_clean,) = torch.autograd.grad(clean_loss, [ref.head.weight])
    lr = lr_at(0, cfg.linear_lr, cfg.linear_epochs)
    g_used = (w0 - model.head.weight.detach()) / lr - WEIGHT_DECAY * w0

    assert (g_used - g_clean).norm() > 0.2 * g_clean.norm(), "ALF stepped on the clean images' gradient"
    assert summary["epoch_loss"][0] > clean_loss.item() + 0.05, "ALF's training loss is the clean loss"
