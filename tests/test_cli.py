"""The command line end to end, on Fashion-MNIST-format files written by the test."""
import json

import pytest

from robustssl.cli import main

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run(
    "attack.steps=1", "train.epochs=1", "eval.linear_epochs=2", "eval.n_examples=24", "eval.autoattack_examples=8", "eval.train_examples=64", "eval.eps_curve=[0.2]",
)


@pytest.fixture
def root(tmp_path):
    return write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)


def test_pretrain_evaluate_select(tmp_path, root, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "acl_fmnist_cpu", "--out", str(run), f"data.root={root}", *TINY]) == 0
    assert main(["evaluate", "--run", str(run), "--protocol", "slf", "--attacks", "pgd20,autoattack"]) == 0
    out = capsys.readouterr().out
    assert "SLF" in out and "pgd20" in out and "autoattack" in out
    report = json.loads((run / "report.json").read_text())
    slf = report["protocols"]["slf"]
    assert report["test_subset"] == {"used": True, "n_examples": 24, "n_total": 32}
    attacks = {a["attack"]: a for a in slf["attacks"]}
    assert attacks["pgd20"]["n_examples"] == 24 and attacks["autoattack"]["n_examples"] == 8
    assert attacks["autoattack"]["accuracy"] <= attacks["autoattack"]["pgd20_on_same_examples"]
    assert {"eps_zero", "attack_order", "attack_order_autoattack_subset", "large_eps", "above_chance"} == {c["name"] for c in slf["sanity"]}
    assert report["extra"]["training"]["method"] == "acl"
    coreset = report["extra"]["training"]["coreset"]
    assert coreset == {"selector": "full", "pool_size": 128}, "a full run has no coreset size or fraction to report"
    assert (run / "report.md").is_file() and (run / "robustness_curve.png").stat().st_size > 0

    assert main(["select", "--run", str(run), "--method", "rcs", "--fraction", "0.5", "coreset.unit=sample"]) == 0
    sel = json.loads((run / "selection.json").read_text())
    pool = sel["coreset"]["pool_size"]
    assert len(sel["sample_ids"]) == round(0.5 * pool) == len(sel["gains"])
    assert sel["coreset"]["validation_size"] == 1 and sel["seconds"] > 0


def test_errors_are_reported_with_the_fix(tmp_path, root, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a robustssl run" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x")]) == 2
    assert "acl_fmnist_cpu" in capsys.readouterr().err
    assert main(["pretrain", "--config", "acl_fmnist_cpu", "--out", str(tmp_path / "y"), "data.root=" + str(tmp_path / "empty"),
                 "data.name=cifar10"]) == 2
    err = capsys.readouterr().err
    assert "cifar-10" in err.lower() and "download" in err.lower()


def test_quickstart_table(tmp_path, root, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), f"data.root={root}", *TINY]) == 0
    text = capsys.readouterr().out
    assert "| ACL |" in text and "| SimCLR |" in text
    rows = json.loads((out / "quickstart.json").read_text())
    assert [r["method"] for r in rows] == ["ACL", "SimCLR"]
    for r in rows:
        assert r["autoattack"] <= r["pgd20_on_aa_examples"] and r["pgd20"] <= r["clean"]
        assert isinstance(r["probe_converged"], bool)
    assert (out / "acl" / "report.json").is_file() and (out / "simclr" / "encoder.safetensors").is_file()
