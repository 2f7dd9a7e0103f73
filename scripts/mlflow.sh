#!/usr/bin/env bash
# Makes sure the MLflow compatibility tests (tests/mlflow) can run: a Python
# virtual environment at tests/mlflow/.venv with the pinned packages of
# tests/mlflow/requirements.txt (the real MLflow client and server, pytest),
# by scripts/venv.sh.
#
# Safe to repeat. Diagnostics go to stderr; the exit status is non-zero when
# the environment cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/venv.sh tests/mlflow/.venv tests/mlflow/requirements.txt
tests/mlflow/.venv/bin/python -c 'import mlflow, pytest' ||
    { echo "mlflow.sh: mlflow or pytest is not importable from tests/mlflow/.venv" >&2; exit 1; }
[ -x tests/mlflow/.venv/bin/mlflow ] || { echo "mlflow.sh: tests/mlflow/.venv/bin/mlflow is missing" >&2; exit 1; }
