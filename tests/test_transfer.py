"""Transfer evaluation: an encoder pretrained on 1-channel 28x28 images probed on 3-channel datasets of
other sizes (CIFAR-100 32x32, STL-10 96x96, an image folder of 16x16 PNGs), written in their real
on-disk formats; the conversion and the report that records it."""
import json

import pytest
import torch

from robustssl import api
from robustssl.cli import main
from robustssl.data.convert import convert_images, describe_conversion

from . import tiny
from .datafiles import write_cifar100, write_fashion_mnist, write_image_folder, write_stl10

TINY = tiny.run("attack.steps=1", "train.epochs=1")
EVAL_TINY = ["eval.n_examples=8", "eval.attacks=[pgd20]", "eval.train_examples=20", "eval.eps_curve=[]", "eval.linear_epochs=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny ACL encoder pretrained on Fashion-MNIST-format data (1 x 28 x 28), and a folder of targets."""
    tmp = tmp_path_factory.mktemp("transfer")
    root = write_fashion_mnist(tmp / "fm", n_train=96, n_test=16)
    run = tmp / "run"
    api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={root}"])
    targets = tmp / "targets"
    write_cifar100(targets)
    write_stl10(targets)
    write_image_folder(targets / "pets", size=16)
    return run, targets


# --- the conversion ----------------------------------------------------------------------------


def test_convert_images_channels_and_size():
    rgb = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = 200, 100, 50  # a constant colour: luma 0.299*200 + 0.587*100 + 0.114*50 = 124.2
    rgb[1] = 255
    gray = convert_images(rgb, 1, (28, 28))
    assert gray.shape == (2, 1, 28, 28) and gray.dtype == torch.uint8
    assert (gray[0] == 124).all() and (gray[1] == 255).all()
    one = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    three = convert_images(one, 3, (28, 28))
    assert three.shape == (3, 3, 28, 28) and all(torch.equal(three[:, k], one[:, 0]) for k in range(3))
    big = convert_images(one, 1, (56, 56))  # bilinear upsampling keeps a pixel's value at its centre block
    assert big.shape == (3, 1, 56, 56) and big.float().mean().sub(one.float().mean()).abs() < 2
    assert convert_images(one, 1, (28, 28)) is one
    with pytest.raises(ValueError, match="1 <-> 3"):
        convert_images(one, 2, (28, 28))
    assert describe_conversion((1, 28, 28), (3, 96, 96)) == {
        "channels": "3 -> 1 (ITU-R 601 luma: 0.299 R + 0.587 G + 0.114 B)", "resize": "96x96 -> 28x28 (antialiased bilinear)"}
    assert describe_conversion((3, 32, 32), (3, 32, 32)) == {"channels": "none", "resize": "none"}


# --- evaluate --data ---------------------------------------------------------------------------


@pytest.mark.parametrize("target,folder,stored,classes", [
    ("cifar100", "cifar100", [3, 32, 32], 100),
    ("stl10", "stl10", [3, 96, 96], 10),
])
def test_transfer_to_a_dataset_with_other_channels_and_size(source, target, folder, stored, classes, capsys):
    run, targets = source
    assert main(["evaluate", "--run", str(run), "--data", target, "--data-root", str(targets), *EVAL_TINY]) == 0
    printed = capsys.readouterr().out
    assert f"fashion-mnist [1, 28, 28] -> {target}" in printed and "3 -> 1" in printed
    out = run / "transfer" / folder
    report = json.loads((out / "report.json").read_text())
    t = report["transfer"]
    assert t["source"] == {"dataset": "fashion-mnist", "image_shape": [1, 28, 28]}
    assert t["target"]["dataset"] == target and t["target"]["image_shape"] == stored
    assert t["target"]["evaluated_shape"] == [1, 28, 28] and t["target"]["classes"] == classes
    assert t["conversion"]["channels"].startswith("3 -> 1") and t["conversion"]["resize"].startswith(f"{stored[1]}x{stored[2]} -> 28x28")
    assert report["encoder"]["n_classes"] == classes and report["data"]["test"]["name"] == target
    assert report["data"]["train"]["n_used"] == 20 and report["protocols"]["slf"]["clean"]["n_examples"] == 8
    assert report["extra"]["data"] == target and report["extra"]["training"]["method"] == "acl"
    md = (out / "report.md").read_text()
    assert "**Transfer:** encoder pretrained on fashion-mnist (1x28x28" in md and f"evaluated on {target}" in md
    assert (out / "robustness_curve.png").stat().st_size > 0
    assert not (run / "report.json").exists(), "a transfer evaluation must not write the run's own report"


def test_transfer_to_an_image_folder_decodes_at_the_encoder_format(source):
    run, targets = source
    report = api.evaluate(run, overrides=EVAL_TINY + ["eval.train_examples=12"], data="imagefolder", data_root=str(targets / "pets"))
    assert report["out"] == str(run / "transfer" / "imagefolder-pets")
    t = json.loads((run / "transfer" / "imagefolder-pets" / "report.json").read_text())["transfer"]
    assert t["target"]["image_shape"] is None and t["target"]["evaluated_shape"] == [1, 28, 28] and t["target"]["classes"] == 2
    assert "decoded at 28x28" in t["conversion"]["resize"] and "1 channel" in t["conversion"]["channels"]
    assert report["encoder"]["n_classes"] == 2


def test_transfer_errors_name_the_problem_and_the_fix(source, tmp_path, capsys):
    run, targets = source

    def error(argv):
        assert main(["evaluate", "--run", str(run), *argv, *EVAL_TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "Valid names" in error(["--data", "svhn-ish"]) and "cifar100" in error(["--data", "nosuch"])
    assert "needs --data-root" in error(["--data", "imagefolder"])
    assert "--data-root needs --data NAME" in error(["--data-root", str(targets)])
    err = error(["--data", "cifar10", "--data-root", str(tmp_path)])
    assert "cifar-10-batches-py" in err and str(tmp_path) in err
    assert not (run / "transfer" / "cifar10").exists()
