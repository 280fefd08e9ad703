#!/usr/bin/env bash
# Builds istiod's pilot-discovery once into a cache outside the repository, and prints its
# path. Minutes of build and hundreds of MB of modules: never run by CI.
#   scripts/istiod/install.sh
# istio's tags are not Go semver tags, so a version is a commit's pseudo-version. The commit of
# 1.29.6 (7019d6d3608e) is refused by this machine's module proxy (403, "This module version is
# not available", 2026-12-01); the oldest it serves is the one below (master of 2026-04-23).
# That version dereferences a nil multicluster controller at start when there is no Kubernetes
# (`--registries=`): the edit below (ours) gives the ServiceEntry controller an empty namespace
# collection when there is no multicluster controller. Nothing else is changed.
set -euo pipefail
version="${ISTIO_VERSION:-v0.0.0-20260423205519-b01690e6db7d}"
cache="${MESH_ISTIOD_CACHE:-$HOME/.cache/mesh-istiod}"
export GOPATH="$cache/gopath" GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"
export GOFLAGS="-trimpath -buildvcs=false"
# The checksum database behind this machine's proxy does not know these pseudo-versions (404);
# they are checked against istio's go.sum instead.
export GONOSUMDB="${GONOSUMDB:-github.com/agentgateway,github.com/envoyproxy/go-control-plane/contrib,istio.io/client-go}"
stamp="$version no-kube-1"
bin="$cache/bin/pilot-discovery"
if [ ! -x "$bin" ] || [ "$(cat "$cache/built" 2>/dev/null)" != "$stamp" ]; then
  echo "building pilot-discovery from istio.io/istio@$version (this takes a while)" >&2
  mkdir -p "$cache/bin"
  dir="$(cd "$cache" && go mod download -json "istio.io/istio@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  src="$cache/src/istio-$version"
  rm -rf "$src"; mkdir -p "$(dirname "$src")"
  cp -r "$dir" "$src"; chmod -R u+w "$src"
  file="$src/pilot/pkg/serviceregistry/serviceentry/controller.go"
  grep -q 'multiclusterController.ConfigCluster().Namespaces()' "$file"
  perl -0pi -e 's{^(\t+)s\.inputs\.Namespaces = multiclusterController\.ConfigCluster\(\)\.Namespaces\(\)\n}{$1if multiclusterController != nil {\n$1\ts.inputs.Namespaces = multiclusterController.ConfigCluster().Namespaces()\n$1} else {\n$1\t// No Kubernetes (--registries=): no config cluster, no namespaces.\n$1\ts.inputs.Namespaces = krt.NewStaticCollection[*v1.Namespace](nil, nil, s.opts.WithName("inputs/Namespaces")...)\n$1}\n}m' "$file"
  grep -q 'multiclusterController != nil' "$file"
  (cd "$src" && go build -o "$bin" ./pilot/cmd/pilot-discovery)
  echo "$stamp" > "$cache/built"
fi
echo "$bin"
