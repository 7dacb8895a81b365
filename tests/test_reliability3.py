"""Reliability round 3 (issue #16): nothing overwritten, no silent wrong result, no traceback on the
newer commands (select, postprocess, compare, transfer). One section per item of the issue; every
error is one line, exit code 2, naming the file or key and the fix."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io as scipy_io

from robustssl import api
from robustssl.cli import main
from robustssl.config import ConfigError, load_config
from robustssl.data import DatasetError, load_dataset
from robustssl.train.metrics import read_metrics

from . import tiny
from .datafiles import write_fashion_mnist, write_image_folder

TINY = tiny.run("train.log_every_steps=1", "attack.steps=1", "train.epochs=1", cnn=True)
EVAL_TINY = ["eval.linear_epochs=1", "eval.n_examples=16", "eval.attacks=[pgd20]", "eval.train_examples=64",
             "eval.eps_curve=[]"]
RUN_FILES = ("encoder.safetensors", "config.yaml", "checkpoint.pt", "metrics.jsonl", "run.json", "report.json", "report.md")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Fashion-MNIST-format data and one tiny SimCLR run, evaluated (read-only: tests copy it to change it)."""
    tmp = tmp_path_factory.mktemp("rel3")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=32)
    run = tmp / "run"
    api.pretrain("simclr_fmnist_cpu", run, overrides=TINY + [f"data.root={root}"])
    api.evaluate(run, overrides=EVAL_TINY)
    return root, run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _cli_error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with one error line and no traceback. Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- 1. select --output never replaces a run file, nor an existing file without --force ---------
def test_select_refuses_every_run_file_even_with_force(base, tmp_path, capsys):
    _, run = base
    other = _copy(run, tmp_path / "other")
    before, other_before = _snapshot(run), _snapshot(other)
    targets = [run / name for name in RUN_FILES] + [other / "checkpoint.pt", other / "metrics.jsonl"]
    for target in targets:
        for force in ([], ["--force"]):
            err = _cli_error(capsys, ["select", "--run", str(run), "--selector", "random", "--fraction", "0.5",
                                      "--output", str(target), *force])
            assert target.name in err and "choose another file name" in err
    assert _snapshot(run) == before and _snapshot(other) == other_before


def test_a_second_select_does_not_replace_selection_json_without_force(base, tmp_path, capsys):
    run = _copy(base[1], tmp_path / "run")
    argv = ["select", "--run", str(run), "--selector", "random", "--fraction", "0.5"]
    assert main(argv) == 0
    first = (run / "selection.json").read_bytes()
    err = _cli_error(capsys, [*argv, "coreset.unit=sample"])
    assert "selection.json already exists" in err and "--force" in err
    assert (run / "selection.json").read_bytes() == first
    assert main([*argv, "coreset.unit=sample", "--force"]) == 0
    assert json.loads((run / "selection.json").read_text())["coreset"]["unit"] == "sample"


# --- 2. a class list is part of a dataset: recorded, compared, a mismatch refused ------------------
def test_imagefolder_splits_with_different_classes_are_refused(tmp_path, capsys):
    data = write_image_folder(tmp_path / "pets", size=16, n_per_class=20, classes=("cat", "dog"))
    run = tmp_path / "run"
    api.pretrain("simclr_fmnist_cpu", run, overrides=TINY + ["data.name=imagefolder", f"data.root={data}",
                                                             "optim.batch_size=16"])
    assert json.loads((run / "run.json").read_text())["classes"] == ["cat", "dog"]
    shutil.copytree(data / "test" / "cat", data / "test" / "aardvark")  # the test split gains a class
    err = _cli_error(capsys, ["evaluate", "--run", str(run), *EVAL_TINY])
    assert "2 classes [cat, dog]" in err and "3 classes [aardvark, cat, dog]" in err and "test split" in err
    assert not (run / "report.json").exists()
    shutil.rmtree(data / "test" / "aardvark")
    shutil.copytree(data / "train" / "cat", data / "train" / "cow")  # the training data changed since pretraining
    shutil.copytree(data / "test" / "cat", data / "test" / "cow")
    err = _cli_error(capsys, ["evaluate", "--run", str(run), *EVAL_TINY])
    assert "run.json" in err and "3 classes [cat, cow, dog]" in err and "2 classes [cat, dog]" in err


