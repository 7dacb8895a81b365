"""Speed switches (train.bf16, train.channels_last, train.compile) on CPU: what each changes, and
that weights, checkpoints, exports and evaluation stay fp32 with their usual keys."""
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robustssl import api
from robustssl.attacks import PGDConfig
from robustssl.data import AugmentSpec, ContrastiveAugment, ImageDataset
from robustssl.data.batch import make_batch
from robustssl.eval.classifier import LinearEvalModel
from robustssl.losses import emp_ssl_loss, nt_xent, total_coding_rate
from robustssl.methods import ACL
from robustssl.methods.base import ContrastiveSettings
from robustssl.models import build_model
from robustssl.models.export import load_encoder
from robustssl.timer import PhaseTimer
from robustssl.train import trainer
from robustssl.train.accelerate import accelerate
from robustssl.train.checkpoint import load_checkpoint

from . import tiny
from .coreset_runs import run_with_one_selection
from .datafiles import structured_images, write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tiny.run("train.log_every_steps=1", "attack.steps=1", "train.device=cpu", cnn=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=96, n_test=40)


def _data(n=32):
    images, labels = structured_images(n, 0)
    return ImageDataset(torch.from_numpy(images)[:, None], torch.from_numpy(labels).long(), torch.arange(n), "s", "train")


def _acl():
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0), 28, 1)
    return ACL(ContrastiveSettings(tau=0.5), aug, PGDConfig(0.1, 0.04, 2))


def _record_projector_dtypes(model):
    """[(training, dtype)] of every projector output from now on."""
    seen = []
    model.projector.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))
    return seen


def test_bf16_step_runs_attack_and_loss_under_autocast_and_keeps_fp32_weights(tiny_spec):
    torch.manual_seed(0)
    model, method = build_model(tiny_spec), _acl()
    accelerate(model, method, bf16=True)
    assert method.amp_dtype == torch.bfloat16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _record_projector_dtypes(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    logs = method.step(model, opt, sched, make_batch(_data(), torch.arange(32)), PhaseTimer())
    # the attack runs in eval mode, the loss in train mode: both forwards in bf16
    assert (False, torch.bfloat16) in seen and (True, torch.bfloat16) in seen
    assert all(dtype == torch.bfloat16 for _, dtype in seen)
    assert torch.isfinite(torch.tensor(logs["loss"])) and logs["loss"] > 0
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in model.parameters())
    assert all(s.dtype == torch.float32 for st in opt.state.values() for s in st.values())
    assert not torch.equal(before["projector.0.weight"], model.state_dict()["projector.0.weight"])
    # coreset selection's loss goes through the same autocast; the loss itself comes out fp32
    seen.clear()
    loss = method.training_loss(model, make_batch(_data(), torch.arange(16)))
    assert seen and all(dtype == torch.bfloat16 for _, dtype in seen) and loss.dtype == torch.float32


def test_contrastive_and_coding_rate_losses_stay_fp32_under_autocast():
    torch.manual_seed(0)
    z = torch.randn(16, 8).to(torch.bfloat16)  # what a projector under bf16 autocast hands the loss
    losses = {
        "nt_xent": lambda: nt_xent(z, 2, 0.5),
        "tcr": lambda: total_coding_rate(z.view(2, 8, 8)),
        "emp": lambda: emp_ssl_loss(z, 4)[0],
    }
    for name, loss in losses.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loss()
        assert inside.dtype == torch.float32, name
        assert torch.equal(inside, loss()), name  # the very same fp32 computation as outside autocast


def test_switches_off_leave_model_and_method_untouched(tiny_spec):
    model, method = build_model(tiny_spec), _acl()
    accelerate(model, method)
    assert method.amp_dtype is None and not model._forward_pre_hooks and model._compiled_call_impl is None
    seen = _record_projector_dtypes(model)
    model(torch.rand(4, 1, 28, 28))
    assert seen == [(True, torch.float32)]


def test_channels_last_converts_weights_and_inputs_and_keeps_the_outputs(tiny_spec):
    torch.manual_seed(0)
    spec = dataclasses.replace(tiny_spec, in_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)  # C = 1 has one layout only
    plain = build_model(spec).eval()
    fast = build_model(spec).eval()
    fast.load_state_dict(plain.state_dict())
    accelerate(fast, _acl(), channels_last=True)
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # really another layout (C > 1 filters), not a no-op
    layouts = []
    convs[0].register_forward_pre_hook(lambda m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.rand(8, 3, 28, 28)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    assert layouts == [True]
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), plain.state_dict().values()))


