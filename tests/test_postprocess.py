"""DynACL++ post-processing: seeded k-means (k-means++ init), and `robustssl postprocess` writing a
run folder that `robustssl evaluate` accepts, from a source run it only reads."""
import hashlib
import json
import shutil

import pytest
import torch

from robustssl import api
from robustssl.cli import main
from robustssl.models import DualBatchNorm, export_encoder, load_encoder
from robustssl.models.export import read_export_metadata
from robustssl.postprocess import kmeans, kmeans_plus_plus, purity

from . import tiny
from .datafiles import write_fashion_mnist

TINY = tiny.run("attack.steps=1", "train.epochs=1")
PP_TINY = ["postprocess.lp_epochs=2", "postprocess.aft_epochs=1", "postprocess.aft_steps=1", "postprocess.aft_batch_size=32"]
EVAL_TINY = ["eval.n_examples=24", "eval.attacks=[pgd20]", "eval.train_examples=64", "eval.eps_curve=[]", "eval.linear_epochs=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two labelings split the rows the same way (cluster ids may be permuted)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def blobs(n_per: int = 40, k: int = 5, seed: int = 0, spread: float = 20.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, 6, generator=g) * spread
    truth = torch.arange(k).repeat_interleave(n_per)
    truth = truth[torch.randperm(len(truth), generator=g)]
    return centers[truth] + torch.randn(len(truth), 6, generator=g), truth


# --- k-means ------------------------------------------------------------------------------------


def test_kmeans_is_deterministic_with_a_seed_and_differs_with_another():
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0))  # no cluster structure: many local optima
    a, again, other = kmeans(x, 8, seed=0), kmeans(x, 8, seed=0), kmeans(x, 8, seed=1)
    assert torch.equal(a.labels, again.labels) and torch.equal(a.centers, again.centers) and a.inertia == again.inertia
    assert not same_partition(a.labels, other.labels), "another seed should find another local optimum on uniform data"
    assert a.converged and sum(a.sizes()) == 300 and len(a.sizes()) == 8


def test_kmeans_recovers_well_separated_clusters():
    x, truth = blobs()
    result = kmeans(x, 5, seed=3)
    assert same_partition(result.labels, truth)
    assert purity(result.labels, truth) == 1.0 and sorted(result.sizes()) == [40] * 5
    best = kmeans(x, 5, seed=3, n_init=4)  # its first initialisation is the n_init=1 run's
    assert best.inertia <= result.inertia and 0 <= best.best_init < 4


def test_kmeans_plus_plus_seeds_one_center_per_separated_blob():
    """D^2 sampling puts the 5 seeds in 5 different far-apart blobs; uniform sampling would do so
    with probability 5!/5^5 < 4 % per draw."""
    x, truth = blobs()
    for seed in range(5):
        centers = kmeans_plus_plus(x.double(), 5, torch.Generator().manual_seed(seed))
        nearest = torch.cdist(centers, x.double()).argmin(1)
        assert len(set(truth[nearest].tolist())) == 5, f"seed {seed}: two seeds in one blob"


def test_kmeans_rejects_impossible_k():
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="2 <= clusters <= 6"):
        kmeans(x, 7)
    with pytest.raises(ValueError, match="2 <= clusters"):
        kmeans(x, 1)


