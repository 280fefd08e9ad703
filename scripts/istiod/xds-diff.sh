#!/usr/bin/env bash
# The resource-level diff: for the same YAML (scripts/istiod/config) and the same client node,
# what istiod sends and what `mesh control-plane` sends, each resource decoded whole (nested
# Anys too) by `mesh config-dump --raw`, map entries sorted. Not run by CI.
#   scripts/istiod/xds-diff.sh [target host:port, default ui.default.svc.cluster.local:9080]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${1:-ui.default.svc.cluster.local:9080}"
cargo build --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh
mesh="$root/target/debug/mesh"
out="${XDS_DIFF_OUT:-$root/target/xds-diff}"
mkdir -p "$out"
export mesh target out
"$root/scripts/istiod/run.sh" "$root/scripts/istiod/config" -- bash -c \
  '"$mesh" config-dump --raw --bootstrap "$MESH_BOOTSTRAP" --target "$target" --timeout 20 > "$out/istiod.txt"'
local_config="$(mktemp -d)"
cp "$root"/scripts/istiod/config/*.yaml "$local_config/"
"$mesh" control-plane --config "$local_config" --listen 127.0.0.1:15911 >/dev/null 2>&1 &
cp_pid=$!
trap 'kill $cp_pid 2>/dev/null || true' EXIT
sleep 1
boot="$(mktemp)"
cat > "$boot" <<'BOOT'
{"xds_servers": [{"server_uri": "127.0.0.1:15911", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.2~client.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes"}}}
BOOT
"$mesh" config-dump --raw --bootstrap "$boot" --target "$target" --timeout 20 > "$out/local.txt"
for f in istiod local; do python3 "$root/scripts/istiod/normalize.py" < "$out/$f.txt" > "$out/$f.normalized.txt"; done
echo "resources: istiod $(grep -c '^=== ' "$out/istiod.txt"), mesh control-plane $(grep -c '^=== ' "$out/local.txt")"
diff -u "$out/istiod.normalized.txt" "$out/local.normalized.txt" > "$out/diff.txt" || true
echo "diff: $(grep -c '^[-+][^-+]' "$out/diff.txt" || true) changed lines; $out/diff.txt"
