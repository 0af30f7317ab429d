"""Fetch a user-supplied `image_url` without letting the user aim the service at its own network.

Threat model: the URL (and every redirect it leads to) is attacker-controlled. Refused: non-HTTP
schemes, credentials in URLs, and hosts that resolve to any non-public address (loopback, private,
link-local / cloud metadata, multicast, reserved; IPv4-mapped and 6to4 IPv6 unwrapped) unless an
operator allows that network. We connect to the IP we validated, so DNS rebinding cannot swap it
afterwards, and bound the fetch in bytes and wall time so a slow or huge response cannot tie it up.
`post_json` applies the same URL and address rules to outgoing webhook POSTs (`webhook_url`),
which never follow redirects.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import BinaryIO

import httpx

from pipelines.errors import FetchError, PayloadTooLarge

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Not public although Python 3.11's `is_global` says so: deprecated site-local IPv6 and the
# IPv6 documentation prefix.
_ALSO_BLOCKED = (ipaddress.ip_network("fec0::/10"), ipaddress.ip_network("3fff::/20"))
HEADERS = {"User-Agent": "bgremove-fetch/1", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float = 10.0  # total wall time budget for the whole fetch incl. redirects
    max_redirects: int = 3
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(
        cls, max_bytes: int, timeout_s: float, max_redirects: int, allowed_networks: list[str]
    ) -> FetchPolicy:
        """Build a policy from settings; raises ValueError on a bad CIDR (e.g. "10.0.0.1/8")."""
        nets = tuple(ipaddress.ip_network(n.strip()) for n in allowed_networks if n.strip())
        return cls(max_bytes, timeout_s, max_redirects, nets)


def _error(message: str, reason: str, *, field: str = "image_url", **extra: object) -> FetchError:
    return FetchError(message, {"field": field, "reason": reason, **extra})


def _parse(raw: str, base: httpx.URL | None = None, field: str = "image_url") -> httpx.URL:
    """Rule 1: absolute http(s), a host, no userinfo, <= MAX_URL_LENGTH; `base`: for a Location.
    `field` names the request field in messages and details (image_url, webhook_url)."""
    too_long = _error(f"{field} is longer than {MAX_URL_LENGTH} characters.", "invalid_url",
                      field=field, limit=MAX_URL_LENGTH)
    if len(raw) > MAX_URL_LENGTH:
        raise too_long
    try:
        url = base.join(raw) if base is not None else httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise _error(f"{field} is not a valid URL.", "invalid_url", field=field) from None
    if len(str(url)) > MAX_URL_LENGTH:
        raise too_long
    if url.scheme not in DEFAULT_PORTS:
        raise _error(f"{field} must use http or https, not {url.scheme or 'no scheme'!r}.",
                     "scheme", field=field, scheme=url.scheme)
    if not url.raw_host:
        raise _error(f"{field} has no host.", "invalid_url", field=field)
    if url.userinfo:
        raise _error(f"{field} may not contain a user name or password.", "userinfo", field=field)
    return url


def _is_allowed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Public (after unwrapping IPv4-mapped / 6to4 IPv6), or inside an operator-allowed network."""
    checked: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            checked = [ip.ipv4_mapped]
        elif ip.sixtofour is not None:  # 2002:7f00:1:: is "global" but embeds 127.0.0.1
            checked.append(ip.sixtofour)
    if any(checked[0] in net or ip in net for net in networks):
        return True
    return all(a.is_global and not (a.is_multicast or a.is_reserved or a.is_unspecified)
               and not any(a in net for net in _ALSO_BLOCKED) for a in checked)


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """All addresses `host` resolves to, without blocking the event loop (also parses literals,
    including legacy forms such as 2130706433 or 0x7f.1)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def _pin(url: httpx.URL, policy: FetchPolicy,
               field: str = "image_url") -> tuple[httpx.URL, dict, dict]:
    """Rules 2-3: validate every address `url` resolves to; return the URL rewritten to the first
    one, with the headers/extensions that keep Host, SNI and certificate checks on the real name."""
    host = url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 literals come without brackets
    port = url.port or DEFAULT_PORTS[url.scheme]
    try:
        addresses = await _resolve(host, port)
    except (OSError, UnicodeError, ValueError):
        addresses = []
    if not addresses:
        raise _error(f"{field} host {url.host!r} could not be resolved.", "unresolvable",
                     field=field, host=url.host)
    for ip in addresses:
        if not _is_allowed(ip, policy.allowed_networks):
            raise _error(f"{field} resolves to a non-public address ({ip}), which this service "
                         "may not fetch.", "blocked_address", field=field, host=url.host,
                         address=str(ip))
    host_header = f"[{host}]" if ":" in host else host
    if url.port is not None and url.port != DEFAULT_PORTS[url.scheme]:
        host_header += f":{url.port}"
    # Checked in httpcore 1.0.9 / anyio 4: AsyncHTTPConnection._connect passes the "sni_hostname"
    # extension as start_tls(server_hostname=...) (the URL's host, i.e. the IP, only without it);
    # anyio's TLSStream.wrap hands it to SSLContext.wrap_bio(server_hostname=...), and our context
    # (httpx.create_ssl_context: CERT_REQUIRED, check_hostname=True) makes OpenSSL send it as SNI
    # and verify the certificate against the real name, not the IP (tested in test_fetch.py).
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return url.copy_with(host=str(addresses[0])), {"Host": host_header}, extensions


async def _read_body(response: httpx.Response, max_bytes: int,
                     sink: BinaryIO | None = None) -> bytes:
    """Rule 6: refuse a declared oversize body at once, else stream and stop past `max_bytes`.
    With `sink`, the body goes there chunk by chunk (never whole in memory) and b"" returns."""
    too_large = PayloadTooLarge(
        f"image_url's response is larger than the {max_bytes}-byte limit.",
        {"field": "image_url", "reason": "too_large", "limit": max_bytes})
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # we ask for identity; decoding could explode in size
        raise _error(f"image_url's response is compressed ({encoding}), which is not accepted.",
                     "content_encoding", encoding=encoding)
    body, size = bytearray(), 0
    async for chunk in response.aiter_bytes():  # identity only, so no decompression happens
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        if sink is None:
            body += chunk
        else:
            sink.write(chunk)
    return bytes(body)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default context (certifi CAs, check_hostname on), built once: loading the CA bundle
    costs ~30 ms of event-loop time, which a new client per hop would pay each time."""
    return httpx.create_ssl_context(trust_env=False)


