"""`robustssl doctor`: a short run of every bundled recipe on one device, so a CUDA-only crash is
found in minutes, not by a user three days into a run.

Every recipe in robustssl/recipes/ is discovered (a new recipe is checked without a change
here) and run on synthetic images written in its dataset's official file format (CIFAR
pickles, SVHN .mat, idx) and read by the real readers, with the recipe's own method, attack,
optimizer, coreset and evaluation settings; only the epochs, the dataset and the evaluation
are cut (and, with `tiny`, the model: the small CNN of width 4, batches of 8, 4 crops). Checks:

    data <name>            the synthetic split written and read back through load_dataset
    <recipe> pretrain      2 epochs of a 3-epoch run (a warm-up epoch, then the first coreset
                           selection where the recipe has a coreset), stopped with a checkpoint
                           as an interrupted run; finite losses and phase times (CUDA events)
    <recipe> select        one selection from that checkpoint, as `robustssl select` (coreset recipes)
    <recipe> resume        --resume: the last epoch (on the restored coreset), then the export
    <recipe> export        the export loads on the device, equals the checkpoint, gives finite features
    <recipe> evaluate      the recipe's protocols and attacks on a few test images: PGD and a short
                           AutoAttack subset
    <recipe> bf16 | channels_last | compile
                           one epoch with that speed switch (the ACL, CF-AMC and TRADES recipes)
    <recipe> torchrun      `torchrun --nproc-per-node P robustssl pretrain` (NCCL on CUDA, gloo on the
                           CPU; with P = 1 torchrun makes no process group, see `torchrun_backend`)
    <recipe> stream        data.stream=true: pinned staging memory on CUDA (not on the CPU), the
                           streamed pixels equal the in-memory ones, a whole run with a selection

The checks run kind by kind (data, every recipe's pretrain, select, resume, export, then the switches,
torchrun, stream, every evaluate, compile last), so a run cut short by a time limit keeps the most
telling results. Each check prints one line (PASS/FAIL, seconds, a detail or the error); a failing check
writes its traceback and output to OUT/tracebacks/ and the others still run (those that need
its result fail with "needs ..."). OUT/doctor.json is rewritten after every check, and the
last line is `RESULT checks=<n> passed=<k> device=<name>`.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import api
from .config import RunConfig, load_config, recipe_dir, resolve_recipe
from .coreset.registry import SELECTORS
from .data import load_dataset, open_stream
from .data.catalog import image_shape
from .data.synthetic import SYNTHETIC_DATASETS, synthetic_classes, write_synthetic
from .errors import ConfigError, RunError
from .io import atomic_write_text
from .methods import METHODS
from .models import has_dual_bn, load_encoder
from .models.export import read_export_metadata
from .run_setup import data_options, hardware
from .train.checkpoint import load_checkpoint
from .train.metrics import read_metrics
from .train.run_dir import CHECKPOINT, ENCODER, METRICS, SUMMARY, check_folder
from .train.trainer import pretrain as train

MARKER = "doctor.json"  # the JSON result; its presence marks a folder the doctor may clear and reuse
SWITCHES = ("bf16", "channels_last", "compile")
SWITCH_RECIPES = ("acl_cifar10", "cfamc_cifar10", "trades_cifar10")  # the ACL, CF-AMC and TRADES recipes
PROCESS_RECIPE = "acl_rcs_cifar10"  # torchrun and streaming: a run with an RCS selection
RECIPE_KINDS = ("pretrain", "select", "resume", "export", "evaluate")
KINDS = (*RECIPE_KINDS, *SWITCHES, "torchrun", "stream")
RUN_ORDER = ("pretrain", "select", "resume", "export", "bf16", "channels_last", "torchrun", "stream", "evaluate", "compile")
NEEDS = {"select": "pretrain", "resume": "pretrain", "export": "resume", "evaluate": "export"}
EPOCHS, STOP_EPOCH = 3, 2  # pretrain trains epochs 0-1 and stops; resume trains epoch 2


@dataclass(frozen=True)
class Sizes:
    """What is cut. batches: full training batches per epoch; batch_size: optim.batch_size cap
    (None: the recipe's); n_test, n_examples, autoattack_examples, train_examples (cap),
    linear_epochs: the evaluation's; tiny: the model too (cnn width 4, small projector)."""

    tiny: bool
    batches: int = 3
    batch_size: int | None = None
    n_test: int = 128
    n_examples: int = 64
    autoattack_examples: int = 8
    train_examples: int = 512
    linear_epochs: int = 2

    @classmethod
    def for_mode(cls, tiny: bool) -> Sizes:
        """The published models at cut sizes (the GPU budget: about 10 minutes on one H200), or `tiny`
        (the CPU test: cnn width 4, batches of 8, 4 crops for multi-crop methods)."""
        if tiny:
            return cls(tiny=True, batch_size=8, n_test=32, n_examples=16, autoattack_examples=4, train_examples=64)
        return cls(tiny=False)


@dataclass
class Check:
    """One line of the doctor: `run()` returns a short detail and raises on failure."""

    name: str
    run: Callable[[], str]
    needs: tuple[str, ...] = ()


@dataclass
class CheckResult:
    name: str
    passed: bool
    seconds: float
    detail: str = ""
    error: str | None = None
    traceback: str | None = None  # the file holding the traceback and the check's output

    def line(self) -> str:
        text = self.detail if self.passed else f"{self.error} (traceback: {self.traceback})" if self.traceback else self.error
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<36} {self.seconds:7.1f}s  {text}"


