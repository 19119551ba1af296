"""The command schema (one dataclass per command), its msgpack codec, and the builders proposers call.

Wire form (schema version 1): a msgpack map
    {"v": 1, "type": "<type>", "request_id": str, "time": int ms, ["fp": bin,] ...the type's fields}
``by`` (optional, every type): who asked, a map of short strings ({"kind": "api"|"agent"|"zerotier", ...}: the
API token's id, the agent client's uid, the member and the node that heard its request); apply stores it with the
entity changes it makes, for the entityChange events, and never decides anything by it.
``fp`` (optional, every type): the fingerprint of the client request the command was built from (SHA-256 of the
HTTP method, path and body; the API sets it when an Idempotency-Key names the request id). A request id already
remembered with another fingerprint is a client reusing its key for a different request: apply answers
KEY_REUSED and changes nothing. Absent means "not known", which matches any fingerprint. A decoder that predates
``fp`` ignores it; since KEY_REUSED changes nothing and is not remembered, the model stays the same either way.
Types and their fields:
    noop
    cluster.init      cluster_id: str, timeline_id: str, address: str (10 hex), signing_key: bin, token_hash: str,
                      [planet_key: bin, world_id: int]   (optional, both or neither: see "The planet" below)
                      ``signing_key`` (the name kept for schema compatibility) is the cluster's ZeroTier controller
                      identity WITH its private key, in ZeroTier's binary form (Identity.to_bytes(include_private=
                      True), 135 bytes); ``address`` must be that identity's address. (Before, it was a 32-byte raw
                      Ed25519 key and the address a random stand-in; such a command is now refused.)
    network.create    start: int (1..2^24-1: the proposer's random candidate; see below), changes: map
    network.update    nwid: str, changes: map            (create or update, as POST /controller/network/{nwid})
    network.delete    nwid: str
    member.create     nwid: str, address: str, changes: map   (fails CONFLICT if the member exists)
    member.update     nwid: str, address: str, changes: map   (create or update, as POST .../member/{addr})
    member.delete     nwid: str, address: str
    member.authorize  nwid: str, address: str, authorized: bool   (fails NOT_FOUND if the member does not exist)
    member.request    nwid: str, address: str, identity: str (the requester's public identity string),
                      vMajor, vMinor, vRev, vProto: int (-1..65535, -1 unknown)   a ZeroTier node asked for its
                      network config: records the member as ZeroTier's controller does (see machine.py)
    restore.begin     restore_id: str, timeline_id: str, address: str, signing_key: bin, token_hash: str | nil,
                      [planet_key: bin, world_id: int, [planet: bin]]
                      (signing_key and address as in cluster.init: the restored controller's identity; the
                      optional planet fields: the backup's planet key, id and current world, see below)
    restore.chunk     restore_id: str, seq: int (0, 1, ...), networks: [map], members: [map]
    restore.commit    restore_id: str, chunks: int, networks: int, members: int
    restore.abort     restore_id: str
    cluster.certificate  node: str, serial: str (hex)   a controller's certificate, as the leader saw it
    cluster.revoke       node: str, serial: str | nil   deny that certificate (nil: every one recorded for node)
    alarm.raise       node: str, name: str ([A-Z][A-Z0-9_]*, e.g. NOSPACE), message: str   a node's alarm, on
                      until cleared; while any alarm is on, writes that add data are refused (ALARM_EXEMPT_TYPES)
    alarm.clear       node: str, name: str
    planet.init       planet_key: bin, world_id: int   give a cluster initialised without them its planet key and id
                      (once: ALREADY_INITIALIZED when it has one)
    zt.root           node: str, identity: str (the node's public root identity), endpoints: [str "IP/port"] (0..32)
                      the cluster node ``node`` is a ZeroTier root at those stable endpoints (replaces its record)
    planet.set        world: bin   the cluster's next planet: a serialized, signed world (apply's rules below)
``changes`` is the canonical output of the validator (validate.py); records in restore chunks are whole objects
as ``hactl db dump`` prints them.

Network ids: ``network.create`` carries a random 24-bit ``start`` chosen by the proposer. Apply takes the first
free n of start, start+1, ..., 2^24-1, 1, 2, ... so every node picks the same id, and creation fails (FULL) only
when all 2^24-1 ids are taken.

Optional fields (``OPTIONAL``) are written only when set, so a command without them keeps its exact old bytes,
and an old proposer's command still applies; absent (or nil) decodes to None.

The planet (issue 11): the cluster is its own private ZeroTier planet. ``planet_key`` is the 64-byte C25519
private key that signs every world of id ``world_id`` (new_planet_key(), new_world_id(); the public half is
derived). A cluster.init without them (from a proposer older than planets) still applies: the cluster then has
no planet until a planet.init provides key and id (once). Each node proposes its own zt.root record; removing a
node from the membership drops its record. The planet itself is a signed world proposed with planet.set
(hactl/zt/planet.py next_world builds it); apply accepts it only if it decodes, is a PLANET with the cluster's
world id, 1..4 roots each with 1..32 endpoints, names the cluster's planet key as the signer of the next update
(so the cluster never loses control of its clients), is strictly newer than the current planet, and is signed by
the key the current planet names (the first planet: by the cluster's planet key). The same bytes again succeed
without a write. restore.begin carries the backup's planet key, id and world: a restore must not orphan the
backup's clients (machine.py _restore_commit says what is kept).

Everything time- or random-dependent is chosen here, on the proposer, and carried: apply reads no clock and no RNG.
"""
from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterable, Iterator

