"""Answers for the ``cluster.local`` zone, computed from a :class:`ServiceCatalog` (no I/O per query).

============================================  =====================================================
name                                          answer
============================================  =====================================================
``<svc>.<ns>.svc.<zone>`` A/AAAA               the ClusterIP; headless: every endpoint's address
``<svc>.<ns>.svc.<zone>`` (ExternalName)       CNAME ``externalName`` (for every query type)
``_<port>._tcp.<svc>.<ns>.svc.<zone>`` SRV     one record per endpoint: its target port, weight, and
                                               ``<endpoint>.<svc>.<ns>.svc.<zone>`` (A in additional)
``<endpoint>.<svc>.<ns>.svc.<zone>`` A/AAAA    that endpoint's address
unknown names in the zone                     NXDOMAIN (SOA in authority, for negative caching)
names outside the zone                        REFUSED (we are authoritative for the zone only)
============================================  =====================================================

``<port>`` is the port's name, or its number (unnamed ports, and as an alias of named ones).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from discovery.services.catalog import ServiceCatalog
from discovery.services.endpoints import Endpoint
from discovery.services.model import CLUSTER_DOMAIN, Service, ServiceType

DEFAULT_TTL = 5
IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
CNAME = dns.rdatatype.CNAME
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS
ANY = dns.rdatatype.ANY


class ZoneAnswers:
    """Builds responses for one zone (``cluster.local`` by default) from a catalog.

    Not thread-safe: the DNS server calls it on its catalog's event loop.
    """

    def __init__(self, catalog: ServiceCatalog, *, domain: str = CLUSTER_DOMAIN, ttl: int = DEFAULT_TTL) -> None:
        self._catalog = catalog
        self.zone = dns.name.from_text(domain)
        self._ttl = ttl
        self._nameserver = dns.name.from_text("ns.dns", self.zone)
        self._svc = dns.name.from_text("svc", self.zone)

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        """The response to one query message."""
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if not qname.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        found = self._lookup(qname, qtype, response)
        if not found:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if not response.answer:
            response.authority.append(self._soa())
        return response

    # -- lookups: True when the name exists (answers added for the type, if any) ------------------------------

    def _lookup(self, qname: dns.name.Name, qtype: int, response: dns.message.Message) -> bool:
        if qname == self.zone:
            if qtype in (SOA, ANY):
                response.answer.append(self._soa())
            if qtype in (NS, ANY):
                response.answer.append(self._rrset(self.zone, NS, [self._nameserver.to_text()]))
            return True
        if qname == self._nameserver:
            return True
        if not qname.is_subdomain(self._svc):
            return False
        labels = [label.decode().lower() for label in qname.relativize(self._svc).labels]
        # labels are in DNS order: [..., <svc>, <ns>]
        if len(labels) == 1:
            return any(s.namespace == labels[0] for s in self._catalog.services)  # an empty non-terminal
        namespace, name = labels[-1], labels[-2]
        service = self._catalog.service(namespace, name)
        if service is None:
            return False
        owner = qname
        rest = labels[:-2]
        if not rest:
            return self._service_records(service, owner, qtype, response)
        if len(rest) == 2 and rest[0].startswith("_") and rest[1] == "_tcp":
            return self._srv_records(service, rest[0][1:], owner, qtype, response)
        if len(rest) == 1 and rest[0] == "_tcp":
            return True  # empty non-terminal above the SRV names
        if len(rest) == 1:
            return self._endpoint_records(service, rest[0], owner, qtype, response)
        return False

    def _service_records(self, service: Service, owner: dns.name.Name, qtype: int,
                         response: dns.message.Message) -> bool:
        if service.type is ServiceType.EXTERNAL_NAME:
            assert service.external_name is not None
            response.answer.append(self._rrset(owner, CNAME, [service.external_name + "."]))
            return True
        if service.headless:
            endpoints = self._catalog.endpoints(*service.key)
            addresses = list(endpoints.addresses) if endpoints is not None else []
        else:
            addresses = [service.virtual_ip] if service.virtual_ip is not None else []
        self._address_records(owner, qtype, addresses, response.answer)
        return True

    def _srv_records(self, service: Service, port_label: str, owner: dns.name.Name, qtype: int,
                     response: dns.message.Message) -> bool:
        port = service.port(port_label)
        if port is None or service.type is ServiceType.EXTERNAL_NAME:
            return False
        if qtype not in (SRV, ANY):
            return True
        endpoints = self._catalog.endpoints(*service.key)
        found = endpoints.for_port(port) if endpoints is not None else ()
        if not found:
            return True
        base = dns.name.from_text(f"{service.name}.{service.namespace}", self._svc)
        records = []
        for endpoint in found:
            target = dns.name.from_text(endpoint.hostname, base)
            records.append(f"0 {endpoint.instance.weight} {endpoint.port} {target.to_text()}")
            self._address_records(target, ANY, [endpoint.address], response.additional)
        response.answer.append(self._rrset(owner, SRV, records))
        return True

    def _endpoint_records(self, service: Service, hostname: str, owner: dns.name.Name, qtype: int,
                          response: dns.message.Message) -> bool:
        endpoints = self._catalog.endpoints(*service.key)
        matching: Iterable[Endpoint] = (
            e for entry in (endpoints.ports if endpoints is not None else ()) for e in entry.endpoints
            if e.hostname == hostname
        )
        addresses = sorted({e.address for e in matching})
        if not addresses:
            return False
        self._address_records(owner, qtype, addresses, response.answer)
        return True

    # -- record helpers ------------------------------------------------------------------------------------------

    def _address_records(self, owner: dns.name.Name, qtype: int, addresses: Iterable[str],
                         section: list[dns.rrset.RRset]) -> None:
        v4: list[str] = []
        v6: list[str] = []
        for address in addresses:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                continue  # a hostname instance address cannot be an A record
            (v4 if parsed.version == 4 else v6).append(address)
        if qtype in (A, ANY) and v4:
            section.append(self._rrset(owner, A, v4))
        if qtype in (AAAA, ANY) and v6:
            section.append(self._rrset(owner, AAAA, v6))

    def _rrset(self, owner: dns.name.Name, rdtype: int, texts: Iterable[str]) -> dns.rrset.RRset:
        kind = dns.rdatatype.RdataType.make(rdtype)
        rrset = dns.rrset.RRset(owner, IN, kind)
        for text in texts:
            rrset.add(dns.rdata.from_text(IN, kind, text, origin=dns.name.root, relativize=False), self._ttl)
        return rrset

    def _soa(self) -> dns.rrset.RRset:
        serial = self._catalog.version % 2**32
        text = f"{self._nameserver.to_text()} hostmaster.{self.zone.to_text()} {serial} 60 10 3600 {self._ttl}"
        return self._rrset(self.zone, SOA, [text])