@dataclass
class Recipe:
    """A recipe as the doctor runs it: its file, its config with the cuts (None when it does not
    load: then its one check says why), and the overrides that make the cuts."""

    name: str
    path: Path
    overrides: list[str] = field(default_factory=list)
    cfg: RunConfig | None = None
    error: Exception | None = None

    @property
    def has_coreset(self) -> bool:
        return self.cfg is not None and SELECTORS[self.cfg.coreset.selector].trains_on_subset


def bundled_recipes() -> list[Path]:
    """Every recipe file shipped in robustssl/recipes/, sorted by name."""
    return sorted(recipe_dir().glob("*.yaml"))


def torchrun_backend(device: torch.device, procs: int) -> str:
    """What a torchrun launch of `procs` processes exercises: with one process the trainer makes no
    process group (WORLD_SIZE=1: every collective is a no-op), so NCCL/gloo are not reached."""
    if procs == 1:
        return "1 process, no process group (WORLD_SIZE=1)"
    return f"{procs} processes, {'nccl' if device.type == 'cuda' else 'gloo'}"


class Doctor:
    """Plans and runs the checks of one device (see the module docstring)."""

    def __init__(self, device: torch.device, out: Path, sizes: Sizes, procs: int = 1) -> None:
        self.device, self.out, self.sizes, self.procs = device, out, sizes, procs
        self.roots: dict[str, Path] = {}

    # --- configs -------------------------------------------------------------------------------------
    def recipe(self, path: Path) -> Recipe:
        """The recipe with the doctor's cuts; a recipe that does not load is kept with its error."""
        name = path.stem
        try:
            base = load_config(path)
            overrides = self.cuts(base)
            return Recipe(name, path, overrides, load_config(path, overrides))
        except Exception as e:  # a broken recipe is a failing check, not a crash of the doctor
            return Recipe(name, path, error=e)

    def batch_size(self, cfg: RunConfig) -> int:
        cap = self.sizes.batch_size
        return cfg.optim.batch_size if cap is None else min(cap, cfg.optim.batch_size)

    def train_images(self, cfg: RunConfig) -> int:
        """The run's training images: `batches` full batches, plus half a batch for RCS's validation split
        (so that an ACS coreset of 30 % still fills one batch)."""
        b = self.batch_size(cfg)
        return self.sizes.batches * b + b // 2

    def cuts(self, cfg: RunConfig) -> list[str]:
        """Overrides that cut `cfg` (a recipe as published) to the doctor's sizes, on the doctor's device."""
        s = self.sizes
        n = self.train_images(cfg)
        out = [f"data.root={self.data_root(data_key(cfg))}", "data.download=false", f"data.train_subset={n}",
               f"optim.batch_size={self.batch_size(cfg)}", f"train.device={self.device.type}", f"train.epochs={EPOCHS}",
               "train.progress=false", "train.log_every_steps=1", "train.checkpoint_every_epochs=1",
               f"eval.n_examples={s.n_examples}", f"eval.autoattack_examples={s.autoattack_examples}",
               f"eval.train_examples={min(n, s.train_examples)}", f"eval.linear_epochs={s.linear_epochs}"]
        if SELECTORS[cfg.coreset.selector].trains_on_subset:  # epoch 0 warm-up, select at 1, reuse it at 2
            out += ["coreset.warmup_epochs=1", "coreset.every=2"]
            atoms = getattr(cfg.coreset.params, "batch_size", None)  # ACS's minibatch atoms: at most a cut batch
            if atoms is not None and atoms > self.batch_size(cfg):
                out.append(f"coreset.{cfg.coreset.selector}.batch_size={self.batch_size(cfg)}")
        classes = synthetic_classes(cfg.data.name)
        if METHODS[cfg.method.name].supervised and cfg.model.proj_out != classes:  # the classifier of the classes written
            out.append(f"model.proj_out={classes}")
        if s.tiny:
            m = cfg.model
            out += ["model.arch=cnn", "model.width=4"]
            if not METHODS[cfg.method.name].supervised:  # a classifier keeps its outputs (the classes)
                out += [f"model.proj_hidden={min(m.proj_hidden, 16)}", f"model.proj_out={min(m.proj_out, 8)}"]
            if m.pre_feature:
                out.append(f"model.pre_feature={min(m.pre_feature, 32)}")
            crops = getattr(cfg.method.params, "n_crops", None)  # multi-crop methods: 4 crops, and 4 in evaluation
            if crops is not None:
                out += [f"method.{cfg.method.name}.n_crops={min(crops, 4)}", f"eval.mc_crops={min(cfg.eval.mc_crops, 4)}"]
        return out

    def data_root(self, dataset: str) -> Path:
        return self.out / "data" / dataset

    # --- the plan --------------------------------------------------------------------------------------
    def plan(self, recipes: list[Recipe], kinds: Iterable[str] = KINDS) -> list[Check]:
        """The checks for `recipes` and `kinds` (plus what they need: evaluate needs export, ...), in
        RUN_ORDER: the training paths of every recipe first, evaluation and compilation (the slowest) last,
        so a run cut short by a time limit has the most telling results (doctor.json is written as it goes)."""
        wanted = set(kinds)
        for kind in list(wanted):
            while kind in NEEDS:
                kind = NEEDS[kind]
                wanted.add(kind)
        loaded = {r.name: r for r in recipes if r.cfg is not None}
        datasets: dict[str, int] = {}
        for r in loaded.values():
            assert r.cfg is not None
            key = data_key(r.cfg)
            datasets[key] = max(datasets.get(key, 0), self.train_images(r.cfg))
        checks = [Check(f"data {name}", _bind(self.write_data, name, n)) for name, n in sorted(datasets.items())]
        checks += [Check(f"{r.name} config", _bind(_raise, r.error)) for r in recipes if r.cfg is None]
        for kind in (k for k in RUN_ORDER if k in wanted):
            for r in self.recipes_for(kind, loaded):
                assert r.cfg is not None
                needs = (f"data {data_key(r.cfg)}",) + ((f"{r.name} {NEEDS[kind]}",) if kind in NEEDS else ())
                run = _bind(self.switch, r, kind) if kind in SWITCHES else _bind(getattr(self, kind), r)
                checks.append(Check(f"{r.name} {kind}", run, needs))
        return checks

    @staticmethod
    def recipes_for(kind: str, loaded: dict[str, Recipe]) -> list[Recipe]:
        """The recipes a kind of check runs on: every recipe (select: those with a coreset), the ACL,
        CF-AMC and TRADES recipes for a speed switch, PROCESS_RECIPE for torchrun and streaming."""
        if kind in SWITCHES:
            return [loaded[n] for n in SWITCH_RECIPES if n in loaded]
        if kind in ("torchrun", "stream"):
            return [loaded[PROCESS_RECIPE]] if PROCESS_RECIPE in loaded else []
        return [r for r in loaded.values() if kind != "select" or r.has_coreset]

    # --- the checks ------------------------------------------------------------------------------------
    def write_data(self, key: str, n_train: int) -> str:
        name, shape_text = ("imagefolder", key.split("-", 1)[1]) if key.startswith("imagefolder-") else (key, "")
        if name not in SYNTHETIC_DATASETS:
            raise ConfigError(f"the doctor has no synthetic {name} data (it writes {', '.join(SYNTHETIC_DATASETS)})")
        root = self.data_root(key)
        shutil.rmtree(root, ignore_errors=True)
        options: dict[str, Any] = {}
        if shape_text:
            channels, size = (int(v) for v in shape_text.split("x"))
            options = {"image_size": size, "channels": channels}
        shape = (options["channels"], options["image_size"], options["image_size"]) if options else None
        write_synthetic(name, root, n_train + 16, self.sizes.n_test, shape=shape)
        train, test = (load_dataset(name, split, root=str(root), **options) for split in ("train", "test"))
        if (len(train), len(test)) != (n_train + 16, self.sizes.n_test):
            raise RunError(f"{name}: read back {len(train)} / {len(test)} images, wrote {n_train + 16} / {self.sizes.n_test}")
        return f"{len(train)} train / {len(test)} test images {tuple(train.images.shape[1:])} read back"

    def run_dir(self, r: Recipe, suffix: str = "") -> Path:
        return self.out / "runs" / (r.name + (f"-{suffix}" if suffix else ""))

    def pretrain(self, r: Recipe) -> str:
        assert r.cfg is not None
        out = self.run_dir(r)
        result = train(r.cfg, out, stop_epoch=STOP_EPOCH)
        ck = load_checkpoint(out / CHECKPOINT)
        if ck["epoch"] != STOP_EPOCH or (out / ENCODER).exists():
            raise RunError(f"the run did not stop after epoch {STOP_EPOCH} with a checkpoint (at epoch {ck['epoch']})")
        epochs = _epoch_records(out)
        phases = {k: sum(e["time"].get(k, 0.0) for e in epochs) for e in epochs for k in e["time"]}
        if not phases or not all(math.isfinite(v) and v >= 0 for v in phases.values()) or sum(phases.values()) <= 0:
            raise RunError(f"phase times are not finite positive seconds: {phases}")
        selections = ck["coreset"]["selections"]
        if r.has_coreset and (ck["coreset"]["current"] is None or len(selections) != 1):
            raise RunError(f"expected one coreset selection in epoch 1, the checkpoint holds {len(selections)}")
        times = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(phases.items()))
        return f"{result.steps} steps, loss {epochs[-1]['loss']:.4g}; {times}"

    def select(self, r: Recipe) -> str:
        out = self.run_dir(r)
        result = api.select(out)
        c = result["coreset"]
        if len(result["sample_ids"]) != c["coreset_size"]:
            raise RunError(f"selected {len(result['sample_ids'])} images, the budget is {c['coreset_size']}")
        return f"{len(result['sample_ids'])} of {c['pool_size']} images with {c['selector']} in {result['seconds']:.2f}s"

    def resume(self, r: Recipe) -> str:
        out = self.run_dir(r)
        before = load_checkpoint(out / CHECKPOINT)
        result = api.pretrain(None, out, resume=True)
        summary = json.loads((out / SUMMARY).read_text())
        if result.steps <= before["step"] or not (out / ENCODER).is_file():
            raise RunError(f"the resumed run trained no step (step {before['step']} -> {result.steps}) or wrote no export")
        last = _epoch_records(out)[-1]
        if r.has_coreset:  # the last epoch trains on the coreset selected before the resume (coreset.every=2)
            coreset = summary["coreset"]
            if coreset["n_selections"] != 1 or last["pool_size"] != coreset["coreset_size"]:
                raise RunError(f"the resumed epoch trained on {last['pool_size']} images with {coreset['n_selections']} "
                               f"selections; expected the restored coreset of {coreset['coreset_size']}")
        return f"steps {before['step']} -> {result.steps}, loss {last['loss']:.4g}, trained on {last['pool_size']} images"

    def export(self, r: Recipe) -> str:
        assert r.cfg is not None
        out = self.run_dir(r)
        model, spec = load_encoder(out / ENCODER, device=str(self.device))
        meta = read_export_metadata(out / ENCODER)
        ck = load_checkpoint(out / CHECKPOINT)
        name = meta.get("encoder", "model")  # the trained model, or a network the method owns ("parts.ema")
        if name == "model":
            saved = ck["model"]
        else:
            prefix = name.removeprefix("parts.") + "."
            saved = {k[len(prefix):]: v for k, v in ck.get("parts", {}).items() if k.startswith(prefix)}
        state = model.state_dict() if model.head_trained else model.encoder_state_dict()
        differ = [k for k, v in state.items() if k not in saved or not torch.equal(v.cpu(), saved[k])]
        if differ:
            raise RunError(f"the export ({name}) differs from the checkpoint in {', '.join(differ[:3])}")
        trained = meta.get("trained_branches")
        expected = list(METHODS[r.cfg.method.name].trained_branches) if has_dual_bn(model) else None
        if trained != expected:
            raise RunError(f"the export records trained branches {trained}, the method trains {expected}")
        size = r.cfg.data.image_size or 32
        shape = image_shape(r.cfg.data.name) or (spec.in_channels, size, size)
        x = torch.rand(4, *shape, device=self.device)  # images in [0, 1] of the recipe's dataset
        with torch.no_grad():
            model.eval()
            f = model.features(x)
        if f.device.type != self.device.type or not torch.isfinite(f).all():
            raise RunError(f"features on {f.device} are not finite")
        return f"{len(state)} tensors equal the checkpoint's {name}; features {tuple(f.shape)} on {f.device}"

    def evaluate(self, r: Recipe) -> str:
        assert r.cfg is not None
        report = api.evaluate(self.run_dir(r))
        parts = []
        for name in r.cfg.eval.protocols:
            p = report["protocols"][name]
            attacks = {a["attack"]: a for a in p["attacks"]}
            missing = [a for a in r.cfg.eval.attacks if a not in attacks]
            values = [p["clean"]["accuracy"], *(a["accuracy"] for a in attacks.values())]
            if missing or not all(0 <= v <= 1 for v in values):
                raise RunError(f"protocol {name}: attacks {missing} missing or accuracies {values} outside [0, 1]")
            aa = attacks.get("autoattack")
            if aa is not None and aa["n_examples"] != min(self.sizes.autoattack_examples, self.sizes.n_examples):
                raise RunError(f"AutoAttack ran on {aa['n_examples']} examples, expected {self.sizes.autoattack_examples}")
            shown = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in attacks.items())
            parts.append(f"{name}: clean {p['clean']['accuracy']:.2f} {shown}")
        return f"{'; '.join(parts)} ({self.sizes.n_examples} test images)"

    def switch(self, r: Recipe, key: str) -> str:
        """One epoch with train.<key>=true: finite losses, an fp32 checkpoint with plain keys, a loadable export.

        compile: dynamo's caches are reset first (the doctor compiles several models in one process, and
        past dynamo's recompile limit a forward silently runs eagerly), and some graph must have been compiled."""
        out = self.run_dir(r, key)
        cfg = load_config(r.path, r.overrides + [f"train.{key}=true", "train.epochs=1"])
        graphs = ""
        if key == "compile":
            import torch._dynamo as dynamo  # binds `dynamo` only: `torch` stays the module-level name here
            from torch._dynamo.utils import counters

            dynamo.reset()
            counters.clear()
        result = train(cfg, out)
        if key == "compile":
            n = int(counters["stats"]["unique_graphs"])
            if n == 0:
                raise RunError("train.compile=true compiled no graph: the model ran eagerly")
            graphs = f", {n} graph{'s' if n != 1 else ''} compiled"
        ck = load_checkpoint(out / CHECKPOINT)["model"]
        odd = [k for k, v in ck.items() if "_orig_mod" in k or (v.is_floating_point() and v.dtype != torch.float32)]
        if odd:
            raise RunError(f"checkpoint tensors with compiled-module keys or non-fp32 dtypes: {', '.join(odd[:3])}")
        load_encoder(out / ENCODER, device=str(self.device))
        losses = [e["loss"] for e in _epoch_records(out)]
        return f"{result.steps} steps, loss {losses[-1]:.4g}, {result.seconds:.1f}s{graphs}"

    def torchrun(self, r: Recipe) -> str:
        out = self.run_dir(r, "torchrun")
        package = Path(__file__).resolve().parents[1]  # so the workers import this very package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.procs}",
               "-m", "robustssl.cli", "pretrain", "--config", str(r.path), "--out", str(out), *r.overrides]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr)  # into the check's log, with the traceback
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(" ")]
            raise RunError(f"torchrun exited with {proc.returncode}: {lines[-1] if lines else 'no output'}")
        summary = json.loads((out / SUMMARY).read_text())
        if summary.get("world_size", 1) != self.procs:
            raise RunError(f"run.json says world_size {summary.get('world_size', 1)}, launched {self.procs}")
        return f"{torchrun_backend(self.device, self.procs)}: {summary['steps']} steps, {summary['seconds']:.1f}s"

    def stream(self, r: Recipe) -> str:
        assert r.cfg is not None
        cfg = load_config(r.path, r.overrides + ["data.stream=true", "data.prefetch_batches=2"])
        source = open_stream(cfg.data.name, "train", self.device, **data_options(cfg))
        positions = torch.arange(8)
        staged = source.read(positions)
        if staged.is_pinned() != (self.device.type == "cuda"):
            raise RunError(f"the staging tensor is {'' if staged.is_pinned() else 'not '}pinned on {self.device.type}")
        images = source.gather(positions)
        reference = load_dataset(cfg.data.name, "train", **data_options(cfg)).images[:8]
        if images.device.type != self.device.type or not torch.equal(images.cpu(), reference):
            raise RunError("the streamed images differ from the in-memory ones")
        out = self.run_dir(r, "stream")
        result = train(cfg, out)
        summary = json.loads((out / SUMMARY).read_text())
        pinned = "pinned" if staged.is_pinned() else "not pinned"
        return (f"staging {pinned}, pixels equal; {result.steps} steps with {summary['coreset'].get('n_selections', 0)} "
                f"selection(s), {result.seconds:.1f}s")


