"""DynACL++ post-processing flags a diverged LP-AFT finetune (issue #21, item 5), as an unconverged
probe is flagged: in the command's output, postprocess.json, run.json and the evaluation report."""
import json

import pytest

from robustssl import api
from robustssl.cli import main
from robustssl.postprocess import finetune_divergence

from . import tiny
from .datafiles import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny.run("attack.steps=1", "train.epochs=1")
PP = ["postprocess.lp_epochs=2", "postprocess.aft_epochs=3", "postprocess.aft_steps=1", "postprocess.aft_batch_size=32"]
EVAL_TINY = ["eval.n_examples=16", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[]", "eval.linear_epochs=2"]


def test_divergence_rule_on_the_issues_losses_and_on_a_falling_loss():
    assert finetune_divergence([1912.0, 32325.0, 43756.0])["diverged"]  # the run of issue #21
    assert finetune_divergence([4.0, 9.0, 3.5])["diverged"]  # blew up, then came back down
    falling = finetune_divergence([2.88, 1.95, 1.80])
    assert not falling["diverged"] and "fell" in falling["detail"]
    one = finetune_divergence([5.0])
    assert not one["diverged"] and "not judged" in one["detail"]


def test_a_diverged_lp_aft_is_flagged_in_the_output_the_records_and_the_evaluation_report(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)
    source, out = tmp_path / "acl", tmp_path / "pp"
    api.pretrain("acl_fmnist_cpu", source, overrides=TINY + [f"data.root={root}"])
    # lr 100: the TRADES loss grows from epoch to epoch (seeded: 4.5e3 -> 2.8e6 -> 1.2e6), finite
    assert main(["postprocess", "--run", str(source), "--out", str(out), "--clusters", "4", *PP, "postprocess.aft_lr=100"]) == 0
    printed = capsys.readouterr().out
    assert "(DIVERGED)" in printed and "WARNING: the LP-AFT finetune (TRADES) DIVERGED" in printed
    record = json.loads((out / "postprocess.json").read_text())
    assert record["aft"]["divergence"]["diverged"] and any("DIVERGED" in n for n in record["notes"])
    assert json.loads((out / "run.json").read_text())["diverged"] is True
    report = api.evaluate(out, overrides=EVAL_TINY)
    assert any("DIVERGED" in n for n in report["notes"])
    assert "DIVERGED" in (out / "report.md").read_text()
