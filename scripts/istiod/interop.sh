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
# flaky: 503 to every other request; slow: answers after a second.
python3 - <<'PY' >/dev/null 2>&1 &
import http.server, threading, time, itertools
count = itertools.count()
class Flaky(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if next(count) % 2 == 0 else 200
        self.send_response(code); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
class Slow(Flaky):
    def do_GET(self):
        time.sleep(1)
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
for addr, h in [(("127.0.0.41", 18201), Flaky), (("127.0.0.42", 18202), Slow)]:
    threading.Thread(target=http.server.ThreadingHTTPServer(addr, h).serve_forever, daemon=True).start()
threading.Event().wait()
PY
pids+=($!)
sleep 1
scenario() { # $1 server label, $2 protocol; MESH_BOOTSTRAP set
  echo "## $1, $2"
  "$mesh" config-dump --bootstrap "$MESH_BOOTSTRAP" --target ui.default.svc.cluster.local:9080 \
    --xds-protocol "$2" --timeout 20 | sed -n '/^configuration:/,/^xDS/p'
  echo "- 2,000 requests, no header:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 2000 -c 8 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'
  echo "- flaky (503 to every other request; 2 retries on 5xx), 200 requests:"
  "$mesh" request http://flaky.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 200 -c 1 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "attempts", d["attempts"])'
  echo "- slow (answers after 1 s; route timeout 200 ms), 10 requests:"
  "$mesh" request http://slow.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 10 -c 10 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "errors", d["errors"])'
  echo "- 200 requests with version: beta:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    --xds-protocol "$2" -n 200 -c 4 -H 'version: beta' --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'
}
nack_and_cache() {
  echo "## istiod: a NACK, and a cold start from the cache with istiod stopped"
  "$mesh" config-dump --bootstrap "$MESH_BOOTSTRAP" --target ring.default.svc.cluster.local:9090 \
    --timeout 4 2>&1 | grep -E 'CDS .*NACKED' || true
  echo "- istiod's /debug/syncz while a client stays connected (its requests get 503 NC):"
  "$mesh" request http://ring.default.svc.cluster.local:9090/ --bootstrap "$MESH_BOOTSTRAP" \
    -n 1000000 -c 1 --json >/dev/null 2>&1 &
  local client=$!
  sleep 3
  curl -s 127.0.0.1:8080/debug/syncz | python3 -c 'import json,sys; [print("  cluster_sent", c.get("cluster_sent"), "cluster_acked", c.get("cluster_acked")) for c in json.load(sys.stdin)]'
  kill "$client"; wait "$client" 2>/dev/null || true
  echo "- istiod's log:"
  for _ in 1 2 3 4 5 6; do grep -q 'ACK ERROR' "$ISTIOD_LOG" && break; sleep 0.5; done
  grep -o 'ADS:CDS: ACK ERROR .*' "$ISTIOD_LOG" | head -1 | sed 's/^/  /'
  "$mesh" config-dump --bootstrap "$MESH_BOOTSTRAP" --target ui.default.svc.cluster.local:9080 \
    --cache-dir "$cache" --timeout 20 >/dev/null
}
split() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'; }
live_edits() {
  echo "## ${1:-istiod}: live edits of the YAML"
  routes="$ISTIOD_CONFIG/ui-routes.yaml"
  # A client connected through the edit: 30,000 requests, the weights shifted to 0/100 a
  # second in. Its version-1 share is 90% of what went before the push, none after.
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" \
    -n 30000 -c 2 --json > "$ISTIOD_CONFIG/../during.json" &
  local during=$!
  sleep 1
  sed -i 's/weight: 90/weight: 0/; s/weight: 10/weight: 100/' "$routes"
  wait "$during"
  echo "- a connected client, weights 90/10 shifted to 0/100 during 30,000 requests:"
  split < "$ISTIOD_CONFIG/../during.json"
  python3 - "$routes" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
abort = "    fault:\n      abort: {httpStatus: 418, percentage: {value: 50}}\n"
s = s.replace("  - name: canary\n", "  - name: canary\n" + abort, 1)
open(p, "w").write(s)
PY
  sleep 2
  echo "- then a 50% abort with 418 on the canary route, 1,000 requests from a new client:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" -n 1000 -c 4 --json | split
  sed -i 's/      abort: {httpStatus: 418, percentage: {value: 50}}/      delay: {fixedDelay: 0.3s, percentage: {value: 100}}/' "$routes"
  sleep 2
  echo "- then a 300 ms delay on every canary request instead, 20 requests from a new client:"
  "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$MESH_BOOTSTRAP" -n 20 -c 4 --json \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "latency p50", d["latency_us"]["p50"] // 1000, "ms")'
}
export -f scenario nack_and_cache live_edits split
export mesh cache
cache="$(mktemp -d)"
for p in sotw delta; do
  "$root/scripts/istiod/run.sh" "$config" -- bash -c "scenario 'istiod' $p"
done
"$root/scripts/istiod/run.sh" "$config" -- bash -c live_edits
# A ring larger than xDS allows (9,000,000 points): mesh NACKs the cluster, istiod logs it.
nack="$(mktemp -d)"
cp "$config"/*.yaml "$nack/"
cat > "$nack/ring.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ring, namespace: default}
spec:
  hosts: [ring.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9090, name: http, protocol: HTTP}]
  endpoints:
  - address: 127.0.0.31
    ports: {http: 18101}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ring, namespace: default}
spec:
  host: ring.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user
        ringHash: {minimumRingSize: 9000000}
YAML
"$root/scripts/istiod/run.sh" "$nack" -- bash -c nack_and_cache
echo "- istiod stopped; a new client with the cache directory:"
offline="$(mktemp)"
cat > "$offline" <<'BOOT'
{"xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}]}],
 "node": {"id": "sidecar~127.0.0.2~client.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes"}}}
BOOT
"$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$offline" --cache-dir "$cache" \
  -n 200 -c 4 --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "clusters", d["clusters"])'
# mTLS: a test CA plugged into istiod (which then also serves TLS on 15012), workload
# certificates minted with it and handed to mesh through `file_watcher`, ISTIO_MUTUAL clusters
# to mTLS backends on 127.0.0.51 (identity sa/secure) and 127.0.0.52 (presenting sa/intruder
# where sa/secure is expected).
mt="$(mktemp -d)"
. "$root/scripts/lib/certs.sh"
td=spiffe://cluster.local/ns
mesh_ca "$mt/ca" mesh-interop-ca
mesh_leaf "$mt/secure" "$td/default/sa/secure" "$mt/ca"
mesh_leaf "$mt/intruder" "$td/default/sa/intruder" "$mt/ca"
mesh_leaf "$mt/client" "$td/default/sa/client" "$mt/ca"
mesh_leaf "$mt/elsewhere" "$td/other/sa/client" "$mt/ca"
python3 "$root/scripts/lib/mtls_backend.py" 127.0.0.51 18301 "$mt/secure" "$mt/ca/root-cert.pem" secure >/dev/null 2>&1 &
pids+=($!)
python3 "$root/scripts/lib/mtls_backend.py" 127.0.0.52 18302 "$mt/intruder" "$mt/ca/root-cert.pem" intruder >/dev/null 2>&1 &
pids+=($!)
mkdir "$mt/config"
cp "$config"/*.yaml "$mt/config/"
for svc in "secure 127.0.0.51 18301" "secure-wrong 127.0.0.52 18302"; do
  set -- $svc
  cat >> "$mt/config/mtls.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: $1, namespace: default}
spec:
  hosts: [$1.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: $2, ports: {http: $3}, serviceAccount: secure}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: $1, namespace: default}
spec:
  host: $1.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
YAML
done
tls_creds="{\"type\": \"tls\", \"config\": {\"ca_certificate_file\": \"$mt/ca/root-cert.pem\"}}"
mesh_bootstrap "$mt/plain.json" 127.0.0.1:15010 '{"type": "insecure"}' client "$mt/client"
mesh_bootstrap "$mt/secure.json" localhost:15012 "$tls_creds" client "$mt/client"
mesh_bootstrap "$mt/elsewhere.json" localhost:15012 "$tls_creds" client "$mt/elsewhere"
mesh_bootstrap "$mt/anonymous.json" localhost:15012 "$tls_creds" client
mesh_bootstrap "$mt/local.json" 127.0.0.1:15910 '{"type": "insecure"}' client "$mt/client"
# `mesh serve` as the workload `served` on 127.0.0.61:18401 (istiod finds a proxy's inbound
# listener by the IP of its node id and the endpoint's port, and selects policies by the
# node's LABELS): STRICT, and an ALLOW policy for sa/client.
mesh_leaf "$mt/served" "$td/default/sa/served" "$mt/ca"
cat >> "$mt/config/mtls.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: served, namespace: default}
spec:
  hosts: [served.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.61, ports: {http: 18401}, serviceAccount: served, labels: {app: served}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: served, namespace: default}
spec:
  host: served.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: served, namespace: default}
spec:
  selector: {matchLabels: {app: served}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: served-clients, namespace: default}
spec:
  selector: {matchLabels: {app: served}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
---
YAML
served_boot() { # $1 file, $2 xDS server
  cat > "$1" <<BOOT
{"xds_servers": [{"server_uri": "$2", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.61~served-0.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "127.0.0.61",
                       "WORKLOAD_NAME": "served", "LABELS": {"app": "served"}}},
 "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"certificate_file": "$mt/served/cert-chain.pem", "private_key_file": "$mt/served/key.pem", "ca_certificate_file": "$mt/served/root-cert.pem", "refresh_interval": "900s"}}},
 "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"}
BOOT
}
served_boot "$mt/served-istiod.json" 127.0.0.1:15010
served_boot "$mt/served-local.json" 127.0.0.1:15910
mesh_bootstrap "$mt/intruder-client.json" 127.0.0.1:15010 '{"type": "insecure"}' client "$mt/intruder"
mesh_bootstrap "$mt/intruder-local.json" 127.0.0.1:15910 '{"type": "insecure"}' client "$mt/intruder"
serve_check() { # $1 label, $2 server bootstrap, $3 client bootstrap, $4 intruder bootstrap
  echo "## $1: mesh serve with its inbound listener (STRICT, ALLOW sa/client)"
  "$mesh" serve --bootstrap "$2" --listen 127.0.0.61:18401 > "$mt/serve.log" 2>&1 &
  local serve=$!
  for _ in $(seq 100); do grep -q "^serving" "$mt/serve.log" && break; sleep 0.1; done
  grep -m1 "^serving" "$mt/serve.log" | sed "s/^/  /" || echo "  (never served)"
  echo "- 20 requests from sa/client:"
  "$mesh" request http://served.default.svc.cluster.local:9080/hello --bootstrap "$3" -n 20 -c 2 --json | answers
  echo "- 3 requests from sa/intruder:"
  "$mesh" request http://served.default.svc.cluster.local:9080/hello --bootstrap "$4" -n 3 --json | answers
  kill "$serve"; wait "$serve" 2>/dev/null || true
}
answers() { python3 -c 'import json,sys; d=json.load(sys.stdin); print("  status", d["status"], "answers", d["bodies"], "errors", d["errors"])'; }
mtls() { # $1 label, $2 bootstrap
  echo "## $1: ISTIO_MUTUAL"
  "$mesh" config-dump --bootstrap "$2" --target secure.default.svc.cluster.local:9080 --timeout 20 \
    | grep -E "cluster outbound\|9080\|\|secure|certificates:|  default:|xDS \("
  echo "- 200 requests to secure (the backend names the caller):"
  "$mesh" request http://secure.default.svc.cluster.local:9080/ --bootstrap "$2" -n 200 -c 4 --json | answers
  echo "- 3 requests to secure-wrong (the backend presents sa/intruder):"
  "$mesh" request http://secure-wrong.default.svc.cluster.local:9080/ --bootstrap "$2" -n 3 --json | answers
}
istiod_tls() {
  mtls "istiod, xDS on 15010" "$mt/plain.json"
  mtls "istiod, xDS on 15012 over mTLS (the workload certificate authenticates the client)" "$mt/secure.json"
  echo "## istiod 15012: a workload certificate for another namespace, and none"
  for b in elsewhere anonymous; do
    echo "- $b:"
    "$mesh" config-dump --bootstrap "$mt/$b.json" --target secure.default.svc.cluster.local:9080 --timeout 5 2>&1 | head -1 | sed 's/^/  /'
  done
  serve_check istiod "$mt/served-istiod.json" "$mt/plain.json" "$mt/intruder-client.json"
}
export -f mtls istiod_tls answers serve_check
export mt
ISTIOD_CA_DIR="$mt/ca" "$root/scripts/istiod/run.sh" "$mt/config" -- bash -c istiod_tls
# The local control plane, same YAML, same client node; it follows edits of its directory too.
local_config="$(mktemp -d)/config"
mkdir -p "$local_config"
cp "$config"/*.yaml "$local_config/"
"$mesh" control-plane --config "$local_config" --listen 127.0.0.1:15910 >/dev/null 2>&1 &
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
ISTIOD_CONFIG="$local_config" live_edits "mesh control-plane"
cp "$mt/config/mtls.yaml" "$local_config/"
sleep 1
mtls "mesh control-plane" "$mt/local.json"
serve_check "mesh control-plane" "$mt/served-local.json" "$mt/local.json" "$mt/intruder-local.json"
# The resource-level diff of the two servers (docs/INTEROP-ISTIOD.md).
"$root/scripts/istiod/xds-diff.sh"