# --- postprocess -> evaluate ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pp")
    root = write_fashion_mnist(tmp / "fm", n_train=128, n_test=32)
    run = tmp / "acl"
    api.pretrain("acl_fmnist_cpu", run, overrides=TINY + [f"data.root={root}"])
    return run


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_postprocess_then_evaluate_end_to_end(source, tmp_path, capsys):
    digest = _sha(source / "encoder.safetensors")
    out = tmp_path / "acl_pp"
    assert main(["postprocess", "--run", str(source), "--out", str(out), "--clusters", "4", *PP_TINY]) == 0
    assert "evaluate it with: robustssl evaluate --run" in capsys.readouterr().out
    assert _sha(source / "encoder.safetensors") == digest, "the source run must only be read"
    assert {p.name for p in out.iterdir()} == {"encoder.safetensors", "config.yaml", "postprocess.json", "run.json"}

    record = json.loads((out / "postprocess.json").read_text())
    assert record["source_run"] == str(source.resolve()) and record["source_encoder_sha256"] == digest
    km, lp, aft = record["kmeans"], record["lp"], record["aft"]
    assert km["clusters"] == 4 and sum(km["cluster_sizes"]) == 128 == km["images"] and km["bn_branch"] == "normal"
    assert 0 <= km["purity_vs_true_labels"] <= 1 and km["init"] == "k-means++"
    assert lp["epochs"] == 2 and 0 <= lp["pseudo_label_accuracy"] <= 1
    assert aft["epochs"] == 1 and aft["bn_branch"] == "pgd" and aft["head_init"] == "the LP head" and aft["encoder_change"] > 0
    assert record["settings"]["clusters"] == 4 and record["trained_branches"] == ["normal", "pgd"]

    assert read_export_metadata(out / "encoder.safetensors")["trained_branches"] == ["normal", "pgd"]
    old, _ = load_encoder(source / "encoder.safetensors")
    new, _ = load_encoder(out / "encoder.safetensors")
    o, n = old.encoder_state_dict(), new.encoder_state_dict()
    changed = {k for k in o if not torch.equal(o[k], n[k])}
    assert any(".pgd." in k for k in changed) and any("convs" in k for k in changed)
    assert not any(".normal." in k for k in changed), "AFT trains the evaluation (pgd) branch only"
    summary = json.loads((out / "run.json").read_text())
    assert summary["method"] == "acl+lp-aft" and "postprocess" in summary["phase_seconds"]
    assert summary["seconds"] >= json.loads((source / "run.json").read_text())["seconds"]

    assert main(["evaluate", "--run", str(out), "--protocol", "slf", *EVAL_TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["encoder"]["bn_branch"] == "pgd" and report["extra"]["training"]["method"] == "acl+lp-aft"
    assert report["protocols"]["slf"]["clean"]["n_examples"] == 24 and report["encoder"]["n_classes"] == 10


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_postprocess_refuses_bad_folders_and_settings_and_loses_nothing(source, tmp_path, capsys):
    base = ["postprocess", "--run", str(source)]
    assert "is the source run folder" in _cli_error(capsys, [*base, "--out", str(source)])
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("keep me")
    err = _cli_error(capsys, [*base, "--out", str(taken)])
    assert "already holds config.yaml" in err and (taken / "config.yaml").read_text() == "keep me"
    assert "postprocess.clusters must be >= 2" in _cli_error(capsys, [*base, "--out", str(tmp_path / "a"), "--clusters", "1"])
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "b"), "--clusters", "500"])
    assert "postprocess.clusters=500 is more than the 128 training images" in err
    assert "unknown config key 'postprocess.k'" in _cli_error(capsys, [*base, "--out", str(tmp_path / "c"), "postprocess.k=3"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    err = _cli_error(capsys, ["postprocess", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "d")])
    assert "not a robustssl run" in err

    pgd_only = tmp_path / "pgd_only"  # an encoder whose normal branch was never trained
    pgd_only.mkdir()
    shutil.copy(source / "config.yaml", pgd_only / "config.yaml")
    model, spec = load_encoder(source / "encoder.safetensors")
    export_encoder(model, spec, pgd_only / "encoder.safetensors", trained_branches=["pgd"])
    err = _cli_error(capsys, ["postprocess", "--run", str(pgd_only), "--out", str(tmp_path / "e"), *PP_TINY])
    assert "normal BN branch was never trained" in err and "postprocess.cluster_branch=pgd" in err
    assert not (tmp_path / "e" / "config.yaml").exists()
    assert any(isinstance(m, DualBatchNorm) for m in model.modules())
