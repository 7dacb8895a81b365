"""`robustssl compare`: one table, three figures and a JSON over evaluated runs (a full ACL run, a
random-coreset ACL run, a post-processed run), and clear refusals of folders that are not evaluated runs."""
import json
import shutil

import pytest

from robustssl import api
from robustssl.cli import main

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run("attack.steps=1", "train.epochs=2")
EVAL_TINY = ["eval.n_examples=16", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[0.05]",
             "eval.linear_epochs=2"]
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two evaluated pretraining runs (full data: SLF; a random coreset: SLF and ALF) and a post-processed one."""
    tmp = tmp_path_factory.mktemp("compare")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=32)
    full, coreset, post = tmp / "acl_full", tmp / "acl_random", tmp / "acl_pp"
    api.pretrain("acl_fmnist_cpu", full, overrides=TINY + [f"data.root={root}"])
    api.evaluate(full, overrides=EVAL_TINY + ["eval.protocols=[slf]"])
    api.pretrain("acl_fmnist_cpu", coreset, overrides=TINY + [f"data.root={root}", "coreset.selector=random",
                                                               "coreset.fraction=0.5", "coreset.warmup_epochs=0"])
    api.evaluate(coreset, overrides=EVAL_TINY + ["eval.protocols=[slf,alf]", "eval.alf_steps=1"])
    api.postprocess(full, post, overrides=["postprocess.lp_epochs=2", "postprocess.aft_epochs=1", "postprocess.aft_steps=1",
                                           "postprocess.aft_batch_size=32"], clusters=3)
    api.evaluate(post, overrides=EVAL_TINY + ["eval.protocols=[slf]"])
    return full, coreset, post


@pytest.mark.slow
def test_compare_writes_the_table_figures_and_json_with_the_right_rows(runs, tmp_path, capsys):
    full, coreset, post = runs
    out = tmp_path / "cmp"
    assert main(["compare", str(full), str(coreset), str(post), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| acl_random | acl | random 0.5 (batch) | 2 |" in printed and "written to" in printed

    result = json.loads((out / "compare.json").read_text())
    rows = [(r["run"], r["protocol"], r["method"], r["selector"], r["epochs"]) for r in result["rows"]]
    assert rows == [("acl_full", "SLF", "acl", "full", 2), ("acl_random", "SLF", "acl", "random 0.5 (batch)", 2),
                    ("acl_random", "ALF", "acl", "random 0.5 (batch)", 2), ("acl_pp", "SLF", "acl+lp-aft", "full", 2)]
    for row, run, protocol in zip(result["rows"], (full, coreset, coreset, post), ("slf", "slf", "alf", "slf")):
        report = json.loads((run / "report.json").read_text())["protocols"][protocol]
        assert row["clean"] == report["clean"]["accuracy"] and row["pgd20"] == report["attacks"][0]["accuracy"]
        assert "autoattack" not in row and row["n_examples"] == 16 and row["sanity"] in ("pass", "FAIL")
        assert row["sanity"] == ("pass" if report["sanity_passed"] else "FAIL")
        assert row["train_seconds"] == json.loads((run / "run.json").read_text())["seconds"]

    by_run = {r["label"]: r for r in result["runs"]}
    assert {"augment", "attack", "update", "other"} <= set(by_run["acl_full"]["phase_seconds"])
    assert by_run["acl_pp"]["phase_seconds"]["postprocess"] > 0 and by_run["acl_pp"]["epoch_loss"] == []
    assert len(by_run["acl_full"]["epoch_loss"]) == 2 and [c["eps"] for c in by_run["acl_full"]["curves"]["slf"]] == [0.0, 0.05, 0.1]
    assert any("acl_pp: no per-epoch training loss" in n for n in result["notes"])
    assert result["figures"] == {"robustness": "robustness_vs_eps.png", "losses": "loss_curves.png", "times": "time_breakdown.png"}
    for name in result["figures"].values():
        assert (out / name).read_bytes().startswith(PNG)
    md = (out / "compare.md").read_text().split("## Robustness over training")[0]  # the runs' table, not the probes'
    assert md.count("| acl_random |") == 2 and "| acl_pp | acl+lp-aft |" in md and "![Training time by phase](time_breakdown.png)" in md


@pytest.mark.slow
def test_compare_notes_runs_evaluated_under_different_conditions(runs, tmp_path):
    full, coreset, _ = runs
    other = tmp_path / "acl_eps"
    shutil.copytree(full, other)
    report = json.loads((other / "report.json").read_text())
    report["settings"]["eps"] = 0.2
    (other / "report.json").write_text(json.dumps(report))
    result = api.compare([full, other], tmp_path / "cmp")
    assert any("different eps" in n and "acl_eps: 0.2" in n for n in result["notes"])
    assert not any("different eps" in n for n in api.compare([full, coreset], tmp_path / "cmp2")["notes"])


@pytest.mark.slow
def test_compare_notes_runs_trained_on_different_hardware(runs, tmp_path):
    """A run trained on a CPU whose kernels use another instruction set (its run.json as that machine writes it):
    the note names both machines; runs trained here (the same CPU, capability and threads) get no such note."""
    full, coreset, _ = runs
    other = tmp_path / "acl_avx2"
    shutil.copytree(full, other)
    summary = json.loads((other / "run.json").read_text())
    summary["hardware"].update(name="AMD EPYC 7B13", cpu_capability="AVX2")
    (other / "run.json").write_text(json.dumps(summary))
    here = summary["hardware"]["threads"]
    (note,) = [n for n in api.compare([full, other], tmp_path / "cmp")["notes"] if "different hardware" in n]
    assert f"acl_avx2: AMD EPYC 7B13 (AVX2, {here} threads)" in note and "acl_full: " in note and "not comparable" in note
    assert not any("different hardware" in n for n in api.compare([full, coreset], tmp_path / "cmp2")["notes"])


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_compare_refuses_folders_that_are_not_evaluated_runs(runs, tmp_path, capsys):
    full = runs[0]
    out = tmp_path / "cmp"
    missing = tmp_path / "nothing"
    assert "is not a folder" in _error(capsys, ["compare", str(full), str(missing), "--out", str(out)])
    plain = tmp_path / "plain"
    plain.mkdir()
    err = _error(capsys, ["compare", str(full), str(plain), "--out", str(out)])
    assert f"{plain} is not a robustssl run (no config.yaml)" in err and "robustssl pretrain" in err
    unevaluated = tmp_path / "unevaluated"
    shutil.copytree(full, unevaluated)
    (unevaluated / "report.json").unlink()
    err = _error(capsys, ["compare", str(full), str(unevaluated), "--out", str(out)])
    assert f"{unevaluated} has no evaluation report" in err and f"robustssl evaluate --run {unevaluated}" in err
    (unevaluated / "report.json").write_text("{not json")
    err = _error(capsys, ["compare", str(unevaluated), "--out", str(out)])
    assert "report.json is damaged" in err and f"robustssl evaluate --run {unevaluated}" in err
    assert not out.exists(), "nothing is written when a folder is refused"
