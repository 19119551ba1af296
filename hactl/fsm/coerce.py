"""Primitive coercions shared by the validators: booleans, integers, strings, IP addresses and CIDRs.

ZeroTier coerces loosely (any number is a bool, any string starting with 't' is true); the contract only allows
the unambiguous cases, and every rejection names the field it came from (``routes[2].via``).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Sequence

from hactl.fsm.model import ARRAY_MAX

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_INT_RE = re.compile(r"[+-]?[0-9]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


class ValidationError(ValueError):
    """Bad input: ``field`` names where (a dotted/indexed path, or None for the body itself)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def sub(field: str, key: str | int) -> str:
    """The path of a member of ``field``: sub("routes", 2) -> "routes[2]", sub("dns", "domain") -> "dns.domain"."""
    return f"{field}[{key}]" if isinstance(key, int) else f"{field}.{key}"


def to_bool(v: Any, field: str) -> bool:
    """true/false, 0/1, or those words/digits as strings (any case)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "1"):
            return True
        if s in ("false", "0"):
            return False
    raise ValidationError(field, f"expected a boolean (true/false/0/1), got {_show(v)}")


def to_int(v: Any, field: str, lo: int, hi: int) -> int:
    """An integer, an integral float or a decimal string, within lo..hi inclusive."""
    n: int | None = None
    if isinstance(v, bool):
        n = None
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float) and v.is_integer():
        n = int(v)
    elif isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
        n = int(v.strip())
    if n is None:
        raise ValidationError(field, f"expected an integer, got {_show(v)}")
    if not lo <= n <= hi:
        raise ValidationError(field, f"must be between {lo} and {hi}, got {n}")
    return n


def to_str(v: Any, field: str, max_len: int) -> str:
    if not isinstance(v, str):
        raise ValidationError(field, f"expected a string, got {_show(v)}")
    if len(v) > max_len:
        raise ValidationError(field, f"at most {max_len} characters, got {len(v)}")
    return v


def to_hex(v: Any, field: str, digits: int) -> int:
    """A hex string of 1..digits digits (or, for compatibility, a non-negative integer) as an int."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << (4 * digits):
        return v
    if isinstance(v, str) and _HEX_RE.fullmatch(v) and len(v) <= digits:
        return int(v, 16)
    raise ValidationError(field, f"expected up to {digits} hex digits, got {_show(v)}")


def to_list(v: Any, field: str) -> Sequence[Any]:
    if not isinstance(v, (list, tuple)):
        raise ValidationError(field, f"expected an array, got {_show(v)}")
    if len(v) > ARRAY_MAX:
        raise ValidationError(field, f"at most {ARRAY_MAX} entries, got {len(v)}")
    return v


def to_dict(v: Any, field: str | None) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValidationError(field, f"expected an object, got {_show(v)}")
    return v


def to_ip(v: Any, field: str) -> IPAddress:
    """A plain IPv4/IPv6 address (no prefix length, no zone)."""
    if isinstance(v, str) and "%" not in v and "/" not in v:
        try:
            return ipaddress.ip_address(v.strip())
        except ValueError:
            pass
    raise ValidationError(field, f"expected an IP address, got {_show(v)}")


def to_cidr(v: Any, field: str) -> tuple[IPAddress, int]:
    """'address/bits' with an explicit prefix length; the address is kept as given (rules do not mask)."""
    if isinstance(v, str) and v.count("/") == 1:
        addr, _, bits = v.strip().partition("/")
        try:
            ip = to_ip(addr, field)
        except ValidationError:
            ip = None
        if ip is not None and bits.isdigit() and int(bits) <= ip.max_prefixlen:
            return ip, int(bits)
    raise ValidationError(field, f"expected an address with a prefix length (e.g. 10.0.0.0/24), got {_show(v)}")


def to_network(v: Any, field: str) -> IPNetwork:
    """A CIDR in canonical form: host bits cleared ('10.1.2.3/24' -> 10.1.2.0/24)."""
    ip, bits = to_cidr(v, field)
    return ipaddress.ip_network((ip, bits), strict=False)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
