"""Bad input: a clear one-line error (exit code 2) naming the file and the fix, nothing lost, no
code run. One test per item of the hardening review (issue #11, section 2)."""
import errno
import json
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml

from robustssl import api
from robustssl.cli import main
from robustssl.config import ConfigError, load_config
from robustssl.train.checkpoint import load_checkpoint, save_atomic
from robustssl.train.metrics import read_metrics
from robustssl.train.trainer import TrainingError

from . import tiny
from .datafiles import write_fashion_mnist
from .kill_resume import ENV, cli, resume

TINY = tiny.run("train.log_every_steps=1", "attack.steps=1", "train.epochs=1", cnn=True)
EVAL_TINY = ["eval.linear_epochs=1", "eval.n_examples=16", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[]"]


@pytest.fixture
def root(tmp_path):
    return write_fashion_mnist(tmp_path / "fm", n_train=128, n_test=32)


@pytest.fixture
def run(tmp_path, root):
    out = tmp_path / "run"
    api.pretrain("simclr_fmnist_cpu", out, overrides=TINY + [f"data.root={root}"])
    return out


def _cli_error(capsys, argv):
    """Run the CLI; it must exit 2 with a single error line and no traceback. Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- 2.2: quickstart validates first and deletes only its own finished runs ----------------------
def test_quickstart_bad_override_deletes_nothing(tmp_path, capsys):
    out = tmp_path / "qs"
    (out / "acl").mkdir(parents=True)
    (out / "acl" / "precious.txt").write_text("keep me")
    err = _cli_error(capsys, ["quickstart", "--out", str(out), "bad.key=1"])
    assert "unknown config section 'bad'" in err
    assert (out / "acl" / "precious.txt").read_text() == "keep me"
    err = _cli_error(capsys, ["quickstart", "--out", str(out), "train.epochs=1"])
    assert "not a finished quickstart" in err and "--force" in err
    assert (out / "acl" / "precious.txt").is_file()


# --- 2.4: non-finite weights or buffers never reach a checkpoint or an export -------------------
def test_inf_in_batchnorm_stops_the_run_before_any_checkpoint_or_export(tmp_path, root, monkeypatch):
    from robustssl.methods.simclr import SimCLR

    out = tmp_path / "inf"
    # After the 6th step a BN running_var holds inf while the loss stays finite (as after a blow-up of the
    # weights): injected directly, so the test is of the guard, not of when some lr makes the numerics overflow.
    original, steps = SimCLR.step, []

    def step(self, model, *args, **kwargs):
        logs = original(self, model, *args, **kwargs)
        steps.append(1)
        if len(steps) == 6:
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("inf")
        return logs

    monkeypatch.setattr(SimCLR, "step", step)
    overrides = TINY + [f"data.root={root}", "train.epochs=3", "train.checkpoint_every_steps=1"]
    with pytest.raises(TrainingError, match=r"non-finite values in .*running_var at epoch 1, step 6"):
        api.pretrain("simclr_fmnist_cpu", out, overrides=overrides)
    assert not (out / "encoder.safetensors").exists()
    ck = load_checkpoint(out / "checkpoint.pt")  # the last good one, of step 5
    assert ck["step"] == 5 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "error"]


# --- 2.5: a new run never appends to or overwrites an earlier run's files -----------------------
def test_new_run_in_a_folder_of_a_failed_run_is_refused(tmp_path, root, capsys):
    out = tmp_path / "failed"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"type": "error", "step": 3}\n')
    err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(out), f"data.root={root}", *TINY])
    assert "metrics.jsonl" in err and "another --out" in err
    assert (out / "metrics.jsonl").read_text() == '{"type": "error", "step": 3}\n'
    assert not (out / "config.yaml").exists()


# --- 2.6: no redraw per step in a log file ---------------------------------------------------------
@pytest.mark.slow
def test_progress_bar_does_not_flood_a_log_file(tmp_path, root):
    out = tmp_path / "bar"
    overrides = [o for o in TINY if not o.startswith("train.progress")] + [f"data.root={root}", "train.progress=true",
                                                                          "train.epochs=3", "optim.batch_size=16"]
    proc = subprocess.run(cli("pretrain", "--config", "simclr_fmnist_cpu", "--out", str(out), *overrides),
                          env=ENV, capture_output=True, text=True, check=True)
    steps = 3 * (128 // 16)
    redraws = proc.stderr.count("\r") + proc.stderr.count("\n")
    assert redraws <= 4, f"{redraws} progress redraws for {steps} steps:\n{proc.stderr[-500:]}"


# --- 2.7: a torn last metrics line does not block --resume ----------------------------------------
@pytest.mark.slow
def test_torn_metrics_line_is_tolerated_on_resume(tmp_path, root):
    out = tmp_path / "torn"
    overrides = TINY + [f"data.root={root}", "train.epochs=2", "train.checkpoint_every_epochs=1"]
    api.pretrain("simclr_fmnist_cpu", out, overrides=overrides)
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["epoch"], ck["step"] = 1, 4  # as if killed right after epoch 0's checkpoint...
    save_atomic(ck, out / "checkpoint.pt")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"type": "step", "epoch": 1, "st')  # ...during a metrics write
    assert len(read_metrics(out / "metrics.jsonl")) > 0
    (out / "encoder.safetensors").unlink()
    resume(out)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]
    assert (out / "metrics.jsonl").read_text().endswith("\n")


# --- 2.8: one-line errors naming the file and the fix ---------------------------------------------
def test_yaml_whose_top_level_is_not_a_mapping(tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- data\n- model\n")
    err = _cli_error(capsys, ["pretrain", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert str(bad) in err and "must be a mapping" in err


def test_damaged_config_yaml_on_resume_and_evaluate(run, capsys):
    (run / "config.yaml").write_text("data: {name: fashion-mnist\nmodel: [")
    for argv in (["pretrain", "--out", str(run), "--resume"], ["evaluate", "--run", str(run)]):
        err = _cli_error(capsys, argv)
        assert str(run / "config.yaml") in err and "damaged" in err


def test_junk_and_truncated_encoder(run, capsys):
    good = (run / "encoder.safetensors").read_bytes()
    for content in (b"not a safetensors file at all", good[: len(good) // 2]):
        (run / "encoder.safetensors").write_bytes(content)
        err = _cli_error(capsys, ["evaluate", "--run", str(run), *EVAL_TINY])
        assert "encoder.safetensors" in err


def test_out_pointing_at_a_file(tmp_path, root, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(target), f"data.root={root}", *TINY])
    assert str(target) in err and "is a file" in err
    assert target.read_text() == "x"


def test_disk_full_while_writing_config_and_encoder(tmp_path, root, capsys, monkeypatch):
    import robustssl.io as rio

    real_fsync = rio.os.fsync
    for victim in ("config.yaml", "encoder.safetensors"):
        out = tmp_path / f"full-{victim}"

        def fsync(fd, victim=victim):
            if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(victim + "."):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(rio.os, "fsync", fsync)
        err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(out), f"data.root={root}", *TINY])
        monkeypatch.setattr(rio.os, "fsync", real_fsync)
        assert str(out / victim) in err and "disk is full" in err
        assert not list(out.glob("*.tmp")), "a failed write must not leave its temp file"


def test_checkpoint_missing_a_key(run, capsys):
    ck = load_checkpoint(run / "checkpoint.pt")
    del ck["optimizer"]
    save_atomic(ck, run / "checkpoint.pt")
    err = _cli_error(capsys, ["pretrain", "--out", str(run), "--resume"])
    assert str(run / "checkpoint.pt") in err and "optimizer" in err


def test_labels_outside_the_class_range(tmp_path, capsys):
    import gzip

    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    path = root / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[8 + 5] = 12  # the sixth label
    path.write_bytes(gzip.compress(bytes(raw)))
    err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(tmp_path / "o"), f"data.root={root}", *TINY])
    assert "train-labels-idx1-ubyte.gz" in err and "12" in err


# --- 2.9: imagefolder size and channels are config keys ------------------------------------------
def test_imagefolder_size_and_channels_are_config_keys(tmp_path):
    cfg = load_config("simclr_fmnist_cpu", ["data.name=imagefolder", "data.root=/x", "data.image_size=32", "data.channels=3"])
    assert cfg.data.image_size == 32 and cfg.data.channels == 3
    with pytest.raises(ConfigError, match="data.channels=2 is not valid"):
        load_config("simclr_fmnist_cpu", ["data.name=imagefolder", "data.channels=2"])
    with pytest.raises(ConfigError, match="apply to data.name=imagefolder only"):
        load_config("simclr_fmnist_cpu", ["data.image_size=32"])


# --- 2.10: atomic run files; orphaned temp files are cleared --------------------------------------
def test_orphaned_temp_files_are_removed_on_resume(tmp_path, root):
    out = tmp_path / "orph"
    api.pretrain("simclr_fmnist_cpu", out, overrides=TINY + [f"data.root={root}", "train.epochs=1"])
    for name in ("checkpoint.pt.abc123.tmp", "encoder.safetensors.x1.tmp", "run.json.q.tmp"):
        (out / name).write_bytes(b"half a file")
    (out / "keep.tmp").write_text("not ours")
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["epoch"], ck["batch"] = 0, 0
    save_atomic(ck, out / "checkpoint.pt")
    api.pretrain(None, out, resume=True)
    assert sorted(p.name for p in out.glob("*.tmp")) == ["keep.tmp"]


def test_failed_summary_write_keeps_the_old_file(tmp_path, root, monkeypatch):
    import robustssl.io as rio

    out = tmp_path / "sum"
    api.pretrain("simclr_fmnist_cpu", out, overrides=TINY + [f"data.root={root}"])
    old = (out / "run.json").read_text()
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["epoch"], ck["batch"] = 0, 0
    save_atomic(ck, out / "checkpoint.pt")

    def fail_on_summary(src, dst):
        if str(dst).endswith("run.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.rename(src, dst)

    monkeypatch.setattr(rio.os, "replace", fail_on_summary)
    with pytest.raises(Exception, match="run.json.*disk is full"):
        api.pretrain(None, out, resume=True)
    assert (out / "run.json").read_text() == old and not list(out.glob("run.json.*.tmp"))


# --- 2.11: resume, NaN values, early eval checks, Ctrl-C -----------------------------------------
def test_resume_with_a_different_config_is_refused(run, capsys):
    err = _cli_error(capsys, ["pretrain", "--config", "acl_fmnist_cpu", "--out", str(run), "--resume"])
    assert "differs" in err and "method.name" in err


def test_resume_refuses_a_config_yaml_edited_after_the_checkpoint(run, capsys):
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["optim"]["lr"] = 0.123
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    err = _cli_error(capsys, ["pretrain", "--out", str(run), "--resume"])
    assert "optim.lr" in err and "config.yaml" in err


def test_resume_accepts_a_run_saved_before_new_config_keys_existed(run):
    """A key added to the config since the run was saved (here two real ones, dropped from the
    checkpoint's copy and from config.yaml) takes its default; the run resumes."""
    ck = load_checkpoint(run / "checkpoint.pt")
    del ck["config"]["train"]["timing"], ck["config"]["eval"]["aff_beta"]
    save_atomic(ck, run / "checkpoint.pt")
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["train"]["timing"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    api.pretrain(None, run, resume=True)
    ck["config"]["optim"]["lr"] = 0.123  # a real difference is still refused
    save_atomic(ck, run / "checkpoint.pt")
    with pytest.raises(Exception, match="optim.lr"):
        api.pretrain(None, run, resume=True)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan"])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError, match="optim.lr: expected a finite number"):
        load_config("acl_fmnist_cpu", [f"optim.lr={value}"])


def test_eps_curve_is_checked_before_the_probe_trains(run, capsys, monkeypatch):
    touched: list[str] = []  # the encoder and the data are loaded only after every key is validated

    def record(name, real):
        def spy(*args, **kwargs):
            touched.append(name)
            return real(*args, **kwargs)
        return spy

    monkeypatch.setattr(api, "load_encoder", record("encoder", api.load_encoder))
    monkeypatch.setattr(api, "load_train_set", record("train data", api.load_train_set))
    err = _cli_error(capsys, ["evaluate", "--run", str(run), "eval.eps_curve=[0.1, 2.0]"])
    assert "eval.eps_curve must be in [0, 1]" in err
    assert touched == [] and not (run / "report.json").exists()
    assert main(["evaluate", "--run", str(run), *EVAL_TINY]) == 0  # the spies see a valid evaluation
    assert touched == ["encoder", "train data"]


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_does_not_suggest_resume(tmp_path, root):
    out = tmp_path / "intr"
    overrides = TINY + [f"data.root={root}", "train.epochs=200", "train.checkpoint_every_epochs=0"]
    # PYTHONFAULTHANDLER: if the run ignores Ctrl-C, SIGABRT makes it print every thread's stack for the failure.
    # SIG_DFL in the child: a suite started in the background (`cmd &` in a script) passes SIGINT down as ignored, and
    # Python then keeps it ignored, so the run would train on; the test is about how a run handles a Ctrl-C it gets.
    proc = subprocess.Popen(cli("pretrain", "--config", "acl_fmnist_cpu", "--out", str(out), *overrides),
                            env={**ENV, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"pretrain was still running 60 s after Ctrl-C; where it was:\n{err[-6000:]}")
    assert proc.returncode == 130
    assert "--resume" not in err and "nothing to resume" in err
    assert not (out / "checkpoint.pt").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["type"] == "step"


def test_atomic_writes_keep_ordinary_permissions(tmp_path):
    from robustssl.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)
        atomic_write_text(path, "a: 2\n")
        assert path.stat().st_mode & 0o777 == 0o640 and path.read_text() == "a: 2\n"
    finally:
        os.umask(umask)
