#!/usr/bin/env bash
# Instructions per request of the client process (callgrind; the backend runs in a child) with telemetry off, metrics on, and
# metrics and traces on (`STACK_LOAD_TELEMETRY` unset, 1, trace): one stack_load binary, the
# same setup each time. Not run by CI; needs valgrind.
#   benches/telemetry_instructions.sh [output dir]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench stack_load --no-run >/dev/null 2>&1
bin="$(ls -t target/release/deps/stack_load-* | grep -v '\.d$' | head -1)"
out="${1:-$(mktemp -d)}"; mkdir -p "$out"
n=20000
# The backend in its own process, not traced by valgrind: the counts are the client's alone.
export STACK_LOAD_BACKEND=process
for mode in ${MODES:-off 1 trace}; do
  if [ "$mode" = off ]; then
    env -u STACK_LOAD_TELEMETRY STACK_LOAD_ONLY=mesh valgrind --tool=callgrind --callgrind-out-file="$out/$mode.out" "$bin" $n 8 >"$out/$mode.log" 2>&1
  else
    STACK_LOAD_TELEMETRY=$mode STACK_LOAD_ONLY=mesh valgrind --tool=callgrind --callgrind-out-file="$out/$mode.out" "$bin" $n 8 >"$out/$mode.log" 2>&1
  fi
  t=$(grep -E '^(summary|totals):' "$out/$mode.out" | head -1 | awk '{print $2}')
  echo "$mode $t $((t / n))"
done
