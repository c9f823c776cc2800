"""Which URLs a curation job may request: scheme, length, credentials, destination address.

Web URL lists are untrusted input. Before any request, and again for every redirect hop, a URL
must pass `UrlPolicy.check`: a scheme from `schemes` (http and https by default: no file://,
ftp://, data:, gopher: ...), at most `max_length` characters, no user:password part. At connect
time the host is resolved and every address it resolves to is checked (`UrlPolicy.connect`): a
loopback, link-local, private, shared (CGNAT), multicast, reserved or unspecified address is
refused, unless an `allow` entry names it. So a name that resolves to 127.0.0.1, a decimal or
hex spelling of it (http://2130706433/), an IPv4-mapped IPv6 address, or a redirect to the
cloud metadata endpoint never gets a byte sent to it. The check is done on the address the
socket actually connects to, not on a separate lookup, so DNS answers that change between the
check and the connection cannot slip past it.

`allow` entries open exceptions: a CIDR (`10.0.0.0/8`, `::1/128`) for any port, or an address
with a port (`127.0.0.1:8765`, `[::1]:8080`) for that port only. That is how the synthetic
scenes server on loopback, and every test, keep working: they allow-list their own port.

Refusals are errors with a reason (`url_scheme`, `url_address`, `url_length`,
`url_credentials`, `url_invalid`) that the download stage turns into rejects; the detail names
the address class, never anything the server sent. A URL with a user:password part is refused
and stored (in rejects, sidecars and logs) with that part redacted.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

REASONS = ("url_scheme", "url_address", "url_length", "url_credentials", "url_invalid")


class UrlRefused(OSError):
    """A URL or a destination the policy does not allow; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"[{reason}] {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class UrlPolicyConfig:
    schemes: list[str] = field(default_factory=lambda: ["http", "https"])
    # exceptions to the address rule: CIDRs (any port) or ADDRESS:PORT / [V6]:PORT (that port only)
    allow: list[str] = field(default_factory=list)
    max_length: int = 2048  # characters; longer URLs are refused (url_length)


def _address_class(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not a public destination, or None when it is one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for name in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:
        return "non-global"  # e.g. 100.64.0.0/10 (shared address space), 192.0.0.0/24
    return None


def redact(url: str | None) -> str | None:
    """The URL with any user:password@ part replaced by `REDACTED@` (what sidecars and rejects keep)."""
    if not url or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[0].split("//", 1)[0] + "//REDACTED@" + url.rsplit("@", 1)[-1]
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"REDACTED@{host}", parts.path, parts.query, parts.fragment))


class UrlPolicy:
    def __init__(self, cfg: UrlPolicyConfig | None = None):
        self.cfg = cfg = cfg or UrlPolicyConfig()
        self.schemes = {s.lower() for s in cfg.schemes}
        self.networks: list = []  # any port
        self.endpoints: set[tuple[str, int]] = set()  # (normalised address, port)
        for entry in cfg.allow:
            self._add_allowed(str(entry).strip())

    def _add_allowed(self, entry: str) -> None:
        try:
            self.networks.append(ipaddress.ip_network(entry, strict=False))
            return
        except ValueError:
            pass
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"download.url_policy.allow entry {entry!r} is neither a CIDR nor ADDRESS:PORT")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError as e:
            raise ValueError(f"download.url_policy.allow entry {entry!r}: {host!r} is not an IP address") from e
        self.endpoints.add((str(ip), int(port)))

    # -- the URL itself, before any request and for every redirect hop ------------------------
    def check(self, url: object) -> str:
        """The URL, or UrlRefused with the reason it may not be requested."""
        if not isinstance(url, str) or not url.strip():
            raise UrlRefused("url_invalid", "no URL (null or empty)")
        if len(url) > self.cfg.max_length:
            raise UrlRefused("url_length", f"URL of {len(url)} characters > max_length {self.cfg.max_length}")
        if any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise UrlRefused("url_invalid", "URL contains whitespace or control characters")
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in self.schemes:
            shown = scheme if scheme.isalnum() and len(scheme) <= 16 else "?"
            raise UrlRefused("url_scheme", f"scheme {shown}: is not one of {sorted(self.schemes)}")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as e:
            raise UrlRefused("url_invalid", f"unparsable URL ({type(e).__name__})") from None
        if not host:
            raise UrlRefused("url_invalid", "URL has no host")
        if parts.username is not None or parts.password is not None:  # never sent; stored redacted
            raise UrlRefused("url_credentials", "URL carries user:password credentials")
        del port
        return url

    # -- the destination, at connect time -------------------------------------------------------
    def allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str | None:
        """None when (ip, port) may be contacted, else the address class that refuses it."""
        why = _address_class(ip)
        if why is None:
            return None
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else None
        for candidate in (ip, mapped):
            if candidate is None:
                continue
            if (str(candidate), port) in self.endpoints:
                return None
            if any(candidate.version == n.version and candidate in n for n in self.networks):
                return None
        return why

    def connect(self, address: tuple[str, int], timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
        """socket.create_connection, but only to addresses the policy allows (http.client calls this)."""
        host, port = address
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise OSError(f"name or service not known ({e.strerror})") from None
        refused: list[str] = []
        last_error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            why = self.allowed(ip, port)
            if why is not None:
                refused.append(why)
                continue
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                last_error = e
        if refused and last_error is None:
            raise UrlRefused("url_address", f"the host resolves only to {'/'.join(sorted(set(refused)))} "
                             "address(es), which download.url_policy.allow does not open")
        if last_error is not None:
            raise last_error
        raise OSError("name or service not known (no address)")
