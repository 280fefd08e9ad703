"""Backends for the real-client check: `http` serves HTTP/1.1 (for Envoy), `grpc` serves a
unary gRPC method (for gRPC's xDS client). Each answers with its name, e.g. `v1:18081`."""
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKENDS = [("v1", 18081), ("v1", 18082), ("v1", 18083), ("v2", 18091)]


def serve_http():
    servers = []
    for version, port in BACKENDS:
        name = f"{version}:{port}".encode()

        class Handler(BaseHTTPRequestHandler):
            body = name

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(self.body)))
                self.end_headers()
                self.wfile.write(self.body)

            def log_message(self, *args):
                pass

        s = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
    return servers


def serve_grpc():
    import grpc

    servers = []
    for version, port in BACKENDS:
        name = f"{version}:{port}".encode()
        handler = grpc.method_handlers_generic_handler(
            "demo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(lambda req, ctx, n=name: n)}
        )
        s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        s.add_generic_rpc_handlers((handler,))
        s.add_insecure_port(f"127.0.0.1:{port}")
        s.start()
        servers.append(s)
    return servers


if __name__ == "__main__":
    kind = sys.argv[1]
    servers = serve_http() if kind == "http" else serve_grpc()
    print(f"{kind} backends up", flush=True)
    threading.Event().wait()
