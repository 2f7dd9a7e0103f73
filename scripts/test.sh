#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end tests (real server on
# 127.0.0.1:0, real SQLite files) and the real `modelreg` binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --all-targets
