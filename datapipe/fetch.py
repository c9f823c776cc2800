"""One HTTP(S) GET under the URL policy, a deadline and a byte cap, with a classified outcome.

This is what img2dataset's `download_image` does (urllib, its user agent, its X-Robots-Tag
opt-out check), made safe for hostile URL lists and servers:
- the URL passes `UrlPolicy.check` before the request and on every redirect hop, and the socket
  connects only to addresses the policy allows (`UrlPolicy.connect`); no proxy from the
  environment, no handler but http and https (urllib alone would open file://, ftp:// and data:);
- a whole-download deadline (a server that drips bytes is cut off) and a byte cap (declared or not);
- failures come back as `[reason] detail` where the detail is ours (status code and its standard
  phrase, exception class, byte counts): never text or bytes the server sent.
The response's content type (sanitised) and size are kept for the decode stage's reject detail.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urljoin

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


def build_opener(policy: UrlPolicy) -> urllib.request.OpenerDirector:
    """A urllib opener that speaks only http/https, uses no proxy, and obeys `policy` on every hop."""

    class Connection(http.client.HTTPConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = policy.connect

    class SecureConnection(http.client.HTTPSConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = policy.connect

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Connection, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(SecureConnection, req, context=self._context)

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = 10

        def http_error_302(self, req, fp, code, msg, headers):
            location = headers.get("location") or headers.get("uri")
            if location is not None:
                policy.check(urljoin(req.full_url, location))  # UrlRefused: this hop is not requested
            return super().http_error_302(req, fp, code, msg, headers)

        http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(), Http(), Https(), Redirects(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def classify(err: BaseException, timeout: float) -> str:
    """An exception from urllib/http.client/ssl -> "[reason] detail" in our own words."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        inner = err.reason
        if isinstance(inner, BaseException):
            return classify(inner, timeout)
        return "[unreachable] could not connect"
    if isinstance(err, UrlRefused):
        return f"[{err.reason}] {err.detail}"
    if isinstance(err, urllib.error.HTTPError):
        if 300 <= err.code < 400:
            return f"[redirect_loop] {status_text(err.code)}: more than 10 redirects, or a redirect loop"
        return f"[http_{err.code}] {status_text(err.code)}"
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


def fetch(opener: urllib.request.OpenerDirector, policy: UrlPolicy, url: str, timeout: float, deadline_s: float,
          max_bytes: int, user_agent: str, opted_out=None) -> Fetched:
    """GET `url`; `opted_out(headers)` -> True rejects the response (X-Robots-Tag) before its body is read."""
    try:
        policy.check(url)
    except UrlRefused as e:
        return Fetched(None, f"[{e.reason}] {e.detail}")
    deadline = time.monotonic() + deadline_s
    content_type, size = None, 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": user_agent})
        with opener.open(request, timeout=timeout) as r:
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
        return Fetched(body.getvalue(), None, content_type, size)
    except Exception as err:  # noqa: BLE001 - every failure is this URL's outcome, in our words
        return Fetched(None, classify(err, timeout), content_type, size)
