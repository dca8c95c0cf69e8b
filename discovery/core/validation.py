"""One portable schema every backend can store losslessly.

Service and namespace names become DNS labels, ZooKeeper path segments, etcd key segments and Consul
service names, so they are DNS-1123 labels. Labels follow Kubernetes label syntax, but are bounded so
that each one fits a Consul ``Meta`` entry even after escaping (Consul allows 64 keys of at most 128
characters with values of at most 512). See docs/decisions/portable-schema.md.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from discovery.core.errors import ValidationError

MAX_NAME_LENGTH = 63
MAX_ID_LENGTH = 128
MAX_LABELS = 48
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 63
MAX_NAMED_PORTS = 16
MAX_PORT_NAME_LENGTH = 15
MAX_HOSTNAME_LENGTH = 253
MIN_WEIGHT = 1
MAX_WEIGHT = 1000

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Unicode letters, digits and "_" first, then also "." and "-": never "/", "..", NUL or whitespace.
_INSTANCE_ID = re.compile(r"\w[\w.-]*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")
# An IPv6 zone: an interface name (Linux: at most 15 characters) or index. ``ipaddress`` accepts any text after
# '%', including control characters and escape sequences, which would reach DNS answers and terminals.
_SCOPE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def _require_str(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string, got {type(value).__name__}")
    return value


def validate_dns_label(field: str, value: object) -> str:
    """Check a service or namespace name: a DNS-1123 label (``[a-z0-9-]``, at most 63 characters)."""
    text = _require_str(field, value)
    if not text:
        raise ValidationError(field, "must not be empty")
    if len(text) > MAX_NAME_LENGTH:
        raise ValidationError(field, f"{text[:20]!r}... is longer than {MAX_NAME_LENGTH} characters")
    if not _DNS_LABEL.fullmatch(text):
        raise ValidationError(
            field, f"{text!r} is not a DNS-1123 label (lowercase letters, digits and '-', alphanumeric at both ends)"
        )
    return text


def validate_service_name(value: object) -> str:
    """Check a service name (see :func:`validate_dns_label`)."""
    return validate_dns_label("service", value)


def validate_namespace(value: object) -> str:
    """Check a namespace name (see :func:`validate_dns_label`)."""
    return validate_dns_label("namespace", value)


def validate_instance_id(value: object) -> str:
    """Check an instance id: letters (any script), digits, ``_``, ``.``, ``-``; starts with a letter, digit or ``_``."""
    text = _require_str("id", value)
    if not text:
        raise ValidationError("id", "must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise ValidationError("id", f"is longer than {MAX_ID_LENGTH} characters")
    if not _INSTANCE_ID.fullmatch(text):
        raise ValidationError(
            "id", f"{text!r} may hold only letters, digits, '_', '.', '-' and must start with a letter or digit"
        )
    return text


def validate_address(value: object) -> str:
    """Check an address: an IPv4/IPv6 literal or an RFC 1123 hostname."""
    text = _require_str("address", value)
    if not text:
        raise ValidationError("address", "must not be empty")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if "%" in text and not _SCOPE_ID.fullmatch(text.partition("%")[2]):
            raise ValidationError("address", "an IPv6 scope id must be an interface name: 1-15 letters, digits, "
                                  "'_', '.' or '-'")
        return text
    host = text[:-1] if text.endswith(".") else text
    if len(host) > MAX_HOSTNAME_LENGTH or not host:
        raise ValidationError("address", f"hostname is longer than {MAX_HOSTNAME_LENGTH} characters")
    for label in host.split("."):
        if len(label) > MAX_NAME_LENGTH or not _HOST_LABEL.fullmatch(label):
            raise ValidationError("address", f"{text!r} is neither an IP address nor a valid hostname")
    return text


def validate_port(field: str, value: object) -> int:
    """Check a TCP port number (1-65535)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer, got {type(value).__name__}")
    if not 1 <= value <= 65535:
        raise ValidationError(field, f"{value} is outside 1-65535")
    return value