def test_transfer_target_splits_with_different_classes_are_refused(base, tmp_path, capsys):
    _, run = base
    pets = write_image_folder(tmp_path / "pets", size=16, n_per_class=4, classes=("cat", "dog"))
    shutil.copytree(pets / "test" / "dog", pets / "test" / "emu")
    err = _cli_error(capsys, ["evaluate", "--run", str(run), "--data", "imagefolder", "--data-root", str(pets), *EVAL_TINY])
    assert "3 classes [cat, dog, emu]" in err and "2 classes [cat, dog]" in err
    assert not (run / "transfer").exists()


# --- 3. a coreset smaller than one batch is refused for every selector -----------------------------
def _subset_selectors() -> list[str]:
    from robustssl.coreset.registry import SELECTORS

    return [name for name, s in SELECTORS.items() if s.trains_on_subset]


@pytest.mark.parametrize("selector", _subset_selectors())
def test_a_coreset_smaller_than_a_batch_is_refused_before_any_step(base, tmp_path, selector):
    from robustssl.train.trainer import TrainingError

    root, _ = base
    out = tmp_path / "small"
    overrides = TINY + [f"data.root={root}", f"coreset.selector={selector}", "coreset.fraction=0.2", "coreset.unit=sample",
                        "coreset.warmup_epochs=0", "train.epochs=2", "model.proj_out=10"]
    with pytest.raises(TrainingError, match=r"less than one batch of optim.batch_size=32.*coreset.fraction=0\.2\d* or more"):
        api.pretrain("pgd_at_fmnist_cpu", out, overrides=overrides)
    assert not (out / "metrics.jsonl").exists() or not read_metrics(out / "metrics.jsonl")


def test_an_epoch_with_no_step_logs_no_loss(base, tmp_path):
    """A run resumed at the end of an epoch (checkpointed after its last step) trains no step in it:
    its epoch record says so (loss null), never loss 0.0."""
    from robustssl.train.checkpoint import load_checkpoint, save_atomic

    root, _ = base
    out = tmp_path / "edge"
    api.pretrain("simclr_fmnist_cpu", out, overrides=TINY + [f"data.root={root}"])
    ck = load_checkpoint(out / "checkpoint.pt")
    steps = ck["step"]  # 4 batches of 32 in the epoch
    ck.update(epoch=0, batch=steps)  # as if checkpointed after the last step, before the epoch's end
    save_atomic(ck, out / "checkpoint.pt")
    api.pretrain(None, out, resume=True)
    epochs = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "epoch"]
    assert epochs[-1]["images"] == 0 and epochs[-1]["loss"] is None
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 2  # not evaluated, but not a traceback