def data_key(cfg: RunConfig) -> str:
    """The synthetic data a run reads: the dataset's name, or for an image folder its channels and size."""
    if cfg.data.name == "imagefolder":
        return f"imagefolder-{cfg.data.channels or 3}x{cfg.data.image_size or 32}"
    return cfg.data.name


def _bind(fn: Callable[..., str], *args: Any) -> Callable[[], str]:
    return lambda: fn(*args)


def _raise(error: Exception | None) -> str:
    raise error or RunError("the recipe did not load")


def _epoch_records(out: Path) -> list[dict[str, Any]]:
    epochs = [r for r in read_metrics(out / METRICS) if r["type"] == "epoch"]
    if not epochs or not all(math.isfinite(e["loss"]) for e in epochs):
        raise RunError(f"{out / METRICS}: no epoch records or a non-finite loss")
    return epochs


# --- running -----------------------------------------------------------------------------------------------
def run_check(check: Check, failed: set[str], trace_dir: Path) -> CheckResult:
    """Run one check with its output captured; a failure keeps its traceback and output in trace_dir."""
    blocked = [n for n in check.needs if n in failed]
    if blocked:
        return CheckResult(check.name, False, 0.0, error=f"needs {', '.join(blocked)}, which failed")
    captured = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # notes and warnings of a short run (an unconverged probe) are expected
            detail = check.run()
        return CheckResult(check.name, True, time.perf_counter() - start, detail)
    except Exception as e:  # every failure is reported and the next check runs
        seconds = time.perf_counter() - start
        trace_dir.mkdir(parents=True, exist_ok=True)
        path = trace_dir / (check.name.replace(" ", "-") + ".txt")
        path.write_text(traceback.format_exc() + "\n--- output of the check ---\n" + captured.getvalue())
        return CheckResult(check.name, False, seconds, error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:400],
                           traceback=str(path))


