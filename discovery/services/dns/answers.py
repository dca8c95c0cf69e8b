"""Answers for the ``cluster.local`` zone, computed from a :class:`ServiceCatalog` (no I/O per query).

============================================  =====================================================
name                                          answer
============================================  =====================================================
``<svc>.<ns>.svc.<zone>`` A/AAAA               the ClusterIP; headless: every endpoint's address
``<svc>.<ns>.svc.<zone>`` (ExternalName)       CNAME ``externalName`` (for every query type)
``_<port>._tcp.<svc>.<ns>.svc.<zone>`` SRV     one record per endpoint: its target port, weight, and
                                               ``<endpoint>.<svc>.<ns>.svc.<zone>`` (A in additional)
``<endpoint>.<svc>.<ns>.svc.<zone>`` A/AAAA    that endpoint's address
any existing name, type ANY                   one synthesized HINFO ``"RFC8482" ""`` (RFC 8482)
unknown names in the zone                     NXDOMAIN (SOA in authority, for negative caching)
names outside the zone                        REFUSED (we are authoritative for the zone only)
============================================  =====================================================

``<port>`` is the port's name, or its number (unnamed ports, and as an alias of named ones). Names are
compared as ASCII only: a label with any other byte names nothing here (so a Unicode look-alike such as the
Kelvin sign never matches ``k``). One address that cannot be a record (e.g. an IPv6 address with a scope id)
is left out of the answer; it never breaks the answer for the other endpoints.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.HINFO
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from discovery.services.catalog import ServiceCatalog
from discovery.services.endpoints import Endpoint
from discovery.services.model import CLUSTER_DOMAIN, Service, ServiceType

log = logging.getLogger("discovery.services.dns")

DEFAULT_TTL = 5
#: The largest UDP payload we answer with and advertise (the DNS Flag Day 2020 value: no IP fragmentation).
MAX_UDP_PAYLOAD = 1232
IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
CNAME = dns.rdatatype.CNAME
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS
ANY = dns.rdatatype.ANY
HINFO = dns.rdatatype.HINFO
#: A query type no name has records of: used to ask "does this name exist?" without collecting records.
_EXISTS = dns.rdatatype.NONE
#: Glue: both address families (not a wire type, so never a query type).
_BOTH = -1
#: Per-endpoint records kept across catalog versions (an endpoint set of 3,000 is rebuilt from this, not text).
_ENDPOINT_MEMO_SIZE = 20_000
#: Whole SRV record sets kept across catalog versions (a change elsewhere does not rebuild this set).
_SRV_MEMO_SIZE = 256
#: SRV answers with more endpoints carry no A/AAAA glue in the additional section (the client asks for it).
GLUE_LIMIT = 64
# The smallest wire size of one record in an answer (owner as a 2-byte pointer, type, class, TTL, length, data):
# more records than fit the size limit at this size mean a truncated answer without building a single one.
_MIN_SRV_SIZE = 2 + 10 + 6 + 4
_MIN_ADDRESS_SIZE = 2 + 10 + 4

_EndpointKey = tuple[str, str, str, str, int, int]  # zone-relative base, hostname, address, port, weight
_EndpointRecords = tuple[dns.rdata.Rdata, dns.name.Name, dns.rrset.RRset | None]


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
        self._endpoint_memo: dict[_EndpointKey, _EndpointRecords] = {}
        self._srv_memo: dict[tuple[dns.name.Name, tuple[Endpoint, ...]], tuple[dns.rrset.RRset, list[dns.rrset.RRset]]]
        self._srv_memo = {}
        self._size_limit: int | None = None
        #: Records left out because their data could not be a record (see the module docs).
        self.skipped_records = 0

    @property
    def version(self) -> int:
        """The catalog version the answers reflect (answers may be cached per version)."""
        return self._catalog.version

    def respond(self, query: dns.message.Message, *, size_limit: int | None = None) -> dns.message.Message:
        """The response to one query message (raises ``dns.exception.FormError`` for a response message).

        With ``size_limit`` (the bytes the reply may take), an answer that certainly cannot fit is not built:
        the response comes back empty with TC set.
        """
        self._size_limit = size_limit
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR)
            response.question = []  # never echo a pile of questions back
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass not in (IN, dns.rdataclass.ANY) or not qname.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        if qtype == ANY:  # RFC 8482: a minimal answer, never every record set (amplification)
            scratch = dns.message.make_response(query)
            found = self._lookup(qname, _EXISTS, scratch)
            if found:
                hinfo = dns.rdtypes.ANY.HINFO.HINFO(IN, HINFO, b"RFC8482", b"")  # type: ignore[no-untyped-call]
                response.answer.append(dns.rrset.from_rdata(qname, self._ttl, hinfo))
        else:
            found = self._lookup(qname, qtype, response)
        if not found:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if not response.answer:
            response.authority.append(self._soa())
        return response

    # -- lookups: True when the name exists (answers added for the type, if any) ------------------------------

    def _lookup(self, qname: dns.name.Name, qtype: int, response: dns.message.Message) -> bool:
        if qname == self.zone:
            if qtype == SOA:
                response.answer.append(self._soa())
            if qtype == NS:
                ns = dns.rdtypes.ANY.NS.NS(IN, NS, self._nameserver)  # type: ignore[no-untyped-call]
                response.answer.append(dns.rrset.from_rdata(self.zone, self._ttl, ns))
            return True
        if qname == self._nameserver:
            return True
        if not qname.is_subdomain(self._svc):
            return False
        try:  # ASCII only: bytes.lower() folds A-Z alone, and any other byte cannot name anything here
            labels = [label.lower().decode("ascii") for label in qname.relativize(self._svc).labels]
        except UnicodeDecodeError:
            return False
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
            if qtype != _EXISTS:
                target = dns.name.from_text(service.external_name)
                cname = dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, target)  # type: ignore[no-untyped-call]
                response.answer.append(dns.rrset.from_rdata(owner, self._ttl, cname))
            return True
        if service.headless:
            endpoints = self._catalog.endpoints(*service.key)
            addresses = list(endpoints.addresses) if endpoints is not None else []
            if qtype in (A, AAAA) and self._certainly_too_big(response, len(addresses) * _MIN_ADDRESS_SIZE):
                return True
        else:
            addresses = [service.virtual_ip] if service.virtual_ip is not None else []
        self._address_records(owner, qtype, addresses, response.answer)
        return True

    def _srv_records(self, service: Service, port_label: str, owner: dns.name.Name, qtype: int,
                     response: dns.message.Message) -> bool:
        port = service.port(port_label)
        if port is None or service.type is ServiceType.EXTERNAL_NAME:
            return False
        if qtype != SRV:
            return True
        endpoints = self._catalog.endpoints(*service.key)
        found = endpoints.for_port(port) if endpoints is not None else ()
        if not found or self._certainly_too_big(response, len(found) * _MIN_SRV_SIZE):
            return True
        memo_key = (owner, found)
        memo = self._srv_memo.get(memo_key)
        if memo is None:
            base = f"{service.name}.{service.namespace}"
            srv = dns.rrset.RRset(owner, IN, SRV)
            glue: list[dns.rrset.RRset] = []
            for endpoint in found:
                records = self._endpoint(base, endpoint)
                if records is None:
                    continue
                rdata, _target, address = records
                srv.add(rdata, self._ttl)
                if address is not None and len(found) <= GLUE_LIMIT:
                    glue.append(address)
            memo = (srv, glue)
            if len(self._srv_memo) >= _SRV_MEMO_SIZE:
                del self._srv_memo[next(iter(self._srv_memo))]
            self._srv_memo[memo_key] = memo
        srv, glue = memo
        if srv:
            response.answer.append(srv)
            response.additional.extend(glue)
        return True

    def _certainly_too_big(self, response: dns.message.Message, smallest_size: int) -> bool:
        """Mark ``response`` truncated (TC) when an answer of at least ``smallest_size`` bytes cannot fit."""
        if self._size_limit is not None and smallest_size > self._size_limit:
            response.flags |= dns.flags.TC
            return True
        return False

    def _endpoint(self, base: str, endpoint: Endpoint) -> _EndpointRecords | None:
        """The SRV rdata, target name and glue of one endpoint (memoized: endpoints outlive catalog versions)."""
        instance = endpoint.instance
        key = (base, endpoint.hostname, instance.address, str(self.zone), endpoint.port, instance.weight)
        found = self._endpoint_memo.get(key)
        if found is not None:
            return found
        try:
            target = dns.name.from_text(endpoint.hostname, dns.name.from_text(base, self._svc))
            rdata = dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call]
                IN, SRV, 0, instance.weight, endpoint.port, target
            )
        except (ValueError, dns.exception.DNSException):
            self.skipped_records += 1
            return None
        glue_records: list[dns.rrset.RRset] = []
        self._address_records(target, _BOTH, [instance.address], glue_records)
        built = (rdata, target, glue_records[0] if glue_records else None)
        if len(self._endpoint_memo) >= _ENDPOINT_MEMO_SIZE:
            del self._endpoint_memo[next(iter(self._endpoint_memo))]  # oldest first
        self._endpoint_memo[key] = built
        return built

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
        if qtype not in (A, AAAA, _BOTH):
            return
        v4 = dns.rrset.RRset(owner, IN, A)
        v6 = dns.rrset.RRset(owner, IN, AAAA)
        for address in addresses:
            if "%" in address:  # a scope id is meaningless to anyone else, and no record can hold it
                self.skipped_records += 1
                continue
            try:
                parsed = ipaddress.ip_address(address)
                if parsed.version == 4:
                    v4.add(dns.rdtypes.IN.A.A(IN, A, address), self._ttl)  # type: ignore[no-untyped-call]
                else:
                    v6.add(dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, address), self._ttl)  # type: ignore[no-untyped-call]
            except ValueError:
                continue  # a hostname instance address cannot be an A record
            except dns.exception.DNSException:
                self.skipped_records += 1
        if qtype in (A, _BOTH) and v4:
            section.append(v4)
        if qtype in (AAAA, _BOTH) and v6:
            section.append(v6)

    def _soa(self) -> dns.rrset.RRset:
        serial = self._catalog.version % 2**32
        hostmaster = dns.name.from_text("hostmaster", self.zone)
        soa = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            IN, SOA, self._nameserver, hostmaster, serial, 60, 10, 3600, self._ttl
        )
        return dns.rrset.from_rdata(self.zone, self._ttl, soa)

