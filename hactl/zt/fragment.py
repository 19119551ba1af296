"""Fragments of packets longer than the physical MTU, and their bounded reassembly.

A packet over 1432 bytes goes out as its first 1432 bytes (the head, which carries the fragmented flag) and up
to six fragments: [0:8] packet id | [8:13] destination | [13] 0xff | [14] total << 4 | number | [15] hops |
[16:] data. Nothing but the head's MAC authenticates them, so reassembly holds attacker-controlled bytes: the
number of packets in flight, their size and their age are all bounded, and time is an explicit `now` (ms)
argument so the object stays sans-IO and testable.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from hactl.zt.address import address_from_bytes, address_to_bytes
from hactl.zt.compression import HEADER_SIZE, MAX_PACKET_LENGTH
from hactl.zt.errors import ProtocolError
from hactl.zt.packet import FLAG_FRAGMENTED, FRAGMENT_INDICATOR, PHYSICAL_MTU

FRAGMENT_HEADER_SIZE = 16
MAX_FRAGMENTS = 7  # head included
REASSEMBLY_TIMEOUT_MS = 5_000
MAX_PENDING = 32


def is_fragment(datagram: bytes) -> bool:
    return len(datagram) > 13 and datagram[13] == FRAGMENT_INDICATOR


@dataclass(frozen=True)
class Fragment:
    packet_id: bytes
    destination: int
    total: int
    number: int
    hops: int
    data: bytes

    @classmethod
    def parse(cls, datagram: bytes) -> Fragment:
        if len(datagram) < FRAGMENT_HEADER_SIZE:
            raise ProtocolError(f"fragment of {len(datagram)} bytes is shorter than its 16-byte header")
        if len(datagram) > PHYSICAL_MTU:
            raise ProtocolError(f"fragment of {len(datagram)} bytes exceeds the MTU {PHYSICAL_MTU}")
        if datagram[13] != FRAGMENT_INDICATOR:
            raise ProtocolError("datagram is not a fragment")
        total, number = datagram[14] >> 4, datagram[14] & 0x0F
        if not 1 < total <= MAX_FRAGMENTS or not 1 <= number < total:
            raise ProtocolError(f"fragment {number} of {total} is out of range (at most {MAX_FRAGMENTS})")
        return cls(packet_id=bytes(datagram[0:8]), destination=address_from_bytes(bytes(datagram[8:13])),
                   total=total, number=number, hops=datagram[15] & 0x07, data=bytes(datagram[16:]))

    def to_bytes(self) -> bytes:
        return (self.packet_id + address_to_bytes(self.destination)
                + bytes([FRAGMENT_INDICATOR, (self.total << 4) | self.number, self.hops]) + self.data)


def split(packet: bytes, mtu: int = PHYSICAL_MTU) -> list[bytes]:
    """An armored packet as the datagrams that carry it: itself if it fits, else its head and fragments.
    The packet must have been armored with the fragmented flag set (armor does that above the MTU)."""
    if len(packet) <= mtu:
        return [packet]
    if not packet[18] & FLAG_FRAGMENTED:
        raise ValueError("a packet over the MTU must carry the fragmented flag before armor")
    chunk = mtu - FRAGMENT_HEADER_SIZE
    rest = packet[mtu:]
    pieces = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
    total = 1 + len(pieces)
    if total > MAX_FRAGMENTS:
        raise ValueError(f"packet of {len(packet)} bytes needs {total} fragments (at most {MAX_FRAGMENTS})")
    dest = address_from_bytes(packet[8:13])
    return [packet[:mtu]] + [Fragment(packet[0:8], dest, total, n, 0, p).to_bytes()
                             for n, p in enumerate(pieces, 1)]


@dataclass
class _Pending:
    created: int
    head: bytes | None = None
    total: int = 0  # 0 until a fragment tells
    fragments: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects heads and fragments by packet id; returns the whole packet (still armored) once complete.

    Bounds: at most max_pending packets in flight (the oldest is dropped for a new one, so a flood of fresh ids
    only churns the table), each at most MAX_FRAGMENTS pieces and MAX_PACKET_LENGTH bytes, each forgotten
    timeout_ms after its first piece arrived. A duplicate piece is ignored (the first copy wins: the MAC of the
    whole decides later whether it was genuine)."""

    def __init__(self, max_pending: int = MAX_PENDING, timeout_ms: int = REASSEMBLY_TIMEOUT_MS) -> None:
        self.max_pending = max_pending
        self.timeout_ms = timeout_ms
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def expire(self, now: int) -> None:
        while self._pending:
            pid, p = next(iter(self._pending.items()))
            if now - p.created < self.timeout_ms:
                break
            del self._pending[pid]

    def _slot(self, packet_id: bytes, now: int) -> _Pending:
        self.expire(now)
        slot = self._pending.get(packet_id)
        if slot is None:
            if len(self._pending) >= self.max_pending:
                self._pending.popitem(last=False)
            slot = self._pending[packet_id] = _Pending(created=now)
        return slot

    def add_head(self, datagram: bytes, now: int) -> bytes | None:
        """A packet with the fragmented flag. Returns the reassembled packet if all fragments are in."""
        if len(datagram) < HEADER_SIZE or is_fragment(datagram):
            raise ProtocolError("head is not a packet")
        if len(datagram) > PHYSICAL_MTU:
            raise ProtocolError(f"head of {len(datagram)} bytes exceeds the MTU {PHYSICAL_MTU}")
        pid = bytes(datagram[0:8])
        slot = self._slot(pid, now)
        if slot.head is None:
            self._check_size(pid, slot, len(datagram))
            slot.head = bytes(datagram)
        return self._complete(pid, slot)

    def add_fragment(self, fragment: Fragment, now: int) -> bytes | None:
        """One fragment (parsed). Returns the reassembled packet if it was the last missing piece."""
        slot = self._slot(fragment.packet_id, now)
        if slot.total and slot.total != fragment.total:
            del self._pending[fragment.packet_id]
            raise ProtocolError(f"fragment says {fragment.total} pieces, an earlier one said {slot.total}")
        slot.total = fragment.total
        if fragment.number not in slot.fragments:
            self._check_size(fragment.packet_id, slot, len(fragment.data))
            slot.fragments[fragment.number] = fragment.data
        return self._complete(fragment.packet_id, slot)

    def _check_size(self, pid: bytes, slot: _Pending, more: int) -> None:
        slot.size += more
        if slot.size > MAX_PACKET_LENGTH:
            del self._pending[pid]
            raise ProtocolError(f"reassembled packet would exceed {MAX_PACKET_LENGTH} bytes")

    def _complete(self, pid: bytes, slot: _Pending) -> bytes | None:
        if slot.head is None or not slot.total or len(slot.fragments) != slot.total - 1:
            return None
        del self._pending[pid]
        return slot.head + b"".join(slot.fragments[n] for n in range(1, slot.total))
