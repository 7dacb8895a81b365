"""AFF (adversarial full finetuning with TRADES): the one TRADES loss, its KL attack on the one PGD,
the train/eval modes and BN branch of finetuning, and that the finetuned copy never reaches the
pretrained encoder (in memory, on disk, or in the other protocols of the same evaluation)."""
import copy
import hashlib
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustssl import api
from robustssl.attacks import PGDConfig, trades_adversarial
from robustssl.config import ConfigError, EvalConfig, load_config
from robustssl.data import AugmentSpec, ContrastiveAugment, DeviceLoader, ImageDataset
from robustssl.data.crop_flip import random_crop_flip
from robustssl.eval import PROTOCOLS, FinetuneClassifier, LinearEvalModel, evaluate_encoder, train_aff
from robustssl.eval.finetune import FinetuneSettings, finetune_trades
from robustssl.losses import trades_attack_loss, trades_kl, trades_loss
from robustssl.methods import ACL
from robustssl.methods.base import ContrastiveSettings
from robustssl.models import DualBatchNorm, ModelSpec, build_model
from robustssl.timer import PhaseTimer

from . import tiny
from .datafiles import structured_images, write_fashion_mnist

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=True, proj_hidden=16, proj_out=8, proj_layers=2,
                 mean=(0.5,), std=(0.25,))
TINY = tiny.run("attack.steps=1", "train.epochs=1")
EVAL_TINY = ["eval.n_examples=24", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[]",
             "eval.linear_epochs=2", "eval.aff_epochs=2", "eval.aff_batch_size=32", "eval.aff_steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 64) -> ImageDataset:
    images, labels = structured_images(n, 0)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train",
                        [str(k) for k in range(10)])


