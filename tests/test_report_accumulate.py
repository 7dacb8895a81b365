"""report.json accumulates over evaluations (a re-run replaces only its own entry, and says so), compare
reads every evaluation a report holds, and compare aggregates runs that differ only by seed."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from robustssl import api
from robustssl.cli import main

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run("attack.steps=1", "train.epochs=1")
EVAL_TINY = ["eval.n_examples=16", "eval.train_examples=64", "eval.linear_epochs=2", "eval.eps_curve=[0.05]", "eval.alf_steps=1"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=128, n_test=32)


def _pretrain(root, out, *extra):
    api.pretrain("acl_fmnist_cpu", out, overrides=TINY + [f"data.root={root}", *extra])
    return out


def _attacks(report, protocol):
    return {a["attack"]: a for a in report["protocols"][protocol]["attacks"]}


@pytest.mark.slow
def test_evaluations_accumulate_and_a_rerun_replaces_only_its_own_entry(root, tmp_path, capsys):
    run = _pretrain(root, tmp_path / "acl")

    def ev(protocol: str, attacks: str, *overrides: str) -> list[str]:
        return ["evaluate", "--run", str(run), "--protocol", protocol, "--attacks", attacks, *EVAL_TINY, *overrides]

    assert main(ev("slf", "pgd20")) == 0
    assert main(ev("alf", "pgd20")) == 0
    assert "report.json: ALF: added" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert list(report["protocols"]) == ["slf", "alf"]  # SLF's numbers are still there
    slf_before = report["protocols"]["slf"]

    # the same SLF classifier attacked with another attack: SLF is replaced, its pgd20 record kept (same settings;
    # the hardware is not one of them, as the device is not: this evaluation runs on two threads, the first on one)
    torch.set_num_threads(2)
    try:
        assert main(ev("slf", "pgd50x10")) == 0
    finally:
        torch.set_num_threads(1)
    out = capsys.readouterr().out
    assert "report.json: SLF: replaced its earlier entry (same protocol, threat model and test data); kept its earlier " \
           "pgd20 record(s)" in out and "report.json: kept ALF from the earlier evaluation(s)" in out
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["hardware"]["threads"] == 2
    slf = _attacks(report, "slf")
    assert list(slf) == ["pgd50x10", "pgd20"] and slf["pgd20"]["accuracy"] == _attacks({"protocols": {"slf": slf_before}}, "slf")["pgd20"]["accuracy"]
    assert slf["pgd20"]["from_evaluation"] == slf_before["created"] and "from_evaluation" not in slf["pgd50x10"]
    assert report["protocols"]["alf"]["training"]["protocol"] == "alf"
    md = (run / "report.md").read_text()
    assert "## SLF" in md and "## ALF" in md and "Kept from earlier evaluations of the same classifier settings: pgd20" in md

    # another SLF classifier: its earlier records belong to a different head and are dropped, said so
    assert main(ev("slf", "pgd20", "eval.linear_epochs=3")) == 0
    out = capsys.readouterr().out
    assert "its classifier settings changed (linear_epochs), so its earlier pgd50x10 record(s) were dropped" in out
    report = json.loads((run / "report.json").read_text())
    assert list(_attacks(report, "slf")) == ["pgd20"] and report["protocols"]["slf"]["training"]["epochs"] == 3

    # another threat model: a new evaluation group, the l_inf one kept beside it
    assert main(ev("slf", "pgd20", "eval.norm=l2", "eval.eps=0.5", "eval.pgd_alpha=0.125")) == 0
    assert "added SLF under new conditions (l2 eps 0.5" in capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["norm"] == "l2" and list(report["protocols"]) == ["slf"]
    (linf,) = report["other_evaluations"]
    assert linf["settings"]["norm"] == "linf" and list(linf["protocols"]) == ["slf", "alf"]
    md = (run / "report.md").read_text()
    assert "Threat model: l_2 eps 0.5" in md and "# Earlier evaluation under other conditions: linf eps 0.1" in md
    assert "Threat model: l_inf eps 0.1" in md
    svg = (run / "robustness_curve.svg").read_text()
    assert "eps (l_2" in svg and "eps (l_inf" in svg  # one panel per norm

    result = api.compare([run], tmp_path / "cmp")
    assert [(r["protocol"], r["norm"]) for r in result["rows"]] == [("SLF", "l2"), ("SLF", "linf"), ("ALF", "linf")]


def test_a_damaged_report_is_named_and_left_as_it_is(root, tmp_path, capsys):
    run = _pretrain(root, tmp_path / "acl")
    (run / "report.json").write_text("{not json")
    assert main(["evaluate", "--run", str(run), *EVAL_TINY]) == 2
    assert "report.json is damaged or not a robustssl evaluation report" in capsys.readouterr().err
    assert (run / "report.json").read_text() == "{not json"


@pytest.mark.slow
def test_compare_aggregates_runs_that_differ_only_by_seed(root, tmp_path):
    runs = [_pretrain(root, tmp_path / f"acl_s{seed}", f"train.seed={seed}") for seed in (0, 1, 2)]
    other = _pretrain(root, tmp_path / "acl_2ep", "train.epochs=2")
    for i, run in enumerate([*runs, other]):
        api.evaluate(run, overrides=[*EVAL_TINY, "eval.protocols=[slf]", "eval.attacks=[pgd20]", f"eval.seed={i}"])
    out = tmp_path / "cmp"
    result = api.compare([*runs, other], out)
    (group,) = result["seed_groups"]
    assert group["runs"] == ["acl_s0", "acl_s1", "acl_s2"] and group["seeds"] == [0, 1, 2] and group["label"] == "acl_s"
    (row,) = group["rows"]
    reports = [json.loads((r / "report.json").read_text())["protocols"]["slf"] for r in runs]
    pgd = [_attacks({"protocols": {"slf": p}}, "slf")["pgd20"]["accuracy"] for p in reports]
    assert row["attacks"]["pgd20"]["mean"] == pytest.approx(statistics.fmean(pgd))
    assert row["attacks"]["pgd20"]["sd"] == pytest.approx(statistics.stdev(pgd))
    assert row["clean"]["sd"] == pytest.approx(statistics.stdev([p["clean"]["accuracy"] for p in reports]))
    assert row["n_runs"] == 3 and row["subset"] is True and [c["eps"] for c in row["curve"]] == [0.0, 0.05, 0.1]
    md = (out / "compare.md").read_text()
    assert "## Mean ± sd over seeds" in md and "| acl_s (3 runs) | 0, 1, 2 | SLF | " in md and " ± " in md
    svg = (out / "robustness_vs_eps.svg").read_text()
    assert "acl_s SLF (mean of 3 seeds) (SUBSET)" in svg and "acl_2ep SLF (SUBSET)" in svg and "acl_s0 SLF" not in svg
    for name in ("robustness_vs_eps", "loss_curves", "time_breakdown"):
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF") and (out / f"{name}.svg").stat().st_size > 0
