"""Claiming a run folder (issue #21, item 3) and resuming a finished run (item 7)."""
import pytest
import yaml

from robustssl import api
from robustssl.cli import main
from robustssl.config import load_config, to_dict
from robustssl.errors import RunError

from . import tiny
from .datafiles import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny.run("attack.steps=1", "train.epochs=1", cnn=True)


def _cli(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_a_run_whose_data_is_missing_leaves_the_folder_unclaimed_and_the_same_command_then_runs(tmp_path, capsys):
    root, out = tmp_path / "fm", tmp_path / "run"
    argv = ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(out), f"data.root={root}", *TINY]
    code, _, err = _cli(capsys, argv)
    assert code == 2 and str(root) in err, err
    assert not (out / "config.yaml").exists()  # nothing claimed: the data were checked first
    write_fashion_mnist(root, n_train=64, n_test=16)
    code, out_text, err = _cli(capsys, argv)  # the very same command, once the data are there
    assert code == 0, err
    assert (out / "encoder.safetensors").is_file() and "done:" in out_text


def test_a_folder_with_only_its_own_unstarted_config_can_be_retried_but_not_with_another_config(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    out = tmp_path / "run"
    overrides = TINY + [f"data.root={root}"]
    out.mkdir()
    # What an attempt that stopped before its first step leaves: its config.yaml alone.
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config("simclr_fmnist_cpu", overrides)), sort_keys=False))
    with pytest.raises(RunError, match=r"stopped before its first step.*differs in optim\.lr"):
        api.pretrain("simclr_fmnist_cpu", out, overrides=overrides + ["optim.lr=0.123"])
    assert not (out / "metrics.jsonl").exists()
    api.pretrain("simclr_fmnist_cpu", out, overrides=overrides)  # the same command retries it
    assert (out / "checkpoint.pt").is_file()
    with pytest.raises(RunError, match="already holds a run"):  # a run that trained is never claimed again
        api.pretrain("simclr_fmnist_cpu", out, overrides=overrides)


def test_resume_of_a_finished_run_says_nothing_was_left_to_do_and_changes_no_file(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(out), f"data.root={root}", *TINY])
    assert code == 0, err
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, text, err = _cli(capsys, ["pretrain", "--out", str(out), "--resume"])
    assert code == 0, err
    assert text.startswith("nothing left to do:") and "done:" not in text, text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