@pytest.fixture(scope="module")
def acl_model():
    """A dual-BN encoder after real ACL steps: its `normal` and `pgd` branches differ (checked)."""
    data = _data()
    torch.manual_seed(0)
    model = build_model(SPEC)
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0), 28, 1)
    method = ACL(ContrastiveSettings(tau=0.5), aug, PGDConfig(0.1, 0.04, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for batch in DeviceLoader(data, 32, seed=0).epoch(torch.arange(len(data)), 0):
        method.step(model, opt, sched, batch, PhaseTimer())
    for m in model.modules():
        if isinstance(m, DualBatchNorm):
            assert not torch.allclose(m.normal.running_mean, m.pgd.running_mean, atol=1e-4)
            assert not torch.allclose(m.normal.weight, m.pgd.weight, atol=1e-4)
    return model.eval(), data


# --- the TRADES loss ------------------------------------------------------------------------------


def _kl_loop(logits_adv: torch.Tensor, logits_nat: torch.Tensor) -> list[float]:
    """KL(softmax(nat) || softmax(adv)) of each row, written out in double precision."""
    out = []
    for a, n in zip(logits_adv.detach().double(), logits_nat.detach().double()):
        p, q = torch.softmax(n, 0), torch.softmax(a, 0)
        out.append(sum(float(p[k] * (torch.log(p[k]) - torch.log(q[k]))) for k in range(len(p))))
    return out


@pytest.mark.parametrize("beta", [0.0, 1.0, 6.0])
def test_trades_loss_matches_a_direct_reference(beta):
    torch.manual_seed(int(beta))
    nat, adv = torch.randn(7, 5, requires_grad=True), torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    loss, parts = trades_loss(nat, adv, y, beta)
    kl = _kl_loop(adv, nat)
    ce = [float(-torch.log_softmax(nat[i].double(), 0)[y[i]]) for i in range(7)]
    assert float(loss) == pytest.approx(sum(ce) / 7 + beta * sum(kl) / 7, rel=1e-5)
    assert parts["kl"] == pytest.approx(sum(kl) / 7, rel=1e-5) and parts["ce"] == pytest.approx(sum(ce) / 7, rel=1e-5)
    # TRADES's own formulation: CE(mean) + beta * KLDivLoss(sum)(log p_adv, p_nat) / B, gradients included
    # (the natural prediction is not detached in the training loss).
    ref = F.cross_entropy(nat, y) + beta * nn.KLDivLoss(reduction="sum")(F.log_softmax(adv, 1), F.softmax(nat, 1)) / 7
    (g,) = torch.autograd.grad(loss, nat)
    (g_ref,) = torch.autograd.grad(ref, nat)
    assert torch.allclose(g, g_ref, atol=1e-6)
    assert [float(v) for v in trades_kl(adv, nat, "none")] == pytest.approx(kl, rel=1e-5)


def test_trades_loss_weights_and_bad_input():
    torch.manual_seed(0)
    nat, adv, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    w = torch.tensor([0.0, 1.0, 2.0, 0.5])
    loss, _ = trades_loss(nat, adv, y, 6.0, weights=w)
    per = F.cross_entropy(nat, y, reduction="none") + 6.0 * torch.tensor(_kl_loop(adv, nat), dtype=torch.float32)
    assert float(loss) == pytest.approx(float((w * per).mean()), rel=1e-5)
    assert float(trades_loss(nat, adv, y, 6.0, weights=torch.ones(4))[0]) == pytest.approx(float(trades_loss(nat, adv, y, 6.0)[0]))
    with pytest.raises(ValueError, match="beta"):
        trades_loss(nat, adv, y, -1.0)
    with pytest.raises(ValueError, match="weights"):
        trades_loss(nat, adv, y, 6.0, weights=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        trades_kl(adv, nat, "batchmean")


def test_trades_attack_raises_the_kl_from_a_fixed_target_in_eval_mode(acl_model):
    model, data = acl_model
    clf = FinetuneClassifier(copy.deepcopy(model), 10, "pgd")
    torch.nn.init.normal_(clf.head.weight, std=0.5)
    x = data.images[:16].float() / 255
    clf.train()
    cfg = PGDConfig(eps=0.1, alpha=0.025, steps=5)
    x_adv = trades_adversarial(clf, x, cfg, generator=torch.Generator().manual_seed(0))
    assert clf.training, "the attack must restore train mode"
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clf.eval()
        target = clf(x)
        kl_adv = float(trades_kl(clf(x_adv), target, "sum"))
        kl_start = float(trades_kl(clf((x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)),
                                   target, "sum"))
    assert kl_adv > 10 * max(kl_start, 1e-6), (kl_adv, kl_start)
    loss = trades_attack_loss(clf, target.requires_grad_(True))
    xa = x_adv.clone().requires_grad_(True)
    loss(xa).backward()
    assert target.grad is None, "the attack's natural target must be held fixed (detached)"


# --- AFF: modes, branch, updates ---------------------------------------------------------------


def _settings(steps: int = 2, epochs: int = 1, seed: int = 0) -> FinetuneSettings:
    return FinetuneSettings(epochs=epochs, lr=0.05, batch_size=16, beta=6.0, attack=PGDConfig(0.1, 0.025, steps, random_start=False),
                            weight_decay=2e-4, lr_milestones=(0.6, 0.8), augment=True, seed=seed)


def test_aff_updates_in_train_mode_on_the_evaluated_branch_and_attacks_in_eval_mode(acl_model):
    model, data = acl_model
    clf = FinetuneClassifier(copy.deepcopy(model), 10, "pgd")
    duals = [m for m in clf.encoder.backbone.modules() if isinstance(m, DualBatchNorm)]
    calls: dict[str, list[bool]] = {"normal": [], "pgd": []}
    hooks = [getattr(d, b).register_forward_pre_hook(lambda m, a, b=b: calls[b].append(m.training))
             for d in duals[:1] for b in ("normal", "pgd")]
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    record = finetune_trades(clf, data.subset(torch.arange(32)), _settings(steps=2), "cpu")
    for h in hooks:
        h.remove()

    assert calls["normal"] == [], "the normal branch must never run"
    # per batch (2 batches): the attack's target and its 2 steps in eval mode, then the natural and
    # adversarial forwards of the update in train mode
    assert calls["pgd"] == [False, False, False, True, True] * 2
    after = clf.encoder.state_dict()
    for d_name in [f"backbone.{n}" for n, m in clf.encoder.backbone.named_modules() if isinstance(m, DualBatchNorm)]:
        for stat in ("running_mean", "running_var", "weight"):
            assert torch.equal(after[f"{d_name}.normal.{stat}"], before[f"{d_name}.normal.{stat}"])
            assert not torch.equal(after[f"{d_name}.pgd.{stat}"], before[f"{d_name}.pgd.{stat}"]), f"{d_name}.pgd.{stat}"
    convs = [k for k in after if k.startswith("backbone.convs")]
    assert all(not torch.equal(after[k], before[k]) for k in convs), "the encoder weights must be trained"
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("projector."))
    assert not clf.training and record["encoder_change"] > 0 and record["bn_branch"] == "pgd"
    assert record["update_mode"] == "train" and record["attack"]["mode"] == "eval" and len(record["epoch_loss"]) == 1


def test_aff_is_seeded_and_starts_from_a_zero_head(acl_model):
    model, data = acl_model
    cfg = EvalConfig(train_examples=32, aff_epochs=1, aff_batch_size=16, aff_steps=1, eps=0.1, pgd_alpha=0.025)
    results = []
    for seed in (1, 2):
        clf = FinetuneClassifier(copy.deepcopy(model), 10)
        torch.nn.init.normal_(clf.head.weight, generator=torch.Generator().manual_seed(seed))  # train_aff must zero it
        record = train_aff(clf, data, cfg, "cpu")
        results.append(torch.cat([clf.head.weight.flatten(), next(clf.encoder.backbone.parameters()).flatten()]))
    assert torch.equal(results[0], results[1])
    assert record["protocol"] == "aff" and record["head_init"] == "zeros" and record["train_examples"] == 32


def test_aff_protocol_copies_the_encoder_and_never_touches_other_protocols(acl_model):
    model, data = acl_model
    assert PROTOCOLS["aff"].finetunes_encoder and not PROTOCOLS["slf"].finetunes_encoder
    assert isinstance(PROTOCOLS["slf"].classifier(copy.deepcopy(model), 10, "pgd"), LinearEvalModel)
    before = copy.deepcopy(model.state_dict())
    cfg = dict(n_examples=16, train_examples=32, attacks=["pgd20"], eps=0.1, pgd_alpha=0.025, linear_epochs=2,
               aff_epochs=1, aff_batch_size=16, aff_steps=1, batch_size=64)
    both = evaluate_encoder(model, data, data, EvalConfig(protocols=["aff", "slf"], **cfg), "cpu")
    alone = evaluate_encoder(model, data, data, EvalConfig(protocols=["slf"], **cfg), "cpu")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert both["protocols"]["slf"]["training"]["epoch_loss"] == alone["protocols"]["slf"]["training"]["epoch_loss"]
    assert both["protocols"]["slf"]["clean"]["accuracy"] == alone["protocols"]["slf"]["clean"]["accuracy"]
    aff = both["protocols"]["aff"]
    assert aff["training"]["finetunes_encoder"] and aff["training"]["encoder_change"] > 0
    assert [c["name"] for c in aff["sanity"]] == ["eps_zero", "attack_order", "large_eps", "above_chance"]


def test_aff_through_the_cli_path_leaves_the_run_encoder_file_untouched(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)
    run = tmp_path / "run"
    api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={root}"])
    digest = hashlib.sha256((run / "encoder.safetensors").read_bytes()).hexdigest()
    report = api.evaluate(run, overrides=EVAL_TINY + ["eval.protocols=[aff]"])
    assert hashlib.sha256((run / "encoder.safetensors").read_bytes()).hexdigest() == digest
    aff = json.loads((run / "report.json").read_text())["protocols"]["aff"]
    assert aff["training"]["bn_branch"] == "pgd" and aff["training"]["epochs"] == 2 and aff["training"]["attack"]["steps"] == 2
    assert aff["attacks"][0]["attack"] == "pgd20" and report["protocols"]["aff"]["clean"]["n_examples"] == 24
    md = (run / "report.md").read_text()
    assert "## AFF" in md and "Full finetuning of encoder + head with TRADES" in md


def test_aff_settings_are_validated():
    with pytest.raises(ConfigError, match="eval.aff_lr must be > 0"):
        load_config("acl_fmnist_cpu", ["eval.aff_lr=0"])
    with pytest.raises(ConfigError, match="eval.aff_steps must be > 0"):
        load_config("acl_fmnist_cpu", ["eval.aff_steps=0"])
    with pytest.raises(ConfigError, match="eval.aff_beta must be >= 0"):
        load_config("acl_fmnist_cpu", ["eval.aff_beta=-1"])
    assert load_config("acl_fmnist_cpu", ["eval.protocols=[slf,aff]"]).eval.protocols == ["slf", "aff"]


# --- the finetuning augmentation ---------------------------------------------------------------


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image_and_seeded():
    torch.manual_seed(0)
    x = torch.rand(12, 2, 5, 6)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(out, random_crop_flip(x, 2, torch.Generator().manual_seed(3)))
    padded = F.pad(x, (2, 2, 2, 2))
    flipped = 0
    for i in range(12):
        windows = [padded[i, :, r : r + 5, c : c + 6] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or mirrored, f"image {i} is not a (flipped) window of its padded image"
        flipped += int(mirrored and not plain)
    assert 0 < flipped < 12
    same = random_crop_flip(x, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(12))


def test_finetuning_attack_step_is_its_own_setting_and_a_short_attack_is_warned():
    """eval.aff_alpha / postprocess.aft_alpha set the KL attack's step (unset: eval.pgd_alpha); a
    step that cannot reach eps in the given steps (3 x 0.01 < 0.1) is warned about."""
    import warnings as w

    from robustssl.eval.finetune import aff_settings
    from robustssl.postprocess.lpaft import aft_settings

    cfg = load_config("acl_fmnist_cpu", [])
    assert aff_settings(cfg.eval).attack.alpha == 0.04 and aft_settings(cfg.postprocess, cfg.eval).attack.alpha == 0.04
    short = load_config("acl_fmnist_cpu", ["eval.aff_alpha=null", "postprocess.aft_alpha=null"])
    with pytest.warns(UserWarning, match="cannot reach eps"):
        assert aff_settings(short.eval).attack.alpha == short.eval.pgd_alpha == 0.01
    with pytest.warns(UserWarning, match="postprocess.aft_alpha"):
        aft_settings(short.postprocess, short.eval)
    with w.catch_warnings():
        w.simplefilter("error")
        aff_settings(load_config("acl_cifar10", []).eval)  # 10 x 2/255 reaches 8/255
