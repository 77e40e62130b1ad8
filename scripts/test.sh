#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# As root on a Debian/Ubuntu machine: installs what is missing, then runs
# formatting and lint checks, the eBPF build check, and every test, the
# privileged ones included. As root, a privileged test that would skip
# (no BTF, no cgroup, ...) fails instead: set APPTHEUS_REQUIRE_PRIVILEGED=0
# to allow skips.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if [ "$(id -u)" -eq 0 ]; then
  export APPTHEUS_REQUIRE_PRIVILEGED="${APPTHEUS_REQUIRE_PRIVILEGED:-1}"
fi

step() { printf '\n==> %s\n' "$*" >&2; }

# CI builds once: incremental caches would only take disk space.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
# The daemon as shipped: built without the tests' feature (code only the
# tests reach would otherwise go unnoticed).
cargo clippy --package apptheus --locked -- -D warnings
step "cargo clippy -D warnings (kernel programs)"
RUSTC_BOOTSTRAP=1 CARGO_ENCODED_RUSTFLAGS='--cfg=bpf_target_arch="x86_64"' \
  cargo clippy --locked --package apptheus-ebpf --target bpfel-unknown-none -Z build-std=core -- -D warnings
step "cargo xtask build-ebpf (object with BTF)"
cargo xtask build-ebpf
step "cargo test"
cargo test --locked --no-fail-fast
step "fuzz every parser of outside input (scripts/fuzz.sh, 10 s per target)"
scripts/fuzz.sh 10
# The fuzz build (about 1 GiB) is not needed again: keep the disk peak.
rm -rf "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu"
step "cargo xtask bench --smoke (every benchmark, tiny sizes)"
cargo xtask bench --smoke
step "cargo xtask vm-test --quick (privileged tests in VMs: Linux 5.10 x v1, hybrid, v2; 6.1 x v2; the systemd node on 6.12)"
cargo xtask vm-test --quick --jobs 2
