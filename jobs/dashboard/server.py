"""`deepfusion dashboard ROOT`: the page on 127.0.0.1, refreshed as shards arrive.

The server is small on purpose (the standard library's ThreadingHTTPServer): it serves the page,
its bundled assets, the two JSON files of <root>/stats/ and `api/trace?q=KEY_OR_URL` (the page's
search box: `deepfusion trace` of one row, as JSON with its text form). With `stats_every` set it also re-runs
the incremental statistics job in a background thread, so the page (which polls) shows shards a
running curation or caption job commits. The Content-Security-Policy allows nothing but this
server and inline data: images: even an escaping bug could not load or run foreign code.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import partial
from urllib.parse import parse_qs, urlsplit
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from datapipe.contract import Storage

from .page import asset, plotly_js, render_page

log = logging.getLogger(__name__)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_QUERY = 4096  # characters of a trace query (a URL)
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

    def _trace(self, query: str) -> None:
        from datapipe.contract import ContractError
        from jobs.trace import TraceConfig, format_trace, trace

        q = (parse_qs(query).get("q") or [""])[0].strip()
        if not q or len(q) > MAX_QUERY:
            return self._json({"error": f"give q=KEY_OR_URL (at most {MAX_QUERY} characters)"}, HTTPStatus.BAD_REQUEST)
        try:
            result = trace(self.dashboard.root, q, TraceConfig(run=self.dashboard.trace_run))
        except (ContractError, ValueError, OSError) as e:
            return self._json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.BAD_REQUEST)
        except Exception as e:  # noqa: BLE001 - a failed trace is an answer, not a dead server
            log.exception("dashboard: trace of a row failed")
            return self._json({"error": f"internal error ({type(e).__name__}); see the server log"},
                              HTTPStatus.INTERNAL_SERVER_ERROR)
        self._json({"text": format_trace(result), "result": result}, HTTPStatus.OK)  # no row found is an answer too

    def _json(self, body: dict, status: HTTPStatus) -> None:
        self._send(json.dumps(body, default=str).encode(), TYPES[".json"], status)

    def do_GET(self):  # noqa: N802 (the http.server API)
        parts = urlsplit(self.path)
        path = parts.path
        d = self.dashboard
        if path == "/api/trace":
            return self._trace(parts.query)
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
                 stats_every: float = 0, stats_config: str | None = None, trace_run: str | None = None):
        self.root, self.refresh_s, self.stats_every = root, refresh_s, stats_every
        self.trace_run = trace_run  # a training run dir: traces also list the steps that drew the row
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
