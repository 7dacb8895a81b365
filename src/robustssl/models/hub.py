"""Evaluated classifiers others can use: the classifier file `evaluate` writes, the Hugging Face
Hub-ready folder `robustssl export --format hf` writes, and `load`, which reads either back.

A classifier file (`classifier_<protocol>.safetensors`, written by `robustssl evaluate` beside its
report) holds the evaluated classifier: the encoder (normalize + backbone, the same tensor names
as encoder.safetensors) and the linear head (`head.weight`, `head.bias`), fp32, on the CPU. Its
string metadata holds, besides the encoder export's `robustssl_model_spec` and
`robustssl_trained_branches`,

    robustssl_classifier   JSON: format, protocol, bn_branch (the dual-BN branch it runs on,
                           fixed), n_classes, classes, input (channels, size, range), the
                           threat model, the accuracies (clean and each attack, with the number
                           of test images), the sanity checks, the data, the run and its method

and a RobustBench-style `model_info` JSON is written beside it (`<name>.model_info.json`: clean
and AutoAttack accuracy in %, eps as text, architecture; the fields only a person can fill,
such as authors and venue, left empty).

    model = load("runs/acl/classifier_slf.safetensors")   # or the HF folder, or an encoder export
    logits = model(images)                                  # [B, C, H, W] in [0, 1] -> [B, n_classes]

The HF folder (`export_hf`): model.safetensors (the classifier file), config.json (the
architecture, labels, branch, threat model and accuracies), README.md (a model card with
Hub metadata, the report's table, the sanity checks, the recipe and how to load it) and
model_info.json. Nothing is uploaded.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save as save_bytes
from torch import nn

from ..errors import RunError
from ..io import atomic_write, atomic_write_text
from .dual_bn import has_dual_bn, set_bn_branch
from .encoder import ModelSpec, SSLModel, build_model
from .export import (
    BRANCHES_KEY,
    SPEC_KEY,
    _check_branches,
    _read_header,
    _read_tensors,
    _spec_from_dict,
    json_object_metadata,
    load_encoder,
)

CLASSIFIER_KEY = "robustssl_classifier"
FORMAT = "robustssl.classifier/1"
HF_FILES = ("model.safetensors", "config.json", "README.md", "model_info.json")

__all__ = [
    "CLASSIFIER_KEY",
    "HF_FILES",
    "ClassifierSaver",
    "EvaluationContext",
    "RobustClassifier",
    "architecture_name",
    "classifier_blob",
    "classifier_path",
    "export_hf",
    "load",
    "load_classifier",
    "save_classifier",
]


class RobustClassifier(nn.Module):
    """An evaluated classifier: encoder (normalize -> backbone) + linear head, on one fixed BN branch.

    forward(x): x float [B, C, H, W] in [0, 1] -> logits [B, n_classes], fp32.
    features(x): the same input -> encoder features [B, feature_dim].
    `info` is what it was evaluated as (protocol, threat model, accuracies, sanity checks, data,
    run). Loaded in eval mode; a dual-BN encoder is set to `branch` once, at construction.
    """

    def __init__(self, encoder: SSLModel, head: nn.Linear, branch: str | None, info: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.branch = branch
        self.info = info
        if branch is not None and has_dual_bn(encoder):
            set_bn_branch(encoder, branch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


# --- writing -------------------------------------------------------------------------------------
def _plain_head(clf: nn.Module) -> nn.Linear:
    """The classifier's head as one Linear layer on the raw features (a probe trained on standardized
    features that were not folded yet is folded here, on a copy)."""
    head: nn.Linear = clf.head  # type: ignore[assignment]
    mean, std = getattr(clf, "feature_mean", None), getattr(clf, "feature_std", None)
    out = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        w, b = head.weight.detach().float(), head.bias.detach().float()
        if mean is not None and std is not None:
            w = w / std.view(1, -1)
            b = b - w @ mean
        out.weight.copy_(w.cpu())
        out.bias.copy_(b.cpu())
    return out


def classifier_blob(clf: nn.Module, spec: ModelSpec, info: dict[str, Any], trained_branches: list[str] | None = None) -> bytes:
    """The classifier file's bytes for `clf` (a module with `.encoder` (SSLModel), `.head` (Linear) and
    `.branch`). info: JSON-ready facts about it (see the module docstring); the format tag,
    bn_branch and n_classes are added. The tensors are copied to the CPU."""
    encoder: SSLModel = clf.encoder  # type: ignore[assignment]
    head = _plain_head(clf)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.encoder_state_dict().items()}
    tensors["head.weight"] = head.weight.detach().contiguous()
    tensors["head.bias"] = head.bias.detach().contiguous()
    full = {"format": FORMAT, **info, "bn_branch": getattr(clf, "branch", None), "n_classes": head.out_features}
    metadata = {SPEC_KEY: json.dumps(asdict(spec)), CLASSIFIER_KEY: json.dumps(full, default=str)}
    if trained_branches is not None:
        metadata[BRANCHES_KEY] = json.dumps(_check_branches(trained_branches))
    blob: bytes = save_bytes(tensors, metadata=metadata)
    return blob


def save_classifier(clf: nn.Module, spec: ModelSpec, path: str | Path, info: dict[str, Any],
                    trained_branches: list[str] | None = None) -> Path:
    """Write `clf` to `path` as a classifier file (`classifier_blob`), atomically. Returns the path."""
    blob = classifier_blob(clf, spec, info, trained_branches)
    return atomic_write(Path(path), lambda f: f.write(blob))


def classifier_path(folder: str | Path, protocol: str) -> Path:
    """Where `evaluate` saves the classifier of `protocol`: FOLDER/classifier_<protocol>.safetensors."""
    return Path(folder) / f"classifier_{protocol}.safetensors"


def eps_text(eps: float) -> str:
    """eps as RobustBench writes it: '8/255' when it is k/255, else the number."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def architecture_name(spec: ModelSpec) -> str:
    """A readable architecture name: 'WideResNet-28-10', 'ResNet-50', 'ResNet-18 (width 16)', ..."""
    if spec.arch == "wrn":
        return f"WideResNet-{spec.depth}-{spec.widen}"
    if spec.arch == "timm":
        return f"timm {spec.timm_name}"
    if spec.arch == "cnn":
        return f"5-layer CNN (width {spec.width})"
    base = {"resnet18": "ResNet-18", "resnet50": "ResNet-50"}.get(spec.arch, spec.arch)
    return base if spec.width == 64 else f"{base} (width {spec.width})"


