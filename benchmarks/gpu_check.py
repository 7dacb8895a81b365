"""The GPU check (issue #22): every bundled recipe, run short on one device, in about ten minutes on
one H200 (published models at cut sizes). A thin wrapper over `robustssl doctor` (robustssl/doctor.py
holds the checks); the arguments are the doctor's, the runs and doctor.json go to
benchmarks/runs/gpu_check unless --out is given.

    python benchmarks/gpu_check.py                          # on the GPU when one is visible
    python benchmarks/gpu_check.py --device cpu --tiny      # the CPU test's sizes (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --checks pretrain,resume,export --recipes acl_cifar10

One line per check (PASS/FAIL, seconds, detail or error), then
`RESULT checks=<n> passed=<k> device=<name>`; the exit code is 1 when a check failed.
"""
from __future__ import annotations

import sys
from pathlib import Path

from robustssl.cli import main

OUT = Path(__file__).resolve().parent / "runs" / "gpu_check"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(OUT)]
    sys.exit(main(["doctor", *args]))
