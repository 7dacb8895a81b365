"""Selectors as the papers' code runs them, and their settings: ACS's batch-wise GradMatchPB /
CRAIGPB (`coreset.unit=batch`, atoms = mean gradients of fixed minibatches of the selector's own
batch size), the class-balanced budget of supervised RCS, the warning when whole batches round a
fraction far off, the unweighted ablation of ACS's weights, and `coreset.<selector>.*` keys with
the old flat keys as deprecated aliases."""
from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.config import LEGACY_RCS_KEYS, ConfigError, CoresetConfig, from_dict, load_config, to_dict
from robustssl.coreset.acs import CraigSelector, CraigSettings, GradMatchSelector, GradMatchSettings
from robustssl.coreset.class_budget import class_budgets
from robustssl.coreset.craig import facility_location
from robustssl.coreset.gradmatch import nonnegative_omp
from robustssl.coreset.greedy import greedy_select
from robustssl.coreset.rcs import RCSSettings
from robustssl.coreset.schedule import CoresetRoundingWarning, CoresetSchedule
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset, load_dataset
from robustssl.data.batch import make_batch
from robustssl.methods import PGDAT
from robustssl.methods.supervised import AdversarialTrainingSettings
from robustssl.models import ModelSpec, build_model
from robustssl.timer import PhaseTimer

from .datafiles import structured_images, write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = ModelSpec(arch="cnn", width=4, in_channels=1, dual_bn=False, proj_layers=1, proj_out=10, proj_bn=False,
                 mean=(0.5,), std=(0.25,))
TINY = ["model.width=4", "optim.batch_size=16", "train.progress=false", "train.log_every_steps=1", "attack.steps=1"]


def _trained_pgd_at(n: int = 64):
    """A PGD-AT model after a few steps, its method (deterministic attack) and labelled data."""
    images, labels = structured_images(n, seed=3)
    data = ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "synthetic", "train")
    method = PGDAT(AdversarialTrainingSettings(attack_mode="eval"), ContrastiveAugment(AugmentSpec(), 28, 1), PGDConfig(0.1, 0.03, 2, random_start=False))
    torch.manual_seed(0)
    model = build_model(SPEC)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for i in range(4):
        method.step(model, opt, sched, make_batch(data, torch.arange(16 * i, 16 * i + 16)), PhaseTimer())
    return model, method, data


def _per_example_gradients(model, method, data, pool):
    return torch.cat([method.head_gradients(model, make_batch(data, pool[s : s + 8])) for s in range(0, len(pool), 8)])


