"""The GPU check (`robustssl doctor`, benchmarks/gpu_check.py) run on the CPU in tiny mode, so it cannot rot.

What runs here (tiny models: cnn width 4, batches of 8, synthetic data in each dataset's real file format):
- every bundled recipe: pretrain (stopped after 2 of 3 epochs), select (coreset recipes), resume, export;
- on a subset, the heavier checks: evaluate on trades_cifar10 (the `direct` protocol with PGD-20,
  PGD-50 x 10 and a 4-image AutoAttack; the SLF/ALF/multi-crop probes are what tests/test_eval.py and
  tests/test_multicrop_eval.py cover, and a surviving example costs AutoAttack's 5000 Square queries on a
  CPU), bf16 and channels_last on the ACL, CF-AMC and TRADES recipes, torchrun (1 process, gloo
  environment, no process group) and data.stream on acl_rcs_cifar10.
- not here: `compile` (about 50 s per run on this CPU; tests/test_accelerate.py runs compiled training);
  on a GPU every check runs on every recipe (docs/benchmarks.md, "GPU check").
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustssl.cli import main
from robustssl.config import load_config, recipe_dir
from robustssl.coreset.registry import SELECTORS
from robustssl.doctor import SWITCH_RECIPES, run_doctor

pytestmark = pytest.mark.usefixtures("one_thread")

CORE = ["pretrain", "select", "resume", "export"]


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("PASS", "FAIL"))]


@pytest.mark.slow
def test_every_bundled_recipe_pretrains_selects_resumes_and_exports(tmp_path, capsys):
    """Every recipe file in robustssl/recipes/ is checked (discovered, so a new recipe is checked too), and
    each check's line, the JSON and the RESULT line agree."""
    out = tmp_path / "doctor"
    record = run_doctor("cpu", out, tiny=True, kinds=CORE)
    text = capsys.readouterr().out
    bundled = sorted(p.stem for p in recipe_dir().glob("*.yaml"))
    assert record["recipes"] == bundled and len(bundled) >= 24
    assert record["hardware"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and record["hardware"]["threads"] == 1
    failed = [c for c in record["checks"] if not c["passed"]]
    assert not failed, "\n".join(f"{c['name']}: {c['error']} ({c['traceback']})" for c in failed)
    names = {c["name"] for c in record["checks"]}
    for name in bundled:
        cfg = load_config(name)
        assert {f"{name} {k}" for k in ("pretrain", "resume", "export")} <= names
        assert (f"{name} select" in names) == SELECTORS[cfg.coreset.selector].trains_on_subset, name
    assert {f"data {d}" for d in ("cifar10", "fashion-mnist", "svhn")} <= names
    lines = _lines(text)
    assert len(lines) == len(record["checks"]) == record["checks_total"] == record["passed"]
    assert text.strip().splitlines()[-1] == f"RESULT checks={len(lines)} passed={len(lines)} device=cpu"
    assert json.loads((out / "doctor.json").read_text())["checks"] == record["checks"]
    for name in bundled:  # the runs really ran: a resumed run's export, a coreset selection where there is one
        assert (out / "runs" / name / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_evaluation_speed_switches_torchrun_and_streaming(tmp_path, capsys):
    """The heavier checks on a subset, through the CLI (`robustssl doctor`); a rerun reuses its own folder."""
    out = tmp_path / "doctor"
    args = ["doctor", "--device", "cpu", "--tiny", "--out", str(out),
            "--recipes", ",".join([*SWITCH_RECIPES, "acl_rcs_cifar10"]),
            "--checks", "bf16,channels_last,torchrun,stream"]
    assert main(args) == 0
    assert main([*args[:-4], "--recipes", "trades_cifar10", "--checks", "evaluate"]) == 0  # the same --out again
    text = capsys.readouterr().out
    lines = _lines(text)
    assert all(ln.startswith("PASS") for ln in lines), "\n".join(lines)
    names = {" ".join(ln.split()[1:3]) for ln in lines}
    assert {f"{r} {k}" for r in SWITCH_RECIPES for k in ("bf16", "channels_last")} <= names
    assert {"acl_rcs_cifar10 torchrun", "acl_rcs_cifar10 stream", "trades_cifar10 evaluate"} <= names
    stream = next(ln for ln in lines if "stream" in ln)
    assert "staging not pinned" in stream and "1 selection" in stream  # pinned only on CUDA
    assert "no process group" in next(ln for ln in lines if "torchrun" in ln)
    evaluate = next(ln for ln in lines if "evaluate" in ln)
    assert all(a in evaluate for a in ("direct", "pgd20", "pgd50x10", "autoattack"))
    record = json.loads((out / "doctor.json").read_text())
    assert record["recipes"] == ["trades_cifar10"] and record["passed"] == record["checks_total"]
    assert text.strip().splitlines()[-1] == f"RESULT checks={record['checks_total']} passed={record['passed']} device=cpu"
    report = json.loads((out / "runs" / "trades_cifar10" / "report.json").read_text())
    aa = next(a for a in report["protocols"]["direct"]["attacks"] if a["attack"] == "autoattack")
    assert aa["n_examples"] == 4 and report["test_subset"]["n_examples"] == 16


def test_a_failing_check_prints_its_error_and_the_others_still_run(tmp_path, capsys):
    """A recipe whose loss explodes fails at pretrain (with its traceback saved), what needs that run fails as
    'needs ...', a recipe that does not load fails as one check, and a good recipe still passes; exit code 1."""
    text = (recipe_dir() / "simclr_fmnist_cpu.yaml").read_text()
    assert "lr: 0.5," in text
    exploding = tmp_path / "exploding.yaml"
    exploding.write_text(text.replace("lr: 0.5,", "lr: 1.0e+38,"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {colour: 3}\n")
    out = tmp_path / "doctor"
    code = main(["doctor", "--device", "cpu", "--tiny", "--out", str(out), "--checks", "export",
                 "--recipes", f"{exploding},{broken},simclr_fmnist_cpu"])
    assert code == 1
    lines = {" ".join(ln.split()[1:3]): ln for ln in _lines(capsys.readouterr().out)}
    assert lines["exploding pretrain"].startswith("FAIL") and "loss is nan" in lines["exploding pretrain"]
    trace = Path(lines["exploding pretrain"].rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert trace.is_file() and "Traceback" in trace.read_text() and "TrainingError" in trace.read_text()
    assert "needs exploding pretrain, which failed" in lines["exploding resume"]
    assert "needs exploding resume, which failed" in lines["exploding export"]
    assert lines["broken config"].startswith("FAIL") and "model.colour" in lines["broken config"]
    assert all(lines[f"simclr_fmnist_cpu {k}"].startswith("PASS") for k in ("pretrain", "resume", "export"))
    record = json.loads((out / "doctor.json").read_text())
    assert (record["checks_total"], record["passed"]) == (8, 4)


def test_doctor_refuses_a_foreign_folder_and_a_missing_gpu(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["doctor", "--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 2
    assert "holds no doctor.json" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    import torch

    if not torch.cuda.is_available():
        assert main(["doctor", "--device", "cuda", "--out", str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and len(err.strip().splitlines()) == 1
