"""ZeroTier's binary form of a socket address (InetAddress), used in HELLO, OK(HELLO), worlds and netconf.

Wire form: one type byte, then
  0x00  nothing: the nil address (1 byte)
  0x04  4-byte IPv4 address + 2-byte port, big-endian (7 bytes)
  0x06  16-byte IPv6 address + 2-byte port (19 bytes)
  0x01, 0x02  six more bytes, skipped by readers (7 bytes)
  0x03  u16 length L + L bytes, skipped by readers (3 + L bytes)
anything else is malformed. Readers skip types 1-3 instead of failing because the reference reserved them for
address kinds it never shipped; a reader that failed on them would drop a whole packet for one unusable address.
They decode here to the nil address, which is also what the reference keeps.

In network configs the same form carries a CIDR: the port field holds the prefix length (`netmask_bits`).

Reader is the bounds-checked cursor the other wire modules (world, verbs) parse with: every short read becomes
a ProtocolError, never an IndexError.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from hactl.zt.errors import ProtocolError

_TYPE_NIL = 0x00
_TYPE_V4 = 0x04
_TYPE_V6 = 0x06
_SKIPPED_FIXED = (0x01, 0x02)
_TYPE_SKIPPED_VAR = 0x03


class Reader:
    """A cursor over untrusted bytes; each read checks that enough bytes remain."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str = "field") -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"truncated {what}: need {n} bytes, have {max(self.remaining, 0)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str = "field") -> int:
        return int.from_bytes(self.take(n, what), "big")

    def u8(self, what: str = "field") -> int:
        return self.uint(1, what)

    def u16(self, what: str = "field") -> int:
        return self.uint(2, what)

    def u32(self, what: str = "field") -> int:
        return self.uint(4, what)

    def u64(self, what: str = "field") -> int:
        return self.uint(8, what)

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def expect_end(self, what: str) -> None:
        if not self.at_end():
            raise ProtocolError(f"{self.remaining} unexpected bytes after {what}")


@dataclass(frozen=True)
class InetAddress:
    """An IP address and port; ip None is the nil address (port 0)."""
    ip: IPv4Address | IPv6Address | None = None
    port: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ProtocolError(f"port {self.port} out of range")
        if self.ip is None and self.port:
            raise ProtocolError("the nil address has no port")

    @property
    def is_nil(self) -> bool:
        return self.ip is None

    @property
    def netmask_bits(self) -> int:
        """For a CIDR in a network config, where the port field carries the prefix length."""
        return self.port

    @classmethod
    def from_str(cls, text: str) -> InetAddress:
        """ZeroTier's text form `ip/port` (also what `zerotier-cli` prints; IPv6 without brackets)."""
        ip_text, sep, port_text = text.strip().rpartition("/")
        if not sep or not port_text.isdigit():
            raise ProtocolError(f"address {text[:60]!r} is not ip/port")
        try:
            ip = ipaddress.ip_address(ip_text)
        except ValueError:
            raise ProtocolError(f"bad IP address {ip_text[:60]!r}") from None
        return cls(ip, int(port_text))

    def __str__(self) -> str:
        return "nil" if self.ip is None else f"{self.ip}/{self.port}"

    # --- binary form -----------------------------------------------------------------------------------------

    def encode(self) -> bytes:
        if self.ip is None:
            return bytes([_TYPE_NIL])
        kind = _TYPE_V4 if self.ip.version == 4 else _TYPE_V6
        return bytes([kind]) + self.ip.packed + self.port.to_bytes(2, "big")

    @classmethod
    def read(cls, r: Reader) -> InetAddress:
        """Parse one address at the reader's position and advance past it."""
        kind = r.u8("address type")
        if kind == _TYPE_NIL:
            return NIL
        if kind == _TYPE_V4:
            ip: IPv4Address | IPv6Address = IPv4Address(r.take(4, "IPv4 address"))
            return cls(ip, r.u16("port"))
        if kind == _TYPE_V6:
            ip = IPv6Address(r.take(16, "IPv6 address"))
            return cls(ip, r.u16("port"))
        if kind in _SKIPPED_FIXED:
            r.take(6, "reserved address")
            return NIL
        if kind == _TYPE_SKIPPED_VAR:
            r.take(r.u16("reserved address length"), "reserved address")
            return NIL
        raise ProtocolError(f"unknown address type {kind:#04x}")

    @classmethod
    def decode_prefix(cls, data: bytes, offset: int = 0) -> tuple[InetAddress, int]:
        r = Reader(data, offset)
        addr = cls.read(r)
        return addr, r.pos

    @classmethod
    def decode(cls, data: bytes) -> InetAddress:
        r = Reader(data)
        addr = cls.read(r)
        r.expect_end("address")
        return addr


NIL = InetAddress()
