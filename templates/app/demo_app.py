#!/usr/bin/python3
"""clonefleet's demo app: shows which node answered, so a fresh fleet shows the whole path.

Python standard library only (runs on Debian's python3). Listens on $HOST:$PORT (loopback);
`/` answers JSON {node, region, served_at}, $CLONEFLEET_HEALTH_PATH answers 200.
"""

import contextlib
import datetime
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    server_version = "clonefleet-demo"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == os.environ.get("CLONEFLEET_HEALTH_PATH", "/healthz"):
            self._send(200, "text/plain", b"ok\n")
        elif path == "/":
            body = {
                "node": os.environ.get("CLONEFLEET_NODE", ""),
                "region": os.environ.get("CLONEFLEET_REGION", ""),
                "served_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
            self._send(200, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one line per request on stderr (the journal)
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main():
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080")))
    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
