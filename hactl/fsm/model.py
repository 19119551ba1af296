"""The network/member model: field lists, defaults, identifier formats and the stored (packed) record form.

Records are stored in ctrl.db as msgpack arrays in the field order below rather than as maps: a default member
packs to ~30 bytes, which is what keeps a million members small enough to snapshot fast and to stay within the
memory budget when the whole file is mapped. Changing an order or adding a field means a new ``RECORD_FORMAT``.
"""
from __future__ import annotations

from typing import Any

import msgpack

# Bumped whenever the packed layout below changes; ctrl.db stores it and refuses to open another one.
RECORD_FORMAT = 2  # 2: the cluster membership is stored in meta (membership.py)

ARRAY_MAX = 16384  # ZeroTier's ZT_CONTROLLER_MAX_ARRAY_SIZE: longer arrays are rejected
MTU_MIN, MTU_MAX, MTU_DEFAULT = 1280, 10000, 2800
NETWORK_N_MAX = (1 << 24) - 1  # network ids are (controller address << 24) | n, n in 1..NETWORK_N_MAX

# Fields a client may set, in the order records store them.
NETWORK_SETTABLE: tuple[str, ...] = (
    "name", "private", "enableBroadcast", "v4AssignMode", "v6AssignMode", "mtu", "multicastLimit", "routes",
    "ipAssignmentPools", "rules", "capabilities", "tags", "dns",
)
NETWORK_RECORD: tuple[str, ...] = NETWORK_SETTABLE + ("creationTime", "revision")

MEMBER_SETTABLE: tuple[str, ...] = (
    "name", "authorized", "activeBridge", "noAutoAssignIps", "ipAssignments", "tags", "capabilities",
)
MEMBER_RECORD: tuple[str, ...] = MEMBER_SETTABLE + (
    "identity", "creationTime", "revision", "lastAuthorizedTime", "lastDeauthorizedTime",
    "lastAuthorizedCredentialType", "vMajor", "vMinor", "vRev", "vProto",
)


def network_defaults(creation_time: int) -> dict[str, Any]:
    """A new network's record (revision 0: the caller sets 1 when it is first written)."""
    return {
        "name": "",
        "private": True,
        "enableBroadcast": True,
        "v4AssignMode": {"zt": False},
        "v6AssignMode": {"rfc4193": False, "zt": False, "6plane": False},
        "mtu": MTU_DEFAULT,
        "multicastLimit": 32,
        "routes": [],
        "ipAssignmentPools": [],
        "rules": [{"type": "ACTION_ACCEPT", "not": False, "or": False}],
        "capabilities": [],
        "tags": [],
        "dns": {"domain": "", "servers": []},
        "creationTime": creation_time,
        "revision": 0,
    }


def member_defaults(creation_time: int) -> dict[str, Any]:
    """A new member's record (revision 0: the caller sets 1 when it is first written)."""
    return {
        "name": "",
        "authorized": False,
        "activeBridge": False,
        "noAutoAssignIps": False,
        "ipAssignments": [],
        "tags": [],
        "capabilities": [],
        "identity": "",
        "creationTime": creation_time,
        "revision": 0,
        "lastAuthorizedTime": 0,
        "lastDeauthorizedTime": 0,
        "lastAuthorizedCredentialType": None,
        "vMajor": -1,
        "vMinor": -1,
        "vRev": -1,
        "vProto": -1,
    }


# A member dict's keys are in record order (apply packs list(rec.values()) rather than looking each one up)
assert tuple(member_defaults(0)) == MEMBER_RECORD


# ----------------------------------------------------------------------------------------------- identifiers

def format_nwid(nwid: int) -> str:
    return f"{nwid:016x}"


def format_address(address: int) -> str:
    return f"{address:010x}"


def network_id(controller: int, n: int) -> int:
    return (controller << 24) | n


# ------------------------------------------------------------------------------------------ packed records

def _pack(record: dict[str, Any], fields: tuple[str, ...]) -> bytes:
    packed: bytes = msgpack.packb([record[f] for f in fields], use_bin_type=True)
    return packed


def _values(data: bytes, fields: tuple[str, ...]) -> list[Any]:
    values = msgpack.unpackb(data, raw=False, use_list=True)
    if not isinstance(values, list) or len(values) != len(fields):
        raise ValueError(f"stored record has {len(values) if isinstance(values, list) else '?'} fields, "
                         f"expected {len(fields)}")
    return values


def _unpack(data: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    return dict(zip(fields, _values(data, fields)))


def pack_network(record: dict[str, Any]) -> bytes:
    return _pack(record, NETWORK_RECORD)


def unpack_network(data: bytes) -> dict[str, Any]:
    """The stored record (no id fields)."""
    return _unpack(data, NETWORK_RECORD)


def pack_member(record: dict[str, Any]) -> bytes:
    return _pack(record, MEMBER_RECORD)


def unpack_member(data: bytes) -> dict[str, Any]:
    return _unpack(data, MEMBER_RECORD)


def member_values(data: bytes) -> list[Any]:
    """A packed member's field values in MEMBER_RECORD order (what unpack_member zips with the names)."""
    return _values(data, MEMBER_RECORD)


# Positions in member_values() (and in a record dict's values(): records are built in MEMBER_RECORD order)
M_AUTHORIZED, M_IP_ASSIGNMENTS, M_IDENTITY, M_REVISION = (MEMBER_RECORD.index(f) for f in (
    "authorized", "ipAssignments", "identity", "revision"))




def member_revision(data: bytes) -> int:
    """The revision of a packed member without building the dict (for member listings)."""
    revision: int = msgpack.unpackb(data, raw=False)[M_REVISION]
    return revision


def network_view(nwid: int, record: dict[str, Any]) -> dict[str, Any]:
    """The API/dump form of a network: id fields first, then the record."""
    s = format_nwid(nwid)
    return {"id": s, "nwid": s, "objtype": "network", **record}


def member_view(nwid: int, address: int, record: dict[str, Any]) -> dict[str, Any]:
    """The API/dump form of a member."""
    a = f"{address:010x}"  # (format_address and format_nwid inline: every member write builds one)
    return {"id": a, "address": a, "nwid": f"{nwid:016x}", "objtype": "member", **record}
