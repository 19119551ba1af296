"""ZeroTier addresses: 40-bit node ids, written as 10 lowercase hex digits.

An address is the last 5 bytes of its identity's memory-hard hash (hactl/zt/identity.py). 0 and anything whose
first byte is 0xff are reserved: the latter is how a datagram announces itself as a fragment (byte 13 = 0xff
where a packet has its source address), so no node may own such an address.
"""
from __future__ import annotations

from hactl.zt.errors import ProtocolError

ADDRESS_SIZE = 5
ADDRESS_MAX = (1 << 40) - 1
_HEX = frozenset("0123456789abcdefABCDEF")


def is_reserved(address: int) -> bool:
    return address == 0 or (address >> 32) == 0xFF


def address_from_bytes(data: bytes) -> int:
    if len(data) != ADDRESS_SIZE:
        raise ProtocolError(f"address must be {ADDRESS_SIZE} bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def address_to_bytes(address: int) -> bytes:
    if not 0 <= address <= ADDRESS_MAX:
        raise ProtocolError(f"address {address:#x} does not fit in 40 bits")
    return address.to_bytes(ADDRESS_SIZE, "big")


def address_to_str(address: int) -> str:
    return f"{address:010x}"


def address_from_str(text: str) -> int:
    """Exactly 10 hex digits (ZeroTier's own parser is laxer; we only accept what we would write)."""
    if len(text) != 10 or not set(text) <= _HEX:
        raise ProtocolError(f"address must be 10 hex digits, got {text[:20]!r}")
    return int(text, 16)
