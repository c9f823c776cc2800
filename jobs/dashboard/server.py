"""`deepfusion dashboard ROOT`: the page on 127.0.0.1, refreshed as shards arrive.

The server is small on purpose (the standard library's ThreadingHTTPServer): it serves the page,
its bundled assets and the two JSON files of <root>/stats/. With `stats_every` set it also re-runs
the incremental statistics job in a background thread, so the page (which polls) shows shards a
running curation or caption job commits. The Content-Security-Policy allows nothing but this
server and inline data: images: even an escaping bug could not load or run foreign code.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from datapipe.contract import Storage

from .page import asset, plotly_js, render_page

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json"}


class Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, dashboard: "DashboardServer", **kwargs):
        self.dashboard = dashboard
        super().__init__(*args, **kwargs)

    def log_message(self, fmt, *args):  # requests at debug level; the CLI prints what matters
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, body: bytes, ctype: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (the http.server API)
        path = self.path.split("?", 1)[0]
        d = self.dashboard
        if path in ("/", "/index.html"):
            return self._send(render_page("live", d.refresh_s).encode(), "text/html; charset=utf-8")
        if path == "/assets/plotly.min.js":
            return self._send(d.plotly, TYPES[".js"])
        if path in ("/assets/dashboard.js", "/assets/dashboard.css"):
            name = path.rsplit("/", 1)[1]
            return self._send(asset(name), TYPES["." + name.rsplit(".", 1)[1]])
        if path in ("/data/summary.json", "/data/gallery.json"):
            rel = "stats/" + path.rsplit("/", 1)[1]
            if not d.storage.exists(rel):
                return self._send(b'{"error": "no statistics yet"}', TYPES[".json"], HTTPStatus.NOT_FOUND)
            return self._send(d.storage.read_bytes(rel), TYPES[".json"])
        self._send(b"not found", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND)


class DashboardServer:
    """Serve one dataset's dashboard; `stats_every` > 0 re-runs the statistics that often (s)."""

    def __init__(self, root: str, host: str = "127.0.0.1", port: int = 8765, refresh_s: float = 5,
                 stats_every: float = 0, stats_config: str | None = None):
        self.root, self.refresh_s, self.stats_every = root, refresh_s, stats_every
        self.stats_config = stats_config  # a stats YAML file; None: the defaults
        self.storage = Storage(root)
        self.plotly = plotly_js()
        self.httpd = ThreadingHTTPServer((host, port), partial(Handler, dashboard=self))
        self.httpd.daemon_threads = True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def refresh_stats(self) -> None:
        from jobs.statistics import load_stats_config, run_stats

        run_stats(load_stats_config(self.stats_config, [f"root={self.root}"]), progress=False)

    def _stats_loop(self) -> None:
        while not self._stop.wait(self.stats_every):
            try:
                self.refresh_stats()
            except Exception as e:  # a half-written dataset must not kill the page; say so and retry
                log.warning("dashboard: statistics refresh failed (%s); retrying in %ss", e, self.stats_every)

    def start(self) -> "DashboardServer":
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True, name="dashboard-http")]
        if self.stats_every > 0:
            self._threads.append(threading.Thread(target=self._stats_loop, daemon=True, name="dashboard-stats"))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