async def _fetch(url: httpx.URL, policy: FetchPolicy,
                 transport: httpx.AsyncBaseTransport | None,
                 sink: BinaryIO | None = None) -> bytes:
    for hop in range(policy.max_redirects + 1):
        target, headers, extensions = await _pin(url, policy)
        # A fresh client (and, without an injected transport, a fresh connection pool) per hop:
        # no cookies carried over, and no TLS connection reused for a different SNI name.
        client = httpx.AsyncClient(transport=transport, headers=HEADERS, trust_env=False,
                                   verify=_tls_context(), follow_redirects=False,
                                   timeout=policy.timeout_s)
        try:
            async with client.stream("GET", target, headers=headers,
                                     extensions=extensions) as response:
                location = response.headers.get("Location")
                if response.status_code in REDIRECT_STATUSES and location:
                    url = _parse(location, base=url)
                    continue
                if not 200 <= response.status_code < 300:
                    raise _error(f"image_url answered with HTTP status {response.status_code}.",
                                 "http_status", status=response.status_code, redirects=hop)
                return await _read_body(response, policy.max_bytes, sink)
        finally:
            if transport is None:
                await client.aclose()
    raise _error(f"image_url redirected more than {policy.max_redirects} times.",
                 "too_many_redirects", limit=policy.max_redirects)