def validate_label_key(field: str, key: object) -> str:
    """Check a label key: Kubernetes syntax ``[prefix/]name``, at most 63 characters in all."""
    text = _require_str(field, key)
    if not text:
        raise ValidationError(field, "label key must not be empty")
    if len(text) > MAX_LABEL_KEY_LENGTH:
        raise ValidationError(field, f"label key {text[:20]!r}... is longer than {MAX_LABEL_KEY_LENGTH} characters")
    prefix, slash, name = text.rpartition("/")
    if slash and not _DNS_SUBDOMAIN.fullmatch(prefix):
        raise ValidationError(field, f"label key prefix {prefix!r} is not a DNS subdomain")
    if not _LABEL_NAME.fullmatch(name):
        raise ValidationError(
            field, f"label key {text!r}: name must be alphanumeric at both ends with '-', '_', '.' between"
        )
    return text


def validate_label_value(field: str, value: object) -> str:
    """Check a label value: empty, or Kubernetes label-value syntax of at most 63 characters."""
    text = _require_str(field, value)
    if len(text) > MAX_LABEL_VALUE_LENGTH:
        raise ValidationError(field, f"label value is longer than {MAX_LABEL_VALUE_LENGTH} characters")
    if text and not _LABEL_NAME.fullmatch(text):
        raise ValidationError(
            field, f"label value {text!r} must be alphanumeric at both ends with '-', '_', '.' between"
        )
    return text


def validate_labels(value: object) -> dict[str, str]:
    """Check a label mapping (at most 48 entries) and return it as a plain dict."""
    if not isinstance(value, Mapping):
        raise ValidationError("labels", f"must be a mapping, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise ValidationError("labels", f"has {len(value)} entries; at most {MAX_LABELS} are allowed")
    return {validate_label_key("labels", k): validate_label_value("labels", v) for k, v in value.items()}


def validate_named_ports(value: object) -> dict[str, int]:
    """Check named extra ports: IANA service names (at most 15 characters) to port numbers."""
    if not isinstance(value, Mapping):
        raise ValidationError("ports", f"must be a mapping, got {type(value).__name__}")
    if len(value) > MAX_NAMED_PORTS:
        raise ValidationError("ports", f"has {len(value)} entries; at most {MAX_NAMED_PORTS} are allowed")
    result: dict[str, int] = {}
    for name, port in value.items():
        text = _require_str("ports", name)
        if (
            len(text) > MAX_PORT_NAME_LENGTH
            or not _PORT_NAME.fullmatch(text)
            or not any(c.isalpha() for c in text)
        ):
            raise ValidationError(
                "ports", f"port name {text!r} must be 1-15 lowercase letters, digits or '-' with a letter"
            )
        result[text] = validate_port("ports", port)
    return result


def validate_weight(value: object) -> int:
    """Check a load-balancing weight (an integer from 1 to 1000)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("weight", f"must be an integer, got {type(value).__name__}")
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise ValidationError("weight", f"{value} is outside {MIN_WEIGHT}-{MAX_WEIGHT}")
    return value


def validate_zone(value: object) -> str | None:
    """Check a zone: ``None`` or a label value (e.g. ``eu-west-1a``)."""
    if value is None:
        return None
    text = validate_label_value("zone", value)
    if not text:
        raise ValidationError("zone", "must be None or a non-empty label value")
    return text


def validate_ttl(value: object) -> float | None:
    """Check a requested TTL in seconds: ``None`` (the backend's default) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("ttl", f"must be a number of seconds, got {type(value).__name__}")
    if not 0 < value <= 86400:
        raise ValidationError("ttl", f"{value} is outside (0, 86400] seconds")
    return float(value)


def validate_ttl_minimum(requested: float | None, minimum: float, backend: str, hint: str = "") -> float | None:
    """Refuse a requested TTL below the backend's minimum, as a URL's ``ttl=`` below it is refused.

    A TTL is a promise about how soon a dead registrant disappears; raising it silently would break that
    promise, so it is an error everywhere (docs/decisions/client-api-consistency.md).
    """
    if requested is not None and requested < minimum:
        raise ValidationError("ttl", f"{requested:g} s is below the {backend} backend's minimum of {minimum:g} s{hint}")
    return requested
