"""POSTing one delivery, to an address checked just before and connected to directly.

The URL's host is resolved on every attempt, every address it resolves to is checked against
`base.addresses` (and the operator's allowlist), and the connection goes to the checked address
itself: the request names the IP, with the host in the Host header and in TLS's SNI (so the
certificate is still verified for the name). No second lookup happens, so a DNS answer that
changes between the check and the connection (rebinding) cannot slip through. Redirects are not
followed: a 3xx is a failed attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from base.addresses import Allowlist, IPAddress, refusal
from webhooks.schedule import TIMEOUT_S

Resolver = Callable[[str, int], Awaitable[list[str]]]
EXCERPT_BYTES = 1024


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Refused(Exception):
    """The URL may not be called: its scheme, or an address it resolves to."""


@dataclass(frozen=True)
class Answer:
    status: int | None
    latency_ms: int
    excerpt: str | None = None
    error: str | None = None
    retry_after: str | None = None


class Sender:
    def __init__(
        self,
        *,
        allow_http: bool = False,
        allowlist: Allowlist | None = None,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.allow_http = allow_http
        self.allowlist = allowlist or Allowlist()
        self.resolver = resolver
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(follow_redirects=False, timeout=timeout_s, transport=transport)

    async def close(self) -> None:
        await self._client.aclose()

    async def address_of(self, url: str) -> tuple[str, int, IPAddress]:
        """(host, port, the one address to connect to), or Refused."""
        parts = urlsplit(url)
        if parts.scheme not in (("https", "http") if self.allow_http else ("https",)):
            raise Refused(f"{parts.scheme or 'no'} scheme: webhooks go to https URLs")
        host = parts.hostname
        if not host or parts.username is not None or parts.password is not None:
            raise Refused("a webhook URL needs a host and no credentials")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                found = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
            except (OSError, ValueError) as exc:
                raise Refused(f"{host} does not resolve: {exc}") from None
        if not found:
            raise Refused(f"{host} does not resolve")
        for address in found:  # every answer must pass: a mixed answer is refused whole
            reason = refusal(address)
            if reason and not self.allowlist.allows(host, address):
                raise Refused(f"{host} resolves to {reason}")
        return host, port, found[0]

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        started = time.monotonic()
        try:
            host, port, address = await self.address_of(url)
        except Refused as exc:
            return Answer(status=None, latency_ms=0, error=f"refused: {exc}")
        parts = urlsplit(url)
        literal = f"[{address}]" if address.version == 6 else str(address)
        direct = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        default_port = port == (443 if parts.scheme == "https" else 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:
            host_header = f"[{host}]:{port}"
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self._client.build_request(
                    "POST", direct, headers={**headers, "host": host_header}, content=body, extensions=extensions
                )
                response = await self._client.send(request, stream=True)
                try:
                    excerpt = b""
                    async for chunk in response.aiter_bytes():
                        excerpt += chunk
                        if len(excerpt) >= EXCERPT_BYTES:
                            break
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return Answer(status=None, latency_ms=_ms(started), error=f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Answer(status=None, latency_ms=_ms(started), error=f"{type(exc).__name__}: {exc}"[:300])
        return Answer(
            status=response.status_code,
            latency_ms=_ms(started),
            excerpt=excerpt[:EXCERPT_BYTES].decode("utf-8", "replace"),
            retry_after=response.headers.get("retry-after"),
        )


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
