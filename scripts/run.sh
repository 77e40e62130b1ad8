#!/usr/bin/env bash
# Installs what is missing, builds apptheus, and runs it with its defaults
# (any arguments are passed on to apptheus). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --locked --package apptheus
exec target/release/apptheus "$@"
