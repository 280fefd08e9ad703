#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a fixed time and reports executions and
# crashes; a crash leaves its input in fuzz/artifacts/<target>/. Not run by CI.
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
# cargo-fuzz passes nightly-only flags to rustc: RUSTC_BOOTSTRAP=1 lets the installed stable
# toolchain accept them, for this crate only. No sanitizer (-s none): Rust code is memory-safe
# here (#![forbid(unsafe_code)]); what is hunted is panics, overflows (debug assertions on)
# and runaway allocation.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(xds_decode bootstrap istio_yaml cache_file request_headers trace_headers)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$root/fuzz"
# The same dependency versions as the workspace (cargo adds what only the fuzz crate uses).
cp "$root/Cargo.lock" Cargo.lock
export RUSTC_BOOTSTRAP=1
cargo run --quiet --release --bin seeds
mkdir -p logs
echo "| target | seconds | executions | crashes |"
echo "| --- | ---: | ---: | ---: |"
for t in "${targets[@]}"; do
  count() { { ls "artifacts/$t" 2>/dev/null || true; } | wc -l; }
  before=$(count)
  cargo fuzz run --sanitizer none --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -malloc_limit_mb=2048 -print_final_stats=1 \
    > "logs/$t.log" 2>&1 || true
  execs=$(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}' | tail -1)
  after=$(count)
  echo "| $t | $secs | ${execs:-?} | $((after - before)) |"
done