import msgpack

from hactl.fsm.coerce import ValidationError
from hactl.fsm.model import NETWORK_N_MAX, format_address, format_nwid
from hactl.fsm.validate import (REQUEST_ID_MAX, TIME_MAX, check_controller_address, controller_identity,
                                member_identity, member_record, network_record, parse_address, parse_label,
                                parse_nwid, parse_request_id, parse_endpoints, parse_planet_key, parse_serial,
                                parse_time, parse_token_hash, parse_version_field, parse_world, parse_world_id,
                                root_identity, validate_member_changes, validate_network_changes)
from hactl.zt import crypto
from hactl.zt.identity import Identity
from hactl.zt.world import ZEROTIER_PLANET_ID

SCHEMA_VERSION = 1
FINGERPRINT_BYTES = 32  # SHA-256
FINGERPRINT_FIELD = "fp"
ORIGIN_FIELD = "by"
ORIGIN_MAX_KEYS = 8
ORIGIN_MAX_CHARS = 128
MAX_COMMAND_BYTES = 4 << 20  # entries bigger than this are refused by decode (a bound on msgpack allocations)
ALARM_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
ALARM_MESSAGE_MAX = 1024


class CommandError(ValueError):
    """Bytes that are not a command of a schema this node knows; ``field`` names the offending part."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# -------------------------------------------------------------------------------------------- wire checkers

def _str(v: Any, f: str) -> str:
    if not isinstance(v, str):
        raise CommandError(f"expected a string, got {type(v).__name__}", f)
    return v


def _opt_str(v: Any, f: str) -> str | None:
    return None if v is None else _str(v, f)


def _int(v: Any, f: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CommandError(f"expected an integer, got {type(v).__name__}", f)
    return v


def _bool(v: Any, f: str) -> bool:
    if not isinstance(v, bool):
        raise CommandError(f"expected a boolean, got {type(v).__name__}", f)
    return v


def _bin(v: Any, f: str) -> bytes:
    if not isinstance(v, (bytes, bytearray)):
        raise CommandError(f"expected binary, got {type(v).__name__}", f)
    return bytes(v)


def _map(v: Any, f: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CommandError(f"expected a map, got {type(v).__name__}", f)
    return v


def _fingerprint(v: Any, f: str) -> bytes | None:
    if v is None:
        return None
    if not isinstance(v, (bytes, bytearray)) or len(v) != FINGERPRINT_BYTES:
        got = f"{len(v)} bytes" if isinstance(v, (bytes, bytearray)) else type(v).__name__
        raise CommandError(f"expected {FINGERPRINT_BYTES} bytes (a SHA-256 digest) or nothing, got {got}", f)
    return bytes(v)


def _origin(v: Any, f: str) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > ORIGIN_MAX_KEYS:
        raise CommandError(f"expected a map of at most {ORIGIN_MAX_KEYS} strings", f)
    for k, x in v.items():
        if not isinstance(k, str) or not isinstance(x, str) or len(k) > 32 or len(x) > ORIGIN_MAX_CHARS:
            raise CommandError(f"expected short string keys and values (at most {ORIGIN_MAX_CHARS} characters)",
                               f"{f}.{k}" if isinstance(k, str) else f)
    return dict(v)


def _strs(v: Any, f: str) -> list[str]:
    if not isinstance(v, list):
        raise CommandError(f"expected an array, got {type(v).__name__}", f)
    return [_str(x, f"{f}[{i}]") for i, x in enumerate(v)]


def _maps(v: Any, f: str) -> list[dict[str, Any]]:
    if not isinstance(v, list):
        raise CommandError(f"expected an array, got {type(v).__name__}", f)
    return [_map(x, f"{f}[{i}]") for i, x in enumerate(v)]


Checker = Callable[[Any, str], Any]


# ------------------------------------------------------------------------------------------------- commands

@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    TYPE: ClassVar[str] = ""
    WIRE: ClassVar[dict[str, Checker]] = {}  # the type's own fields and their wire checks
    OPTIONAL: ClassVar[dict[str, Checker]] = {}  # fields written only when not None (absent decodes to None)
    request_id: str
    time: int  # ms since the epoch, the proposer's clock
    version: int = SCHEMA_VERSION
    fingerprint: bytes | None = None  # wire "fp": which client request request_id stands for (see above)
    by: dict[str, str] | None = None  # wire "by": who asked (see above)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoOp(Command):
    TYPE: ClassVar[str] = "noop"
    WIRE: ClassVar[dict[str, Checker]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInit(Command):
    TYPE: ClassVar[str] = "cluster.init"
    WIRE: ClassVar[dict[str, Checker]] = {"cluster_id": _str, "timeline_id": _str, "address": _str,
                                          "signing_key": _bin, "token_hash": _str}
    cluster_id: str
    timeline_id: str
    address: str
    signing_key: bytes = field(repr=False)
    token_hash: str
    OPTIONAL: ClassVar[dict[str, Checker]] = {"planet_key": _bin, "world_id": _int}
    planet_key: bytes | None = field(default=None, repr=False)  # the planet's C25519 private key (64 bytes)
    world_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkCreate(Command):
    TYPE: ClassVar[str] = "network.create"
    WIRE: ClassVar[dict[str, Checker]] = {"start": _int, "changes": _map}
    start: int
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkUpdate(Command):
    TYPE: ClassVar[str] = "network.update"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "changes": _map}
    nwid: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkDelete(Command):
    TYPE: ClassVar[str] = "network.delete"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str}
    nwid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberCreate(Command):
    TYPE: ClassVar[str] = "member.create"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "address": _str, "changes": _map}
    nwid: str
    address: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate(Command):
    TYPE: ClassVar[str] = "member.update"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "address": _str, "changes": _map}
    nwid: str
    address: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberDelete(Command):
    TYPE: ClassVar[str] = "member.delete"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "address": _str}
    nwid: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberAuthorize(Command):
    TYPE: ClassVar[str] = "member.authorize"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "address": _str, "authorized": _bool}
    nwid: str
    address: str
    authorized: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRequest(Command):
    """A ZeroTier node's network config request, admitted through Raft so that every node records the member
    (identity, version, auto-authorization on public networks, auto-assigned IPv4) identically. Whoever proposes
    it has validated ``identity`` (the memory-hard hash) already; apply only parses it."""
    TYPE: ClassVar[str] = "member.request"
    WIRE: ClassVar[dict[str, Checker]] = {"nwid": _str, "address": _str, "identity": _str, "vMajor": _int,
                                          "vMinor": _int, "vRev": _int, "vProto": _int}
    nwid: str
    address: str
    identity: str
    vMajor: int = -1
    vMinor: int = -1
    vRev: int = -1
    vProto: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreBegin(Command):
    TYPE: ClassVar[str] = "restore.begin"
    WIRE: ClassVar[dict[str, Checker]] = {"restore_id": _str, "timeline_id": _str, "address": _str,
                                          "signing_key": _bin, "token_hash": _opt_str}
    restore_id: str
    timeline_id: str  # the timeline the restored model starts
    address: str  # the restored controller's address and key: its networks live under that address
    signing_key: bytes = field(repr=False)
    token_hash: str | None  # None keeps the current API token
    OPTIONAL: ClassVar[dict[str, Checker]] = {"planet_key": _bin, "world_id": _int, "planet": _bin}
    planet_key: bytes | None = field(default=None, repr=False)  # the backup's planet key, id and current world
    world_id: int | None = None
    planet: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreChunk(Command):
    TYPE: ClassVar[str] = "restore.chunk"
    WIRE: ClassVar[dict[str, Checker]] = {"restore_id": _str, "seq": _int, "networks": _maps, "members": _maps}
    restore_id: str
    seq: int
    networks: list[dict[str, Any]]
    members: list[dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreCommit(Command):
    TYPE: ClassVar[str] = "restore.commit"
    WIRE: ClassVar[dict[str, Checker]] = {"restore_id": _str, "chunks": _int, "networks": _int, "members": _int}
    restore_id: str
    chunks: int
    networks: int
    members: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreAbort(Command):
    TYPE: ClassVar[str] = "restore.abort"
    WIRE: ClassVar[dict[str, Checker]] = {"restore_id": _str}
    restore_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterCertificate(Command):
    """Record the certificate serial a controller uses (so that removing or revoking it can deny it)."""
    TYPE: ClassVar[str] = "cluster.certificate"
    WIRE: ClassVar[dict[str, Checker]] = {"node": _str, "serial": _str}
    node: str
    serial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterRevoke(Command):
    """Deny a controller certificate on the control channel for good (every recorded one when serial is None)."""
    TYPE: ClassVar[str] = "cluster.revoke"
    WIRE: ClassVar[dict[str, Checker]] = {"node": _str, "serial": _opt_str}
    node: str
    serial: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmRaise(Command):
    """``node`` reports a condition (``name``, e.g. NOSPACE) that makes the cluster refuse writes adding data."""
    TYPE: ClassVar[str] = "alarm.raise"
    WIRE: ClassVar[dict[str, Checker]] = {"node": _str, "name": _str, "message": _str}
    node: str
    name: str
    message: str  # what is wrong and what to do, as the node that measured it says it


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmClear(Command):
    TYPE: ClassVar[str] = "alarm.clear"
    WIRE: ClassVar[dict[str, Checker]] = {"node": _str, "name": _str}
    node: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanetInit(Command):
    """The planet key and world id of a cluster initialised without them (once)."""
    TYPE: ClassVar[str] = "planet.init"
    WIRE: ClassVar[dict[str, Checker]] = {"planet_key": _bin, "world_id": _int}
    planet_key: bytes = field(repr=False)
    world_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ZtRoot(Command):
    """Cluster node ``node`` serves as a ZeroTier root with ``identity`` at ``endpoints`` (its record, replaced)."""
    TYPE: ClassVar[str] = "zt.root"
    WIRE: ClassVar[dict[str, Checker]] = {"node": _str, "identity": _str, "endpoints": _strs}
    node: str
    identity: str
    endpoints: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanetSet(Command):
    """The cluster's next planet (a serialized signed world)."""
    TYPE: ClassVar[str] = "planet.set"
    WIRE: ClassVar[dict[str, Checker]] = {"world": _bin}
    world: bytes = field(repr=False)


