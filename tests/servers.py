"""Small servers on loopback for the hostile-input tests: a connection-counting trap and a
redirector that also serves given bytes as files."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Trap:
    """A TCP listener on loopback that counts every connection made to it (and answers nothing)."""

    def __init__(self, host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


class Redirector(ThreadingHTTPServer):
    """GET /to/<port>/<path> -> 302 to http://127.0.0.1:<port>/<path>; GET /loc?u=<url> -> 302 to that
    URL; GET /file/<name> -> 200 with files[name] (as image/png); anything else -> 200 "fine"."""

    def __init__(self, files: dict[str, bytes] | None = None):
        outer = self
        self.hits = 0
        self.files = files or {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits += 1
                if self.path.startswith("/loc?u="):
                    target = self.path[len("/loc?u="):]
                elif self.path.startswith("/file/") and self.path[6:] in outer.files:
                    body = outer.files[self.path[6:]]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                elif self.path.startswith("/to/"):
                    port, rest = self.path[4:].split("/", 1)
                    target = f"http://127.0.0.1:{port}/{rest}"
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"fine")
                    return
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()
