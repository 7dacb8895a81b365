"""benchmarks/arms.py and acs_speed_quality.py: a run folder is reused (`--reuse`) only when its config is the arm's,
read as a resume reads it (a key added since takes its legacy value), its saved evaluation only when it is the one
asked for, and `--baselines` names only baseline arms."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from robustssl.config import load_config
from robustssl.train.run_dir import write_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RECIPE = "acl_rcs_fmnist_cpu"
ARM = ["data.train_subset=250", "optim.batch_size=32", "train.epochs=320", "train.seed=3", "coreset.selector=full"]


@pytest.fixture
def arms(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import arms
    return arms


def test_a_folder_of_the_same_config_is_reused_and_another_is_refused_by_name(arms, tmp_path):
    # full trained for E = 320 is the full-half arm of an E = 640 benchmark: the same config, so it is reused
    write_config(tmp_path, load_config(RECIPE, ARM))
    arms.check_reused(tmp_path, RECIPE, [*ARM[:2], "train.epochs=640", *ARM[3:], "train.epochs=320"])
    # the E = 640 full arm is another run: refused, naming the key, and the folder is left as it was
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(SystemExit, match=r"differs in train\.epochs\).*drop --reuse"):
        arms.check_reused(tmp_path, RECIPE, [*ARM[:2], "train.epochs=640", *ARM[3:]])
    assert (tmp_path / "config.yaml").read_text() == before


def test_a_folder_from_before_the_epoch_clock_is_not_reused_as_todays_run(arms, tmp_path):
    # a config.yaml written before optim.lr_clock existed trained with the update-count lr: not today's arm
    write_config(tmp_path, load_config(RECIPE, ARM))
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["optim"]["lr_clock"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(SystemExit, match=r"differs in optim\.lr_clock"):
        arms.check_reused(tmp_path, RECIPE, ARM)
    arms.check_reused(tmp_path, RECIPE, [*ARM, "optim.lr_clock=updates"])  # asked for explicitly, it is that run


def test_an_unknown_baseline_is_refused_before_any_run(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import acs_speed_quality
    monkeypatch.setattr(sys, "argv", ["acs_speed_quality.py", "--methods", "acl", "--selectors", "rcs,random",
                                      "--baselines", "full-half,full-quarter", "--runs", str(tmp_path / "runs")])
    with pytest.raises(SystemExit, match="--baselines full-quarter: not a baseline arm; choose among full-half, "
                                         "full-time, full-updates"):
        acs_speed_quality.main()
    assert not (tmp_path / "runs").exists()


def test_per_seed_cells_follow_the_seeds_not_the_order_they_ran_in(monkeypatch, tmp_path, capsys):
    # seeds 3 and 0 ran in that order, seed 1 into a second file: every per-seed cell lists seeds 0, 1, 3
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import acs_speed_quality

    def row(seed: int, arm: str, pgd20: float) -> dict:
        return {"seed": seed, "method": "acl", "arm": arm, "epochs": 640, "run": str(tmp_path / f"acl-{arm}-{seed}"),
                "train_s": 10.0, "selection_s": 0.0, "steps": 100, "phase_seconds": {}, "total_s": 10.0,
                "protocols": {"slf": {"clean": 0.7, "pgd20": pgd20, "autoattack": pgd20, "sanity_passed": 1.0}}}

    settings = {"extra": "data.train_subset=250,train.epochs=640", "fraction": None, "kappa": 0.5, "every": None,
                "unit": "batch", "schedule": "auto", "selector_extra": "", "methods": "acl", "selectors": "rcs,random"}
    files = []
    for name, rows in (("a.json", [row(3, "full", 0.50), row(3, "full-half", 0.49), row(3, "rcs", 0.47), row(3, "random", 0.44),
                                   row(0, "full", 0.50), row(0, "full-half", 0.48), row(0, "rcs", 0.43), row(0, "random", 0.44)]),
                       ("b.json", [row(1, "full", 0.50), row(1, "full-half", 0.50), row(1, "rcs", 0.46), row(1, "random", 0.44)])):
        (tmp_path / name).write_text(json.dumps({"machine": "test CPU", "threads": 2, "settings": settings, "bounds": {},
                                                 "rows": rows}))
        files.append(str(tmp_path / name))
    monkeypatch.setattr(sys, "argv", ["acs_speed_quality.py", "--methods", "acl", "--selectors", "rcs,random",
                                      "--runs", str(tmp_path), "--from-json", *files])
    acs_speed_quality.main()
    out = capsys.readouterr().out
    assert "(-1.0, +2.0, +3.0) |" in out  # rcs minus random, seeds 0, 1, 3
    assert "over 3 seeds (+2.0, +0.0, +1.0;" in out  # the plateau gaps, in the same order


def test_a_reused_run_reuses_its_saved_evaluation_only_when_it_is_the_one_asked_for(arms, tmp_path, monkeypatch):
    from robustssl import api

    from . import tiny
    from .datafiles import write_fashion_mnist
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)
    run, over = tmp_path / "acl", tiny.run("attack.steps=1", "train.epochs=1", f"data.root={root}")
    ev = ["eval.n_examples=16", "eval.train_examples=64", "eval.linear_epochs=2", "eval.eps_curve=[]"]
    first, _, _ = arms.train_and_evaluate("acl_fmnist_cpu", run, over, ev, reuse=True)  # trained and evaluated
    saved = (run / "report.json").read_text()
    evaluations = []
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: evaluations.append(a) or first)  # counts re-evaluations

    again, _, _ = arms.train_and_evaluate("acl_fmnist_cpu", run, over, ev, reuse=True)
    assert evaluations == [] and (run / "report.json").read_text() == saved
    assert again["protocols"]["slf"]["attacks"] == first["protocols"]["slf"]["attacks"]
    # another evaluation setting, or attacks the report lacks: evaluated again
    arms.train_and_evaluate("acl_fmnist_cpu", run, over, [*ev[:2], "eval.linear_epochs=3", ev[3]], reuse=True)
    arms.train_and_evaluate("acl_fmnist_cpu", run, over, [*ev, "eval.attacks=[pgd20,cw]"], reuse=True)
    assert len(evaluations) == 2
    # another training put in the folder after its evaluation (its run.json is not the one evaluated): stale
    api.pretrain("acl_fmnist_cpu", tmp_path / "other", overrides=[*over, "train.seed=1"])
    for name in ("encoder.safetensors", "run.json"):
        shutil.copy(tmp_path / "other" / name, run / name)
    assert arms.saved_evaluation(run, ev, json.loads((run / "run.json").read_text())) is None
