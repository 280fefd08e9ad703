#!/usr/bin/env bash
# Instructions per request added by the mesh stack, counted by callgrind (deterministic for a
# given binary and inputs, unlike CPU time on a shared machine). Runs the stack_load harness
# twice — bare hyper only, then the mesh stack only — with the same setup (control plane, xDS
# client, backend) and divides the difference by the request count. Not run by CI.
#   benches/instructions.sh [requests] [concurrency]
# STACK_LOAD_BIN=path runs that stack_load binary instead of building this tree's (to compare
# against another commit's, built with CARGO_TARGET_DIR elsewhere). BENCH=mtls_load compares
# the mesh stack to a plaintext backend against the same to an mTLS one (paths plain, mtls).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
n="${1:-20000}"; c="${2:-8}"
cd "$root"
bench="${BENCH:-stack_load}"
if [ "$bench" = mtls_load ]; then paths=(plain mtls); else paths=(bare mesh); fi
if [ -n "${STACK_LOAD_BIN:-}" ]; then
  bin="$STACK_LOAD_BIN"
else
  cargo bench --bench "$bench" --no-run 2>/dev/null
  bin="$(ls -t target/release/deps/"$bench"-* | grep -v '\.d$' | head -1)"
fi
out="$(mktemp -d)"
for path in "${paths[@]}"; do
  STACK_LOAD_ONLY=$path valgrind --tool=callgrind --callgrind-out-file="$out/$path.out" "$bin" "$n" "$c" >/dev/null 2>"$out/$path.log"
done
total() { grep -E '^(summary|totals):' "$1" | head -1 | awk '{print $2}'; }
b=$(total "$out/${paths[0]}.out"); m=$(total "$out/${paths[1]}.out")
echo "instructions: ${paths[0]} run $b, ${paths[1]} run $m, $n requests each (same setup in both)"
echo "added by ${paths[1]} over ${paths[0]}: $(( (m - b) / n )) instructions per request"
if [ -n "${KEEP_CALLGRIND:-}" ]; then cp "$out"/*.out "$KEEP_CALLGRIND"/; fi
rm -rf "$out"