def _accuracies(record: dict[str, Any]) -> dict[str, Any]:
    """{"clean": acc, "<attack>": acc, ...} and the test images each used, from a protocol's report entry."""
    acc = {"clean": record["clean"]["accuracy"]}
    used = {"clean": record["clean"]["n_examples"]}
    for rec in record.get("attacks", []):
        acc[rec["attack"]] = rec["accuracy"]
        used[rec["attack"]] = rec["n_examples"]
    return {"accuracy": acc, "n_examples": used}


def model_info(info: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The RobustBench-style model_info record of a classifier (accuracies in %, as strings)."""
    acc, used = info["accuracy"], info["n_examples"]
    aa = acc.get("autoattack")
    notes = [f"robustssl {info['protocol'].upper()} classifier of a {info.get('method') or 'robustssl'} encoder, "
             f"BN branch {info.get('bn_branch')}"]
    if aa is None:
        notes.append("AutoAttack was not run (robustssl evaluate --attacks autoattack)")
    elif used.get("autoattack") != info["test"]["n_total"]:
        notes.append(f"AutoAttack on {used.get('autoattack')} of {info['test']['n_total']} test images")
    if used["clean"] != info["test"]["n_total"]:
        notes.append(f"clean accuracy on {used['clean']} of {info['test']['n_total']} test images")
    if not info.get("sanity_passed", True):
        notes.append("a sanity check FAILED")
    return {
        "link": "", "name": "", "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": info["test"]["name"], "venue": "", "architecture": architecture_name(spec),
        "eps": eps_text(float(info["threat_model"]["eps"])), "threat_model": info["threat_model"].get("label", ""),
        "clean_acc": f"{100 * acc['clean']:.2f}", "reported": "",
        "autoattack_acc": None if aa is None else f"{100 * aa:.2f}",
        "footnote": "; ".join(notes), "unreliable": not info.get("sanity_passed", True),
    }


@dataclass
class EvaluationContext:
    """What `evaluate` knows about the classifiers it trains, besides each protocol's record."""

    out: Path
    spec: ModelSpec
    trained_branches: list[str] | None
    threat_model: dict[str, Any]
    test: dict[str, Any]  # name, split, n_total, classes, channels, size
    train: dict[str, Any]  # name, split
    run: str
    method: str


class ClassifierSaver:
    """The hook `evaluate_encoder(keep_classifier=...)` calls after each protocol: it keeps each evaluated
    classifier (as the bytes of its file, on the CPU), and `write()` saves them once the report is
    written, so a classifier file never exists without its report entry.

    Kept: classifiers that are an encoder + one linear head on its features (SLF, ALF, AFF, direct).
    Multi-crop probes and kNN are not (their features average a crop set, or they vote over a bank of
    training features: a plain encoder + head would not reproduce their accuracies); `skipped` names them."""

    def __init__(self, ctx: EvaluationContext) -> None:
        self.ctx = ctx
        self.pending: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.skipped: list[str] = []

    def __call__(self, protocol: str, clf: nn.Module, record: dict[str, Any]) -> None:
        from ..eval.classifier import FinetuneClassifier, LinearEvalModel
        from ..eval.knn import KNNClassifier
        from ..eval.multicrop import MultiCropEvalModel

        if not isinstance(clf, (LinearEvalModel, FinetuneClassifier)) or isinstance(clf, (MultiCropEvalModel, KNNClassifier)):
            self.skipped.append(protocol)
            return
        ctx = self.ctx
        info = {
            "protocol": protocol, "threat_model": ctx.threat_model, **_accuracies(record),
            "sanity_passed": record.get("sanity_passed"), "sanity": record.get("sanity", []),
            "classes": ctx.test.get("classes") or [], "test": ctx.test, "train": ctx.train,
            "input": {"channels": ctx.test["channels"], "size": ctx.test["size"], "range": "[0, 1]",
                      "normalization": "inside the model"},
            "run": ctx.run, "method": ctx.method,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        info["bn_branch"] = getattr(clf, "branch", None)
        self.pending[protocol] = (classifier_blob(clf, ctx.spec, info, ctx.trained_branches), info)

    def write(self) -> dict[str, str]:
        """Write every kept classifier and its model_info JSON into ctx.out; {protocol: file name}."""
        written = {}
        self.ctx.out.mkdir(parents=True, exist_ok=True)
        for protocol, (blob, info) in self.pending.items():
            path = classifier_path(self.ctx.out, protocol)
            atomic_write(path, lambda f, b=blob: f.write(b))  # type: ignore[misc]
            atomic_write_text(path.with_suffix(".model_info.json"), json.dumps(model_info(info, self.ctx.spec), indent=2) + "\n")
            written[protocol] = path.name
        return written


# --- reading -------------------------------------------------------------------------------------
def _metadata(path: Path) -> dict[str, str]:
    meta: dict[str, str] = _read_header(path).get("__metadata__") or {}
    return meta


def read_classifier_info(path: str | Path) -> dict[str, Any]:
    """The `robustssl_classifier` record of a classifier file (RunError when the file is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier at {path}; run `robustssl evaluate` first (it writes classifier_<protocol>.safetensors)")
    text = _metadata(path).get(CLASSIFIER_KEY)
    if text is None:
        raise RunError(f"{path} is not a robustssl classifier (no {CLASSIFIER_KEY} in its metadata); "
                       "load an encoder export with load_encoder, or evaluate the run to write its classifiers")
    return json_object_metadata(path, text, CLASSIFIER_KEY, "run `robustssl evaluate` again")


def load_classifier(path: str | Path, device: str = "cpu") -> RobustClassifier:
    """A classifier file (or an HF folder's model.safetensors) as a `RobustClassifier`, in eval mode on `device`."""
    path = Path(path)
    info = read_classifier_info(path)
    spec = _spec_from_dict(path, json.loads(_metadata(path)[SPEC_KEY]))
    tensors = _read_tensors(path)
    try:
        weight, bias = tensors.pop("head.weight"), tensors.pop("head.bias")
    except KeyError:
        raise RunError(f"{path} has no head.weight / head.bias; run `robustssl evaluate` again") from None
    try:
        encoder = build_model(spec)
        missing, unexpected = encoder.load_state_dict(tensors, strict=False)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"{path} does not match its architecture ({str(e).splitlines()[0]}); run `robustssl evaluate` again") from None
    missing = [k for k in missing if not k.startswith("projector.")]
    if missing or unexpected:
        raise RunError(f"{path} does not match its architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return RobustClassifier(encoder, head, info.get("bn_branch"), info).to(device).eval()


def load(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load what robustssl wrote, ready to use (eval mode):

    - an HF folder (`robustssl export --format hf`) or a classifier file (`evaluate`'s
      classifier_<protocol>.safetensors): a `RobustClassifier`, images in [0, 1] -> logits;
    - an encoder export (encoder.safetensors) or a run folder: the encoder (`SSLModel`), on the
      BN branch its report used; `model.features(images)` gives the representation.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return load_classifier(path / "model.safetensors", device)
        if (path / "encoder.safetensors").is_file():
            return load_encoder(path / "encoder.safetensors", device)[0]
        raise RunError(f"{path} holds neither model.safetensors (an exported classifier) nor encoder.safetensors (a run); "
                       "pass a run folder, an HF export folder or a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"nothing to load at {path}; pass a run folder, an HF export folder or a .safetensors file")
    if CLASSIFIER_KEY in _metadata(path):
        return load_classifier(path, device)
    return load_encoder(path, device)[0]


# --- the Hugging Face folder ---------------------------------------------------------------------
def _worst_case(info: dict[str, Any]) -> float:
    """A classifier's accuracy under its strongest attack (the minimum over its attacks; clean without any)."""
    acc = info["accuracy"]
    attacks = [v for k, v in acc.items() if k != "clean"]
    return min(attacks) if attacks else acc["clean"]


def _choose(run_dir: Path, protocol: str | None) -> tuple[Path, str]:
    found = {p.stem[len("classifier_"):]: p for p in sorted(run_dir.glob("classifier_*.safetensors"))}
    if protocol is not None:
        if protocol not in found:
            raise RunError(f"{run_dir} holds no classifier of protocol {protocol!r} (it holds: {', '.join(found) or 'none'}); "
                           f"run `robustssl evaluate --run {run_dir} --protocol {protocol}` first")
        return found[protocol], f"--protocol {protocol}"
    if not found:
        raise RunError(f"{run_dir} holds no evaluated classifier (classifier_<protocol>.safetensors); "
                       f"run `robustssl evaluate --run {run_dir}` first")
    infos = {name: read_classifier_info(p) for name, p in found.items()}
    best = max(infos, key=lambda n: _worst_case(infos[n]))
    why = ("the only evaluated classifier" if len(found) == 1 else
           f"the highest accuracy under its strongest attack ({100 * _worst_case(infos[best]):.1f} %) of "
           f"{', '.join(found)}; pass --protocol to choose")
    return found[best], why


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def _card(info: dict[str, Any], spec: ModelSpec, report: dict[str, Any] | None, recipe: str, name: str) -> str:
    """The model card (README.md): Hub metadata, what the model is, the report's table, the checks, the recipe."""
    tm, acc, used = info["threat_model"], info["accuracy"], info["n_examples"]
    dataset = info["test"]["name"]
    metrics = [{"type": "accuracy", "value": round(100 * float(v), 2),
                "name": "clean accuracy" if k == "clean" else f"{k} accuracy ({tm.get('text') or tm['norm']})"}
               for k, v in acc.items()]
    front = {
        "library_name": "robustssl",
        "tags": ["robustssl", "adversarial-robustness", "image-classification", info.get("method") or "robustssl"],
        "datasets": [dataset], "metrics": ["accuracy"],
        "model-index": [{"name": name, "results": [{
            "task": {"type": "image-classification"},
            "dataset": {"name": dataset, "type": dataset, "split": info["test"].get("split", "test")},
            "metrics": metrics,
        }]}],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    lines += [
        f"An adversarially robust {architecture_name(spec)} classifier for {dataset} ({info['n_classes']} classes), "
        f"trained with robustssl: encoder pretrained with `{info.get('method')}`, classifier from the "
        f"`{info['protocol'].upper()}` evaluation protocol"
        + (f", dual-BN encoder on its `{info['bn_branch']}` branch" if info.get("bn_branch") else "") + ".",
        "",
        f"Threat model: {tm.get('text') or tm}. Inputs: float [B, {info['input']['channels']}, "
        f"{', '.join(str(s) for s in info['input']['size'])}] in [0, 1] (normalization is inside the model).",
        "",
        "## Load",
        "",
        "```python",
        "from robustssl import api",
        "model = api.load(\"PATH_TO_THIS_FOLDER\")   # a RobustClassifier, eval mode",
        "logits = model(images)                     # images in [0, 1] -> [B, n_classes]",
        "```",
        "",
        "## This classifier",
        "",
        "| accuracy | % | test images |",
        "|---|---|---|",
        *[f"| {k} | {_pct(v)} | {used.get(k, '-')} |" for k, v in acc.items()],
        "",
    ]
    if used["clean"] != info["test"]["n_total"]:
        lines += [f"> **SUBSET EVALUATION**: {used['clean']} of {info['test']['n_total']} test images.", ""]
    sanity = info.get("sanity", [])
    lines += ["## Sanity checks", "", ("All passed." if info.get("sanity_passed") else "> **A SANITY CHECK FAILED**: "
                                        "the accuracies above are not trustworthy."), ""]
    lines += [f"- {'PASS' if c.get('passed') else 'FAIL'} `{c.get('name')}`: {c.get('detail', '')}" for c in sanity]
    lines.append("")
    if report is not None:
        from ..eval.report import summary_rows

        rows = summary_rows(report)
        if rows:
            header = list(rows[0])
            lines += ["## The run's evaluation report", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_cell(r.get(h)) for h in header) + " |" for r in rows]
            lines += ["", *[f"> {n}" for n in report.get("notes", [])], ""]
    lines += ["## Training recipe", "", "The run's resolved config (`config.yaml`):", "", "```yaml", recipe.rstrip(), "```", ""]
    lines += ["## Files", "", "- `model.safetensors`: encoder + head, fp32, with this metadata in its header.",
              "- `config.json`: architecture, labels, BN branch, threat model, accuracies.",
              "- `model_info.json`: a RobustBench-style model_info record (fill in name, authors, link, venue).", ""]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def export_hf(run_dir: str | Path, out: str | Path | None = None, protocol: str | None = None) -> dict[str, Any]:
    """Write a Hugging Face Hub-ready folder for one evaluated classifier of `run_dir` (default
    out: RUN/hf; default protocol: the classifier with the highest accuracy under its strongest
    attack). Files: HF_FILES. Files of an earlier export in `out` are replaced; a folder holding
    anything else is refused. Nothing is uploaded. Returns {out, protocol, why, files}."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "hf"
    source, why = _choose(run_dir, protocol)
    info = read_classifier_info(source)
    meta = _metadata(source)
    spec = _spec_from_dict(source, json.loads(meta[SPEC_KEY]))
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; choose a folder for the export")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in HF_FILES) if out.is_dir() else []
    if foreign:
        raise RunError(f"{out} holds files that are not an export ({', '.join(foreign[:5])}); nothing was written. "
                       "Choose another --out, or empty that folder")
    report_path = source.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    recipe_path = run_dir / "config.yaml"
    recipe = recipe_path.read_text() if recipe_path.is_file() else "(no config.yaml in the run folder)"
    name = f"robustssl-{info.get('method') or 'model'}-{info['protocol']}-{info['test']['name']}"
    classes = info.get("classes") or [str(i) for i in range(info["n_classes"])]
    config = {
        "library_name": "robustssl", "model_type": "robustssl-classifier", "format": info.get("format"),
        "architecture": architecture_name(spec), "model_spec": asdict(spec), "num_labels": info["n_classes"],
        "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
        "bn_branch": info.get("bn_branch"), "input": info["input"], "threat_model": info["threat_model"],
        "accuracy": info["accuracy"], "n_examples": info["n_examples"], "sanity_passed": info.get("sanity_passed"),
        "protocol": info["protocol"], "method": info.get("method"), "data": {"train": info.get("train"), "test": info["test"]},
    }
    out.mkdir(parents=True, exist_ok=True)
    blob = source.read_bytes()
    atomic_write(out / "model.safetensors", lambda f: f.write(blob))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "README.md", _card(info, spec, report, recipe, name))
    atomic_write_text(out / "model_info.json", json.dumps(model_info(info, spec), indent=2) + "\n")
    return {"out": str(out), "protocol": info["protocol"], "why": why, "files": [str(out / f) for f in HF_FILES]}
