#!/usr/bin/env bash
# Makes sure the dashboard's browser test (tests/dashboard.rs, which runs
# tests/browser/dashboard.mjs) can run:
#
# - Debian's Chromium at /usr/bin/chromium; without it, and as root, it is
#   installed from Debian's packages (`apt-get update` only when the install
#   fails without it).
# - playwright-core, at the version pinned in tests/browser/package-lock.json,
#   by `npm ci` when tests/browser/node_modules/playwright-core is missing.
#   Install scripts are skipped and Playwright is told not to fetch browsers:
#   the test only ever drives the Debian Chromium.
#
# Safe to repeat: with both present it does nothing. Diagnostics go to stderr;
# the exit status is non-zero when either cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM=/usr/bin/chromium
BROWSER_DIR=tests/browser
log() { echo "browser.sh: $*" >&2; }

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        log "$CHROMIUM is missing and this is not root: cannot install Debian's chromium"
        exit 1
    fi
    log "installing chromium from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq chromium >/dev/null 2>&1; then
        log "the install failed; refreshing the package lists and trying again"
        apt-get update -qq >&2
        apt-get install -y -qq chromium >/dev/null
    fi
    if [ ! -x "$CHROMIUM" ]; then
        log "chromium is installed but $CHROMIUM is not there"
        exit 1
    fi
fi

if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    if ! command -v npm >/dev/null; then
        log "npm is missing: install Node.js 20 or later (with npm) to run the browser test"
        exit 1
    fi
    log "installing playwright-core (npm ci in $BROWSER_DIR)"
    (
        cd "$BROWSER_DIR"
        PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund >&2
    )
    if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
        log "npm ci finished but $BROWSER_DIR/node_modules/playwright-core is missing"
        exit 1
    fi
fi
