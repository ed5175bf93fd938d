"""Which network addresses a webhook may reach: the public internet, and what an operator allows.

A webhook URL is a user's to choose, so without this check a user could make Tessera's own
servers call what only they can reach (SSRF): the cloud's metadata service, a database on
localhost, a router's admin page. Every address that is not global unicast is refused (loopback,
private, link-local with 169.254.169.254, CGNAT 100.64/10, multicast, reserved, unspecified, and
IPv6 forms that embed an IPv4 address: IPv4-mapped, 6to4, Teredo, NAT64), unless the operator's
allowlist (TESSERA_WEBHOOK_ALLOWLIST: CIDRs or host names) names it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class Allowlist:
    """An operator's internal receivers: networks (`10.0.0.0/8`, `127.0.0.1`) and host names."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(address in n for n in self.networks)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's client, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not be sent to `address`; None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "an IPv6 address with a zone"
        embedded = _embedded_v4(address)
        if embedded is not None:
            reason = refusal(embedded)
            return f"an IPv6 address embedding {embedded} ({reason})" if reason else None
    checks = (
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata lives there)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        (
            "shared address space (CGNAT, 100.64.0.0/10)",
            isinstance(address, ipaddress.IPv4Address) and address in _CGNAT,
        ),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    for reason, hit in checks:
        if hit:
            return f"{address} is {reason}"
    return None
