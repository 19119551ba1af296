"""The multicast directory (brief §5.6-5.7, §8): who subscribed to which multicast group, so that members can find
each other (ARP, broadcast) by asking MULTICAST_GATHER before they have direct paths.

A group is (network id, 48-bit MAC, 32-bit ADI); MULTICAST_LIKE adds the sender with a last-seen time, entries
expire after 600 s (ZT_MULTICAST_LIKE_EXPIRE; members re-announce every 60 s). Also the MULTICAST_GATHER request
and its OK body, which verbs.py does not have. Bounded: a member can fill at most max_groups_per_member groups and
the directory at most max_entries subscriptions in all (a LIKE beyond them is refused, counted by the caller).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hactl.zt.address import ADDRESS_SIZE, address_to_bytes
from hactl.zt.errors import ProtocolError
from hactl.zt.inetaddress import Reader
from hactl.zt.packet import Verb
from hactl.zt.verbs import Ok, PACKET_ID_SIZE

LIKE_EXPIRE_MS = 600_000
GATHER_FLAG_COM = 0x01
# What fits in one OK: 10 024-byte packet - 28 header - 9 OK prefix - 24 group and counts.
MAX_GATHER_ADDRESSES = (10_024 - 28 - 1 - PACKET_ID_SIZE - 8 - 6 - 4 - 4 - 2) // ADDRESS_SIZE

Group = tuple[int, int, int]  # (network id, mac, adi)


@dataclass(frozen=True)
class MulticastGather:
    """MULTICAST_GATHER: [8] network id | [1] flags | [6] MAC | [4] ADI | [4] gather limit | optional COM
    (kept as raw bytes: the controller authorizes by its own records, not by the COM)."""
    network_id: int
    flags: int
    mac: int
    adi: int
    limit: int
    com: bytes = b""

    def encode(self) -> bytes:
        return (self.network_id.to_bytes(8, "big") + bytes([self.flags]) + self.mac.to_bytes(6, "big")
                + self.adi.to_bytes(4, "big") + self.limit.to_bytes(4, "big") + self.com)

    @classmethod
    def decode(cls, payload: bytes) -> MulticastGather:
        r = Reader(payload)
        return cls(r.u64("network id"), r.u8("flags"), r.uint(6, "MAC"), r.u32("ADI"), r.u32("gather limit"),
                   r.rest())

    @property
    def group(self) -> Group:
        return (self.network_id, self.mac, self.adi)


@dataclass(frozen=True)
class OkGather:
    """OK(MULTICAST_GATHER): [8] network id | [6] MAC | [4] ADI | [4] total known | [2] N | N x [5] address."""
    in_re_packet_id: bytes
    network_id: int
    mac: int
    adi: int
    total: int
    addresses: tuple[int, ...]

    def encode(self) -> bytes:
        body = (self.network_id.to_bytes(8, "big") + self.mac.to_bytes(6, "big") + self.adi.to_bytes(4, "big")
                + min(self.total, 0xFFFFFFFF).to_bytes(4, "big") + len(self.addresses).to_bytes(2, "big")
                + b"".join(address_to_bytes(a) for a in self.addresses))
        return Ok(Verb.MULTICAST_GATHER, self.in_re_packet_id, body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OkGather:
        ok = Ok.decode(payload)
        if ok.in_re_verb != Verb.MULTICAST_GATHER:
            raise ProtocolError(f"OK in re verb {ok.in_re_verb}, not MULTICAST_GATHER")
        r = Reader(ok.body)
        nwid, mac, adi, total = r.u64("network id"), r.uint(6, "MAC"), r.u32("ADI"), r.u32("total")
        n = r.u16("count")
        return cls(ok.in_re_packet_id, nwid, mac, adi, total, tuple(r.uint(ADDRESS_SIZE) for _ in range(n)))


class MulticastDirectory:
    def __init__(self, max_entries: int = 100_000, max_groups_per_member: int = 1024,
                 expire_ms: int = LIKE_EXPIRE_MS) -> None:
        self.max_entries = max_entries
        self.max_groups_per_member = max_groups_per_member
        self.expire_ms = expire_ms
        # group -> member -> last seen; each inner dict ordered oldest-first so expiry and gather are cheap.
        self._groups: dict[Group, OrderedDict[int, int]] = {}
        self._per_member: dict[int, int] = {}
        self._entries = 0

    def __len__(self) -> int:
        return self._entries

    def like(self, group: Group, member: int, now: int) -> bool:
        """Record member's subscription; False if a bound refused it."""
        members = self._groups.get(group)
        if members is not None and member in members:
            members[member] = now
            members.move_to_end(member)
            return True
        if self._entries >= self.max_entries or self._per_member.get(member, 0) >= self.max_groups_per_member:
            return False
        if members is None:
            members = self._groups[group] = OrderedDict()
        members[member] = now
        self._per_member[member] = self._per_member.get(member, 0) + 1
        self._entries += 1
        return True

    def members(self, group: Group, now: int) -> list[int]:
        """Live subscribers, most recently seen first."""
        members = self._groups.get(group)
        if not members:
            return []
        return [m for m, seen in reversed(members.items()) if now - seen < self.expire_ms]

    def gather(self, group: Group, requester: int, limit: int, now: int) -> tuple[int, list[int]]:
        """(total known subscribers, up to limit of them), never the requester. The reference picks randomly;
        we take the most recently seen (sans-IO: no RNG), which favours members that are still there."""
        live = [m for m in self.members(group, now) if m != requester]
        return len(live), live[:max(0, min(limit, MAX_GATHER_ADDRESSES))]

    def expire(self, now: int) -> None:
        for group in list(self._groups):
            members = self._groups[group]
            while members:
                member, seen = next(iter(members.items()))
                if now - seen < self.expire_ms:
                    break
                del members[member]
                self._entries -= 1
                left = self._per_member[member] - 1
                if left:
                    self._per_member[member] = left
                else:
                    del self._per_member[member]
            if not members:
                del self._groups[group]