COMMAND_TYPES: dict[str, type[Command]] = {c.TYPE: c for c in (
    NoOp, ClusterInit, NetworkCreate, NetworkUpdate, NetworkDelete, MemberCreate, MemberUpdate, MemberDelete,
    MemberAuthorize, MemberRequest, RestoreBegin, RestoreChunk, RestoreCommit, RestoreAbort, ClusterCertificate,
    ClusterRevoke, AlarmRaise, AlarmClear, PlanetInit, ZtRoot, PlanetSet)}

# Accepted while an alarm is on (every other type is refused before it is proposed): deletes, so an operator can
# free space; the alarms themselves, so they can clear; cluster bookkeeping (certificates, revocations: a few
# bytes, and refusing a revocation would be a security hole); abandoning a restore, which frees its staging;
# and noop, which adds no model data. (member.request is not exempt: it creates members and assigns addresses.)
# The planet's commands are bookkeeping too (a few hundred bytes, replaced not accumulated), and refusing them
# would strand clients on roots that left.
ALARM_EXEMPT_TYPES = frozenset(c.TYPE for c in (
    NetworkDelete, MemberDelete, AlarmRaise, AlarmClear, ClusterInit, ClusterCertificate, ClusterRevoke,
    RestoreAbort, NoOp, PlanetInit, ZtRoot, PlanetSet))


