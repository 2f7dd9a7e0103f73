#!/usr/bin/env bash
# Usage: bash scripts/venv.sh VENV REQUIREMENTS
#
# Makes sure the Python virtual environment VENV holds the pinned packages of
# the file REQUIREMENTS: the test environments of scripts/smtp.sh and
# scripts/mlflow.sh. Without python3's venv module, and as root, Debian's
# python3-venv is installed.
#
# Safe to repeat: with the environment in place and the list unchanged it
# does nothing. Diagnostics go to stderr; the exit status is non-zero when
# the environment cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$1"
REQUIREMENTS="$2"
PYTHON="${PYTHON:-python3}"
log() { echo "venv.sh: $*" >&2; }

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            log "$PYTHON cannot make a virtual environment and this is not root: cannot install python3-venv"
            exit 1
        fi
        log "installing python3-venv from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq python3 python3-venv >/dev/null
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
fi
# Reinstall only when the pinned list changed since the last successful install.
want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    log "installing $(grep -v '^#' "$REQUIREMENTS" | paste -sd' ') into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
    echo "$want" >"$VENV/.requirements.sha256"
fi
