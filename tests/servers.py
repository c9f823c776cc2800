"""Small servers on loopback for the hostile-input tests: a connection-counting trap and a
redirector that also serves given bytes as files."""

from __future__ import annotations

import socket
import threading
import time
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
            self.on_connection(conn, self.connections)

    def on_connection(self, conn: socket.socket, number: int) -> None:
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


class KeepAliveServer(Trap):
    """A raw HTTP/1.1 server on loopback that keeps connections open and counts them, with answers
    that misbehave on a kept-open connection:
      /img/<n>       200, a 100-byte body naming n
      /chunked/<n>   the same body, chunked
      /then-close    200 with a body, no `Connection: close`, and the socket closed after it
      /junk-after    200 with a body, then (0.1 s later) bytes that are not a response
      /404           404 with a body;  /big  Content-Length 10,000;  /redirect  302 to /img/1
    `requests` holds (connection number, request head) of every request."""

    def __init__(self):
        self.requests: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        super().__init__()

    @staticmethod
    def body(n: str) -> bytes:
        return f"image {n} ".encode().ljust(100, b".")

    def on_connection(self, conn: socket.socket, number: int) -> None:
        threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                head = head.decode("latin-1")
                with self._lock:
                    self.requests.append((number, head))
                path = head.split(" ")[1]
                close = "connection: close" in head.lower()
                ok = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                if path.startswith("/img/") or path in ("/then-close", "/junk-after"):
                    body = self.body(path.rsplit("/", 1)[1])
                    conn.sendall(f"{ok}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    if path == "/then-close":
                        return
                    if path == "/junk-after":  # after the client has read the answer
                        time.sleep(0.1)
                        conn.sendall(b"NOT A RESPONSE\r\n\r\n")
                elif path.startswith("/chunked/"):
                    body = self.body(path.rsplit("/", 1)[1])
                    conn.sendall(f"{ok}Transfer-Encoding: chunked\r\n\r\n".encode()
                                 + b"%x\r\n" % 60 + body[:60] + b"\r\n" + b"%x\r\n" % 40 + body[60:] + b"\r\n0\r\n\r\n")
                elif path == "/404":
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
                elif path == "/big":
                    conn.sendall(f"{ok}Content-Length: 10000\r\n\r\n".encode() + b"x" * 10000)
                elif path == "/redirect":
                    conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /img/1\r\nContent-Length: 0\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                if close:
                    return