@pytest.mark.parametrize("name", ["gradmatch", "craig"])
def test_batch_unit_picks_fixed_minibatches_by_their_mean_gradients_as_acs(name):
    """coreset.unit=batch (ACS's GradMatchPB / CRAIGPB): the pool in order is cut into fixed
    minibatches of the selector's own batch size (here 4, the training batch 16); the atoms are
    the minibatches' mean gradients; every image of a picked minibatch is trained with its weight.
    The picks equal OMP / facility location (squared distances) run on those means directly."""
    model, method, data = _trained_pgd_at()
    pool = torch.arange(4, 60)  # 56 images: 14 minibatches of 4
    settings = GradMatchSettings(batch_size=4) if name == "gradmatch" else CraigSettings(batch_size=4)
    cfg = CoresetConfig(selector=name, unit="batch", fraction=0.3, settings={name: settings})
    selector = (GradMatchSelector if name == "gradmatch" else CraigSelector)(cfg, seed=0)
    assert selector.unit_size(16) == 4
    budget = 4
    result = selector.select(model, method, data, pool, torch.arange(0), budget, 16)
    means = _per_example_gradients(model, method, data, pool).reshape(14, 4, -1).mean(1)
    if name == "gradmatch":
        omp = nonnegative_omp(means, means.sum(0), budget)
        expected = omp.support[omp.weights > 0].tolist()
    else:
        expected = facility_location(means, budget).picks.tolist()
    assert len(expected) == budget  # no random filling in this case
    picked = sorted({int(p - 4) // 4 for p in result.positions})
    assert picked == sorted(expected)
    assert result.positions.tolist() == sorted(int(4 + 4 * b + i) for b in expected for i in range(4))  # whole minibatches
    assert result.weights is not None and float(result.weights.mean()) == pytest.approx(1.0)
    per_batch = result.weights.reshape(budget, 4)
    assert torch.equal(per_batch, per_batch[:, :1].expand(-1, 4)), "one weight per minibatch"


def test_schedule_counts_batch_units_in_the_selectors_own_batch_size():
    cfg = CoresetConfig(selector="gradmatch", unit="batch", fraction=0.3, warmup_epochs=0,
                        settings={"gradmatch": GradMatchSettings(batch_size=20)})
    sched = CoresetSchedule(cfg, epochs=1, n=1000, batch_size=128, seed=0)
    assert sched.unit_size == 20 and sched.budget() == round(0.3 * 50) and sched.coreset_size() == 300
    default = CoresetSchedule(CoresetConfig(selector="craig", unit="batch", fraction=0.3), epochs=1, n=1000, batch_size=100, seed=0)
    assert default.unit_size == 100 and default.coreset_size() == 300  # None: the training batch size, as ACS's loader
    sample = CoresetSchedule(CoresetConfig(selector="craig", unit="sample", fraction=0.3), epochs=1, n=1000, batch_size=100, seed=0)
    assert sample.unit_size == 1 and sample.coreset_size() == 300  # per-class per-sample is still there


@pytest.mark.parametrize("refresh_every", [1, 3])
def test_class_caps_give_the_sequential_greedy_restricted_to_classes_not_yet_full(refresh_every):
    g = torch.Generator().manual_seed(0)
    grads, w0 = torch.randn(30, 6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    groups = torch.arange(30) % 3
    groups[:12] = 0  # class 0 is large, and its rows score high: an uncapped greedy takes mostly class 0
    grads[groups == 0] += w0  # aligned with the validation gradient (about 0.9 w0)
    caps = torch.tensor([3, 2, 2])

    def val(w):
        return w0 - 0.1 * w

    got = greedy_select(grads, w0, val, 7, 0.05, refresh_every, caps=(groups, caps))
    # the reference: one pick at a time, re-scoring only at refreshes, skipping full classes
    w, taken, left, picks = w0.clone(), set(), caps.clone(), []
    while len(picks) < 7:
        scores = grads @ val(w)
        block = []
        for i in torch.argsort(scores, descending=True, stable=True).tolist():
            if i not in taken and left[groups[i]] > 0 and len(block) < min(refresh_every, 7 - len(picks)):
                block.append(i)
                taken.add(i)
                left[groups[i]] -= 1
        picks += block
        w = w - 0.05 * grads[block].sum(0)
    assert got.picks.tolist() == picks
    assert torch.bincount(groups[got.picks], minlength=3).tolist() == caps.tolist()
    assert torch.bincount(groups[greedy_select(grads, w0, val, 7, 0.05).picks], minlength=3)[0] > 3  # caps matter here


@pytest.fixture(scope="module")
def pgd_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sup")
    root = write_fashion_mnist(tmp / "fm", n_train=120, n_test=16)
    run = tmp / "run"
    api.pretrain("pgd_at_fmnist_cpu", run, overrides=TINY + [f"data.root={root}", "train.epochs=1"])
    return run


def test_supervised_rcs_on_single_images_has_a_class_balanced_budget(pgd_run):
    """Supervised RCS picking single images gets per-class budgets proportional to class size (as
    GradMatch and CRAIG), instead of letting the greedy collapse onto a few classes; the old flat
    keys still work here (deprecated aliases)."""
    over = ["coreset.method=rcs", "coreset.unit=sample", "coreset.fraction=0.25", "coreset.rd_steps=1", "coreset.val_fraction=0.1"]
    with pytest.warns(FutureWarning, match="coreset.method is deprecated"):
        sel = api.select(pgd_run, overrides=over, force=True)
    cfg = load_config(pgd_run / "config.yaml")
    train = load_dataset("fashion-mnist", "train", root=cfg.data.root)
    schedule = CoresetSchedule(load_config(pgd_run / "config.yaml", over).coreset, 1, len(train), 16, cfg.train.seed)
    pool_counts = torch.bincount(train.labels[schedule.pool], minlength=10)
    picked = torch.bincount(train.labels[torch.tensor(sel["sample_ids"])], minlength=10)
    assert picked.tolist() == class_budgets(pool_counts, schedule.budget()).tolist()
    off = api.select(pgd_run, overrides=[*over, "coreset.rcs.class_balanced=false"], force=True)
    assert len(off["sample_ids"]) == len(sel["sample_ids"])


@pytest.mark.parametrize("name", ["gradmatch", "craig"])
def test_unweighted_setting_trains_the_same_picks_with_weight_one(pgd_run, name):
    """coreset.<name>.weighted=false (the weights' ablation) keeps the selection and drops only its
    loss weights: the same minibatches as the weighted default, whose weights differ between picks."""
    over = [f"coreset.selector={name}", "coreset.unit=batch", f"coreset.{name}.batch_size=8", "coreset.fraction=0.4"]
    weighted = api.select(pgd_run, overrides=over, force=True)
    plain = api.select(pgd_run, overrides=[*over, f"coreset.{name}.weighted=false"], force=True)
    assert plain["sample_ids"] == weighted["sample_ids"] and len(plain["sample_ids"]) == 48
    assert plain["weights"] is None
    w = torch.tensor(weighted["weights"])
    assert w.mean() == pytest.approx(1.0) and w.max() > 1.05 * w.min(), "the default must weight the picks unequally"
    assert load_config(pgd_run / "config.yaml", [*over, f"coreset.{name}.weighted=false"]).coreset.params.weighted is False


def test_select_warns_when_whole_batches_round_the_fraction_far_off(pgd_run):
    with pytest.warns(CoresetRoundingWarning, match=r"coreset.fraction=0.05 becomes 1 whole batch\(es\) of 16 images out of 7"):
        sel = api.select(pgd_run, overrides=["coreset.selector=random", "coreset.unit=batch", "coreset.fraction=0.05"], force=True)
    assert len(sel["sample_ids"]) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoresetRoundingWarning)
        api.select(pgd_run, overrides=["coreset.selector=random", "coreset.unit=batch", "coreset.fraction=0.5"], force=True)  # 4 of 7


def test_selector_settings_and_the_deprecated_flat_keys():
    cfg = load_config("acl_fmnist_cpu", ["coreset.selector=rcs", "coreset.rcs.rd_steps=1", "coreset.craig.distance=euclidean"])
    assert cfg.coreset.params == RCSSettings(rd_steps=1) and cfg.coreset.settings["craig"].distance == "euclidean"
    assert from_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg)["coreset"]["rcs"]["rd_steps"] == 1 and "settings" not in to_dict(cfg)["coreset"]
    with pytest.warns(FutureWarning, match=r"coreset.rd_steps is deprecated .* write coreset.rcs.rd_steps"):
        old = load_config("acl_fmnist_cpu", ["coreset.method=rcs", "coreset.rd_steps=1"])
    assert old == cfg.__class__(**{**cfg.__dict__, "coreset": old.coreset}) and old.coreset.params.rd_steps == 1
    assert old.coreset.selector == old.coreset.method == "rcs"
    with pytest.raises(ConfigError, match="unknown config key 'coreset.rd_step'; valid keys here: coreset.selector, .*"
                                          "coreset.rcs.<key>"):
        load_config("acl_fmnist_cpu", ["coreset.rd_step=1"])
    with pytest.raises(ConfigError, match="coreset.craig.distance='cosine' is not valid; choose one of: squared, euclidean"):
        load_config("acl_fmnist_cpu", ["coreset.craig.distance=cosine"])
    with pytest.raises(ConfigError, match="coreset.rcs.class_balanced=true .* coreset.unit=sample"):
        load_config("acl_fmnist_cpu", ["coreset.selector=rcs", "coreset.unit=batch", "coreset.rcs.class_balanced=true"])


def test_an_old_run_config_with_flat_keys_loads_and_a_new_override_wins(tmp_path):
    old = to_dict(load_config("acl_rcs_fmnist_cpu"))
    rcs = old["coreset"].pop("rcs")
    old["coreset"].pop("selector")
    old["coreset"].update(method="rcs", **{k: v for k, v in rcs.items() if k in LEGACY_RCS_KEYS})  # an old config.yaml
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.warns(FutureWarning):
        cfg = load_config(path, ["coreset.rcs.rd_steps=1"])
    assert cfg.coreset.selector == "rcs" and cfg.coreset.params.rd_steps == 1
    assert cfg.coreset.params.rd_eps == rcs["rd_eps"]
    bad = {**old, "coreset": {**old["coreset"], "selector": "random"}}
    with pytest.raises(ConfigError, match="coreset.method='rcs' and coreset.selector='random' disagree"):
        from_dict(bad)
