"""datapipe/fetch.py's connections: kept open between URLs of one origin, never reused after an
answer that leaves them in doubt, and a dead kept-open connection retried once on a new one."""

from __future__ import annotations

import ssl
import threading
import time

import pytest

from datapipe.fetch import Connections, fetch
from datapipe.urlpolicy import UrlPolicy, UrlPolicyConfig
from servers import KeepAliveServer


@pytest.fixture
def server():
    s = KeepAliveServer()
    yield s
    s.close()


def connections(server, keep_alive=True) -> Connections:
    return Connections(UrlPolicy(UrlPolicyConfig(allow=[f"127.0.0.1:{server.port}"])), keep_alive=keep_alive)


def get(conns, server, path, max_bytes=1 << 20):
    return fetch(conns, f"http://127.0.0.1:{server.port}{path}", timeout=3, deadline_s=5, max_bytes=max_bytes,
                 user_agent="test")


def test_urls_of_one_origin_share_one_connection(server):
    conns = connections(server)
    for i in range(10):
        got = get(conns, server, f"/img/{i}" if i % 2 else f"/chunked/{i}")
        assert got.error is None and got.body == server.body(str(i)), got.error
    conns.close()
    assert server.connections == 1 and conns.opened == 1
    assert not any("connection: close" in head.lower() for _, head in server.requests)


def test_without_keep_alive_every_url_has_its_own_connection(server):
    conns = connections(server, keep_alive=False)
    for i in range(5):
        assert get(conns, server, f"/img/{i}").body == server.body(str(i))
    assert server.connections == 5
    assert all("connection: close" in head.lower() for _, head in server.requests)


def test_a_connection_the_server_closed_is_retried_once_on_a_new_one(server):
    conns = connections(server)
    assert get(conns, server, "/then-close").body == server.body("then-close")
    got = get(conns, server, "/img/7")  # sent on the kept connection, which the server has closed
    assert got.error is None and got.body == server.body("7")
    assert server.connections == 2


def test_bytes_after_a_body_never_become_the_next_urls_answer(server):
    conns = connections(server)
    assert get(conns, server, "/junk-after").body == server.body("junk-after")
    time.sleep(0.3)  # the junk has arrived on the kept connection
    got = get(conns, server, "/img/3")
    assert got.error is None and got.body == server.body("3")
    # sent on the kept connection, where the junk stood for its answer, then sent again on a new one
    assert [n for n, head in server.requests if "/img/3" in head] == [1, 2]


def test_no_connection_is_reused_after_an_error_a_cut_off_body_or_a_redirect(server):
    conns = connections(server)
    assert get(conns, server, "/404").error == "[http_404] HTTP 404 Not Found"
    assert get(conns, server, "/big", max_bytes=1000).error.startswith("[too_large] declared 10000 bytes")
    assert get(conns, server, "/redirect").body == server.body("1")  # the 302's connection closed, a new one
    assert get(conns, server, "/img/2").body == server.body("2")  # reuses the redirect target's connection
    assert server.connections == 4
    by_path = {head.split(" ")[1]: n for n, head in server.requests}
    assert by_path == {"/404": 1, "/big": 2, "/redirect": 3, "/img/1": 4, "/img/2": 4}


def test_threads_share_the_pool_without_mixing_answers(server):
    conns = connections(server)
    wrong = []

    def work(t):
        for i in range(25):
            name = f"{t}-{i}"
            got = get(conns, server, f"/img/{name}")
            if got.body != server.body(name):
                wrong.append((name, got.error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    conns.close()
    assert not wrong and len(server.requests) == 200
    assert server.connections <= 8


def test_idle_connections_are_bounded_least_recently_used_closed_first():
    servers = [KeepAliveServer() for _ in range(3)]
    try:
        policy = UrlPolicy(UrlPolicyConfig(allow=[f"127.0.0.1:{s.port}" for s in servers]))
        conns = Connections(policy, max_idle=2)
        for s in servers:
            assert get(conns, s, "/img/1").body == s.body("1")
        assert conns.idle == 2
        for s in reversed(servers):  # the first server's connection was closed to make room
            assert get(conns, s, "/img/2").body == s.body("2")
        assert [s.connections for s in servers] == [2, 1, 1]
        conns.close()
        assert conns.idle == 0
    finally:
        for s in servers:
            s.close()


def _self_signed(tmp_path):
    """A certificate and key for 127.0.0.1, made here (nothing leaves the machine)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsKeepAliveServer(KeepAliveServer):
    """KeepAliveServer behind TLS."""

    def __init__(self, cert, key):
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        super().__init__()

    def on_connection(self, conn, number):
        def handshake():
            try:
                tls = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()  # the client refused our certificate
                return
            self._serve(tls, number)

        threading.Thread(target=handshake, daemon=True).start()


def test_https_verifies_the_certificate_and_keeps_the_tls_connection(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = TlsKeepAliveServer(cert, key)
    try:
        policy = UrlPolicy(UrlPolicyConfig(allow=[f"127.0.0.1:{server.port}"]))
        url = f"https://127.0.0.1:{server.port}/img/"
        untrusted = Connections(policy)
        got = fetch(untrusted, url + "1", timeout=3, deadline_s=5, max_bytes=1 << 20, user_agent="test")
        assert got.body is None and got.error.startswith("[tls_error]"), got.error  # self-signed: refused
        trusting = Connections(policy)
        trusting._tls = ssl.create_default_context(cafile=str(cert))  # as if our certificate were a public one
        for i in range(3):
            got = fetch(trusting, url + str(i), timeout=3, deadline_s=5, max_bytes=1 << 20, user_agent="test")
            assert got.error is None and got.body == server.body(str(i)), got.error
        assert trusting.opened == 1 and server.connections == 2  # the refused handshake, then one kept connection
    finally:
        server.close()
