"""An HTTP/1.1 server over mTLS (client certificate required, from CAFILE), answering with its
name and the caller's SPIFFE ID: `NAME peer=spiffe://...`.
   python3 mtls_backend.py IP PORT CERTDIR CAFILE NAME"""
import http.server
import ssl
import sys

ip, port, certdir, cafile, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{certdir}/cert-chain.pem", f"{certdir}/key.pem")
ctx.load_verify_locations(cafile)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.set_alpn_protocols(["http/1.1"])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        cert = self.connection.getpeercert() or {}
        uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
        body = f"{name} peer={uris[0] if uris else 'none'}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((ip, port), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
