# Test certificates with openssl, shaped as Istio issues them (EC P-256, SPIFFE URI SANs, server
# and client auth). Sourced by the interop scripts.
#   mesh_ca DIR NAME           → DIR/{ca-cert.pem,ca-key.pem,root-cert.pem,cert-chain.pem}
#                                (the four files istiod takes as a plugged CA in ./etc/cacerts)
#   mesh_leaf DIR SPIFFE_ID CA → DIR/{cert-chain.pem,key.pem,root-cert.pem}, as istio-agent
#                                writes them (root-cert.pem is CA's root)

mesh_ca() {
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1/ca-key.pem" \
    -out "$1/ca-cert.pem" -days 2 -subj "/O=$2/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  cp "$1/ca-cert.pem" "$1/root-cert.pem"
  cp "$1/ca-cert.pem" "$1/cert-chain.pem"
}

mesh_leaf() {
  mkdir -p "$1"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1/key.pem" \
    -out "$1/leaf.csr" -subj "/O=mesh-test" 2>/dev/null
  printf 'subjectAltName=URI:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n' "$2" > "$1/leaf.ext"
  openssl x509 -req -in "$1/leaf.csr" -CA "$3/ca-cert.pem" -CAkey "$3/ca-key.pem" -CAcreateserial \
    -out "$1/leaf.pem" -days 1 -extfile "$1/leaf.ext" 2>/dev/null
  cat "$1/leaf.pem" "$3/ca-cert.pem" > "$1/cert-chain.pem"
  cp "$3/root-cert.pem" "$1/root-cert.pem"
}

#   mesh_bootstrap FILE SERVER_URI CREDS_JSON NODE_NAME [CERTDIR]
#                              → a gRPC bootstrap for a client in namespace default, with
#                                CERTDIR's workload certificate as provider `default` (file_watcher)
mesh_bootstrap() {
  local providers=""
  if [ -n "${5:-}" ]; then
    providers=$(printf ', "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"certificate_file": "%s/cert-chain.pem", "private_key_file": "%s/key.pem", "ca_certificate_file": "%s/root-cert.pem", "refresh_interval": "900s"}}}' "$5" "$5" "$5")
  fi
  cat > "$1" <<BOOT
{"xds_servers": [{"server_uri": "$2", "channel_creds": [$3], "server_features": ["xds_v3"]}],
 "node": {"id": "sidecar~127.0.0.2~$4.default~default.svc.cluster.local",
          "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default", "CLUSTER_ID": "Kubernetes"}}$providers,
 "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"}
BOOT
}
