"""No SSRF: a webhook is never sent to an address inside the network, whatever its URL's name
resolves to, on any attempt; only what the operator's allowlist names is reached anyway; and the
connection goes to the address that was checked (no second lookup)."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from base.addresses import Allowlist, refusal
from webhooks.client import Refused, Sender

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",  # benchmarking
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_inside_the_network_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def resolving(*answers: list[str]):  # type: ignore[no-untyped-def]
    """A resolver giving each answer in turn (the last one from then on), counting its lookups."""
    given = list(answers)
    calls: list[str] = []

    async def resolve(host: str, _port: int) -> list[str]:
        calls.append(host)
        return given.pop(0) if len(given) > 1 else given[0]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["169.254.169.254"], ["93.184.215.14", "10.0.0.7"], ["::1"]])
async def test_a_name_that_resolves_inside_the_network_is_refused(answer: list[str]) -> None:
    seen: list[httpx.Request] = []
    sender = Sender(resolver=resolving(answer), transport=recording_transport(seen))
    with pytest.raises(Refused):
        await sender.address_of("https://hooks.example.com/h")
    posted = await sender.post("https://hooks.example.com/h", {}, b"{}")
    assert posted.status is None and posted.error and posted.error.startswith("refused") and not seen
    await sender.close()


async def test_the_connection_goes_to_the_checked_address_and_a_changed_answer_is_checked_again() -> None:
    seen: list[httpx.Request] = []
    resolver = resolving(["93.184.215.14"], ["169.254.169.254"])  # rebinding: public first, metadata next
    sender = Sender(resolver=resolver, transport=recording_transport(seen))
    first = await sender.post("https://hooks.example.com:8443/in?x=1", {"webhook-id": "msg_1"}, b"{}")
    assert first.status == 200
    (request,) = seen
    assert request.url.host == "93.184.215.14" and request.url.port == 8443 and request.url.path == "/in"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"  # TLS verifies the name, not the IP
    second = await sender.post("https://hooks.example.com:8443/in", {}, b"{}")
    assert second.status is None and "169.254.169.254" in (second.error or "") and len(seen) == 1
    assert resolver.calls == ["hooks.example.com", "hooks.example.com"]  # type: ignore[attr-defined]
    await sender.close()


async def test_plain_http_only_when_the_operator_allows_it_and_the_allowlist_opens_internal_receivers() -> None:
    seen: list[httpx.Request] = []
    strict = Sender(resolver=resolving(["93.184.215.14"]), transport=recording_transport(seen))
    assert (await strict.post("http://hooks.example.com/h", {}, b"{}")).error == (
        "refused: http scheme: webhooks go to https URLs"
    )
    local = Sender(
        allow_http=True,
        allowlist=Allowlist(["127.0.0.1/32", "hooks.internal"]),
        resolver=resolving(["10.9.8.7"]),
        transport=recording_transport(seen),
    )
    assert (await local.post("http://127.0.0.1:9000/h", {}, b"{}")).status == 200
    assert (await local.post("http://hooks.internal/h", {}, b"{}")).status == 200
    assert (await local.post("http://other.internal/h", {}, b"{}")).status is None  # 10.9.8.7, not allowed
    assert [r.url.host for r in seen] == ["127.0.0.1", "10.9.8.7"]
    for sender in (strict, local):
        await sender.close()


async def test_redirects_are_not_followed() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})

    sender = Sender(resolver=resolving(["93.184.215.14"]), transport=httpx.MockTransport(handle))
    answer = await sender.post("https://hooks.example.com/h", {}, b"{}")
    assert answer.status == 302 and len(seen) == 1
    await sender.close()
