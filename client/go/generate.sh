#!/usr/bin/env bash
# Generates the Go messages and gRPC stubs of modelreg.v1 from ../../proto into
# modelregv1/ (package modelregv1, import path modelreg/client/modelregv1).
# Never committed: run this after every change to proto/.
#
# Needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH (Debian:
# protobuf-compiler protoc-gen-go protoc-gen-go-grpc). The protos name no
# go_package: the M options below map each file to this module's package.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROTO="${1:-$HERE/../../proto}"
MODULE=modelreg/client
PKG="$MODULE/modelregv1"

opts="module=$MODULE"
for file in "$PROTO"/modelreg/v1/*.proto; do
  opts="$opts,M${file#"$PROTO"/}=$PKG;modelregv1"
done

# Start from an empty folder so a removed .proto leaves no stale file.
rm -rf "$HERE/modelregv1"
mkdir -p "$HERE/modelregv1"
(cd "$PROTO" && protoc -I . \
  --go_out="$HERE" --go_opt="$opts" \
  --go-grpc_out="$HERE" --go-grpc_opt="$opts" \
  modelreg/v1/*.proto)
echo "generate.sh: $(ls "$HERE/modelregv1" | wc -l) files in modelregv1/ ($(protoc --version), $(protoc-gen-go --version), $(protoc-gen-go-grpc --version))"
