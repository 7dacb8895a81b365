"""PAT through the trainer: a GradMatch coreset run killed with SIGKILL after a selection resumes to
bit-identical weights and the same coreset (Fast-LPA's random starts come from the checkpointed RNG)."""
import pytest
import torch

from robustssl.train.checkpoint import load_checkpoint

from .datafiles import write_fashion_mnist
from .kill_resume import kill_when, pretrain, resume

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model.width=4", "optim.batch_size=16", "train.progress=false", "train.log_every_steps=1", "method.pat.steps=2"]


@pytest.mark.slow
def test_sigkill_of_a_pat_gradmatch_run_resumes_to_the_same_weights(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=64, n_test=16)
    overrides = TINY + [f"data.root={root}", "train.epochs=3", "coreset.warmup_epochs=1", "coreset.every=1",
                        "coreset.selector=gradmatch", "coreset.fraction=0.6", "train.seed=2", "train.checkpoint_every_steps=1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    pretrain(ref, overrides, recipe="pat_fmnist_cpu")
    killed = kill_when(run, overrides, "ck['coreset']['selected_at'] >= 1 and ck['batch'] >= 1",
                       recipe="pat_fmnist_cpu")
    assert killed["coreset"]["selected_at"] >= 1 and killed["epoch"] < 3, "killed after a selection, before the end"
    assert killed["coreset"]["weights"] is not None, "a weighted coreset"
    resume(run)
    a, b = load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["coreset"]["current"], b["coreset"]["current"])
    assert torch.equal(a["coreset"]["weights"], b["coreset"]["weights"])
