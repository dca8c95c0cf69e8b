"""Finding 7: IPv6 scope ids of any content (ESC, newline, NUL, 100 KB) were accepted in instance addresses; one
such instance broke every AAAA and SRV answer of its Service, and the CLI tables passed terminal escape sequences
through. Now a scope id is an interface name (1-15 of ``[A-Za-z0-9_.-]``), the error does not echo it, and an
address no DNS record can hold is left out of the answer instead of breaking it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from discovery import AsyncRegistry, Instance, Registry, ValidationError
from discovery.cli import main
from discovery.services import HEADLESS, Service, ServiceCatalog, ServicePort, ServiceStore
from discovery.services.dns import DnsServer
from tests.services.conftest import private_ranges

HOSTILE = ["fe80::1%\x1b[31mred", "fe80::1%a\nb", "fe80::1%a\0b", "::1%" + "x" * 100_000, "fe80::1%", "fe80::1%-x",
           "fe80::1%a b"]


@pytest.mark.parametrize("address", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_scope_ids_are_refused_without_echo(address: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Instance("web", "w-1", address, 80)
    message = str(refused.value)
    assert refused.value.field == "address" and len(message) < 200 and "\x1b" not in message and "\0" not in message


def test_an_interface_scope_id_is_still_accepted() -> None:
    assert Instance("web", "w-1", "fe80::1%eth0", 80).address == "fe80::1%eth0"
    assert Instance("web", "w-2", "fe80::1%3", 80).address == "fe80::1%3"


@pytest.fixture
async def dns_zone(memory_url: str) -> AsyncIterator[tuple[AsyncRegistry, ServiceCatalog, DnsServer]]:
    async with AsyncRegistry.connect(memory_url) as registry:
        store = ServiceStore(registry.backend, private_ranges())
        await store.apply(Service("web", "shop", selector={"app": "web"}, cluster_ip=HEADLESS,
                                  ports=(ServicePort(80, 8080, name="http"),)))
        catalog = ServiceCatalog(registry, store, rescan_interval=0.1)
        await catalog.start()
        server = DnsServer(catalog, port=0)
        await server.start()
        try:
            yield registry, catalog, server
        finally:
            await server.close()
            await catalog.close()


async def test_a_scoped_address_does_not_break_the_answers_of_its_service(
    dns_zone: tuple[AsyncRegistry, ServiceCatalog, DnsServer],
) -> None:
    registry, catalog, server = dns_zone
    for number, address in enumerate(("fd00::1", "fe80::1%eth0", "10.0.0.1")):
        await registry.register(Instance("web-pods", f"web-{number}", address, 8080, namespace="shop",
                                         labels={"app": "web"}))
    await catalog.wait_until(lambda c: len(c.endpoints("shop", "web") or ()) == 3, 10)

    async def ask(name: str, rdtype: str) -> dns.message.Message:
        return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=server.port,
                                        timeout=3)

    aaaa = await ask("web.shop.svc.cluster.local", "AAAA")
    assert aaaa.rcode() == dns.rcode.NOERROR
    assert sorted(r.to_text() for rrset in aaaa.answer for r in rrset) == ["fd00::1"]
    srv = await ask("_http._tcp.web.shop.svc.cluster.local", "SRV")
    assert sorted(r.to_text() for rrset in srv.answer for r in rrset) == [
        f"0 1 8080 web-{n}.web.shop.svc.cluster.local." for n in range(3)]
    glue = sorted(r.to_text() for rrset in srv.additional for r in rrset)
    assert glue == ["10.0.0.1", "fd00::1"], "the scoped address gets no glue record"


def test_cli_tables_never_carry_escape_sequences(memory_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Registry.connect(memory_url) as registry:
        for number, address in enumerate(HOSTILE[:3]):
            try:
                registry.register(Instance("web", f"w-{number}", address, 80))
            except ValidationError:
                continue
        registry.register(Instance("web", "fine", "10.0.0.1", 80))
        assert main(["--url", memory_url, "list", "web", "--all"]) == 0
    shown = capsys.readouterr().out
    assert "fine" in shown and "\x1b" not in shown and "\0" not in shown
