"""pipelines.fetch against a local threaded HTTP server (no internet needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
import ipaddress
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pipelines import fetch
from pipelines.errors import FetchError, PayloadTooLarge
from pipelines.fetch import FetchPolicy, fetch_url
from serve_app.errors import http_status

LIMIT = 100_000
BIG = 64 * 1024 * 1024  # what the "big" endpoints would send: 640x the limit
CHUNK = b"x" * 65536
LOCAL = FetchPolicy.from_strings(LIMIT, 2.0, 3, ["127.0.0.1/32"])
DEFAULT = FetchPolicy(max_bytes=LIMIT, timeout_s=2.0)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.hosts: list[str] = []
        self.sent: dict[str, int] = {}  # body bytes the big endpoints managed to write
        self.done: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _stream_big(self, path: str, chunked: bool) -> None:
        sent = 0
        try:
            while sent < BIG:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
                sent += len(CHUNK)
        except OSError:  # the client hung up, as it should
            pass
        finally:
            self.server.sent[path] = sent
            self.server.done.setdefault(path, threading.Event()).set()

    def do_GET(self) -> None:  # one small branch per endpoint
        path, _, query = self.path.partition("?")
        with self.server.lock:
            self.server.hits[path] += 1
            self.server.hosts.append(self.headers.get("Host", ""))
        if path == "/png":
            self._send(200, PNG, Content_Type="image/png")
        elif path == "/host":
            self._send(200, self.headers.get("Host", "").encode())
        elif path == "/404":
            self._send(404, b"secret body that must not leak")
        elif path == "/big-length":
            self.send_response(200)
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            self._stream_big(path, chunked=False)
        elif path == "/big-close":  # HTTP/1.0 style: no length, body ends when the socket closes
            self.send_response(200)
            self.end_headers()
            self._stream_big(path, chunked=False)
        elif path == "/big-chunked":
            self.protocol_version = "HTTP/1.1"
            self.close_connection = True
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._stream_big(path, chunked=True)
        elif path == "/slow":  # nothing at all for 3 s
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/trickle":  # each read is quick, the whole body is not
            self.send_response(200)
            self.send_header("Content-Length", "40")
            self.end_headers()
            for _ in range(40):
                time.sleep(0.1)
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
        elif path == "/gzip":
            self._send(200, b"\x1f\x8b not really", Content_Encoding="gzip")
        elif path == "/redirect":  # Location from ?to=..., relative or absolute
            self._send(302, Location=query.removeprefix("to="))
        elif path == "/no-location":
            self._send(302)
        elif path.startswith("/chain/"):  # /chain/3 -> /chain/2 -> /chain/1 -> /chain/0 -> /png
            n = int(path.rsplit("/", 1)[1])
            self._send(307, Location=f"/chain/{n - 1}" if n else "/png")
        elif path == "/loop":
            self._send(301, Location="/loop")
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _reset(request):
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        srv.hits.clear()
        srv.hosts.clear()


def run(url: str, policy: FetchPolicy = LOCAL) -> bytes:
    return asyncio.run(fetch_url(url, policy))


def refused(url: str, policy: FetchPolicy = LOCAL, error: type = FetchError) -> dict:
    with pytest.raises(error) as info:
        run(url, policy)
    details = info.value.details
    assert details["field"] == "image_url"
    assert info.value.message.endswith(".") and "\n" not in info.value.message
    return details


# -- successful fetches ------------------------------------------------------------------------


def test_allowed_network_fetch_returns_the_served_bytes(server):
    assert run(f"{server.base}/png") == PNG
    assert server.hits["/png"] == 1


def test_relative_redirects_up_to_the_limit_are_followed(server):
    assert run(f"{server.base}/redirect?to=/png") == PNG
    assert run(f"{server.base}/chain/2") == PNG  # 3 redirects == max_redirects
    assert server.hits["/png"] == 2


def test_dns_rebinding_defence_connects_to_the_validated_ip(server, monkeypatch):
    calls: list[str] = []

    async def resolve(host: str, port: int):
        calls.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    port = server.server_address[1]
    # images.example.test does not resolve for real, so success means the request went to the
    # IP we validated, carrying the original name in its Host header; the name is looked up once.
    assert run(f"http://images.example.test:{port}/host") == f"images.example.test:{port}".encode()
    assert calls == ["images.example.test"]
    assert server.hosts == [f"images.example.test:{port}"]


@pytest.mark.parametrize("url, ip, sent_url, host, sni", [
    ("https://img.example.com/a.png?x=1", "93.184.216.34", "https://93.184.216.34/a.png?x=1",
     "img.example.com", "img.example.com"),
    ("http://img.example.com:8080/a", "2606:4700::1", "http://[2606:4700::1]:8080/a",
     "img.example.com:8080", None),
    ("https://[2606:4700::1]:443/a", "2606:4700::1", "https://[2606:4700::1]/a",
     "[2606:4700::1]", "2606:4700::1"),
])
def test_requests_are_pinned_to_the_resolved_ip(monkeypatch, url, ip, sent_url, host, sni):
    seen: list[httpx.Request] = []

    async def resolve(name: str, port: int):
        return [ipaddress.ip_address(ip)]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG)

    monkeypatch.setattr(fetch, "_resolve", resolve)
    body = asyncio.run(fetch_url(url, DEFAULT, transport=httpx.MockTransport(handler)))
    assert body == PNG
    (request,) = seen
    assert str(request.url) == sent_url
    assert request.headers["Host"] == host
    assert request.headers["User-Agent"] == "bgremove-fetch/1"
    assert "cookie" not in request.headers and "authorization" not in request.headers
    assert request.extensions.get("sni_hostname") == sni


def test_every_resolved_address_must_be_allowed(server, monkeypatch):
    async def resolve(host: str, port: int):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    details = refused(f"http://mixed.example.test:{server.server_address[1]}/png")
    assert details["reason"] == "blocked_address" and details["address"] == "10.1.2.3"
    assert server.hits["/png"] == 0


# -- refused before connecting ---------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]",
    "[2002:7f00:1::]", "0.0.0.0", "10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254",
    "100.64.0.1", "224.0.0.1", "[fe80::1]", "[fc00::1]",
])
def test_default_policy_refuses_non_public_addresses_without_connecting(server, host):
    details = refused(f"http://{host}:{server.server_address[1]}/png", DEFAULT)
    assert details["reason"] == "blocked_address"
    assert server.hits["/png"] == 0


def test_blocked_message_names_the_address():
    with pytest.raises(FetchError) as info:
        run("http://10.0.0.5/x.png", DEFAULT)
    assert info.value.message == (
        "image_url resolves to a non-public address (10.0.0.5), which this service may not fetch."
    )
    assert http_status(info.value)[0] == 400


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "scheme"),
    ("ftp://example.com/a.png", "scheme"),
    ("gopher://example.com:70/_x", "scheme"),
    ("example.com/a.png", "scheme"),
    ("http://user:pass@127.0.0.1/png", "userinfo"),
    ("http://user@example.com/a.png", "userinfo"),
    ("http:///a.png", "invalid_url"),
    ("http://example.com/" + "a" * 2048, "invalid_url"),
])
def test_bad_urls_are_refused(url, reason):
    assert refused(url)["reason"] == reason


def test_unresolvable_host():
    details = refused("http://nonexistent.invalid/a.png")
    assert details["reason"] == "unresolvable"


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:{port}/png",
    "http://[::1]:{port}/png", "file:///etc/passwd",
])
def test_redirect_to_a_refused_url_is_refused(server, target):
    target = target.format(port=server.server_address[1])
    details = refused(f"{server.base}/redirect?to={target}")
    assert details["reason"] == ("scheme" if target.startswith("file") else "blocked_address")
    assert server.hits["/redirect"] == 1 and server.hits["/png"] == 0


def test_redirect_loop_and_long_chains_stop_at_max_redirects(server):
    details = refused(f"{server.base}/loop")
    assert details == {"field": "image_url", "reason": "too_many_redirects", "limit": 3}
    assert server.hits["/loop"] == 4  # the original request and 3 redirects
    assert refused(f"{server.base}/chain/3")["reason"] == "too_many_redirects"
    no_redirects = FetchPolicy.from_strings(LIMIT, 2.0, 0, ["127.0.0.1/32"])
    assert refused(f"{server.base}/redirect?to=/png", no_redirects)["reason"] == (
        "too_many_redirects")


def test_redirect_without_location_is_a_status_error(server):
    details = refused(f"{server.base}/no-location")
    assert details["reason"] == "http_status" and details["status"] == 302


# -- status, size, time ----------------------------------------------------------------------


def test_404_is_an_http_status_error_without_the_body(server):
    with pytest.raises(FetchError) as info:
        run(f"{server.base}/404")
    assert info.value.details["reason"] == "http_status"
    assert info.value.details["status"] == 404
    assert "secret" not in info.value.message


@pytest.mark.parametrize("path", ["/big-length", "/big-close", "/big-chunked"])
def test_oversize_bodies_are_refused_early(server, path):
    server.done[path] = threading.Event()
    started = time.monotonic()
    details = refused(f"{server.base}{path}", error=PayloadTooLarge)
    assert time.monotonic() - started < 3
    assert details == {"field": "image_url", "reason": "too_large", "limit": LIMIT}
    # The server could only push what the socket buffers took before the client hung up.
    assert server.done[path].wait(5)
    assert server.sent[path] < BIG // 4


def test_payload_too_large_is_a_413(server):
    with pytest.raises(PayloadTooLarge) as info:
        run(f"{server.base}/big-length")
    assert http_status(info.value)[0] == 413


def test_body_exactly_at_the_limit_is_accepted(server):
    assert run(f"{server.base}/png", FetchPolicy.from_strings(len(PNG), 2, 0, ["127.0.0.0/8"]))
    refused(f"{server.base}/png", FetchPolicy.from_strings(len(PNG) - 1, 2, 0, ["127.0.0.0/8"]),
            error=PayloadTooLarge)


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_slow_servers_time_out_within_the_budget(server, path):
    policy = FetchPolicy.from_strings(LIMIT, 0.5, 3, ["127.0.0.1/32"])
    started = time.monotonic()
    details = refused(f"{server.base}{path}", policy)
    assert time.monotonic() - started < 2.5
    assert details["reason"] == "timeout"


def test_refused_connection_is_unreachable():
    policy = FetchPolicy.from_strings(LIMIT, 2.0, 3, ["127.0.0.1/32"])
    closed = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens on that port any more
    assert refused(f"http://127.0.0.1:{port}/png", policy)["reason"] == "unreachable"


def test_compressed_responses_are_refused(server):
    assert refused(f"{server.base}/gzip")["reason"] == "content_encoding"


# -- https: SNI and certificate checks use the real name while connecting to the pinned IP ----


def _tls_pair(name: str) -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, leaf cert PEM, leaf key PEM); the leaf names only `name` (no IP SAN)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def cert(subject: str, key, issuer: str, signer, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256()).public_bytes(pem)

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return (cert("test CA", ca_key, "test CA", ca_key, True),
            cert(name, leaf_key, "test CA", ca_key, False), key_pem)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ca_pem, cert_pem, key_pem = _tls_pair("images.example.test")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    srv = Server()
    srv.sni_names = []
    context.sni_callback = lambda _sock, name, _ctx: srv.sni_names.append(name)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, ssl.create_default_context(cadata=ca_pem.decode())
    srv.shutdown()
    srv.server_close()


def test_https_uses_the_real_name_for_sni_and_certificate_checks(tls_server, monkeypatch):
    srv, client_context = tls_server
    resolved: list[str] = []

    async def resolve(host: str, port: int):
        resolved.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    monkeypatch.setattr(fetch, "_tls_context", lambda: client_context)
    port = srv.server_address[1]
    # The certificate names images.example.test only (no IP), so this works only if the TLS
    # handshake to 127.0.0.1 sends that name and checks the certificate against it.
    body = run(f"https://images.example.test:{port}/host")
    assert body == f"images.example.test:{port}".encode()
    assert resolved == ["images.example.test"]
    assert srv.sni_names[-1] == "images.example.test"
    # Same IP, another name: the certificate does not match, so the fetch fails.
    assert refused(f"https://other.example.test:{port}/host")["reason"] == "unreachable"
    assert srv.sni_names[-1] == "other.example.test"
    assert srv.hits["/host"] == 1


# -- policy ----------------------------------------------------------------------------------


def test_policy_from_strings():
    policy = FetchPolicy.from_strings(10, 1.5, 2, ["10.0.0.0/8", " fd00::/8 ", ""])
    assert policy.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert (policy.max_bytes, policy.timeout_s, policy.max_redirects) == (10, 1.5, 2)
    for bad in ("10.0.0.0/33", "not-a-network", "10.0.0.1/8"):
        with pytest.raises(ValueError):
            FetchPolicy.from_strings(10, 1.5, 2, [bad])


def test_allowed_networks_also_cover_ipv4_mapped_addresses(server):
    port = server.server_address[1]
    policy = FetchPolicy.from_strings(LIMIT, 2.0, 0, ["127.0.0.1/32"])
    # ::ffff:127.0.0.1 is 127.0.0.1, so an allowed 127.0.0.1/32 lets it through (then the
    # connection may or may not work depending on the host's IPv6 support; any outcome but
    # blocked_address is fine).
    try:
        run(f"http://[::ffff:127.0.0.1]:{port}/png", policy)
    except FetchError as exc:
        assert exc.details["reason"] != "blocked_address"


def test_module_does_not_import_ray():
    source = Path(fetch.__file__).read_text()
    assert "import ray" not in source and "from ray" not in source


def test_a_large_input_is_streamed_to_a_file_never_held_whole(monkeypatch, tmp_path):
    """With a sink, the body goes to the file chunk by chunk (nothing returned, nothing
    accumulated), and the size limit still stops it."""
    async def resolve(name: str, port: int):
        return [ipaddress.ip_address("93.184.216.34")]

    chunk = bytes(range(256)) * 16  # 4 KiB
    written: list[int] = []

    class Sink:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            written.append(len(data))
            return self.f.write(data)

    async def stream():
        for _ in range(20):  # 80 KiB, as a server sends it
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream())

    monkeypatch.setattr(fetch, "_resolve", resolve)
    with open(tmp_path / "clip", "wb") as out:
        body = asyncio.run(fetch_url("https://v.example.com/c.mp4", DEFAULT, sink=Sink(out),
                                     transport=httpx.MockTransport(handler)))
    assert body == b"" and (tmp_path / "clip").read_bytes() == chunk * 20
    assert len(written) > 1 and max(written) <= len(chunk) * 2  # as it arrived
    small = dataclasses.replace(DEFAULT, max_bytes=10_000)
    with pytest.raises(PayloadTooLarge), open(tmp_path / "big", "wb") as out:
        asyncio.run(fetch_url("https://v.example.com/c.mp4", small, sink=out,
                              transport=httpx.MockTransport(handler)))
    assert (tmp_path / "big").stat().st_size <= 10_000
