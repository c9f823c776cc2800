"""The URL policy: called directly for what must never be contacted, and on loopback ports that
are not allow-listed (a listener that counts connections shows nothing reached them)."""

from __future__ import annotations

import ipaddress

import pytest

from datapipe.fetch import Connections, fetch
from datapipe.urlpolicy import UrlPolicy, UrlPolicyConfig, UrlRefused, redact
from servers import Redirector, Trap


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", "url_scheme"), ("FILE:///proc/self/environ", "url_scheme"),
    ("ftp://127.0.0.1/x.jpg", "url_scheme"), ("data:image/png;base64,iVBORw0KGgo=", "url_scheme"),
    ("javascript:alert(1)", "url_scheme"), ("gopher://127.0.0.1:70/", "url_scheme"), ("//host/x.png", "url_scheme"),
    (None, "url_invalid"), ("", "url_invalid"), ("   ", "url_invalid"), ("http://", "url_invalid"),
    ("http://a b/c.png", "url_invalid"), ("http://x/\n.png", "url_invalid"),
    ("http://user:hunter2@example.com/a.png", "url_credentials"), ("http://[::1/a.png", "url_invalid"),
    ("http://example.com/" + "a" * 3000, "url_length"),
])
def test_urls_refused_before_any_request(url, reason):
    with pytest.raises(UrlRefused) as e:
        UrlPolicy().check(url)
    assert e.value.reason == reason
    assert "hunter2" not in str(e.value) and "etc/passwd" not in str(e.value)


def test_address_classes_are_refused_unless_allow_listed():
    policy = UrlPolicy(UrlPolicyConfig(allow=["10.1.0.0/16", "127.0.0.1:8765", "[::1]:9000"]))
    refused = {"127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback", "169.254.169.254": "link-local",
               "fe80::1": "link-local", "10.0.0.5": "private", "192.168.1.1": "private", "172.16.3.4": "private",
               "fd00::1": "private", "0.0.0.0": "unspecified", "::": "unspecified", "224.0.0.1": "multicast",
               "ff02::1": "multicast", "240.0.0.1": "reserved", "100.64.0.1": "non-global",
               "::ffff:127.0.0.1": "loopback", "::ffff:169.254.169.254": "link-local"}
    for address, why in refused.items():
        assert policy.allowed(ipaddress.ip_address(address), 80) == why, address
    for address, port in (("93.184.216.34", 80), ("2606:4700::1111", 443), ("10.1.2.3", 1), ("127.0.0.1", 8765),
                          ("::1", 9000), ("::ffff:127.0.0.1", 8765)):
        assert policy.allowed(ipaddress.ip_address(address), port) is None, (address, port)
    assert policy.allowed(ipaddress.ip_address("127.0.0.1"), 8766) == "loopback"  # only the allow-listed port
    with pytest.raises(ValueError, match="neither a CIDR nor ADDRESS:PORT"):
        UrlPolicy(UrlPolicyConfig(allow=["example.com"]))


def test_redact_hides_credentials():
    assert redact("http://user:pw@host:81/a?b=1") == "http://REDACTED@host:81/a?b=1"
    assert redact("http://host/a@b") == "http://host/a@b"
    assert redact(None) is None


def test_disallowed_loopback_targets_get_no_connection_directly_or_by_redirect():
    trap, redirector = Trap(), Redirector()
    try:
        trap6 = Trap("::1")
    except OSError:
        trap6 = None
    try:
        policy = UrlPolicy(UrlPolicyConfig(allow=[f"127.0.0.1:{redirector.port}"]))
        conns = Connections(policy)

        def get(url):
            return fetch(conns, url, timeout=3, deadline_s=5, max_bytes=1 << 20, user_agent="test")

        assert get(f"http://127.0.0.1:{redirector.port}/ok").body == b"fine"
        for url in (f"http://127.0.0.1:{trap.port}/x.png", f"http://2130706433:{trap.port}/x.png",
                    f"http://0x7f000001:{trap.port}/", f"http://127.1:{trap.port}/", f"http://localhost:{trap.port}/",
                    f"http://[::ffff:127.0.0.1]:{trap.port}/"):
            got = get(url)
            assert got.body is None and got.error.startswith("[url_address]"), (url, got.error)
        if trap6 is not None:
            got = get(f"http://[::1]:{trap6.port}/")
            assert got.error.startswith("[url_address]"), got.error
        # redirects: each hop is checked; the allowed redirector is reached, the trap never is
        got = get(f"http://127.0.0.1:{redirector.port}/to/{trap.port}/x.png")
        assert got.error.startswith("[url_address]"), got.error
        for target in ("file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hi", "http://u:p@127.0.0.1/"):
            got = get(f"http://127.0.0.1:{redirector.port}/loc?u={target}")
            assert got.body is None and got.error.split("]")[0] in ("[url_scheme", "[url_credentials"), (target, got.error)
            assert "passwd" not in got.error and "u:p" not in got.error
        assert trap.connections == 0 and (trap6 is None or trap6.connections == 0)
        assert redirector.hits >= 6
    finally:
        trap.close()
        if trap6 is not None:
            trap6.close()
        redirector.shutdown()