# ---------------------------------------------------------------------------------------------------- codec

def encode(cmd: Command) -> bytes:
    wire: dict[str, Any] = {"v": cmd.version, "type": cmd.TYPE, "request_id": cmd.request_id, "time": cmd.time}
    if cmd.fingerprint is not None:  # absent rather than nil: commands without one keep their exact old bytes
        wire[FINGERPRINT_FIELD] = cmd.fingerprint
    if cmd.by is not None:
        wire[ORIGIN_FIELD] = cmd.by
    for name in cmd.WIRE:
        wire[name] = getattr(cmd, name)
    for name in cmd.OPTIONAL:
        if getattr(cmd, name) is not None:
            wire[name] = getattr(cmd, name)
    data: bytes = msgpack.packb(wire, use_bin_type=True)
    return data


def decode(data: bytes) -> Command:
    """Bytes -> Command, or CommandError naming what is wrong (never another exception)."""
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        wire = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for damaged input
        raise CommandError(f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(wire, dict):
        raise CommandError(f"expected a map, got {type(wire).__name__}")
    v = wire.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:  # (True == 1 in Python: the type check keeps bools out)
        newer = isinstance(v, int) and not isinstance(v, bool) and v > SCHEMA_VERSION
        raise CommandError(f"schema version {v!r} is {'newer than' if newer else 'not'} "
                           f"supported (this node knows {SCHEMA_VERSION})", "v")
    kind = wire.get("type")
    cls = COMMAND_TYPES.get(kind) if type(kind) is str else None  # (a list or a map is not even hashable)
    if cls is None:
        raise CommandError(f"unknown command type {wire.get('type')!r}", "type")
    # Apply decodes every entry: the common case (values of exactly the expected type) is checked inline, anything
    # else goes through the full checks, which accept or reject it as they always have.
    request_id, time = wire.get("request_id"), wire.get("time")
    try:
        if type(request_id) is not str or not 0 < len(request_id) <= _REQUEST_ID_SAFE_CHARS:
            request_id = parse_request_id(request_id)
        if type(time) is not int or not 0 <= time <= TIME_MAX:
            time = parse_time(time)
    except ValidationError as e:
        raise CommandError(e.message, e.field) from None
    if (fp := wire.get(FINGERPRINT_FIELD)) is not None:
        fp = _fingerprint(fp, FINGERPRINT_FIELD)
    if (by := wire.get(ORIGIN_FIELD)) is not None:
        by = _origin(by, ORIGIN_FIELD)
    # Built as the dataclass's __init__ would (every field set through its slot), without its keyword arguments.
    cmd = _new(cls)
    _set_request_id(cmd, request_id)
    _set_time(cmd, time)
    _set_version(cmd, v)
    _set_fingerprint(cmd, fp)
    _set_by(cmd, by)
    for name, check, plain, set_ in _WIRE_CHECKS[cls]:
        try:
            x = wire[name]
        except KeyError:
            raise CommandError("missing", name) from None
        set_(cmd, x if type(x) is plain else check(x, name))
    for name, check, set_ in _OPTIONAL_CHECKS[cls]:
        x = wire.get(name)
        set_(cmd, None if x is None else check(x, name))
    return cmd


# A request id of at most this many characters is at most REQUEST_ID_MAX bytes of UTF-8 (4 bytes a character).
_REQUEST_ID_SAFE_CHARS = REQUEST_ID_MAX // 4


class _NoType:
    """No decoded value is of this type: a field whose check has no such fast path always runs it."""


# The checks that return a value of exactly this type unchanged: such a value needs no call.
_PASSES: dict[Checker, type] = {_str: str, _int: int, _bool: bool, _map: dict, _bin: bytes}
Setter = Callable[[Command, Any], None]
_new = object.__new__
_set_request_id, _set_time, _set_version, _set_fingerprint, _set_by = (
    Command.__dict__[f].__set__ for f in ("request_id", "time", "version", "fingerprint", "by"))
# (name, check, the type it passes unchanged, the field's slot setter) of each type's wire fields
_WIRE_CHECKS: dict[type[Command], tuple[tuple[str, Checker, type, Setter], ...]] = {
    cls: tuple((name, check, _PASSES.get(check, _NoType), cls.__dict__[name].__set__)
               for name, check in cls.WIRE.items())
    for cls in COMMAND_TYPES.values()}
# (name, check, the field's slot setter) of each type's optional fields (None when absent)
_OPTIONAL_CHECKS: dict[type[Command], tuple[tuple[str, Checker, Setter], ...]] = {
    cls: tuple((name, check, cls.__dict__[name].__set__) for name, check in cls.OPTIONAL.items())
    for cls in COMMAND_TYPES.values()}


def _check_slots() -> None:
    """decode sets every field of every type: the envelope's, the wire fields and the optional ones (whose
    default is None), and nothing else."""
    for cls in COMMAND_TYPES.values():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == {"request_id", "time", "version", "fingerprint", "by", *cls.WIRE, *cls.OPTIONAL}, cls
        assert all(fields[f].default is None for f in cls.OPTIONAL), cls
        assert not hasattr(cls, "__post_init__"), cls


_check_slots()


def with_fingerprint(command: bytes, fingerprint: bytes | None) -> bytes:
    """An encoded command carrying ``fingerprint`` (unchanged when it is None). One step after any builder, so
    the builders need not each take it."""
    if fingerprint is None:
        return command
    return encode(replace(decode(command), fingerprint=_fingerprint(fingerprint, FINGERPRINT_FIELD)))


def with_origin(command: bytes, by: dict[str, str] | None) -> bytes:
    """An encoded command saying who asked (unchanged when ``by`` is None); like with_fingerprint."""
    if by is None:
        return command
    return encode(replace(decode(command), by=_origin(by, ORIGIN_FIELD)))


def command_type(command: bytes) -> str | None:
    """The type of an encoded command (None when it does not decode: apply then answers BAD_COMMAND)."""
    try:
        return decode(command).TYPE
    except CommandError:
        return None


def fingerprint_of(command: bytes) -> bytes | None:
    """The fingerprint an encoded command carries (None without one, or when it does not decode: apply then
    answers BAD_COMMAND, never a replay)."""
    try:
        return decode(command).fingerprint
    except CommandError:
        return None


# ------------------------------------------------------------------------------------- proposer-side helpers

def new_controller_identity() -> Identity:
    """A fresh ZeroTier identity for cluster.init: the cluster's controller address and the key it signs network
    configs with. Slow (a search over the memory-hard hash: ~1-3 s in pure Python, much less with the native
    hash): call it off the event loop. Its ``to_bytes(include_private=True)`` is the command's ``signing_key``."""
    return Identity.generate()


def new_planet_key() -> tuple[bytes, bytes]:
    """A fresh planet signing key pair (public, private), 64 bytes each (C25519). The private half is what
    cluster.init / planet.init carry as ``planet_key``."""
    private = crypto.generate_private()
    return crypto.public_from_private(private), private


def new_world_id() -> int:
    """A random 64-bit planet id: not 0 (the null world) and not ZeroTier's own planet's."""
    while True:
        wid = secrets.randbits(64)
        if wid not in (0, ZEROTIER_PLANET_ID):
            return wid


def random_network_start() -> int:
    return secrets.randbelow(NETWORK_N_MAX) + 1


# ----------------------------------------------------------------------------------------------- builders
# Each validates with the same validator apply uses (raising ValidationError(field, message)) and returns the
# encoded command. request_id and time are the proposer's.

def _canon_nwid(nwid: str) -> str:
    return format_nwid(parse_nwid(nwid))


def _canon_address(address: str) -> str:
    return format_address(parse_address(address))


def _envelope(request_id: str, time: int) -> dict[str, Any]:
    return {"request_id": parse_request_id(request_id), "time": parse_time(time)}


def build_noop(request_id: str, time: int) -> bytes:
    return encode(NoOp(**_envelope(request_id, time)))


def build_cluster_certificate(request_id: str, time: int, node: str, serial: str) -> bytes:
    return encode(ClusterCertificate(request_id=request_id, time=time, node=parse_label(node, "node"),
                                     serial=parse_serial(serial)))


def build_cluster_revoke(request_id: str, time: int, node: str, serial: str | None = None) -> bytes:
    return encode(ClusterRevoke(request_id=request_id, time=time, node=parse_label(node, "node"),
                                serial=None if serial is None else parse_serial(serial)))


def parse_alarm_name(v: Any, field: str = "name") -> str:
    if not isinstance(v, str) or not ALARM_NAME_RE.match(v):
        raise ValidationError(field, f"expected an alarm name such as NOSPACE ([A-Z][A-Z0-9_]*, at most 32 "
                                     f"characters), got {v!r}")
    return v


def parse_alarm_message(v: Any, field: str = "message") -> str:
    if not isinstance(v, str) or not v or len(v) > ALARM_MESSAGE_MAX or not v.isprintable():
        raise ValidationError(field, f"expected a non-empty printable string of at most {ALARM_MESSAGE_MAX} "
                                     f"characters")
    return v


def build_alarm_raise(request_id: str, time: int, node: str, name: str, message: str) -> bytes:
    return encode(AlarmRaise(**_envelope(request_id, time), node=parse_label(node, "node"),
                             name=parse_alarm_name(name), message=parse_alarm_message(message)))


def build_alarm_clear(request_id: str, time: int, node: str, name: str) -> bytes:
    return encode(AlarmClear(**_envelope(request_id, time), node=parse_label(node, "node"),
                             name=parse_alarm_name(name)))


def _planet_pair(planet_key: bytes | None, world_id: int | None) -> tuple[bytes | None, int | None]:
    """Optional planet key and world id, validated: both or neither."""
    if (planet_key is None) != (world_id is None):
        raise ValidationError("planet_key" if planet_key is None else "world_id",
                              "planet_key and world_id come together (or neither)")
    if planet_key is None:
        return None, None
    parse_planet_key(planet_key)
    return bytes(planet_key), parse_world_id(world_id)


def build_cluster_init(request_id: str, time: int, *, cluster_id: str, timeline_id: str, address: str,
                       signing_key: bytes, token_hash: str, planet_key: bytes | None = None,
                       world_id: int | None = None) -> bytes:
    """``signing_key``: the controller identity's binary form with its private key (new_controller_identity());
    ``address`` must be that identity's address. ``planet_key`` (the private half of new_planet_key()) and
    ``world_id`` (new_world_id()): the cluster's own planet; both or neither."""
    a = parse_address(address)
    check_controller_address(controller_identity(signing_key), a)
    pk, wid = _planet_pair(planet_key, world_id)
    return encode(ClusterInit(**_envelope(request_id, time), cluster_id=parse_label(cluster_id, "cluster_id"),
                              timeline_id=parse_label(timeline_id, "timeline_id"),
                              address=format_address(a), signing_key=bytes(signing_key),
                              token_hash=parse_token_hash(token_hash), planet_key=pk, world_id=wid))


def build_planet_init(request_id: str, time: int, planet_key: bytes, world_id: int) -> bytes:
    """The planet key and id for a cluster initialised without them."""
    pk, wid = _planet_pair(planet_key, world_id)
    if pk is None or wid is None:
        raise ValidationError("planet_key", "required")
    return encode(PlanetInit(**_envelope(request_id, time), planet_key=pk, world_id=wid))


def build_zt_root(request_id: str, time: int, node: str, identity: str, endpoints: Iterable[str]) -> bytes:
    """Node ``node``'s root record: its public root identity string and 0..32 stable endpoints "IP/port"
    (canonicalised, repeats dropped)."""
    return encode(ZtRoot(**_envelope(request_id, time), node=parse_label(node, "node"),
                         identity=str(root_identity(identity)), endpoints=parse_endpoints(list(endpoints))))


def build_planet_set(request_id: str, time: int, world: bytes) -> bytes:
    """The cluster's next planet, ``world`` serialized (World.encode(); planet.next_world builds it). Checked
    here as far as that needs no state: it decodes, is a planet, 1..4 roots each with endpoints."""
    parse_world(world)
    return encode(PlanetSet(**_envelope(request_id, time), world=bytes(world)))


def build_network_create(request_id: str, time: int, body: Any, *, start: int | None = None) -> bytes:
    """POST /controller/network/{ctrl}______ ; ``start`` defaults to a fresh random candidate."""
    start = random_network_start() if start is None else start
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start <= NETWORK_N_MAX:
        raise ValidationError("start", f"expected 1..{NETWORK_N_MAX}")
    return encode(NetworkCreate(**_envelope(request_id, time), start=start,
                                changes=validate_network_changes(body)))


def build_network_update(request_id: str, time: int, nwid: str, body: Any) -> bytes:
    return encode(NetworkUpdate(**_envelope(request_id, time), nwid=_canon_nwid(nwid),
                                changes=validate_network_changes(body)))


def build_network_delete(request_id: str, time: int, nwid: str) -> bytes:
    return encode(NetworkDelete(**_envelope(request_id, time), nwid=_canon_nwid(nwid)))


def build_member_create(request_id: str, time: int, nwid: str, address: str, body: Any) -> bytes:
    return encode(MemberCreate(**_envelope(request_id, time), nwid=_canon_nwid(nwid),
                               address=_canon_address(address), changes=validate_member_changes(body)))


def build_member_update(request_id: str, time: int, nwid: str, address: str, body: Any) -> bytes:
    return encode(MemberUpdate(**_envelope(request_id, time), nwid=_canon_nwid(nwid),
                               address=_canon_address(address), changes=validate_member_changes(body)))


def build_member_delete(request_id: str, time: int, nwid: str, address: str) -> bytes:
    return encode(MemberDelete(**_envelope(request_id, time), nwid=_canon_nwid(nwid),
                               address=_canon_address(address)))


def build_member_authorize(request_id: str, time: int, nwid: str, address: str, authorized: bool) -> bytes:
    return encode(MemberAuthorize(**_envelope(request_id, time), nwid=_canon_nwid(nwid),
                                  address=_canon_address(address), authorized=bool(authorized)))


def build_member_request(request_id: str, time: int, nwid: str, address: str, identity: str, *,
                         vMajor: int = -1, vMinor: int = -1, vRev: int = -1, vProto: int = -1) -> bytes:
    """A ZeroTier node's config request for network ``nwid``. ``identity`` is the requester's public identity
    string; the caller must have validated it (Identity.locally_validate, off the event loop): neither this
    builder nor apply runs the memory-hard hash. The version fields are -1 when the request did not carry them
    (a -1 leaves the stored value as it is)."""
    a = parse_address(address)
    versions = {k: parse_version_field(v, k)
                for k, v in (("vMajor", vMajor), ("vMinor", vMinor), ("vRev", vRev), ("vProto", vProto))}
    return encode(MemberRequest(**_envelope(request_id, time), nwid=_canon_nwid(nwid), address=format_address(a),
                                identity=member_identity(identity, a), **versions))


def build_restore(networks: Iterable[dict[str, Any]], members: Iterable[dict[str, Any]], *, request_id: str,
                  time: int, restore_id: str, timeline_id: str, address: str, signing_key: bytes,
                  token_hash: str | None = None, chunk_bytes: int = 256 << 10, planet_key: bytes | None = None,
                  world_id: int | None = None, planet: bytes | None = None) -> Iterator[bytes]:
    """The whole restore sequence: begin, chunks of whole records (networks first), commit.

    Request ids are ``request_id`` + "/begin", "/0", "/1", ..., "/commit". Records are validated here, so a
    bad backup fails before anything is proposed. Streams: memory is bounded by ``chunk_bytes``. ``signing_key``
    and ``address`` as for build_cluster_init: the restored controller's identity. ``planet_key``, ``world_id``
    and ``planet``: the backup's planet key, id and current world (StateMachine.planet_key(), .planet()), if it
    has them; a planet needs the key and id.
    """
    controller = parse_address(address)
    check_controller_address(controller_identity(signing_key), controller)  # (a pre-identity backup fails here)
    if token_hash is not None:
        parse_token_hash(token_hash)
    parse_label(restore_id, "restore_id")
    pk, wid = _planet_pair(planet_key, world_id)
    if planet is not None:
        if pk is None:
            raise ValidationError("planet", "a planet needs its planet_key and world_id")
        parse_world(planet)
        planet = bytes(planet)
    env = _envelope(request_id + "/begin", time)
    yield encode(RestoreBegin(**env, restore_id=restore_id, timeline_id=parse_label(timeline_id, "timeline_id"),
                              address=format_address(controller), signing_key=bytes(signing_key),
                              token_hash=token_hash, planet_key=pk, world_id=wid, planet=planet))
    seq, counts, size = 0, {"networks": 0, "members": 0}, 0
    batch: dict[str, list[dict[str, Any]]] = {"networks": [], "members": []}

    def flush() -> bytes:
        nonlocal seq, size, batch
        out = encode(RestoreChunk(**_envelope(f"{request_id}/{seq}", time), restore_id=restore_id, seq=seq,
                                  networks=batch["networks"], members=batch["members"]))
        seq, size, batch = seq + 1, 0, {"networks": [], "members": []}
        return out

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
        for n in networks:
            network_record(n, controller)
            yield "networks", n
        for m in members:
            member_record(m)
            yield "members", m

    for kind, rec in records():
        packed = len(msgpack.packb(rec, use_bin_type=True))
        if size and size + packed > chunk_bytes:
            yield flush()
        batch[kind].append(rec)
        counts[kind] += 1
        size += packed
    if size:
        yield flush()
    yield encode(RestoreCommit(**_envelope(request_id + "/commit", time), restore_id=restore_id, chunks=seq,
                               networks=counts["networks"], members=counts["members"]))
