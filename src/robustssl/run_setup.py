"""Setting a run up from its config: the device, the training split, the architecture.

Shared by pretraining (`train/trainer.py`), selection and evaluation (`api.py`), DynACL++
post-processing and transfer, so none of them imports the trainer for it.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .data import dataset_stats, load_dataset, open_stream
from .data.dataset import ImageDataset, ImageSource
from .errors import ConfigError
from .models import ModelSpec


def resolve_device(name: str) -> torch.device:
    """train.device ('auto', 'cpu', 'cuda') -> the torch device; ConfigError for cuda without a visible GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what `platform` says, else the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config and seed: the device, and on CPU the model, the vector
    instruction set torch's kernels dispatch to and the thread count. The same seed reproduces a run bit for
    bit on the same kind of CPU; another instruction set (an AVX2-only host against an AVX-512 one, or oneDNN
    capped by ONEDNN_MAX_CPU_ISA) rounds differently from the first steps on, so the numbers differ."""
    info: dict[str, Any] = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info.update(name=cpu_model(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    cores=os.cpu_count(), threads=torch.get_num_threads())
        if isa_cap := os.environ.get("ONEDNN_MAX_CPU_ISA"):
            info["onednn_max_cpu_isa"] = isa_cap
    return info


def describe_hardware(hw: dict[str, Any]) -> str:
    """A `hardware` record in a few words: 'Intel(R) Xeon(R) ... (AVX512, 2 threads)' for a CPU, else the GPU's name."""
    if hw.get("device") == "cpu":
        return f"{hw.get('name', 'a CPU')} ({hw.get('cpu_capability', '?')}, {hw.get('threads', '?')} threads)"
    return str(hw.get("name", hw.get("device", "?")))


def load_train_set(cfg: RunConfig) -> ImageDataset:
    """The training split, optionally a seeded random subset of `data.train_subset` images."""
    data = load_dataset(cfg.data.name, "train", **data_options(cfg))
    n = cfg.data.train_subset
    if n is not None and n < len(data):
        g = torch.Generator().manual_seed(cfg.train.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)
    return data


def load_train_source(cfg: RunConfig, device: torch.device) -> ImageSource:
    """The training split (`data.train_subset` applied) on `device`, or, with data.stream, streamed to it per batch."""
    if not cfg.data.stream:
        return load_train_set(cfg).to(device)
    data = open_stream(cfg.data.name, "train", device, **data_options(cfg))
    n = cfg.data.train_subset
    if n is not None and n < len(data):  # the same seeded subset as load_train_set
        g = torch.Generator().manual_seed(cfg.train.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[:n].sort().values)
    return data


def data_options(cfg: RunConfig) -> dict[str, Any]:
    """load_dataset's keyword arguments from the config's data section (shared by train and test splits)."""
    d = cfg.data
    options: dict[str, Any] = {"root": d.root, "download": d.download}
    if d.name == "imagefolder":
        options.update(image_size=d.image_size, channels=d.channels)
    return options


def model_spec(cfg: RunConfig, data: ImageSource) -> ModelSpec:
    """The architecture: the config's model section plus what the data decides (channels, normalization)."""
    mean, std = dataset_stats(cfg.data.name, data.num_channels)
    return ModelSpec.from_config(cfg.model, data.num_channels, mean, std)
