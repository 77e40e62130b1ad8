#!/usr/bin/env bash
# Installs what building and testing apptheus needs, and nothing that is
# already there. Idempotent: a second run on a prepared machine takes seconds.
#
#   scripts/setup.sh            build + run requirements
#   scripts/setup.sh --test     also what the test suite starts for real
#                               (Prometheus, Pushgateway, crun, runc, stress-ng,
#                               Slurm and munge, the real Apptainer in a cached
#                               Debian root, a test user, cAdvisor for the
#                               benchmark), cargo-fuzz (scripts/fuzz.sh) and
#                               what --package installs
#   scripts/setup.sh --package  also what `cargo xtask package` and its test
#                               need (cargo-deb, dpkg-dev, debootstrap,
#                               systemd-nspawn)
#
# Facts behind the pins are in docs/architecture.md ("Building from source").
set -euo pipefail

TOOLCHAIN=1.98.0
BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
CARGO_DEB_VERSION=3.8.0
CARGO_FUZZ_VERSION=0.13.2

want_test=0
want_package=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; want_package=1 ;;
    --package) want_package=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test or --package)" >&2; exit 2 ;;
  esac
done

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs Debian packages); try: sudo $0 $*"
  exit 1
fi

# --- Disk space --------------------------------------------------------------
# Measured from a fresh clone (docs/architecture.md, "Disk space"): target/ peaks at
# about 3.1 GiB over the whole test suite (builds, VM kernels and images),
# the release build alone under 1 GiB; the fuzz step's build (scripts/fuzz.sh)
# adds about 1.1 GiB while it runs; the figures below add a margin.
# What an earlier run left in target/ counts towards them.
BUILD_DISK_GB=2
TEST_DISK_GB=5
repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
need_gb=$BUILD_DISK_GB
[ "$want_test" = 1 ] && need_gb=$TEST_DISK_GB
probe="$target_dir"
while [ ! -e "$probe" ]; do probe=$(dirname "$probe"); done
avail_kb=$(df -Pk "$probe" | awk 'NR == 2 { print $4 }')
have_kb=0
[ -d "$target_dir" ] && have_kb=$(du -sk "$target_dir" 2>/dev/null | awk '{ print $1 }')
need_kb=$(( need_gb * 1024 * 1024 - have_kb ))
if [ "$need_kb" -gt 0 ] && [ "$avail_kb" -lt "$need_kb" ]; then
  log "not enough free disk space: $(( avail_kb / 1024 )) MiB free on the file system of $probe,"
  log "about $(( need_kb / 1024 )) MiB more is needed (${need_gb} GiB in all for target/)."
  log "free some space there, or point CARGO_TARGET_DIR at a larger file system"
  exit 1
fi

# --- Debian packages ---------------------------------------------------------
packages=(
  "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" libzstd-dev zlib1g-dev
  gcc libc6-dev pkg-config ca-certificates
)
if [ "$want_test" = 1 ]; then
  packages+=(prometheus prometheus-pushgateway crun runc stress-ng util-linux procps iproute2 python3
    qemu-system-x86 g++ slurmd slurmctld slurm-client munge debian-archive-keyring
    zstd)
fi
if [ "$want_package" = 1 ]; then
  packages+=(dpkg-dev debootstrap systemd-container)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Do not let package scripts start services (prometheus, pushgateway,
  # munge, slurm): the tests start their own instances on free ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
fi

# --- Rust toolchain ----------------------------------------------------------
if ! command -v rustup >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/rustup" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v rustup >/dev/null 2>&1; then
  log "rustup is not installed; install it (https://rustup.rs) and run this again"
  exit 1
fi
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src' \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^clippy' \
   || ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rustfmt'; then
  log "installing Rust $TOOLCHAIN with rust-src, clippy, rustfmt"
  rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt
fi

# --- bpf-linker, built against Debian's LLVM ---------------------------------
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
have_linker=""
if [ -x "$cargo_bin/bpf-linker" ]; then
  have_linker=$("$cargo_bin/bpf-linker" --version 2>/dev/null | awk '{print $2}')
fi
if [ "$have_linker" != "$BPF_LINKER_VERSION" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR (about a minute)"
  LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" \
    cargo "+$TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked \
      --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

# --- cargo-deb (cargo xtask package) -----------------------------------------
if [ "$want_package" = 1 ]; then
  have_deb=""
  if [ -x "$cargo_bin/cargo-deb" ]; then
    have_deb=$("$cargo_bin/cargo-deb" --version 2>/dev/null | awk '{print $2}')
  fi
  if [ "$have_deb" != "$CARGO_DEB_VERSION" ]; then
    log "installing cargo-deb $CARGO_DEB_VERSION (about two minutes)"
    cargo "+$TOOLCHAIN" install "cargo-deb@$CARGO_DEB_VERSION" --locked
  fi
fi

# --- cargo-fuzz (scripts/fuzz.sh; libFuzzer is C++, hence g++) ------------
if [ "$want_test" = 1 ]; then
  have_fuzz=""
  if [ -x "$cargo_bin/cargo-fuzz" ]; then
    have_fuzz=$("$cargo_bin/cargo-fuzz" --version 2>/dev/null | awk '{print $2}')
  fi
  if [ "$have_fuzz" != "$CARGO_FUZZ_VERSION" ]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about two minutes)"
    cargo "+$TOOLCHAIN" install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked
  fi
fi

# --- Test user and the real Apptainer (--test) --------------------------------
# Tests run Apptainer as an ordinary user too: TEST_USER, with uid = gid
# TEST_UID or the next free one above it (the tests look it up by name).
TEST_USER=apptheus-test
TEST_UID=1500
if [ "$want_test" = 1 ]; then
  if ! getent passwd "$TEST_USER" >/dev/null; then
    uid=$TEST_UID
    while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do
      uid=$((uid + 1))
    done
    log "creating the test user $TEST_USER (uid and gid $uid, no home on this host)"
    getent group "$TEST_USER" >/dev/null || groupadd --gid "$uid" "$TEST_USER"
    useradd --uid "$uid" --gid "$TEST_USER" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "apptheus tests" "$TEST_USER"
  fi
  "$repo/scripts/apptainer-root.sh" "$TEST_USER"
fi

# --- cAdvisor, the peer `cargo xtask bench` runs beside the agent (--test) ---
if [ "$want_test" = 1 ]; then
  "$repo/scripts/cadvisor.sh" >/dev/null
fi

log "ready: Rust $TOOLCHAIN, bpf-linker $BPF_LINKER_VERSION (LLVM $LLVM_MAJOR)"
