#!/usr/bin/env bash
# Starts the real istiod (pilot-discovery, built by install.sh) on 127.0.0.1 without Kubernetes,
# taking its config from a directory of Istio YAML, waits until it serves xDS, runs a command
# against it, then stops it. Not run by CI.
#   scripts/istiod/run.sh [config dir, default examples/config] [-- command ...]
# The command sees ISTIOD_XDS (127.0.0.1:15010, plaintext), MESH_BOOTSTRAP (a gRPC bootstrap
# for a client in namespace default), ISTIOD_LOG and ISTIOD_CONFIG (the directory istiod watches:
# edit it to push). Without one, `mesh config-dump` prints what istiod sends.
# With ISTIOD_CA_DIR (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem: see
# scripts/lib/certs.sh) that CA is plugged into ./etc/cacerts and istiod also serves TLS on
# localhost:15012 (ISTIOD_CUSTOM_HOST=localhost puts `localhost` in its serving certificate).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
config="${1:-$root/examples/config}"; shift || true
[ "${1:-}" = "--" ] && shift
bin="$("$root/scripts/istiod/install.sh")"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/config" "$work/etc/istio/config"
cp -r "$config"/. "$work/config/"
cat > "$work/etc/istio/config/mesh" <<'MESH'
trustDomain: cluster.local
rootNamespace: istio-system
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
MESH
cat > "$work/bootstrap.json" <<'BOOT'
{"xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.2~client.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes"}}}
BOOT
cd "$work"
secure=(--secureGRPCAddr=); ca_env=(ENABLE_CA_SERVER=false)
wait_port=15010
if [ -n "${ISTIOD_CA_DIR:-}" ]; then
  mkdir -p "$work/etc/cacerts"
  cp "$ISTIOD_CA_DIR"/{ca-cert.pem,ca-key.pem,root-cert.pem,cert-chain.pem} "$work/etc/cacerts/"
  secure=(--secureGRPCAddr=127.0.0.1:15012); ca_env=(ENABLE_CA_SERVER=true ISTIOD_CUSTOM_HOST=localhost)
  wait_port=15012
fi
env "${ca_env[@]}" POD_NAMESPACE=istio-system "$bin" discovery \
  --registries= --configDir="$work/config" --meshConfig="$work/etc/istio/config/mesh" \
  --domain=cluster.local --grpcAddr=127.0.0.1:15010 "${secure[@]}" \
  --httpAddr=127.0.0.1:8080 --monitoringAddr=127.0.0.1:15014 > "$work/istiod.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  if (exec 3<>/dev/tcp/127.0.0.1/15010) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$wait_port) 2>/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "istiod exited:" >&2; tail -40 "$work/istiod.log" >&2; exit 1; fi
  sleep 0.5
done
echo "istiod serving on 127.0.0.1:15010 (log: $work/istiod.log)" >&2
export ISTIOD_XDS=127.0.0.1:15010 MESH_BOOTSTRAP="$work/bootstrap.json" ISTIOD_LOG="$work/istiod.log"
export ISTIOD_CONFIG="$work/config"
if [ $# -gt 0 ]; then
  "$@"
else
  cargo run --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh -- \
    config-dump --bootstrap "$MESH_BOOTSTRAP" --target ui.default.svc.cluster.local:9080 --timeout 20
fi
