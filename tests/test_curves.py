"""`robustssl compare` on probed runs: robustness-vs-time and -epoch figures and the time-to-target and
equal-budget columns, from real tiny runs; and the progress display of evaluate."""
import json

import pytest

from robustssl import api
from robustssl.cli import main
from robustssl.eval.curves import robust_at, time_to_reach
from robustssl.train.metrics import read_metrics

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run("attack.steps=1", "train.probe_train_examples=48", "train.probe_test_examples=24")
EVAL_TINY = ["eval.n_examples=16", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[]",
             "eval.linear_epochs=2", "eval.protocols=[slf]"]
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _curve(*points):
    return [{"epoch": i, "step": i, "train_seconds": t, "robust": r, "clean": 0.9} for i, (t, r) in enumerate(points)]


def test_time_to_reach_and_robust_at_read_the_measured_points():
    c = _curve((10.0, 0.1), (20.0, 0.3), (30.0, 0.25), (40.0, 0.4))
    assert time_to_reach(c, 0.3) == 20.0 and time_to_reach(c, 0.35) == 40.0 and time_to_reach(c, 0.5) is None
    assert robust_at(c, 29.9) == 0.3 and robust_at(c, 30.0) == 0.25 and robust_at(c, 5.0) is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two probed runs of different lengths (ACL 3 epochs, SimCLR 2 epochs, a probe after every epoch) and an
    unprobed one, all evaluated."""
    tmp = tmp_path_factory.mktemp("curves")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=32)
    acl, simclr, plain = tmp / "acl", tmp / "simclr", tmp / "plain"
    api.pretrain("acl_fmnist_cpu", acl, overrides=TINY + [f"data.root={root}", "train.epochs=3", "train.probe_every=1"])
    api.pretrain("simclr_fmnist_cpu", simclr, overrides=TINY + [f"data.root={root}", "train.epochs=2", "train.probe_every=1"])
    api.pretrain("simclr_fmnist_cpu", plain, overrides=TINY + [f"data.root={root}", "train.epochs=1", "train.probe_every=0"])
    for run in (acl, simclr, plain):
        api.evaluate(run, overrides=EVAL_TINY)
    return acl, simclr, plain


def _probes(run):
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "probe"]


@pytest.mark.slow
def test_compare_draws_robustness_vs_time_and_epoch_with_the_columns(runs, tmp_path, capsys):
    acl, simclr, plain = runs
    out = tmp_path / "cmp"
    assert main(["compare", str(acl), str(simclr), str(plain), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("robustness_vs_time.png", "robustness_vs_epoch.png"):
        assert (out / name).read_bytes().startswith(PNG) and name in printed
    curves = json.loads((out / "compare.json").read_text())["probe_curves"]
    probes = {"acl": _probes(acl), "simclr": _probes(simclr)}
    assert [len(p) for p in probes.values()] == [3, 2]
    best_final = max(p[-1]["robust"] for p in probes.values())
    assert curves["target"] == pytest.approx(0.9 * best_final)
    shortest = min(p[-1]["train_seconds"] for p in probes.values())
    assert curves["shortest_seconds"] == shortest
    rows = {r["run"]: r for r in curves["rows"]}
    assert set(rows) == {"acl", "simclr"}  # the unprobed run has no curve, and a note says so
    assert any("plain: no probe records" in n for n in curves["notes"])
    for name, p in probes.items():
        row = rows[name]
        assert row["final_probe_robust"] == p[-1]["robust"] and row["final_train_seconds"] == p[-1]["train_seconds"]
        reached = [q["train_seconds"] for q in p if q["robust"] >= curves["target"]]
        assert row["time_to_target"] == (reached[0] if reached else None)
        by_then = [q["robust"] for q in p if q["train_seconds"] <= shortest]
        assert row["robust_at_shortest"] == (by_then[-1] if by_then else None)
        report = json.loads((runs[0 if name == "acl" else 1] / "report.json").read_text())
        assert row["final_eval_pgd20"] == report["protocols"]["slf"]["attacks"][0]["accuracy"]
    md = (out / "compare.md").read_text()
    assert f"time to reach {100 * curves['target']:.1f}% robust" in md and "(shortest run)" in md
    assert "![Robust accuracy vs training time](robustness_vs_time.png)" in md

    out2 = tmp_path / "cmp_target"
    assert main(["compare", str(acl), str(simclr), "--out", str(out2), "--target", "100"]) == 0
    curves = json.loads((out2 / "compare.json").read_text())["probe_curves"]
    assert curves["target"] == 1.0 and curves["target_rule"] == "given (--target)"
    assert all(r["time_to_target"] is None or r["final_probe_robust"] == 1.0 for r in curves["rows"])
    assert "not reached" in (out2 / "compare.md").read_text() or all(r["time_to_target"] for r in curves["rows"])
    assert main(["compare", str(acl), "--out", str(tmp_path / "bad"), "--target", "150"]) == 2
    assert "--target" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_evaluate_shows_which_protocol_and_attack_runs(runs, tmp_path, capsys):
    shown = tmp_path / "shown"  # a run trained with train.progress=true (the recipes' default) shows its evaluation
    root = runs[0].parent / "fm"
    api.pretrain("acl_fmnist_cpu", shown, overrides=TINY[:4] + ["attack.steps=1", f"data.root={root}", "train.epochs=1",
                                                                "train.probe_every=0", "train.progress=true"])
    capsys.readouterr()
    api.evaluate(shown, overrides=EVAL_TINY)
    err = capsys.readouterr().err
    for stage in ("evaluate SLF | features", "evaluate SLF | head", "evaluate SLF | clean", "evaluate SLF | pgd20 eps=0.1",
                  "evaluate SLF | fgsm"):
        assert stage in err, stage
    assert "16/16" in err  # examples done, out of the test images
    api.evaluate(runs[0], overrides=EVAL_TINY)  # trained with train.progress=false: nothing
    assert "evaluate SLF" not in capsys.readouterr().err
