#!/usr/bin/env bash
# Makes sure the notifier's mail test (tests/email.rs) can run: a Python
# virtual environment at tests/smtp/.venv with the pinned packages of
# tests/smtp/requirements.txt (aiosmtpd, the SMTP server the test starts),
# by scripts/venv.sh.
#
# Safe to repeat. Diagnostics go to stderr; the exit status is non-zero when
# the environment cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/venv.sh tests/smtp/.venv tests/smtp/requirements.txt
tests/smtp/.venv/bin/python -c 'import aiosmtpd' ||
    { echo "smtp.sh: aiosmtpd is not importable from tests/smtp/.venv" >&2; exit 1; }