async def fetch_url(url: str, policy: FetchPolicy, *,
                    transport: httpx.AsyncBaseTransport | None = None,
                    sink: BinaryIO | None = None) -> bytes:
    """The body of `url` (following up to `policy.max_redirects` redirects, each re-validated);
    with `sink` (an open binary file), written there as it arrives instead (b"" returns), so a
    large video never sits whole in memory.

    Raises FetchError (400) when the URL or a redirect is refused or the fetch fails, and
    PayloadTooLarge (413) past `policy.max_bytes`. `transport` is for tests and is not closed.
    """
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(_parse(url), policy, transport, sink)
    except (TimeoutError, httpx.TimeoutException):
        raise _error(f"image_url could not be fetched within {policy.timeout_s:g} s.",
                     "timeout", limit=policy.timeout_s) from None
    except httpx.TransportError as exc:  # connect refused/reset, TLS failure, protocol error
        raise _error("image_url could not be fetched: the connection to its server failed.",
                     "unreachable", error=type(exc).__name__) from None


MAX_POST_RESPONSE_BYTES = 64 * 1024
POST_HEADERS = {**HEADERS, "Content-Type": "application/json"}


async def _post(url: httpx.URL, body: bytes, headers: dict, policy: FetchPolicy,
                transport: httpx.AsyncBaseTransport | None, field: str,
                max_response_bytes: int) -> tuple[int, bytes]:
    target, pinned, extensions = await _pin(url, policy, field)
    sent = httpx.Headers(POST_HEADERS)
    for name, value in headers.items():  # case-insensitive override of the defaults
        sent[name] = value
    sent["Host"] = pinned["Host"]  # last: a caller cannot aim the request at another name
    client = httpx.AsyncClient(transport=transport, trust_env=False, verify=_tls_context(),
                               follow_redirects=False, timeout=policy.timeout_s)
    try:
        async with client.stream("POST", target, content=body, headers=sent,
                                 extensions=extensions) as response:
            kept = bytearray()
            # Raw bytes: nothing is decompressed, and we stop reading past the cap (the
            # connection is then closed rather than drained).
            async for chunk in response.aiter_raw():
                kept += chunk
                if len(kept) >= max_response_bytes:
                    break
            return response.status_code, bytes(kept[:max_response_bytes])
    finally:
        if transport is None:
            await client.aclose()


async def check_url(url: str, policy: FetchPolicy, field: str) -> None:
    """The fetch rules applied ahead of time (when a URL is accepted, before it is used):
    FetchError for a URL that fetching or posting would refuse (invalid_url, scheme, userinfo,
    blocked_address). A host that does not resolve now is let through: DNS may answer later,
    and the attempt then reports it."""
    parsed = _parse(url, field=field)
    try:
        async with asyncio.timeout(policy.timeout_s):
            await _pin(parsed, policy, field)
    except TimeoutError:
        return
    except FetchError as exc:
        if (exc.details or {}).get("reason") != "unresolvable":
            raise


async def post_json(url: str, body: bytes, headers: dict, policy: FetchPolicy, *,
                    transport: httpx.AsyncBaseTransport | None = None,
                    field: str = "webhook_url",
                    max_response_bytes: int = MAX_POST_RESPONSE_BYTES) -> tuple[int, bytes]:
    """POST `body` (JSON) to `url` under the fetch rules; (status, first <= 64 KiB of the body).

    The URL must pass the same checks as `fetch_url` (http/https, no credentials, every resolved
    address public or operator-allowed) and the connection is pinned to the validated IP with the
    real name in Host and SNI. Redirects are NOT followed: a 3xx comes back as its status. Any
    status comes back as is; `policy.timeout_s` bounds resolution, connect, send and read
    together. Raises FetchError (details["field"] == `field`) when the URL is refused (reasons
    invalid_url, scheme, userinfo, blocked_address), cannot be resolved ("unresolvable"), the
    server cannot be reached ("unreachable") or it runs out of time ("timeout").
    `transport` is for tests and is not closed.
    """
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _post(_parse(url, field=field), body, headers, policy, transport, field,
                               max_response_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise _error(f"{field} did not answer within {policy.timeout_s:g} s.", "timeout",
                     field=field, limit=policy.timeout_s) from None
    except httpx.TransportError as exc:  # connect refused/reset, TLS failure, protocol error
        raise _error(f"{field} could not be reached: the connection to its server failed.",
                     "unreachable", field=field, error=type(exc).__name__) from None
