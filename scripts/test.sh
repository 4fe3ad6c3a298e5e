#!/usr/bin/env bash
# Runs every test from nothing: installs the test stack (FerretDB, mongo-tools, SDK venv), builds ddsvault,
# runs the Rust tests, then the black-box suite against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export STACK_DIR="${STACK_DIR:-$repo/.stack}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

step() { printf '\n==> %s\n' "$*"; }

step "test stack (FerretDB, mongo-tools, Python SDKs)"
./scripts/setup-stack.sh

step "cargo build"
cargo build --locked -p ddsvault

step "cargo test"
# The Rust integration tests find FerretDB and mongo-tools through STACK_DIR.
cargo test --locked --workspace

step "black-box tests (real binary, real FerretDB, official SDKs)"
export DDSVAULT_BIN="$CARGO_TARGET_DIR/debug/ddsvault"
cd tests/blackbox
"$STACK_DIR/venv/bin/python" -m pytest -p no:cacheprovider -ra "$@"
