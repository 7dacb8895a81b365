"""Distributed helpers: process group set-up from torchrun's environment, rank queries, and the
collectives the trainer, losses and coreset selection use.

Every helper is a no-op (or the identity) in a single process, so code calls them
unconditionally and a one-process run does exactly what it did without them.

Gradient convention (see docs/design.md, "Distributed training"): each rank's loss covers its
own images (the mean of its anchors' terms, or a term of the whole global batch that every rank
computes), so the ranks' losses sum to world_size times the global loss; the trainer averages
parameter gradients over ranks. The collectives below sum gradients in their backward, which
makes the averaged gradient equal the one-process gradient of the global batch.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


# --- who am I --------------------------------------------------------------------------------
def is_initialized() -> bool:
    """True when a default process group exists."""
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return tdist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return tdist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the rank that writes files, logs and prints."""
    return rank() == 0


def is_distributed() -> bool:
    """True when more than one process trains together."""
    return world_size() > 1


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank: the group's, or torchrun's RANK once the group is gone (0 when not launched by torchrun)."""
    return rank() if is_initialized() else int(os.environ.get("RANK", "0"))


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes (WORLD_SIZE > 1), if not joined yet.

    device: the training device the config asks for. On CUDA each process uses the GPU
    LOCAL_RANK (and NCCL); on CPU the backend is gloo. Returns (the device this process trains
    on, whether this call created the group, so its caller also destroys it with `shutdown`).
    A single process (no WORLD_SIZE > 1) gets `device` back unchanged.
    """
    if env_world_size() <= 1 or is_initialized():
        if is_initialized() and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        return device, False
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        tdist.init_process_group("nccl", device_id=device)
    else:
        tdist.init_process_group("gloo")
    return device, True


def shutdown(created: bool, clean: bool = True) -> None:
    """Destroy the process group if `init_from_env` created it: after a final barrier when every
    rank got here normally (clean), at once after an error (the other ranks may be inside a
    collective; torchrun stops them when this process exits)."""
    if created and is_initialized():
        if clean:
            tdist.barrier()
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        tdist.barrier()


# --- objects and scalars -------------------------------------------------------------------
def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` as rank `src` holds it, on every rank (pickled; for small objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on other ranks); [obj] in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    tdist.gather_object(obj, out, dst=0)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result, or raise its error, on every rank.

    For work that touches files (claiming the run folder): the other ranks wait, and a
    user error (RobustSSLError, OSError) reaches every rank as the same exception type and message.
    """
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as e:  # shipped to the other ranks, then re-raised everywhere
            outcome = ("error", e)
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def main_first(fn: Callable[[], T], then: Callable[[], T]) -> T:
    """Rank 0 runs `fn` while the other ranks wait; then the others run `then` (one process: fn()).

    For work that must happen once, such as a download: rank 0 fetches, the others then find
    its files. An error of `fn` reaches every rank as the same exception (`on_main`), so a
    failed download is one error, not one per process.
    """
    if not is_distributed():
        return fn()
    value = on_main(fn)
    return value if is_main() else then()


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: the current GPU under NCCL, the CPU under gloo."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_values(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (same keys on every rank); `values` itself in one process."""
    if not is_distributed():
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=_collective_device())
    tdist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(values, t.tolist())}


def mean_scalar(value: float) -> float:
    """`value` averaged over the ranks (NaN anywhere makes it NaN everywhere)."""
    if not is_distributed():
        return value
    return mean_values({"v": value})["v"]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=_collective_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


# --- tensors with gradients ---------------------------------------------------------------------
class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gathered tensor's gradient over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        tdist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        tdist.all_reduce(total)
        return total[rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[world_size, *x.shape]: every rank's `x` in rank order, differentiable.

    The gradient reaching this rank's `x` is the sum over all ranks of the gradient of their
    losses w.r.t. the gathered slice of this rank: the ranks' losses are summed, never scaled by
    1 / world_size and never dropped for other ranks' slices. Every rank must call it with the
    same shape. One process: x[None] (the plain autograd path).
    """
    if not is_distributed():
        return x.unsqueeze(0)
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; the backward sums the output's gradient over ranks too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        tdist.all_reduce(total)
        return total


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over ranks, differentiable (each rank's input gets the summed gradient); x in one process."""
    if not is_distributed():
        return x
    return _AllReduceWithGrad.apply(x)


def gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows (rank r holds counts[r] rows of x's trailing shape) in rank order.

    No gradient: for results such as candidate gradients. Every rank knows all counts.
    """
    if not is_distributed():
        return x
    if x.shape[0] != counts[rank()]:
        raise ValueError(f"rank {rank()} holds {x.shape[0]} rows, but counts say {counts[rank()]}")
    most = max(counts)
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def shard_bounds(n: int, ranks: int, r: int) -> tuple[int, int]:
    """[lo, hi): rank r's contiguous share of n items split over `ranks` (sizes differ by at most 1)."""
    base, extra = divmod(n, ranks)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


# --- one batch across ranks -------------------------------------------------------------------------
_GLOBAL_BATCH = False


@contextmanager
def global_batch() -> Iterator[None]:
    """Inside the block the ranks' batches are shards of one global batch: losses with
    `gather_distributed=None` gather embeddings across ranks (the trainer's training steps).
    Outside it (coreset selection: each rank scores its own candidates) they stay local."""
    global _GLOBAL_BATCH
    previous, _GLOBAL_BATCH = _GLOBAL_BATCH, True
    try:
        yield
    finally:
        _GLOBAL_BATCH = previous


def gathers(flag: bool | None) -> bool:
    """Whether a loss called with `gather_distributed=flag` gathers across ranks now:
    flag True/False as given, None inside `global_batch()`; never in a single process."""
    return is_distributed() and (_GLOBAL_BATCH if flag is None else flag)
