"""A backend for the trace check: answers 200 and prints each request's trace headers as one
JSON line on stdout. `headers_backend.py PORT`."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEEP = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
        "x-b3-sampled", "x-b3-flags", "x-envoy-peer-metadata-id")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {k: v for k, v in ((k.lower(), v) for k, v in self.headers.items()) if k in KEEP}
        print(json.dumps(seen), flush=True)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        # Zipkin's collector endpoint: spans are accepted and dropped.
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
