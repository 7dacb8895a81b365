"""The perceptual evaluation attacks (PPGD, LPA) and the union row through evaluation: a PAT run's
report names the LPIPS threat model (never l_inf) in report.json, report.md and compare, runs the
perceptual sanity checks, and the union is the per-example worst case of its four attacks."""
import json

import pytest
import torch

from robustssl import api
from robustssl.config import load_config
from robustssl.eval.evaluate import evaluate_classifier
from robustssl.eval.perceptual import LPASettings, PPGDSettings, perceptual_accuracy
from robustssl.eval.robust import pgd_accuracy

from .datafiles import write_fashion_mnist
from .test_pat import _alexnet_state, _fitted

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["eval.ppgd.steps=3", "eval.ppgd.cg_steps=2", "eval.lpa.steps=3", "eval.lpa.rounds=2"]


@pytest.mark.slow
def test_a_pat_report_names_the_perceptual_threat_model(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    run = tmp_path / "pat"
    api.pretrain("pat_fmnist_cpu", run, overrides=[f"data.root={root}", "model.width=4", "optim.batch_size=16",
                                                   "train.progress=false", "train.epochs=1", "method.pat.steps=2"])
    api.evaluate(run, overrides=["eval.attacks=[pgd20,ppgd,lpa,union]", "eval.n_examples=16", "eval.eps_curve=[]", *FAST])
    report = json.loads((run / "report.json").read_text())
    p = report["protocols"]["direct"]
    recs = {a["attack"]: a for a in p["attacks"]}
    for name in ("ppgd", "lpa"):
        assert recs[name]["norm"] == "lpips" and recs[name]["eps"] == 0.5
        assert recs[name]["threat_model"].startswith("LPIPS (self-bound) eps 0.5")
        assert recs[name]["max_lpips"] <= 0.5 + 1e-5
    assert recs["pgd20"]["threat_model"].startswith("l_inf")
    assert recs["union"]["threat_model"].startswith("union of l_inf 0.1, l_2 1, LPIPS (self-bound) 0.5")
    checks = {c["name"]: c for c in p["sanity"]}
    assert {"attack_order_lpips", "bound_zero_ppgd", "bound_zero_lpa", "large_bound_ppgd", "large_bound_lpa"} <= set(checks)
    assert checks["bound_zero_ppgd"]["passed"] and checks["bound_zero_lpa"]["passed"]
    assert "lpa" in checks["attack_order_lpips"]["detail"] and "ppgd" in checks["attack_order_lpips"]["detail"]

    md = (run / "report.md").read_text()
    ppgd_row = next(line for line in md.splitlines() if line.startswith("| PPGD |"))
    lpa_row = next(line for line in md.splitlines() if line.startswith("| LPA |"))
    for row in (ppgd_row, lpa_row):
        assert "LPIPS (self-bound) eps 0.5" in row and "l_inf" not in row
    out = tmp_path / "cmp"
    api.compare([run], out)
    cmp_md = (out / "compare.md").read_text()
    assert "| PPGD % |" in cmp_md and "| LPA % |" in cmp_md and "LPIPS (self-bound) eps 0.5" in cmp_md


def test_union_is_the_per_example_worst_case_of_its_four_attacks():
    model, x, y = _fitted()
    x, y = x[:24], y[:24]
    cfg = load_config("pat_fmnist_cpu", ["eval.attacks=[pgd20,union]", "eval.union.l2_eps=1.5", "eval.ppgd.sanity=false",
                                         "eval.lpa.sanity=false", *FAST]).eval
    out = evaluate_classifier(model, x, y, cfg, 10)
    union = {a["attack"]: a for a in out["attacks"]}["union"]
    seed = cfg.seed
    parts = [
        pgd_accuracy(model, x, y, cfg.eps, cfg.pgd_alpha, 20, seed=seed, name="pgd20").flags,
        pgd_accuracy(model, x, y, 1.5, 1.5 / 4, 20, norm="l2", seed=seed).flags,
        perceptual_accuracy(model, x, y, "ppgd", PPGDSettings(steps=3, cg_steps=2), seed=seed).flags,
        perceptual_accuracy(model, x, y, "lpa", LPASettings(steps=3, rounds=2), seed=seed).flags,
    ]
    worst = torch.stack(parts).all(dim=0)
    assert union["accuracy"] == int(worst.sum()) / len(worst)
    assert union["accuracy"] <= min(float(f.float().mean()) for f in parts)
    assert union["parts"]["pgd20_l2"] == float(parts[1].float().mean())
    assert union["accuracy"] < max(float(f.float().mean()) for f in parts), "the worst case is below some single attack"


def test_perceptual_accuracy_with_a_loaded_lpips_network_names_it_and_keeps_its_bound(tmp_path):
    from safetensors.torch import save_file

    from robustssl.config import ConfigError
    from robustssl.eval.perceptual import PerceptualSettings, lpips_label

    model, x, y = _fitted()
    path = tmp_path / "alex_cifar.safetensors"
    save_file(_alexnet_state(lin=False), str(path))
    s = LPASettings(bound=0.1, steps=5, rounds=2, lpips_model=str(path))
    result = perceptual_accuracy(model, x[:16], y[:16], "lpa", s, seed=0)
    assert result.extra["lpips_network"] == "network alex_cifar.safetensors" and result.extra["max_lpips"] <= 0.1 + 1e-5
    assert lpips_label(str(path)) == "LPIPS (network alex_cifar.safetensors)"
    assert isinstance(s, PerceptualSettings)
    with pytest.raises(ConfigError, match="eval.lpa.lpips_model"):
        load_config("pat_fmnist_cpu", [f"eval.lpa.lpips_model={tmp_path / 'missing.pt'}"])
