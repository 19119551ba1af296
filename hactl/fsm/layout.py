"""ctrl.db's LMDB layout: named sub-databases, key encodings and meta keys (shared by machine.py and fsck.py).

    meta        format, applied (index, term), cluster info, controller identity (with its private key),
                controller address, network count, pending restore, the cluster membership at the applied index,
                controller certificates and the deny-list, the active alarms, the planet key, the current
                planet and the root records
    networks    nwid (8 bytes BE)                      -> packed network record (model.py)
    members     nwid (8) + address (5)                 -> packed member record; a network's members are one range
    ips         nwid (8) + version (1) + ip (4 or 16)  -> member address (5): every address assigned on a network,
                                                          so auto-assignment and conflict checks are point lookups
    netstat     nwid (8)                               -> total members (8) + authorized members (8)
    requests    request id (UTF-8)                     -> first result of that request and its fingerprint
                                                          (exactly-once; machine._pack_result)
    reqlog      applied index (8)                      -> request id, oldest first, for pruning
    s_*         the same four model tables, staging a restore until restore.commit swaps them in
    changes     applied index (8)                      -> msgpack [by, time, [[kind, nwid, address, before,
                                                          after], ...]]: the entity changes that entry made
                                                          (packed records, nil for none), for entityChange
                                                          events; the last CHANGES_KEPT indexes are kept.
                                                          Absent in files made before it (read as empty).

Big-endian integers make LMDB's byte order the numeric order, so cursors walk networks by id and members by
address.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lmdb

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]  # transactions opened without buffers=True: values are bytes
else:
    Txn = lmdb.Transaction

MODEL_TABLES = ("networks", "members", "ips", "netstat")
DB_NAMES = ("meta", *MODEL_TABLES, "requests", "reqlog", *(f"s_{t}" for t in MODEL_TABLES))
LATER_DB_NAMES = ("changes",)  # created on first write; a read-only open of an older file goes without them

# Entity kinds in the changes table
CHANGE_NETWORK, CHANGE_MEMBER, CHANGE_RESTORE = 0, 1, 2

META_FORMAT = b"format"
META_APPLIED = b"applied"
META_CLUSTER = b"cluster"  # msgpack map: the public cluster info
# The controller's ZeroTier identity with its private key, binary form (135 bytes; replicated state, kept out of
# cluster info). A ctrl.db initialised before controller identities holds a 32-byte raw Ed25519 key instead.
META_SIGNING_KEY = b"signing_key"
META_CONTROLLER = b"controller"  # the controller address, 5 bytes: read by every model command
META_RESTORE = b"restore"  # msgpack map: the restore being staged, if any
META_MEMBERSHIP = b"membership"  # msgpack map: the cluster membership in force at the applied index
META_CERTS = b"certs"  # msgpack map: controller id -> certificate serials (hex) recorded for it
META_REVOKED = b"revoked"  # msgpack map: serial (hex) -> {node, reason, index}: denied on the control channel
# msgpack array of {node, name, message, index, time} sorted by (node, name): the alarms on (absent: none). An
# array in a fixed order, not a map, so every node's record is the same bytes whatever order alarms came in.
META_ALARMS = b"alarms"
# The cluster's own planet (issue 11). planet_key: msgpack {world_id: int, public: bin (64), private: bin (64)},
# the C25519 key that signs the planet (replicated secret: kept out of cluster info; absent for a cluster made
# before planets until a planet.init). planet: the current planet, a serialized signed world (absent: none yet).
# roots: msgpack map node id -> {identity: str, endpoints: [str]}, keys sorted (the same bytes on every node).
META_PLANET_KEY = b"planet_key"
META_PLANET = b"planet"
META_ROOTS = b"roots"

_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class Tables:
    """One set of model tables (live or restore staging) and the meta key holding its network count."""
    networks: lmdb._Database
    members: lmdb._Database
    ips: lmdb._Database
    netstat: lmdb._Database
    netcount_key: bytes


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes) -> int:
    n: int = _U64.unpack(b)[0]
    return n


def pack_applied(index: int, term: int) -> bytes:
    return _U64x2.pack(index, term)


def unpack_applied(b: bytes | None) -> tuple[int, int]:
    return (0, 0) if b is None else _U64x2.unpack(b)


pack_counts = pack_applied  # (total, authorized): the same two-u64 layout
unpack_counts = unpack_applied


def network_key(nwid: int) -> bytes:
    return _U64.pack(nwid)


def address_bytes(address: int) -> bytes:
    return address.to_bytes(5, "big")


def member_key(nwid: int, address: int) -> bytes:
    return _U64.pack(nwid) + address.to_bytes(5, "big")


def split_member_key(key: bytes) -> tuple[int, int]:
    return _U64.unpack_from(key)[0], int.from_bytes(key[8:13], "big")


def ip_key(nwid: int, ip: str) -> bytes:
    """``ip`` is canonical (validated): inet_pton is the fast path, ~10x ipaddress."""
    if ":" in ip:
        return _U64.pack(nwid) + b"\x06" + socket.inet_pton(socket.AF_INET6, ip)
    return _U64.pack(nwid) + b"\x04" + socket.inet_pton(socket.AF_INET, ip)


def ip_from_key(key: bytes) -> str:
    return str(ipaddress.ip_address(key[9:]))
