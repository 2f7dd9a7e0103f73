#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end conformance suite on SQLite
# and on PostgreSQL (real server on 127.0.0.1:0, real databases), the
# multi-replica tests and the real `modelreg` binary; then the polyglot checks
# (buf lint and format, the generated Python client against the real server
# binary, and the README's grpcurl commands), whose tools scripts/polyglot.sh
# installs on first use.
#
# PostgreSQL is started (and installed, as root) by scripts/postgres.sh unless
# MODELREG_TEST_POSTGRES_URL already names a server. Without it the
# PostgreSQL half is skipped with a notice, or fails when
# MODELREG_REQUIRE_POSTGRES=1 (as in CI).
#
# The dashboard's browser test needs Debian's Chromium and playwright-core,
# which scripts/browser.sh installs (as root) on first use. Without them that
# test is skipped with a notice, or fails when MODELREG_REQUIRE_BROWSER=1
# (as in CI).
#
# The notifier's mail test needs aiosmtpd in tests/smtp/.venv, which
# scripts/smtp.sh installs on first use; without it that test is skipped
# with a notice, or fails when MODELREG_REQUIRE_SMTP=1 (as in CI).
#
# The MLflow compatibility tests (tests/mlflow: the real MLflow client
# against the facade, a real `mlflow server` for the importer) need MLflow in
# tests/mlflow/.venv, which scripts/mlflow.sh installs on first use; without
# it they are skipped with a notice, or fail when MODELREG_REQUIRE_MLFLOW=1
# (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MODELREG_TEST_POSTGRES_URL:-}" ]; then
    if url=$(bash scripts/postgres.sh) && [[ "$url" == postgres://* ]]; then
        export MODELREG_TEST_POSTGRES_URL="$url"
    elif [ "${MODELREG_REQUIRE_POSTGRES:-0}" = 1 ]; then
        echo "test.sh: PostgreSQL is required but could not be started" >&2
        exit 1
    else
        echo "test.sh: WARNING: PostgreSQL could not be started; its half of the suite will be SKIPPED" >&2
    fi
fi

# Runs the installer SCRIPT of an optional part; when it fails, the part is
# skipped with a warning, or the suite stops when REQUIRED is 1.
optional() {
    local script="$1" required="$2" what="$3" tools="$4"
    bash "$script" && return 0
    if [ "$required" = 1 ]; then
        echo "test.sh: $what is required but $tools could not be installed" >&2
        exit 1
    fi
    echo "test.sh: WARNING: $tools could not be installed; $what will be SKIPPED" >&2
    return 1
}
optional scripts/browser.sh "${MODELREG_REQUIRE_BROWSER:-0}" "the browser test" "Chromium or playwright-core" || true
optional scripts/smtp.sh "${MODELREG_REQUIRE_SMTP:-0}" "the mail test" "aiosmtpd" || true
mlflow=0
optional scripts/mlflow.sh "${MODELREG_REQUIRE_MLFLOW:-0}" "the MLflow tests" "MLflow" && mlflow=1

# The end-to-end tests run the real binaries (modelreg-server, modelreg);
# `cargo test` builds bins of other packages only as test harnesses.
cargo build --workspace --bins
cargo test --workspace --all-targets
if [ "$mlflow" = 1 ]; then
    echo "==> MLflow compatibility (tests/mlflow)"
    tests/mlflow/.venv/bin/pytest -q -ra -p no:cacheprovider tests/mlflow
fi
bash scripts/polyglot.sh
