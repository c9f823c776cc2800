"""One HTTP(S) GET under the URL policy, a deadline and a byte cap, with a classified outcome.

This is what img2dataset's `download_image` does (a GET with its user agent, its X-Robots-Tag
opt-out check), made safe for hostile URL lists and servers:
- the URL passes `UrlPolicy.check` before the request and on every redirect hop, and the socket
  connects only to addresses the policy allows (`UrlPolicy.connect`); no proxy from the
  environment, http and https only (urllib alone would open file://, ftp:// and data:);
- a whole-download deadline (a server that drips bytes is cut off) and a byte cap (declared or not);
- failures come back as `[reason] detail` where the detail is ours (status code and its standard
  phrase, exception class, byte counts): never text or bytes the server sent.
The response's content type (sanitised) and size are kept for the decode stage's reject detail.

It speaks http.client directly, through `Connections`: connections to the same origin are kept
open between URLs (HTTP/1.1 keep-alive, `download.keep_alive`), and a request costs a third of
the CPU urllib's opener chain with a new connection per URL did (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import collections
import http.client
import io
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

from .urlpolicy import UrlPolicy, UrlRefused

OPT_OUT = "opt_out"
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")
ERROR = re.compile(r"^\[([a-z0-9_]+)\] (.*)$", re.S)


@dataclass
class Fetched:
    body: bytes | None
    error: str | None  # "[reason] detail" when body is None
    content_type: str | None = None  # type/subtype only, validated as a token; None if absent or odd
    size: int = 0  # bytes received


def sanitize_content_type(value: str | None) -> str | None:
    if not value:
        return None
    main = value.split(";", 1)[0].strip().lower()
    return main if _TOKEN.match(main) else "invalid"


def status_text(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10  # urllib's HTTPRedirectHandler.max_redirections


class Connections:
    """The HTTP(S) connections of one download pool (a shard task's threads), under a URL policy.

    Every connection is opened through `UrlPolicy.connect`, so it only ever reaches an address the
    policy allows; no proxy from the environment, http and https only (the policy's schemes).

    With `keep_alive`, a connection whose response was read to its end goes back to the pool and
    the next URL of the same origin (scheme, host, port) is sent on it (HTTP/1.1 persistent
    connections): no new TCP (and TLS) handshake, and far less Python per request than urllib's
    opener chain. A connection is only reused after a complete 2xx response the server did not
    mark `Connection: close`; a redirect, an error status, a cut-off body or any exception closes
    it. A request on a reused connection that the server had meanwhile closed (its keep-alive
    timeout) is sent once more on a new connection, as HTTP clients do. Without `keep_alive` every
    request opens its own connection and asks the server to close it (what urllib and so
    img2dataset do).
    """

    def __init__(self, policy: UrlPolicy, keep_alive: bool = True, max_idle: int = 64):
        self.policy, self.keep_alive, self.max_idle = policy, keep_alive, max_idle
        # idle connections, least recently used first; bounded, so a URL list that spreads over
        # thousands of hosts does not hold thousands of sockets open (the process's file limit)
        self._idle: collections.OrderedDict[int, tuple[tuple[str, str, int], http.client.HTTPConnection]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self.opened = 0  # connections opened (what keep-alive saves is visible in tests)

    def get(self, scheme: str, host: str, port: int, timeout: float,
            fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """(a connection to the origin, whether it was used before): an idle one, unless `fresh`."""
        key = (scheme, host, port)
        with self._lock:
            if not fresh:
                for ident, (k, conn) in reversed(self._idle.items()):
                    if k == key:
                        del self._idle[ident]
                        conn.sock.settimeout(timeout)
                        return conn, True
            self.opened += 1
        if scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = ssl.create_default_context()  # urllib's default: verified certificates
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn._create_connection = self.policy.connect  # the only way this connection reaches the network
        return conn, False

    def put(self, scheme: str, host: str, port: int, conn: http.client.HTTPConnection) -> None:
        if not self.keep_alive or conn.sock is None:
            conn.close()
            return
        evicted = []
        with self._lock:
            self._idle[id(conn)] = ((scheme, host, port), conn)
            while len(self._idle) > self.max_idle:
                evicted.append(self._idle.popitem(last=False)[1][1])
        for old in evicted:
            old.close()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, collections.OrderedDict()
        for _, conn in idle.values():
            conn.close()


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of a URL that passed the policy's check."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    return scheme, parts.hostname, port, path + (f"?{parts.query}" if parts.query else "")


# a request on a reused connection that fails like this before a status line arrives had the
# connection closed under it (the server's keep-alive timeout) or left unusable by the previous
# answer (bytes after its body): sent once more, on a new connection
_STALE = (http.client.BadStatusLine, ConnectionError)


def classify(err: BaseException, timeout: float) -> str:
    """An exception from http.client/socket/ssl -> "[reason] detail" in our own words."""
    if isinstance(err, UrlRefused):
        return f"[{err.reason}] {err.detail}"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return f"[timeout] no answer within {timeout:g} s"
    if isinstance(err, ConnectionRefusedError):
        return "[unreachable] connection refused"
    if isinstance(err, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return f"[connection_reset] the server closed the connection ({type(err).__name__})"
    if isinstance(err, http.client.IncompleteRead):
        return f"[truncated] body ended after {len(err.partial)} bytes"
    if isinstance(err, http.client.HTTPException):
        return f"[bad_response] malformed HTTP response ({type(err).__name__})"
    if isinstance(err, ssl.SSLError):
        return f"[tls_error] TLS failure ({type(err).__name__})"
    if isinstance(err, OSError) and "name or service not known" in str(err):
        return "[unreachable] name or service not known"
    if isinstance(err, OSError):
        return f"[unreachable] {type(err).__name__} errno {err.errno}"
    return f"[error] {type(err).__name__}"


def fetch(connections: Connections, url: str, timeout: float, deadline_s: float, max_bytes: int,
          user_agent: str, opted_out=None) -> Fetched:
    """GET `url`; `opted_out(headers)` -> True rejects the response (X-Robots-Tag) before its body is read.

    The connection goes back to `connections` only after a complete 2xx answer; every other way
    out of here (an error status, a redirect, a cut-off body, an exception) closes it."""
    policy = connections.policy
    try:
        policy.check(url)
    except UrlRefused as e:
        return Fetched(None, f"[{e.reason}] {e.detail}")
    deadline = time.monotonic() + deadline_s
    content_type, size = None, 0
    headers = {"User-Agent": user_agent}
    if not connections.keep_alive:
        headers["Connection"] = "close"
    conn = None
    try:
        for hop in range(MAX_REDIRECTS + 1):
            if conn is not None:
                conn.close()  # the previous hop's redirect
            origin = _target(url)
            conn, r = _request(connections, origin, headers, timeout)
            location = r.headers.get("Location") or r.headers.get("URI")
            if r.status in REDIRECTS and location is not None:
                if hop == MAX_REDIRECTS:
                    return Fetched(None, f"[redirect_loop] {status_text(r.status)}: more than {MAX_REDIRECTS} "
                                   "redirects, or a redirect loop")
                url = urljoin(url, location)
                policy.check(url)  # UrlRefused: this hop is not requested
                continue
            if not 200 <= r.status < 300:
                return Fetched(None, f"[http_{r.status}] {status_text(r.status)}")
            break
        content_type = sanitize_content_type(r.headers.get("Content-Type"))
        if opted_out is not None and opted_out(r.headers):
            return Fetched(None, "[opt_out] X-Robots-Tag disallows AI use of this image", content_type)
        declared = r.headers.get("Content-Length")
        declared = int(declared) if declared and declared.strip().isdigit() else None
        if declared is not None and declared > max_bytes:
            return Fetched(None, f"[too_large] declared {declared} bytes > max_bytes {max_bytes}", content_type)
        body = io.BytesIO()
        while chunk := r.read1(1 << 16):  # what has arrived: the deadline is checked per packet
            body.write(chunk)
            size = body.tell()
            if size > max_bytes:
                return Fetched(None, f"[too_large] more than max_bytes {max_bytes} bytes", content_type, size)
            if time.monotonic() > deadline:
                return Fetched(None, f"[too_slow] deadline of {deadline_s:g} s passed after {size} bytes",
                               content_type, size)
        if declared is not None and size < declared:
            return Fetched(None, f"[truncated] {size} of {declared} declared bytes", content_type, size)
        if size == 0:
            return Fetched(None, f"[empty_body] status {r.status} with no body "
                           f"(content type {content_type or 'none'})", content_type, 0)
        r.close()  # the response's reader; the socket stays with the connection
        if not r.will_close:
            connections.put(*origin[:3], conn)
            conn = None  # handed back: not closed below
        return Fetched(body.getvalue(), None, content_type, size)
    except Exception as err:  # noqa: BLE001 - every failure is this URL's outcome, in our words
        return Fetched(None, classify(err, timeout), content_type, size)
    finally:
        if conn is not None:
            conn.close()


def _request(connections: Connections, origin: tuple[str, str, int, str], headers: dict, timeout: float):
    """Send the GET and read the status line and headers: (connection, response)."""
    scheme, host, port, target = origin
    conn, reused = connections.get(scheme, host, port, timeout)
    try:
        conn.request("GET", target, headers=headers)
        return conn, conn.getresponse()
    except BaseException as err:
        conn.close()
        if not (reused and isinstance(err, _STALE)):
            raise
    conn, _ = connections.get(scheme, host, port, timeout, fresh=True)
    try:
        conn.request("GET", target, headers=headers)
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise
