"""gRPC C-core (grpcio) as an xDS client with xDS credentials: calls TARGET's `/demo.Echo/Who`
N times through the mesh configuration in GRPC_XDS_BOOTSTRAP (mTLS when the cluster says
ISTIO_MUTUAL) and prints each distinct outcome with its count."""
import collections
import sys

import grpc

target, n = sys.argv[1], int(sys.argv[2])


def field1(data: bytes) -> str:
    # A message whose field 1 is a string (helloworld.HelloReply): tag 0x0a, varint length.
    if not data or data[0] != 0x0A:
        return repr(data)
    length, shift, i = 0, 0, 1
    while True:
        b = data[i]
        length |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return data[i : i + length].decode()


creds = grpc.xds_channel_credentials()  # insecure only where xDS says so
outcomes = collections.Counter()
with grpc.secure_channel(target, creds) as channel:
    who = channel.unary_unary("/demo.Echo/Who")
    for _ in range(n):
        try:
            outcomes["OK: " + field1(who(b"", timeout=10))] += 1
        except grpc.RpcError as e:
            outcomes[f"{e.code().name}: {e.details()}"] += 1
for outcome, count in outcomes.most_common():
    print(f"    {count} × {outcome}")
