"""`train.tensorboard=true`: the metrics log mirrored as TensorBoard scalars in RUN/tensorboard.

Every record the run writes to metrics.jsonl is also written as scalars, against the global
step: step records as `train/<key>` (loss, lr and the method's own numbers), epoch records as
`epoch/<key>` (loss, images_per_s, seconds, lr) and `time/<phase>` (seconds of augment, attack,
update, selection in that epoch), probe records as `probe/clean`, `probe/robust`,
`probe/train_seconds` and `probe/probe_seconds`. Each write is flushed, so a killed run loses
nothing; a resumed run purges the events after its checkpoint's step (as metrics.jsonl drops
its records), so the curves are those of one run.

The writer is torch.utils.tensorboard's, which needs the `tensorboard` package
(`pip install 'robustssl[tensorboard]'`); without it the config is refused before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .metrics import MetricsLog

FOLDER = "tensorboard"

__all__ = ["FOLDER", "TensorBoardMetrics", "require_tensorboard", "tensorboard_metrics"]


def require_tensorboard() -> None:
    """ConfigError with the install command when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"train.tensorboard=true needs the tensorboard package ({e}); install it with "
                          "pip install 'robustssl[tensorboard]' (or pip install tensorboard), or set train.tensorboard=false") from None


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars (tag -> value) of one metrics record; {} for records without numbers to plot."""
    kind = record.get("type")
    numbers = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("epoch", "step")}
    if kind == "step":
        return {f"train/{k}": v for k, v in numbers.items()}
    if kind == "epoch":
        out = {f"epoch/{k}": v for k, v in numbers.items()}
        out.update({f"time/{k}": float(v) for k, v in record.get("time", {}).items()})
        return out
    if kind == "probe":
        return {f"probe/{k}": numbers[k] for k in ("clean", "robust", "train_seconds", "probe_seconds") if k in numbers}
    return {}


class TensorBoardMetrics(MetricsLog):
    """metrics.jsonl plus its scalars in a TensorBoard event file (see the module's docstring)."""

    def __init__(self, path: str | Path, log_dir: str | Path, purge_step: int | None = None) -> None:
        super().__init__(path)
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        super().write(record)
        step = int(record.get("step", 0))
        values = scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        if values:
            self.writer.flush()


def tensorboard_metrics(metrics: MetricsLog, enabled: bool, out: Path, resumed_step: int | None) -> MetricsLog:
    """`metrics` as is, or (enabled, rank 0's log) the same log mirrored to out/tensorboard;
    resumed_step: a resumed run's checkpoint step (later events are purged)."""
    if not enabled or type(metrics) is not MetricsLog:  # other ranks' logs write nothing
        return metrics
    return TensorBoardMetrics(metrics.path, out / FOLDER, None if resumed_step is None else resumed_step + 1)
