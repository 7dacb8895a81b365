"""Evaluated classifiers others can use (issue #21, item 9): `evaluate` saves each evaluated classifier
(encoder + head, its BN branch fixed) with its threat model and accuracies, `robustssl export --format
hf` writes a Hugging Face Hub-ready folder, and `api.load` reads either back. Round trips: the loaded
classifier reproduces the report's clean accuracy exactly on the same test images."""
import json

import pytest
import torch
import yaml
from safetensors import safe_open

from robustssl import api
from robustssl.cli import main
from robustssl.data import load_dataset
from robustssl.errors import RunError
from robustssl.models import SSLModel, current_branch, load_encoder
from robustssl.models.hub import RobustClassifier

from . import tiny
from .datafiles import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny.run("attack.steps=1", "train.epochs=1", cnn=True)
N = 48
EVAL = ["eval.protocols=[slf,aff]", "eval.attacks=[pgd20]", f"eval.n_examples={N}", "eval.train_examples=96",
        "eval.eps_curve=[]", "eval.linear_epochs=2", "eval.aff_epochs=1", "eval.aff_steps=1"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=64)
    run = tmp / "acl"
    api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={root}"])
    report = api.evaluate(run, overrides=EVAL)
    test = load_dataset("fashion-mnist", "test", root=str(root))
    return run, report, test.images[:N].float() / 255, test.labels[:N]


def test_evaluate_saves_each_classifier_with_its_threat_model_and_accuracies(evaluated):
    run, report, x, y = evaluated
    assert report["classifiers"] == {"slf": "classifier_slf.safetensors", "aff": "classifier_aff.safetensors"}
    assert json.loads((run / "report.json").read_text())["extra"]["classifiers"] == report["classifiers"]
    for protocol in ("slf", "aff"):
        model = api.load(run / f"classifier_{protocol}.safetensors")  # two lines from the file to logits
        logits = model(x)
        assert isinstance(model, RobustClassifier) and not model.training and logits.shape == (N, 10)
        entry = report["protocols"][protocol]
        assert (logits.argmax(1) == y).sum().item() == round(entry["clean"]["accuracy"] * N)  # the report's number
        info = model.info
        assert info["protocol"] == protocol and info["bn_branch"] == "pgd" == current_branch(model.encoder)
        assert info["threat_model"]["norm"] == "linf" and info["threat_model"]["eps"] == report["settings"]["eps"]
        assert info["accuracy"] == {"clean": entry["clean"]["accuracy"], "pgd20": entry["attacks"][0]["accuracy"]}
        assert info["n_examples"]["clean"] == N and info["sanity_passed"] == entry["sanity_passed"]
        mi = json.loads((run / f"classifier_{protocol}.model_info.json").read_text())
        assert mi["clean_acc"] == f"{100 * entry['clean']['accuracy']:.2f}" and mi["autoattack_acc"] is None
        assert mi["dataset"] == "fashion-mnist" and mi["eps"] == "0.1" and "AutoAttack was not run" in mi["footnote"]
    with safe_open(str(run / "classifier_slf.safetensors"), "pt") as f:  # the encoder's own tensor names + the head
        keys = set(f.keys())
    assert {"head.weight", "head.bias"} <= keys and set(load_encoder(run / "encoder.safetensors")[0].encoder_state_dict()) < keys


def test_export_hf_writes_a_hub_ready_folder_that_loads_back_to_the_same_classifier(evaluated, capsys):
    run, report, x, _ = evaluated
    assert main(["export", "--run", str(run), "--format", "hf"]) == 0
    printed = capsys.readouterr().out
    out = run / "hf"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "model_info.json"]
    best = max(("slf", "aff"), key=lambda p: report["protocols"][p]["attacks"][0]["accuracy"])
    assert f"exported the {best.upper()} classifier" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["library_name"] == "robustssl" and config["num_labels"] == 10 and len(config["id2label"]) == 10
    assert config["protocol"] == best and config["bn_branch"] == "pgd" and config["architecture"] == "5-layer CNN (width 4)"
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "robustssl" and front["datasets"] == ["fashion-mnist"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == round(100 * config["accuracy"]["clean"], 2)
    for part in ("## Sanity checks", "## The run's evaluation report", "| SLF |", "| AFF |", "## Training recipe",
                 "name: acl", "api.load("):
        assert part in card, part
    assert set(json.loads((out / "model_info.json").read_text())) >= {
        "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture", "eps",
        "clean_acc", "reported", "autoattack_acc"}
    from_hf, from_file = api.load(out), api.load(run / f"classifier_{best}.safetensors")
    assert torch.equal(from_hf(x), from_file(x))
    # --protocol picks another; a folder of other files is never written into
    assert api.export(run, tmp := run / "hf_slf", protocol="slf")["protocol"] == "slf"
    assert json.loads((tmp / "config.json").read_text())["protocol"] == "slf"
    (run / "mine").mkdir()
    (run / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RunError, match="not an export"):
        api.export(run, run / "mine")
    assert sorted(p.name for p in (run / "mine").iterdir()) == ["notes.txt"]
    with pytest.raises(RunError, match=r"no classifier of protocol 'alf' \(it holds: aff, slf\)"):
        api.export(run, protocol="alf")


def test_load_gives_the_encoder_of_a_run_folder_or_encoder_export(evaluated):
    run, _, x, _ = evaluated
    encoder = api.load(run)
    assert isinstance(encoder, SSLModel) and current_branch(encoder) == "pgd" and not encoder.training
    assert torch.equal(encoder.features(x), api.load(run / "encoder.safetensors").features(x))
    with pytest.raises(RunError, match="neither model.safetensors"):
        api.load(run.parent)
