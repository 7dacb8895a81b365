"""The evaluation's extension points from outside the package: a toy attack (with a threat model
and settings of its own) and a toy protocol (with its own classifier, settings and report
renderer) are registered from this test module, not by editing robustssl, and run end to end
through the CLI: config keys, evaluation, report.json, report.md and compare.

Also: an l_2 evaluation is reported as l_2 everywhere (report.md, the plot, compare's row)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from robustssl import api
from robustssl.cli import main
from robustssl.eval.classifier import LinearEvalModel
from robustssl.eval.linear import extract_features, train_subset
from robustssl.eval.registry import ATTACKS, PROTOCOLS, Protocol
from robustssl.eval.robust import AttackResult, predict
from robustssl.eval.threat import EvalAttack, ThreatModel
from robustssl.settings import positive

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run("attack.steps=1", "train.epochs=1")
EVAL_TINY = ["eval.n_examples=16", "eval.train_examples=64", "eval.linear_epochs=2", "eval.eps_curve=[0.05]"]

pytestmark = pytest.mark.usefixtures("one_thread")


# --- a toy attack: the worst of a few constant brightness shifts, its own threat model and settings ------------
@dataclass
class ShiftSettings:
    max_shift: float = positive(0.3)  # the largest |c| of x + c (clipped to [0, 1])
    shifts: int = positive(5)  # how many shifts in [-max_shift, max_shift] (odd: 0 is one of them)


class ShiftAttack(EvalAttack):
    name = "toy-shift"
    label = "Toy shift"
    rank = 5
    Settings = ShiftSettings

    def threat_model(self, cfg: Any) -> ThreatModel:
        s = cfg.component(self.name)
        return ThreatModel("brightness", s.max_shift, "brightness shift", "a constant added to every pixel")

    def run(self, model, x, y, cfg, done) -> AttackResult:
        s = cfg.component(self.name)
        survived = torch.ones_like(y, dtype=torch.bool)
        for c in torch.linspace(-s.max_shift, s.max_shift, s.shifts).tolist():
            survived &= predict(model, (x + c).clamp(0, 1), cfg.batch_size) == y
        return AttackResult(self.name, "brightness", s.max_shift, s.shifts, None, survived, 0.0, {"shifts": s.shifts})


# --- a toy protocol: nearest class centroid on the frozen features, as a linear head ------------------------
@dataclass
class CentroidSettings:
    temperature: float = positive(1.0)


class CentroidModel(LinearEvalModel):
    """A LinearEvalModel whose head scores -||f - mu_c||^2 / T (linear in f)."""


def build_centroid(encoder, n_classes, branch, cfg):
    return CentroidModel(encoder, n_classes, branch)


def train_centroid(model, train, cfg, device) -> dict[str, Any]:
    assert isinstance(model, CentroidModel)  # built by the protocol's own factory
    t = cfg.component("centroid").temperature
    train = train_subset(train, cfg.train_examples, cfg.seed)
    feats = extract_features(model, train.images, cfg.batch_size, device)
    means = torch.stack([feats[train.labels.to(feats.device) == c].mean(0) for c in range(model.n_classes)])
    with torch.no_grad():
        model.head.weight.copy_(2 * means / t)
        model.head.bias.copy_(-(means**2).sum(1) / t)
    model.eval()
    return {"protocol": "centroid", "temperature": t, "train_examples": len(train), "seconds": 0.0}


def centroid_markdown(t: dict[str, Any]) -> list[str]:
    return [f"Nearest class centroid on the frozen features, temperature {t['temperature']:g}, "
            f"{t['train_examples']} training images."]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=32)
    out = tmp / "acl"
    api.pretrain("acl_fmnist_cpu", out, overrides=TINY + [f"data.root={root}"])
    return out


def _copy_without_reports(run, dest):
    """The pretrained run folder, copied without its evaluation reports."""
    shutil.copytree(run, dest)
    for f in [*dest.glob("report.*"), *dest.glob("robustness_curve.*")]:
        f.unlink()
    return dest


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(ATTACKS, "toy-shift", ShiftAttack())
    monkeypatch.setitem(PROTOCOLS, "centroid", Protocol("centroid", "nearest class centroid", False, train_centroid,
                                                        build=build_centroid, render=centroid_markdown,
                                                        Settings=CentroidSettings))


@pytest.mark.slow
def test_toy_attack_and_protocol_registered_from_a_test_run_end_to_end(run, toys, tmp_path, capsys):
    args = ["evaluate", "--run", str(run), "--protocol", "centroid,slf", "--attacks", "pgd20,toy-shift", *EVAL_TINY,
            "eval.toy-shift.max_shift=0.25", "eval.centroid.temperature=2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "CENTROID" in printed and "toy-shift (brightness)" in printed

    report = json.loads((run / "report.json").read_text())
    assert list(report["protocols"]) == ["centroid", "slf"]
    assert report["settings"]["components"] == {"toy-shift": {"max_shift": 0.25, "shifts": 5}, "centroid": {"temperature": 2.0}}
    for p in report["protocols"].values():
        shift = {a["attack"]: a for a in p["attacks"]}["toy-shift"]
        assert shift["eps"] == 0.25 and shift["label"] == "Toy shift" and shift["shifts"] == 5
        assert shift["threat_model"] == "brightness shift eps 0.25 (a constant added to every pixel)"
        assert shift["accuracy"] <= p["clean"]["accuracy"]
        checks = {c["name"] for c in p["sanity"]}
        assert {"attack_order", "attack_order_brightness"} <= checks  # its own threat model: its own order check
    assert report["protocols"]["centroid"]["training"] == {"protocol": "centroid", "temperature": 2.0, "train_examples": 64,
                                                           "seconds": 0.0}

    md = (run / "report.md").read_text()
    assert "Nearest class centroid on the frozen features, temperature 2, 64 training images." in md
    assert "Also attacked in: brightness shift eps 0.25" in md
    assert "| Toy shift | brightness shift eps 0.25 (a constant added to every pixel) | 0.25 | 5 |" in md

    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--out", str(out)]) == 0
    cmp_md = (out / "compare.md").read_text()
    assert "| Toy shift % |" in cmp_md and "(brightness shift eps 0.25" in cmp_md
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["protocol"] for r in rows] == ["CENTROID", "SLF"] and all(r["toy-shift"] is not None for r in rows)


def test_toy_settings_are_validated_and_unknown_names_listed(run, toys, capsys):
    assert main(["evaluate", "--run", str(run), "--protocol", "centroid", "eval.centroid.temperature=-1"]) == 2
    assert "eval.centroid.temperature must be > 0" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "eval.toy-shift.nope=1"]) == 2
    assert "unknown config key 'eval.toy-shift.nope'" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "eval.nothing.k=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'eval.nothing'" in err and "eval.centroid.<key>" in err and "eval.toy-shift.<key>" in err


@pytest.mark.slow  # reads the report the end-to-end toy test (slow) wrote into the shared run
def test_a_record_of_an_unregistered_protocol_is_not_rendered_as_a_linear_probe(run, toys):
    from robustssl.eval.report import render_markdown

    report = json.loads((run / "report.json").read_text())
    del PROTOCOLS["centroid"]  # read back by a robustssl that does not have it
    md = render_markdown(report)
    assert "Protocol `centroid` is not registered in this robustssl" in md and '"temperature": 2.0' in md


@pytest.mark.slow
def test_l2_evaluation_says_l2_in_report_plot_and_compare(run, tmp_path):
    run = _copy_without_reports(run, tmp_path / "l2")
    api.evaluate(run, overrides=EVAL_TINY + ["eval.protocols=[slf,alf]", "eval.attacks=[pgd20]", "eval.norm=l2",
                                             "eval.eps=0.5", "eval.pgd_alpha=0.125", "eval.alf_steps=1"])
    report = json.loads((run / "report.json").read_text())
    assert report["settings"]["threat_model"]["label"] == "l_2"
    assert report["protocols"]["alf"]["training"]["attack"]["norm"] == "l2"  # ALF trains in the evaluation's norm
    assert all(r["norm"] == "l2" for p in report["protocols"].values() for r in [*p["attacks"], *p["curve"]])
    md = (run / "report.md").read_text()
    assert "Threat model: l_2 eps 0.5 (l_2 distance, inputs in [0, 1])" in md and "l_inf" not in md
    assert "Trained on PGD examples: l2 eps 0.5" in md
    svg = (run / "robustness_curve.svg").read_text()
    assert "eps (l_2, l_2 distance, inputs in [0, 1])" in svg and "l_inf" not in svg
    assert (run / "robustness_curve.pdf").read_bytes().startswith(b"%PDF")

    out = tmp_path / "cmp"
    result = api.compare([run], out)
    assert {r["norm"] for r in result["rows"]} == {"l2"}
    assert "| l_2 0.5 |" in (out / "compare.md").read_text()
    assert "eps (l_2" in (out / "robustness_vs_eps.svg").read_text()


def test_aff_and_lp_aft_attack_in_the_evaluations_norm():
    from robustssl.config import EvalConfig, PostprocessConfig
    from robustssl.eval.finetune import aff_settings
    from robustssl.postprocess.lpaft import aft_settings

    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        ev = EvalConfig(norm=norm, eps=eps, aff_alpha=eps / 4)
        for attack in (aff_settings(ev).attack, aft_settings(PostprocessConfig(aft_alpha=eps / 4), ev).attack):
            assert (attack.norm, attack.eps) == (norm, eps)