def _interrupted_after_first_epoch(monkeypatch):
    """Make the next pretrain stop after its first epoch (its checkpoint written), as a kill would."""
    real = trainer.train_epoch

    def one_epoch_then_stop(state, run):
        real(state, run)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_epoch", one_epoch_then_stop)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _resume_equals_uninterrupted(tmp_path, monkeypatch, overrides):
    """Run `overrides` for 2 epochs straight and with a stop + resume; return the two run folders."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    api.pretrain("acl_fmnist_cpu", ref, overrides=overrides)
    with monkeypatch.context() as m:
        _interrupted_after_first_epoch(m)
        with pytest.raises(KeyboardInterrupt):
            api.pretrain("acl_fmnist_cpu", cut, overrides=overrides)
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 1 and not (cut / "encoder.safetensors").exists()
    api.pretrain(None, cut, resume=True)
    a, b = _weights(ref), _weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return ref, cut


def test_bf16_run_checkpoints_and_exports_fp32_and_evaluates_in_fp32(tmp_path, monkeypatch, data_root):
    overrides = TINY + [f"data.root={data_root}", "train.epochs=2", "train.bf16=true"]
    ref, _ = _resume_equals_uninterrupted(tmp_path, monkeypatch, overrides)
    ck = load_checkpoint(ref / "checkpoint.pt")
    floats = [v for v in ck["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)
    assert all(s.dtype == torch.float32 for st in ck["optimizer"]["state"].values() for s in st.values()
               if isinstance(s, torch.Tensor) and s.is_floating_point())
    assert all(v.dtype == torch.float32 for v in load_file(ref / "encoder.safetensors").values() if v.is_floating_point())
    # the switch changes training: the same run in fp32 ends elsewhere
    fp32 = tmp_path / "fp32"
    api.pretrain("acl_fmnist_cpu", fp32, overrides=TINY + [f"data.root={data_root}", "train.epochs=2"])
    assert not torch.equal(_weights(fp32)["projector.0.weight"], ck["model"]["projector.0.weight"])
    # evaluation of the bf16-trained encoder is fp32, even inside a caller's bf16 autocast
    encoder, _ = load_encoder(ref / "encoder.safetensors")
    probe = LinearEvalModel(encoder, 10)
    x = torch.rand(8, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = probe(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, probe(x))


def test_channels_last_run_resumes_bit_identically_and_exports(tmp_path, monkeypatch, data_root):
    overrides = TINY + [f"data.root={data_root}", "train.epochs=2", "train.channels_last=true"]
    ref, _ = _resume_equals_uninterrupted(tmp_path, monkeypatch, overrides)
    encoder, _ = load_encoder(ref / "encoder.safetensors")
    assert set(encoder.encoder_state_dict()) == set(load_file(ref / "encoder.safetensors"))


@pytest.mark.slow
def test_compile_trains_exports_and_resumes_with_plain_keys(tmp_path, monkeypatch, data_root):
    from torch._dynamo.utils import counters

    counters.clear()
    overrides = TINY + [f"data.root={data_root}", "train.epochs=2", "train.compile=true", "data.train_subset=64"]
    ref, _ = _resume_equals_uninterrupted(tmp_path, monkeypatch, overrides)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    plain = tmp_path / "plain"
    api.pretrain("acl_fmnist_cpu", plain, overrides=[o for o in overrides if o != "train.compile=true"])
    assert _weights(ref).keys() == _weights(plain).keys()  # no `_orig_mod.` prefix
    assert load_file(ref / "encoder.safetensors").keys() == load_file(plain / "encoder.safetensors").keys()
    encoder, _ = load_encoder(ref / "encoder.safetensors")  # loads into an uncompiled model
    assert torch.isfinite(encoder.features(torch.rand(2, 1, 28, 28))).all()


@pytest.mark.slow
def test_all_switches_together_with_an_rcs_selection(tmp_path, data_root):
    """bf16 + channels_last + compile: the attack, the RCS selection (its candidate losses and head
    gradients) and training all run, and the run ends finite with fp32 weights."""
    overrides = TINY + [f"data.root={data_root}", "train.bf16=true", "train.channels_last=true", "train.compile=true"]
    run_with_one_selection("acl_fmnist_cpu", tmp_path / "run", "rcs", overrides)
    weights = _weights(tmp_path / "run")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
