"""gRPC's own xDS client (C-core via grpcio) against mesh control-plane: resolves
xds:///ui.default.svc.cluster.local:9080 through LDS/RDS/CDS/EDS and counts answers."""
import collections
import sys

import grpc

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
channel = grpc.insecure_channel("xds:///ui.default.svc.cluster.local:9080")
who = channel.unary_unary("/demo.Echo/Who", request_serializer=None, response_deserializer=None)
counts = collections.Counter()
for _ in range(n):
    counts[who(b"", timeout=10).decode()] += 1
for k in sorted(counts):
    print(f"{k} {counts[k]}")
v2 = sum(c for k, c in counts.items() if k.startswith("v2"))
print(f"v2 share {100.0 * v2 / n:.1f}%")
