#!/usr/bin/env bash
# The interop suite against the real istiod, and the same scenarios through `mesh control-plane`,
# from scripts/istiod/config/: for each server and protocol (SotW, Delta), the configuration
# mesh resolves (config-dump) and 2,000 requests through the stack to four backends on
# 127.0.0.11-13 (version-1) and 127.0.0.21 (version-2-beta), with and without the `version: beta` header.
# Results: docs/INTEROP-ISTIOD.md. Not run by CI.
#   scripts/istiod/interop.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
config="$root/scripts/istiod/config"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh
mesh="$root/target/debug/mesh"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for a in 127.0.0.11:18081 127.0.0.12:18082 127.0.0.13:18083 127.0.0.21:18091; do
  python3 -m http.server --bind "${a%:*}" "${a#*:}" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 1
scenario() { # $1 server label, $2 protocol; MESH_BOOTSTRAP set
  echo "## $1, $2"
  "$mesh" config-dump --bootstrap "$MESH_BOOTSTRAP" --target ui.default.svc.cluster.local:9080 \
    --xds-protocol "$2" --timeout 20 | sed -n '/^configuration:/,/^xDS/p'
  echo "- 2,000 requests, no header:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 2000 -c 8 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'
  echo "- 200 requests with version: beta:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 200 -c 4 -H 'version: beta' --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'
}
export -f scenario
export mesh
for p in sotw delta; do
  "$root/scripts/istiod/run.sh" "$config" -- bash -c "scenario 'istiod' $p"
done
# The local control plane, same YAML, same client node.
"$mesh" control-plane --config "$config" --listen 127.0.0.1:15910 >/dev/null 2>&1 &
pids+=($!)
sleep 2
export MESH_BOOTSTRAP
MESH_BOOTSTRAP="$(mktemp)"
cat > "$MESH_BOOTSTRAP" <<'BOOT'
{"xds_servers": [{"server_uri": "127.0.0.1:15910", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.2~client.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes"}}}
BOOT
for p in sotw delta; do scenario "mesh control-plane" "$p"; done