# --- 4. an exclusive lock on pretrain, postprocess and compare outputs ------------------------------
HOLD = textwrap.dedent("""
    import sys, time
    from robustssl.io import FolderLock
    with FolderLock(sys.argv[1], "robustssl pretrain"):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def held(tmp_path):
    """A folder locked by another, running process (the lock of a pretrain in progress)."""
    folder = tmp_path / "busy"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield folder, proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_folder_in_use_is_refused_by_pretrain_postprocess_and_compare(base, held, capsys):
    root, run = base
    folder, pid = held
    before = _snapshot(folder)
    for argv in (["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(folder), f"data.root={root}", *TINY],
                 ["postprocess", "--run", str(run), "--out", str(folder)],
                 ["compare", str(run), "--out", str(folder)]):
        err = _cli_error(capsys, argv)
        assert f"is in use by robustssl pretrain (pid {pid}" in err and "wait for it to finish" in err
    assert _snapshot(folder) == before


@pytest.mark.slow
def test_resume_while_the_run_is_still_running_is_refused(base, tmp_path, capsys):
    _, run = base
    copy = _copy(run, tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        metrics = (copy / "metrics.jsonl").read_bytes()
        err = _cli_error(capsys, ["pretrain", "--out", str(copy), "--resume"])
        assert "in use" in err and (copy / "metrics.jsonl").read_bytes() == metrics
    finally:
        proc.kill()
        proc.wait()
    # the holder was killed (-9): its lock file stays, stale; the next command takes it over and says so
    assert (copy / ".robustssl.lock").is_file()
    assert main(["compare", str(copy), "--out", str(copy / "cmp")]) == 0
    code = main(["pretrain", "--out", str(copy), "--resume"])
    err = capsys.readouterr().err
    assert code == 0 and "ended without releasing it" in err and not (copy / ".robustssl.lock").exists()


@pytest.mark.slow
def test_compare_does_not_replace_an_earlier_comparison_without_force(base, tmp_path, capsys):
    _, run = base
    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--out", str(out)]) == 0
    capsys.readouterr()  # the first comparison's output
    (out / "compare.md").write_text("my edited comparison")
    err = _cli_error(capsys, ["compare", str(run), "--out", str(out)])
    assert "compare.md and compare.json" in err and "--force" in err
    assert (out / "compare.md").read_text() == "my edited comparison"
    assert main(["compare", str(run), "--out", str(out), "--force"]) == 0
    assert (out / "compare.md").read_text().startswith("# Run comparison")
    assert not (out / ".robustssl.lock").exists()


# --- 5. every text from a run is escaped in compare.md and in the figures ---------------------------
def test_compare_escapes_forged_names_and_methods(base, tmp_path, capsys):
    _, run = base
    forged = _copy(run, tmp_path / "a|b $x^$")
    summary = json.loads((forged / "run.json").read_text())
    summary["method"] = "simclr | 99.99 | 99.99 |\n| fake | row |<script>alert(1)</script> $\\frac{1}{$"
    (forged / "run.json").write_text(json.dumps(summary))
    out = tmp_path / "cmp"
    assert main(["compare", str(run), str(forged), "--out", str(out)]) == 0, capsys.readouterr().err
    md = (out / "compare.md").read_text()
    tables: list[list[str]] = []  # runs of consecutive table lines: the runs' table first, then the probe curves' table
    for i, line in enumerate(md.splitlines()):
        if line.startswith("|"):
            if i == 0 or not md.splitlines()[i - 1].startswith("|"):
                tables.append([])
            tables[-1].append(line)
    assert len(tables[0]) == 2 + 2  # header, separator, one row per run
    for table in tables:
        unescaped_pipes = {len([i for i, ch in enumerate(line) if ch == "|" and line[i - 1] != "\\"]) for line in table}
        assert len(unescaped_pipes) == 1  # every row has the header's columns
    assert "<script>" not in md and "&lt;script&gt;" in md
    for name in ("robustness_vs_eps.png", "loss_curves.png", "time_breakdown.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


# --- 6. evaluate and postprocess take only their own sections -------------------------------------
def test_evaluate_and_postprocess_refuse_overrides_of_other_sections(base, tmp_path, capsys):
    _, run = base
    before = _snapshot(run)
    err = _cli_error(capsys, ["evaluate", "--run", str(run), "model.width=16", *EVAL_TINY])
    assert "'model.width=16'" in err and "eval.<key>" in err
    out = tmp_path / "pp"
    err = _cli_error(capsys, ["postprocess", "--run", str(run), "--out", str(out), "method.name=simclr"])
    assert "'method.name=simclr'" in err and "postprocess.<key>" in err and not out.exists()
    err = _cli_error(capsys, ["select", "--run", str(run), "--selector", "random", "attack.eps=0.5"])
    assert "'attack.eps=0.5'" in err and "coreset.<key>" in err
    assert _snapshot(run) == before


# --- 7. YAML: bounded aliases and nesting, no duplicate keys, no huge repr ------------------------
# Nine nested lists of ten aliases: 10^9 values once expanded, in 600 bytes. The anchors sit in the
# method section (read last), the expansion in a number key read first, whose error would repr() it.
_LISTS = ["&a [" + ", ".join(["1"] * 10) + "]"] + [
    f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
BILLION_LAUGHS = "method: {name: acl, anchors: [" + ", ".join(_LISTS) + "]}\neval: {eps: *i}\n"


def _limit_memory() -> None:
    """At most 4 GiB of address space: a loader that expands the aliases fails instead of filling the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_yaml_billion_laughs_is_refused_fast(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    assert len(path.read_bytes()) < 1000
    code = f"from robustssl.config import load_config; load_config({str(path)!r})"
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail("a 1 kB YAML with nested aliases did not load (nor fail) in 60 s")
    assert time.perf_counter() - start < 60
    assert "ConfigError" in proc.stderr and "aliases" in proc.stderr and str(path) in proc.stderr
    assert len(proc.stderr.splitlines()[-1]) < 600


@pytest.mark.slow
def test_yaml_duplicate_keys_deep_nesting_and_huge_values(tmp_path, capsys):
    dup = tmp_path / "dup.yaml"
    dup.write_text("optim: {lr: 0.1}\ntrain: {epochs: 1}\noptim: {lr: 5.0}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: .*'optim' is given twice \(lines 1 and 3\)"):
        load_config(dup)
    deep = tmp_path / "deep.yaml"
    deep.write_text("eval: {eps_curve: " + "[" * 20000 + "]" * 20000 + "}\n")
    err = _cli_error(capsys, ["pretrain", "--config", str(deep), "--out", str(tmp_path / "r")])
    assert "deep.yaml" in err and "nested deeper than" in err and not (tmp_path / "r").exists()
    big = tmp_path / "big.yaml"
    big.write_text("optim: {lr: [" + ", ".join(["[1, 2, 3]"] * 20000) + "]}\n")
    err = _cli_error(capsys, ["pretrain", "--config", str(big), "--out", str(tmp_path / "r")])
    assert "optim.lr: expected a number" in err and len(err) < 400


# --- 8. tracebacks that are now one-line errors naming the file ------------------------------------
def _svhn(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"X": x, "y": y}, do_compression=True)
    return path


def test_svhn_empty_file_no_images_and_complex_labels_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train_32x32.mat").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"train_32x32.mat \(0 bytes\) is not a readable MATLAB v5 file"):
        load_dataset("svhn", "train", root=str(tmp_path / "a"))
    _svhn(tmp_path / "b" / "train_32x32.mat", np.zeros((32, 32, 3, 0), np.uint8), np.zeros((0, 1)))
    with pytest.raises(DatasetError, match=r"train_32x32.mat holds no images"):
        load_dataset("svhn", "train", root=str(tmp_path / "b"))
    y = np.array([[1 + 1j], [2 + 0j]])
    _svhn(tmp_path / "c" / "train_32x32.mat", np.zeros((32, 32, 3, 2), np.uint8), y)
    with pytest.raises(DatasetError, match=r"train_32x32.mat: 'y' holds non-integer labels \(complex"):
        load_dataset("svhn", "train", root=str(tmp_path / "c"))


def _broken_chunk_png(path: Path) -> None:
    """A PNG whose image data is split over two IDAT chunks, the second with a damaged chunk type."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(buf, "PNG")
    good = buf.getvalue()
    i = good.find(b"IDAT")
    n = struct.unpack(">I", good[i - 4 : i])[0]
    data = good[i + 4 : i + 4 + n]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(good[: i - 4] + chunk(b"IDAT", data[: n // 2]) + chunk(b"ID\x00T", data[n // 2 :]) + good[i + 8 + n :])


def test_a_png_with_a_broken_chunk_is_named_when_read_and_when_streamed(tmp_path, capsys):
    data = write_image_folder(tmp_path / "pets", size=16, n_per_class=20)
    bad = data / "train" / "cat" / "0.png"
    _broken_chunk_png(bad)
    with pytest.raises(DatasetError, match=r"Cannot decode image .*0\.png \(SyntaxError: broken PNG file"):
        load_dataset("imagefolder", "train", root=str(data))
    common = ["--config", "simclr_fmnist_cpu", *TINY, "data.name=imagefolder", f"data.root={data}", "optim.batch_size=16",
              "data.stream=true", "data.image_size=16", "data.channels=3"]
    err = _cli_error(capsys, ["pretrain", "--out", str(tmp_path / "s"), *common])
    assert str(bad) in err and "Replace or delete the file" in err


def test_a_decompression_bomb_under_streaming_is_named(tmp_path, capsys, monkeypatch):
    from PIL import Image

    data = write_image_folder(tmp_path / "pets", size=16, n_per_class=20)
    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS pixels as decompression bombs; a 16x16 image is one at 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    err = _cli_error(capsys, ["pretrain", "--out", str(tmp_path / "s"), "--config", "simclr_fmnist_cpu", *TINY,
                              "data.name=imagefolder", f"data.root={data}", "optim.batch_size=16", "data.stream=true",
                              "data.image_size=16", "data.channels=3"])
    assert "decompression bomb" in err and ".png" in err


def test_a_huge_image_size_is_refused_before_any_allocation(tmp_path, capsys):
    data = write_image_folder(tmp_path / "pets", size=16, n_per_class=2)
    err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(tmp_path / "r"),
                              "data.name=imagefolder", f"data.root={data}", "data.image_size=100000"])
    assert "data.image_size=100000 is larger than 4096" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", ["missing_field", "mistyped_field", "nan_accuracy", "list_run_json",
                                    "run_json_method_list", "run_json_hardware_string", "epoch_without_loss"])
def test_compare_names_a_damaged_report_run_json_or_metrics(base, tmp_path, capsys, damage):
    _, run = base
    bad = _copy(run, tmp_path / "bad")
    report = json.loads((bad / "report.json").read_text())
    slf = report["protocols"]["slf"]
    culprit = "report.json"
    if damage == "missing_field":
        del slf["clean"]["n_examples"]
    elif damage == "mistyped_field":
        slf["attacks"] = "pgd20"
    elif damage == "nan_accuracy":
        slf["clean"]["accuracy"] = float("nan")
    elif damage == "list_run_json":
        (bad / "run.json").write_text("[1, 2]")
        culprit = "run.json"
    elif damage == "run_json_method_list":
        (bad / "run.json").write_text(json.dumps({"method": ["a"], "seconds": 1.0}))
        culprit = "run.json"
    elif damage == "run_json_hardware_string":  # compare's note on different hardware reads its fields
        (bad / "run.json").write_text(json.dumps({"method": "acl", "seconds": 1.0, "hardware": "a CPU"}))
        culprit = "run.json"
    else:
        (bad / "metrics.jsonl").write_text('{"type": "epoch", "epoch": 0, "step": 4}\n{"type": "epoch", "epoch": 1}\n')
        culprit = "metrics.jsonl"
    (bad / "report.json").write_text(json.dumps(report))
    out = tmp_path / "cmp"
    err = _cli_error(capsys, ["compare", str(run), str(bad), "--out", str(out)])
    assert str(bad / culprit) in err
    assert not out.exists()


# --- 9. errors that now name the file or key and the fix --------------------------------------------
def test_junk_run_json_is_refused_before_the_evaluation(base, tmp_path, capsys):
    run = _copy(base[1], tmp_path / "run")
    (run / "report.json").unlink()
    for junk in ("{not json", "[1, 2, 3]"):
        (run / "run.json").write_text(junk)
        err = _cli_error(capsys, ["evaluate", "--run", str(run), *EVAL_TINY])
        assert str(run / "run.json") in err and "restore it, or delete it" in err
        assert not (run / "report.json").exists()


def test_seeds_of_2_pow_63_and_more_are_refused_naming_the_key(base, tmp_path, capsys):
    root, run = base
    for key in ("train.seed", "eval.seed"):
        err = _cli_error(capsys, ["pretrain", "--config", "simclr_fmnist_cpu", "--out", str(tmp_path / "r"),
                                  f"data.root={root}", *TINY, f"{key}={2**63}"])
        assert key in err and "out of range" in err and not (tmp_path / "r").exists()
    err = _cli_error(capsys, ["evaluate", "--run", str(run), f"eval.seed={2**64 + 5}"])
    assert "eval.seed" in err and "out of range" in err


def test_a_binary_stl10_class_names_file_is_named(tmp_path):
    from .datafiles import write_stl10

    root = write_stl10(tmp_path, n_train=2, n_test=2)
    names = root / "stl10_binary" / "class_names.txt"
    names.write_bytes(bytes(range(256)))
    with pytest.raises(DatasetError, match=r"class_names.txt is not a text file of class names"):
        load_dataset("stl10", "train", root=str(root))


@pytest.mark.parametrize("system", ["/proc", "/sys"])
def test_out_under_proc_or_sys_is_refused(base, tmp_path, capsys, system):
    root, run = base
    target = f"{system}/robustssl-test-out"
    for argv in (["pretrain", "--config", "simclr_fmnist_cpu", "--out", target, f"data.root={root}", *TINY],
                 ["postprocess", "--run", str(run), "--out", target],
                 ["compare", str(run), "--out", target],
                 ["select", "--run", str(run), "--selector", "random", "--output", f"{target}/s.json"]):
        err = _cli_error(capsys, argv)
        assert f"is under {system}, a kernel interface" in err


def test_a_data_root_symlink_loop_is_named(base, tmp_path, capsys):
    _, run = base
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    err = _cli_error(capsys, ["evaluate", "--run", str(run), "--data", "mnist", "--data-root", str(loop), *EVAL_TINY])
    assert str(loop) in err and "loop of symbolic links" in err


# --- 10. an empty --out never means the current folder ----------------------------------------------
def test_an_empty_out_is_refused(base, tmp_path, capsys, monkeypatch):
    root, run = base
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for argv in (["pretrain", "--config", "simclr_fmnist_cpu", "--out", "", f"data.root={root}", *TINY],
                 ["postprocess", "--run", str(run), "--out", ""],
                 ["compare", str(run), "--out", ""],
                 ["select", "--run", str(run), "--selector", "random", "--output", ""],
                 ["quickstart", "--out", ""]):
        err = _cli_error(capsys, argv)
        assert "is empty" in err
    assert list(cwd.iterdir()) == []


def test_the_cli_keeps_the_traceback_of_a_bug(monkeypatch):
    """Only the project's own errors and OSError are one-line errors; a bug (here a ValueError from
    inside the API) keeps its traceback."""
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(api, "compare", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["compare", "x"])