def prepare_out(out: Path) -> None:
    """Use `out` if it is new, empty, or an earlier doctor's folder (its runs are cleared); refuse anything else."""
    check_folder(out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RunError(f"{out} is not empty and holds no {MARKER}; choose another --out for the doctor")
        for sub in ("runs", "data", "tracebacks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def resolve(device: str) -> torch.device:
    """'auto' (CUDA when visible), 'cpu' or 'cuda'; ConfigError for a CUDA device that is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible to torch; run with --device cpu")
    return torch.device(device)


def run_doctor(device: str = "auto", out: str | Path = "runs/doctor", tiny: bool = False, recipes: list[str] | None = None,
               kinds: list[str] | None = None, procs: int | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the checks and return the JSON record (also written to OUT/doctor.json after every check).

    recipes: names or YAML paths (None: every bundled recipe). kinds: of KINDS (None: all; the
    kinds a chosen kind needs are added). procs: torchrun's processes (None: the visible GPUs,
    at most 2, on CUDA; 1 on the CPU). echo: where the lines go (print).
    """
    dev = resolve(device)
    bad = [k for k in kinds or [] if k not in KINDS]
    if bad:
        raise ConfigError(f"unknown check kind(s) {bad}; valid: {', '.join(KINDS)}")
    if procs is None:
        procs = min(2, torch.cuda.device_count()) if dev.type == "cuda" else 1
    if procs < 1:
        raise ConfigError(f"--procs must be >= 1, got {procs}")
    paths = bundled_recipes() if recipes is None else [resolve_recipe(r) for r in recipes]
    out = Path(out)
    prepare_out(out)
    doctor = Doctor(dev, out, Sizes.for_mode(tiny), procs)
    plan = doctor.plan([doctor.recipe(p) for p in paths], kinds or KINDS)
    hw = hardware(dev)
    record: dict[str, Any] = {
        "device": hw["name"] if dev.type == "cuda" else "cpu", "device_type": dev.type, "torch": torch.__version__, "hardware": hw, "tiny": tiny,
        "sizes": asdict(doctor.sizes), "epochs": EPOCHS, "procs": procs, "recipes": [p.stem for p in paths],
        "command": " ".join(sys.argv), "checks": [], "seconds": 0.0,
    }
    echo(f"robustssl doctor on {hw['name']} ({dev.type}, torch {torch.__version__}): {len(paths)} recipes, "
         f"{len(plan)} checks{', tiny models' if tiny else ''}; runs and {MARKER} in {out}")
    failed: set[str] = set()
    start = time.perf_counter()
    for check in plan:
        result = run_check(check, failed, out / "tracebacks")
        if not result.passed:
            failed.add(check.name)
        echo(result.line())
        record["checks"].append(asdict(result))
        record["seconds"] = time.perf_counter() - start
        record.update(checks_total=len(plan), passed=len(record["checks"]) - len(failed))
        atomic_write_text(out / MARKER, json.dumps(record, indent=2))
    echo(f"RESULT checks={len(plan)} passed={len(plan) - len(failed)} device={record['device']}")
    return record
