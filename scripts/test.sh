#!/usr/bin/env bash
# One command on a fresh machine: install everything, lint, then run the test suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
