#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer, coverage-guided)
# for a while, starting from the checked-in seeds (fuzz/seeds/<target>/).
#
#   scripts/fuzz.sh [--dev] [SECONDS_PER_TARGET] [TARGET...]
#
# An optimized build with debug assertions (overflow checks) by default;
# --dev builds without optimization (it runs ten times slower, and on this
# project's 2-core machines did not build faster). CI (scripts/test.sh)
# runs `scripts/fuzz.sh 10`, 10 s per target. For a real search run it
# longer, e.g. ten minutes per target:
#
#   scripts/fuzz.sh 600
#
# Needs cargo-fuzz (`scripts/setup.sh --test` installs it). Inputs that
# reached new code are kept in target/fuzz/corpus/<target>/ and reused by
# the next run. A crash stops the script with the input in
# target/fuzz/artifacts/<target>/: fix the bug, then copy the input into
# fuzz/regressions/<target>/, where `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

profile="--release --debug-assertions"
if [ "${1:-}" = --dev ]; then
  profile=--dev
  shift
fi
seconds="${1:-10}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^apptheus-fuzz$')
fi

# cargo-fuzz passes -Z flags: the pinned stable toolchain allows them with
# RUSTC_BOOTSTRAP. No sanitizer: the parsers have no unsafe code, and
# Rust's own checks (bounds, overflow) are what a crash is. The kernel
# programs are not built (fuzzing never loads them).
export RUSTC_BOOTSTRAP=1 APPTHEUS_FUZZ_NO_EBPF=1
target_dir="${CARGO_TARGET_DIR:-target}"
# shellcheck disable=SC2086
cargo fuzz build $profile --sanitizer none

for t in "${targets[@]}"; do
  corpus="$target_dir/fuzz/corpus/$t"
  artifacts="$target_dir/fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  printf '==> fuzz %s for %s s\n' "$t" "$seconds" >&2
  # shellcheck disable=SC2086
  if ! cargo fuzz run $profile --sanitizer none "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 2>"$target_dir/fuzz/$t.log"; then
    tail -n 40 "$target_dir/fuzz/$t.log" >&2
    printf 'fuzz: %s crashed; the input is in %s/ (replay: cargo fuzz run %s %s/<file>)\n' \
      "$t" "$artifacts" "$t" "$artifacts" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$target_dir/fuzz/$t.log" \
    | tr '\n' ' ' >&2 || true
  printf '\n' >&2
done
printf 'fuzz: %s targets ran %s s each without a crash\n' "${#targets[@]}" "$seconds" >&2
