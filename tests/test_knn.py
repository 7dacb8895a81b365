"""The knn protocol: weighted cosine kNN on frozen features (as lightly's knn_predict), evaluated and
attacked through its soft scores, registered in PROTOCOLS and shown in a report."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn import functional as F

from robustssl.config import from_dict
from robustssl.eval import PROTOCOLS, evaluate_encoder, pgd_accuracy, write_report
from robustssl.eval.knn import KNNClassifier, train_knn
from robustssl.models.hub import ClassifierSaver, EvaluationContext

from .test_eval import EPS, SPEC, calibrated_encoder, small_cfg, textures

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return textures(300, 0, "train"), textures(100, 1, "test")


@pytest.fixture(scope="module")
def encoder(data):
    return calibrated_encoder(data[0])


def reference_knn(test_f, bank_f, bank_y, n_classes, k, t):
    """Per image, in plain loops: the k most cosine-similar bank rows, exp(sim / t) summed per class."""
    out = []
    bank = F.normalize(bank_f, dim=1)
    for f in F.normalize(test_f, dim=1):
        sims = bank @ f
        order = sims.argsort(descending=True)[:k]
        scores = torch.zeros(n_classes, dtype=torch.float64)
        for i in order.tolist():
            scores[int(bank_y[i])] += torch.exp(sims[i].double() / t)
        out.append(int(scores.argmax()))
    return torch.tensor(out)


def test_knn_predicts_as_the_weighted_cosine_knn_and_is_attacked_through_its_scores(data, encoder):
    train, test = data
    cfg = small_cfg(protocols=["knn"], train_examples=200)
    cfg.components["knn"] = PROTOCOLS["knn"].Settings(k=15, temperature=0.2)
    clf = PROTOCOLS["knn"].classifier(copy.deepcopy(encoder), 10, "pgd", cfg)
    assert isinstance(clf, KNNClassifier) and (clf.k, clf.temperature) == (15, 0.2)
    record = train_knn(clf, train, cfg, "cpu")
    assert record["train_examples"] == 200 and record["effective_k"] == 15 and clf.bank.shape == (200, encoder.feature_dim)

    x, y = test.images.float() / 255, test.labels
    with torch.no_grad():
        test_f, logits = clf.features(x), clf(x)
    expected = reference_knn(test_f, clf.bank, clf.bank_labels, 10, 15, 0.2)
    assert torch.equal(logits.argmax(1), expected)
    clean = (expected == y).float().mean().item()
    assert clean > 0.5  # the textures separate in feature space

    xb = x[:20].clone().requires_grad_(True)
    F.cross_entropy(clf(xb), y[:20]).backward()
    assert xb.grad is not None and xb.grad.abs().sum() > 0  # gradients flow through the soft scores
    attacked = pgd_accuracy(clf, x, y, 4 * EPS, EPS, 10, seed=0, batch_size=100)
    assert attacked.accuracy < clean


def test_knn_in_a_report_with_its_settings_and_checks(data, encoder, tmp_path):
    train, test = data
    cfg = from_dict({"eval": {"protocols": ["slf", "knn"], "attacks": ["pgd20"], "eps": EPS, "pgd_alpha": EPS / 4,
                              "n_examples": 40, "train_examples": 200, "linear_epochs": 5, "linear_lr": 0.5,
                              "knn": {"k": 20}}}).eval
    assert cfg.component("knn").k == 20 and cfg.component("knn").temperature == 0.1
    saver = ClassifierSaver(EvaluationContext(
        out=tmp_path, spec=SPEC, trained_branches=None, threat_model={}, run="", method="test",
        test={"name": "textures", "split": "test", "n_total": 100, "classes": [], "channels": 1, "size": [28, 28]},
        train={"name": "textures", "split": "train"},
    ))
    report = evaluate_encoder(encoder, train, test, cfg, "cpu", keep_classifier=saver)
    assert saver.skipped == ["knn"] and list(saver.pending) == ["slf"]  # a kNN is not an encoder + linear head
    knn = report["protocols"]["knn"]
    assert knn["training"]["k"] == 20 and knn["attacks"][0]["attack"] == "pgd20"
    assert {c["name"] for c in knn["sanity"]} == {"eps_zero", "attack_order", "large_eps", "above_chance"}
    assert report["settings"]["components"]["knn"] == {"k": 20, "temperature": 0.1}
    paths = write_report(report, tmp_path)
    md = paths["markdown"].read_text()
    assert "## KNN" in md and "Weighted cosine kNN on the frozen features: k 20, weights exp(cosine / 0.1)" in md
    assert json.loads(paths["json"].read_text())["protocols"]["knn"]["training"]["effective_k"] == 20
    assert "| KNN |" in md and "n/a" in md.split("| KNN |")[1].splitlines()[0]  # no probe to judge
