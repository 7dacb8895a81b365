#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the quickstart
# (ACL vs SimCLR on Fashion-MNIST, SLF + PGD-20 + AutoAttack; about 10 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/robustssl quickstart --out runs/quickstart "$@"
