"""An xDS-enabled gRPC C-core server (grpcio): it takes its inbound listener, and with it its
mTLS settings, from the control plane named in GRPC_XDS_BOOTSTRAP, and serves `demo.Echo/Who`
on 127.0.0.1:PORT, answering its name."""
import sys
import threading
from concurrent import futures

import grpc

port = int(sys.argv[1])
name = f"grpc-xds:{port}".encode()
handler = grpc.method_handlers_generic_handler(
    "demo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda req, ctx: name)}
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), xds=True)
server.add_generic_rpc_handlers((handler,))
# xDS server credentials: the inbound listener's DownstreamTlsContext decides (mTLS for
# STRICT); plaintext only if the control plane sends no security.
server.add_secure_port(
    f"127.0.0.1:{port}", grpc.xds_server_credentials(grpc.insecure_server_credentials())
)
server.start()
print(f"xds server on {port}", flush=True)
threading.Event().wait()
