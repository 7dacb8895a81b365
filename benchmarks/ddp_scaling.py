"""Data-parallel throughput: ACL training steps with 1 and N processes side by side (torchrun).

Each repeat launches `torchrun --nproc-per-node P` for every process count P (interleaved, so
machine drift hits all counts alike); the workers run the trainer's distributed step (the
global batch sharded over the ranks, NT-Xent gathered, gradients averaged) and rank 0 reports
images per second of the global batch over the timed steps (start-up and warm-up excluded).
Every process uses one torch thread, so P processes use P cores.

    OMP_NUM_THREADS=1 python benchmarks/ddp_scaling.py                      # CPU, gloo, 1 vs 2 processes
    python benchmarks/ddp_scaling.py --device cuda --procs 1 2 4 8 --preset resnet18-cifar   # GPUs, NCCL
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PRESETS = {
    "cnn-fmnist": dict(recipe="acl_fmnist_cpu", channels=1, size=28, batch=256),
    "resnet18-cifar": dict(recipe="acl_cifar10", channels=3, size=32, batch=512),
}


def worker(args: argparse.Namespace) -> None:
    """One rank: `--steps` timed ACL steps after one warm-up step; rank 0 writes the result."""
    from robustssl import dist
    from robustssl.config import load_config
    from robustssl.data import Batch
    from robustssl.methods import build_method
    from robustssl.models import ModelSpec, build_model
    from robustssl.timer import PhaseTimer
    from robustssl.train.distributed import prepare_model, replicate
    from robustssl.train.optim import build_optimizer, build_scheduler

    if args.device == "cpu":
        torch.set_num_threads(1)
    preset = PRESETS[args.preset]
    device, created = dist.init_from_env(torch.device(args.device))
    cfg = load_config(preset["recipe"], [f"attack.steps={args.attack_steps}", f"optim.batch_size={preset['batch']}",
                                         f"train.sync_bn={args.sync_bn}"])
    torch.manual_seed(0)
    model = build_model(ModelSpec.from_config(cfg.model, preset["channels"], (0.5,) * preset["channels"],
                                              (0.25,) * preset["channels"])).to(device)
    prepare_model(model, device, cfg.train.sync_bn)
    method = build_method(cfg, preset["size"], preset["channels"])
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 1000, 100)
    replicate(model, optimizer, cfg.train.sync_bn)
    per_rank = preset["batch"] // dist.world_size()
    x = torch.rand(per_rank, preset["channels"], preset["size"], preset["size"], device=device)
    batch = Batch(torch.arange(per_rank, device=device), x)
    timer = PhaseTimer(device)

    def step() -> None:
        with dist.global_batch():
            logs = method.step(model, optimizer, scheduler, batch, timer)
        dist.mean_values(logs)

    step()
    dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - start
    if dist.is_main():
        Path(args.worker).write_text(json.dumps({"processes": dist.world_size(), "seconds": seconds,
                                                 "images_per_s": preset["batch"] * args.steps / seconds}))
    dist.shutdown(created)


def launch(args: argparse.Namespace, procs: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), __file__,
           "--worker", str(out), "--preset", args.preset, "--device", args.device, "--steps", str(args.steps),
           "--attack-steps", str(args.attack_steps), "--sync-bn", str(args.sync_bn).lower()]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return float(json.loads(out.read_text())["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cnn-fmnist")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--steps", type=int, default=3, help="timed steps per launch (after one warm-up step)")
    p.add_argument("--attack-steps", type=int, default=3, help="PGD steps K of the ACL step")
    p.add_argument("--sync-bn", type=lambda s: s.lower() == "true", default=False)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/ddp_scaling_cpu.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    runs: dict[int, list[float]] = {n: [] for n in args.procs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in args.procs:
                runs[n].append(launch(args, n, Path(tmp) / f"r{r}_p{n}.json"))
    base = statistics.median(runs[args.procs[0]])
    rows = []
    for n in args.procs:
        med = statistics.median(runs[n])
        rows.append({"processes": n, "images_per_s": runs[n], "median": med, "min": min(runs[n]), "max": max(runs[n]),
                     "speedup_vs_first": med / base, "efficiency": med / base / (n / args.procs[0])})
        print(f"{n} process(es): {med:8.1f} images/s (min {min(runs[n]):.1f}, max {max(runs[n]):.1f}, n={len(runs[n])}), "
              f"x{med / base:.2f} vs {args.procs[0]}")
    gpu_note = ("measured on CUDA with NCCL" if args.device == "cuda" else
                "GPU scaling not measured: no GPU in this run (CPU gloo numbers only)")
    result = {
        "benchmark": "ddp_scaling", "preset": args.preset, "device": args.device, "steps_timed": args.steps,
        "attack_steps": args.attack_steps, "sync_bn": args.sync_bn, "repeats": args.repeats,
        "global_batch": PRESETS[args.preset]["batch"], "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1 (set by this script)"),
        "rows": rows, "gpu": gpu_note,
        "command": " ".join(["python", "benchmarks/ddp_scaling.py", *sys.argv[1:]]),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(gpu_note)
    for row in rows:
        print(f"RESULT processes={row['processes']} images_per_s={row['median']:.1f} "
              f"speedup={row['speedup_vs_first']:.2f}x efficiency={row['efficiency']:.2f} device={args.device}")


if __name__ == "__main__":
    main()
