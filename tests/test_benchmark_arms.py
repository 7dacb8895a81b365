"""benchmarks/arms.py and acs_speed_quality.py: a run folder is reused (`--reuse`) only when its config is the arm's,
read as a resume reads it (a key added since takes its legacy value), and `--baselines` names only baseline arms."""
from __future__ import annotations

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
