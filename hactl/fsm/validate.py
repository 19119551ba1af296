"""The one validator: API bodies and stored records into canonical form, or a ValidationError naming the field.

Used by the proposer (to answer 400 before anything is proposed) and again by apply (so a command from a buggy
or newer proposer cannot write a non-canonical record). Canonicalising is idempotent: validating a canonical
change set returns it unchanged, which is what lets apply re-run it.

Unknown fields and read-only fields (id, revision, creationTime...) in a body are ignored, as ZeroTier does.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from hactl.fsm.coerce import (ValidationError, sub, to_bool, to_dict, to_int, to_ip, to_list,
                              to_network, to_str)
from hactl.fsm.model import (MEMBER_SETTABLE, MTU_MAX, MTU_MIN, NETWORK_N_MAX, NETWORK_SETTABLE, member_defaults,
                             network_defaults)
from hactl.fsm.rules import parse_rules
from hactl.zt import crypto
from hactl.zt.identity import PRIVATE_FORM_SIZE, Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.world import MAX_STABLE_ENDPOINTS, ZEROTIER_PLANET_ID, World, WorldType

__all__ = [
    "ValidationError", "validate_network_changes", "validate_member_changes", "network_record", "member_record",
    "parse_nwid", "parse_address", "check_network_id", "parse_request_id", "parse_time", "parse_label",
    "parse_token_hash", "controller_identity", "check_controller_address", "member_identity", "parse_version_field",
    "parse_planet_key", "parse_world_id", "root_identity", "parse_endpoints", "parse_world",
]

U32 = 0xFFFFFFFF
NAME_MAX = 1024  # ZeroTier truncates names in configs to 127; we store what fits a sane request and reject more
DOMAIN_MAX = 255
IDENTITY_MAX = 1024
VERSION_FIELD_MAX = 65535  # vMajor/vMinor/vRev/vProto are 16-bit on the wire; -1 is "unknown"
REQUEST_ID_MAX = 256  # bytes of UTF-8: it is an LMDB key (max 511)
LABEL_MAX = 128  # cluster id, timeline id, restore id
TOKEN_HASH_MAX = 512
TIME_MAX = (1 << 63) - 1

Field = Callable[[Any, str], Any]


# ---------------------------------------------------------------------------------------------- identifiers

def _fixed_hex(v: Any, digits: int) -> int | None:
    """``digits`` hex digits (any case) as an int, else None. bytes.fromhex is strict about digits and, with
    the length checked on both sides, about separators too; it is several times faster than a regex."""
    if isinstance(v, str) and len(v) == digits:
        try:
            b = bytes.fromhex(v)
        except ValueError:
            return None
        if len(b) * 2 == digits:
            return int.from_bytes(b, "big")
    return None


def parse_nwid(v: Any, field: str = "nwid") -> int:
    """16 hex digits, any case."""
    n = _fixed_hex(v, 16)
    if n is None:
        raise ValidationError(field, f"expected a 16-hex-digit network id, got {v!r}")
    return n


def parse_address(v: Any, field: str = "address") -> int:
    """10 hex digits, any case; 0 and ff........ are reserved."""
    a = _fixed_hex(v, 10)
    if a is None:
        raise ValidationError(field, f"expected a 10-hex-digit address, got {v!r}")
    if a == 0 or a >> 32 == 0xFF:
        raise ValidationError(field, f"{v!r} is a reserved address (0 or starting with ff)")
    return a


def check_network_id(nwid: int, controller: int, field: str = "id") -> None:
    """A network id must be (controller << 24) | n with n in 1..2^24-1."""
    if nwid >> 24 != controller:
        raise ValidationError(field, f"network {nwid:016x} is not under this controller ({controller:010x})")
    if not 1 <= nwid & 0xFFFFFF <= NETWORK_N_MAX:
        raise ValidationError(field, f"network {nwid:016x}: the last 6 hex digits must not be 000000")


def parse_request_id(v: Any, field: str = "request_id") -> str:
    if not isinstance(v, str) or not v or len(v.encode("utf-8", "surrogatepass")) > REQUEST_ID_MAX:
        raise ValidationError(field, f"expected a non-empty string of at most {REQUEST_ID_MAX} bytes, got {v!r}")
    return v


def parse_time(v: Any, field: str = "time") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= TIME_MAX:
        raise ValidationError(field, f"expected milliseconds since the epoch (an integer >= 0), got {v!r}")
    return v


def parse_label(v: Any, field: str) -> str:
    if not isinstance(v, str) or not v or len(v) > LABEL_MAX or not v.isprintable():
        raise ValidationError(field, f"expected a non-empty printable string of at most {LABEL_MAX} chars")
    return v


def parse_serial(v: Any, field: str = "serial") -> str:
    """A certificate serial number as lowercase hex without leading zeros (X.509 serials are at most 20 bytes)."""
    if isinstance(v, str):
        t = v.strip().lower().removeprefix("0x").replace(":", "")
        if 0 < len(t) <= 40 and all(c in "0123456789abcdef" for c in t):
            return format(int(t, 16), "x")
    raise ValidationError(field, "expected a certificate serial number in hex (at most 20 bytes)")


def parse_token_hash(v: Any, field: str = "token_hash") -> str:
    if not isinstance(v, str) or not v or len(v) > TOKEN_HASH_MAX or not v.isascii():
        raise ValidationError(field, f"expected a non-empty ASCII string of at most {TOKEN_HASH_MAX} chars")
    return v


LEGACY_SIGNING_KEY_SIZE = 32  # what cluster.init carried before: a raw Ed25519 key, not a ZeroTier identity


def controller_identity(v: Any, field: str = "signing_key") -> Identity:
    """The cluster's ZeroTier controller identity, private key included, from ZeroTier's binary form
    (``Identity.to_bytes(include_private=True)``, 135 bytes): it parses, carries a private key, and that key
    belongs to the public key (Identity.from_bytes checks that; a scalar multiplication, well under a ms).

    The memory-hard hash that ties the address to the key (Identity.locally_validate) is deliberately NOT run:
    it costs ~0.15 s in Python, far too much inside apply (it would stall every node's apply loop), and the
    proposer made the identity itself with Identity.generate, which only returns identities that pass it.
    """
    if not isinstance(v, (bytes, bytearray)):
        raise ValidationError(field, f"expected the controller's ZeroTier identity in binary form, got "
                                     f"{type(v).__name__}")
    if len(v) == LEGACY_SIGNING_KEY_SIZE:
        raise ValidationError(field, "this is a 32-byte Ed25519 key from an earlier version, not a ZeroTier "
                                     f"identity ({PRIVATE_FORM_SIZE} bytes with its private key); the controller "
                                     "address must be a ZeroTier identity now, so a backup made before that change "
                                     "cannot be restored")
    try:
        ident = Identity.from_bytes(bytes(v))
    except ValueError as e:  # ProtocolError is a ValueError
        raise ValidationError(field, f"not a ZeroTier identity in binary form: {e}") from None
    if not ident.has_private:
        raise ValidationError(field, "the controller identity must carry its private key (the controller signs "
                                     "network configs with it)")
    return ident


def check_controller_address(ident: Identity, address: int, field: str = "address") -> None:
    """The controller address a command names must be its identity's: networks live under that address."""
    if ident.address != address:
        raise ValidationError(field, f"{address:010x} is not the address of the controller identity "
                                     f"({ident.address:010x})")


def member_identity(v: Any, address: int, field: str = "identity") -> str:
    """A requester's public ZeroTier identity string, canonical (``str(Identity)``), whose address is ``address``.

    Parsing is cheap (hex and a length check); the memory-hard hash that proves the address belongs to the key is
    NOT checked here: apply must stay fast and deterministic, and the node that proposes a member.request has
    already validated the identity (off its event loop) when the peer introduced itself.
    """
    if not isinstance(v, str) or not v or len(v) > IDENTITY_MAX:
        raise ValidationError(field, f"expected a ZeroTier identity string of at most {IDENTITY_MAX} characters")
    if v.count(":") == 3:  # (checked before parsing, which would also check the secret against the key)
        raise ValidationError(field, "expected the public identity (address:0:public key); this one carries a "
                                     "secret, which must never be sent or stored")
    try:
        ident = Identity.from_string(v)
    except ValueError as e:  # ProtocolError is a ValueError
        raise ValidationError(field, f"not a ZeroTier identity: {e}") from None
    if ident.address != address:
        raise ValidationError(field, f"the identity's address {ident.address:010x} is not the member address "
                                     f"{address:010x}")
    return str(ident)


def parse_version_field(v: Any, field: str) -> int:
    """vMajor, vMinor, vRev or vProto of a config request: -1 (unknown) .. 65535."""
    if isinstance(v, bool) or not isinstance(v, int) or not -1 <= v <= VERSION_FIELD_MAX:
        raise ValidationError(field, f"expected an integer in -1..{VERSION_FIELD_MAX} (-1: unknown), got {v!r}")
    return v


# ------------------------------------------------------------------------------------------------ the planet
# The cluster is its own ZeroTier planet (issue 11): a world id, a C25519 key pair that signs every world of that
# id, one root record per cluster node, and the current signed world. See machine.py (planet.*, zt.root).

ENDPOINTS_MAX = MAX_STABLE_ENDPOINTS


def parse_planet_key(v: Any, field: str = "planet_key") -> tuple[bytes, bytes]:
    """The planet signing key: a 64-byte C25519 PRIVATE key (X25519 scalar | Ed25519 seed). Returns (public,
    private); the public half is derived (a scalar multiplication each, well under a ms)."""
    if not isinstance(v, (bytes, bytearray)) or len(v) != crypto.PRIVATE_KEY_SIZE:
        got = f"{len(v)} bytes" if isinstance(v, (bytes, bytearray)) else type(v).__name__
        raise ValidationError(field, f"expected the planet's {crypto.PRIVATE_KEY_SIZE}-byte C25519 private key, "
                                     f"got {got}")
    private = bytes(v)
    return crypto.public_from_private(private), private


def parse_world_id(v: Any, field: str = "world_id") -> int:
    """A planet id: unsigned 64-bit, not 0 (the null world) and not ZeroTier's own planet's (149604618)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 1 << 64:
        raise ValidationError(field, f"expected a world id in 1..2^64-1, got {v!r}")
    if v == ZEROTIER_PLANET_ID:
        raise ValidationError(field, f"{v} is ZeroTier's own planet id; a cluster's planet needs its own")
    return v


def root_identity(v: Any, field: str = "identity") -> Identity:
    """A root's public ZeroTier identity string (address:0:public key). Parsed only, like member_identity: the
    memory-hard hash is the proposer's job (it generated the identity)."""
    if not isinstance(v, str) or not v or len(v) > IDENTITY_MAX:
        raise ValidationError(field, f"expected a ZeroTier identity string of at most {IDENTITY_MAX} characters")
    if v.count(":") == 3:
        raise ValidationError(field, "expected the public identity (address:0:public key); this one carries a "
                                     "secret, which must never be sent or stored")
    try:
        return Identity.from_string(v)
    except ValueError as e:  # ProtocolError is a ValueError
        raise ValidationError(field, f"not a ZeroTier identity: {e}") from None


def parse_endpoint(v: Any, field: str) -> str:
    """One stable endpoint "IP/port" (ZeroTier's text form, IPv6 without brackets), canonical. Refused: port 0,
    and addresses no client could reach a root at (loopback, unspecified, multicast, link-local, IPv4-mapped).
    Private (RFC 1918, ULA) addresses are allowed: a cluster on a LAN serves clients on that LAN."""
    if not isinstance(v, str) or len(v) > 64:
        raise ValidationError(field, f"expected an endpoint \"IP/port\", got {v!r}"[:200])
    try:
        ep = InetAddress.from_str(v)
    except ValueError:
        raise ValidationError(field, f"expected an endpoint \"IP/port\" (IPv6 without brackets), got {v!r}") from None
    ip = ep.ip
    assert ip is not None
    if not 1 <= ep.port <= 0xFFFF:
        raise ValidationError(field, f"{v}: port must be 1..65535")
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local or (
            ip.version == 6 and ip.ipv4_mapped is not None):  # type: ignore[union-attr]
        raise ValidationError(field, f"{v}: a loopback, unspecified, multicast, link-local or IPv4-mapped address "
                                     "is no endpoint a client can reach")
    return str(ep)


def parse_endpoints(v: Any, field: str = "endpoints") -> list[str]:
    """0..32 endpoints, canonical, in the given order with repeats dropped."""
    if not isinstance(v, (list, tuple)):
        raise ValidationError(field, f"expected an array of \"IP/port\" strings, got {type(v).__name__}")
    out: list[str] = []
    for i, e in enumerate(v):
        ep = parse_endpoint(e, sub(field, i))
        if ep not in out:
            out.append(ep)
    if len(out) > ENDPOINTS_MAX:
        raise ValidationError(field, f"a root has at most {ENDPOINTS_MAX} stable endpoints (ZeroTier's limit), "
                                     f"got {len(out)}")
    return out


def parse_world(v: Any, field: str = "world") -> World:
    """A serialized world that decodes, is a planet and lists 1..4 roots (ZeroTier's limit; the decoder refuses
    more, and each root's 32 endpoints), each root with at least one endpoint. What no stateless check can tell
    (id, signer, timestamp) is apply's."""
    if not isinstance(v, (bytes, bytearray)):
        raise ValidationError(field, f"expected a serialized world (binary), got {type(v).__name__}")
    try:
        world = World.decode(bytes(v))
    except ValueError as e:  # ProtocolError is a ValueError
        raise ValidationError(field, f"not a ZeroTier world: {e}") from None
    if world.type != WorldType.PLANET:
        raise ValidationError(field, f"expected a planet (type 1), got a {world.type.name.lower()} "
                                     f"(type {int(world.type)})")
    if not world.roots:
        raise ValidationError(field, "a planet without roots leaves its clients with no root at all")
    for i, root in enumerate(world.roots):
        if not root.stable_endpoints or any(ep.is_nil for ep in root.stable_endpoints):
            raise ValidationError(f"{field}.roots[{i}]", f"root {root.identity.address:010x} needs at least one "
                                                          "endpoint, and no nil ones")
    addresses = [r.identity.address for r in world.roots]
    if len(set(addresses)) != len(addresses):
        raise ValidationError(field, "a root is listed twice")
    return world


# -------------------------------------------------------------------------------------------- network fields

def _name(v: Any, f: str) -> str:
    return to_str(v, f, NAME_MAX)


def _v4_assign_mode(v: Any, f: str) -> dict[str, bool]:
    if isinstance(v, str):  # legacy form
        if v in ("zt", "none", ""):
            return {"zt": v == "zt"}
        raise ValidationError(f, f"expected an object or the legacy string 'zt', got {v!r}")
    d = to_dict(v, f)
    return {"zt": to_bool(d.get("zt", False), sub(f, "zt"))}


_V6_MODES = ("rfc4193", "zt", "6plane")


def _v6_assign_mode(v: Any, f: str) -> dict[str, bool]:
    if isinstance(v, str):  # legacy form: comma-separated mode names
        words = {w.strip() for w in v.split(",") if w.strip()} - {"none"}
        bad = words - set(_V6_MODES)
        if bad:
            raise ValidationError(f, f"unknown IPv6 assign mode(s) {sorted(bad)}")
        return {m: m in words for m in _V6_MODES}
    d = to_dict(v, f)
    return {m: to_bool(d.get(m, False), sub(f, m)) for m in _V6_MODES}


def _mtu(v: Any, f: str) -> int:
    return min(max(to_int(v, f, -(1 << 63), 1 << 63), MTU_MIN), MTU_MAX)  # clamped, as ZeroTier does


def _u32(v: Any, f: str) -> int:
    return to_int(v, f, 0, U32)


def _routes(v: Any, f: str) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(to_list(v, f)):
        fi = sub(f, i)
        r = to_dict(r, fi)
        if "target" not in r:
            raise ValidationError(sub(fi, "target"), "required")
        target = to_network(r["target"], sub(fi, "target"))
        via = r.get("via")
        if via is None or via == "":
            via_s = None
        else:
            ip = to_ip(via, sub(fi, "via"))
            if ip.version != target.version:
                raise ValidationError(sub(fi, "via"), f"IPv{ip.version} gateway for an IPv{target.version} target")
            via_s = str(ip)
        out.append({"target": str(target), "via": via_s})
    return out


def _pools(v: Any, f: str) -> list[dict[str, str]]:
    out = []
    for i, p in enumerate(to_list(v, f)):
        fi = sub(f, i)
        p = to_dict(p, fi)
        for k in ("ipRangeStart", "ipRangeEnd"):
            if k not in p:
                raise ValidationError(sub(fi, k), "required")
        start = to_ip(p["ipRangeStart"], sub(fi, "ipRangeStart"))
        end = to_ip(p["ipRangeEnd"], sub(fi, "ipRangeEnd"))
        if start.version != end.version:
            raise ValidationError(sub(fi, "ipRangeEnd"), "start and end are different IP versions")
        if int(end) < int(start):
            raise ValidationError(sub(fi, "ipRangeEnd"), "must not be below ipRangeStart")
        out.append({"ipRangeStart": str(start), "ipRangeEnd": str(end)})
    return out


def _rules(v: Any, f: str) -> list[dict[str, Any]]:
    return parse_rules(v, f)


def _network_capabilities(v: Any, f: str) -> list[dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}  # ZeroTier keys capabilities by id: a later duplicate wins
    for i, c in enumerate(to_list(v, f)):
        fi = sub(f, i)
        c = to_dict(c, fi)
        if "id" not in c:
            raise ValidationError(sub(fi, "id"), "required")
        cid = _u32(c["id"], sub(fi, "id"))
        by_id[cid] = {"id": cid, "default": to_bool(c.get("default", False), sub(fi, "default")),
                      "rules": parse_rules(c.get("rules", []), sub(fi, "rules"))}
    return [by_id[k] for k in sorted(by_id)]


def _network_tags(v: Any, f: str) -> list[dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for i, t in enumerate(to_list(v, f)):
        fi = sub(f, i)
        t = to_dict(t, fi)
        if "id" not in t:
            raise ValidationError(sub(fi, "id"), "required")
        tid = _u32(t["id"], sub(fi, "id"))
        dflt = t.get("default")
        by_id[tid] = {"id": tid, "default": None if dflt is None else _u32(dflt, sub(fi, "default"))}
    return [by_id[k] for k in sorted(by_id)]


def _dns(v: Any, f: str) -> dict[str, Any]:
    d = to_dict(v, f)
    domain = d.get("domain")
    domain = "" if domain is None else to_str(domain, sub(f, "domain"), DOMAIN_MAX)
    servers = d.get("servers")
    servers = [] if servers is None else to_list(servers, sub(f, "servers"))
    return {"domain": domain,
            "servers": [str(to_ip(s, sub(sub(f, "servers"), i))) for i, s in enumerate(servers)]}


_NETWORK_FIELDS: dict[str, Field] = {
    "name": _name,
    "private": to_bool,
    "enableBroadcast": to_bool,
    "v4AssignMode": _v4_assign_mode,
    "v6AssignMode": _v6_assign_mode,
    "mtu": _mtu,
    "multicastLimit": _u32,
    "routes": _routes,
    "ipAssignmentPools": _pools,
    "rules": _rules,
    "capabilities": _network_capabilities,
    "tags": _network_tags,
    "dns": _dns,
}
assert tuple(_NETWORK_FIELDS) == NETWORK_SETTABLE


# --------------------------------------------------------------------------------------------- member fields

def _ip_assignments(v: Any, f: str) -> list[str]:
    seen: dict[str, None] = {}  # ordered set: a repeated address is kept once, in first position
    for i, s in enumerate(to_list(v, f)):
        seen.setdefault(str(to_ip(s, sub(f, i))), None)
    return list(seen)


def _member_tags(v: Any, f: str) -> list[list[int]]:
    by_id: dict[int, int] = {}
    for i, t in enumerate(to_list(v, f)):
        fi = sub(f, i)
        if not isinstance(t, (list, tuple)) or len(t) != 2:
            raise ValidationError(fi, f"expected an [id, value] pair, got {t!r}")
        by_id[_u32(t[0], sub(fi, 0))] = _u32(t[1], sub(fi, 1))
    return [[k, by_id[k]] for k in sorted(by_id)]


def _member_capabilities(v: Any, f: str) -> list[int]:
    return sorted({_u32(c, sub(f, i)) for i, c in enumerate(to_list(v, f))})


_MEMBER_FIELDS: dict[str, Field] = {
    "name": _name,
    "authorized": to_bool,
    "activeBridge": to_bool,
    "noAutoAssignIps": to_bool,
    "ipAssignments": _ip_assignments,
    "tags": _member_tags,
    "capabilities": _member_capabilities,
}
assert tuple(_MEMBER_FIELDS) == MEMBER_SETTABLE


# ----------------------------------------------------------------------------------------------- change sets

def _changes(body: Any, fields: dict[str, Field]) -> dict[str, Any]:
    b = to_dict(body, None)
    return {k: parse(b[k], k) for k, parse in fields.items() if k in b}


def validate_network_changes(body: Any) -> dict[str, Any]:
    """The settable network fields present in ``body``, canonical, in record order."""
    return _changes(body, _NETWORK_FIELDS)


def validate_member_changes(body: Any) -> dict[str, Any]:
    """The settable member fields present in ``body``, canonical, in record order."""
    return _changes(body, _MEMBER_FIELDS)


# ------------------------------------------------------------------------------------ whole records (restore)

def _int_field(d: Mapping[str, Any], key: str, lo: int, hi: int, default: int) -> int:
    return to_int(d.get(key, default), key, lo, hi)


def network_record(d: Any, controller: int) -> tuple[int, dict[str, Any]]:
    """A whole network as ``db dump`` prints it -> (nwid, canonical stored record)."""
    d = to_dict(d, None)
    nwid = parse_nwid(d.get("id", d.get("nwid")), "id")
    check_network_id(nwid, controller)
    rec = network_defaults(_int_field(d, "creationTime", 0, TIME_MAX, 0))
    rec.update(validate_network_changes(d))
    rec["revision"] = _int_field(d, "revision", 1, TIME_MAX, 1)
    return nwid, rec


def member_record(d: Any) -> tuple[int, int, dict[str, Any]]:
    """A whole member as ``db dump`` prints it -> (nwid, address, canonical stored record)."""
    d = to_dict(d, None)
    nwid = parse_nwid(d.get("nwid"), "nwid")
    address = parse_address(d.get("id", d.get("address")), "id")
    rec = member_defaults(_int_field(d, "creationTime", 0, TIME_MAX, 0))
    rec.update(validate_member_changes(d))
    identity = d.get("identity")
    rec["identity"] = "" if identity is None else to_str(identity, "identity", IDENTITY_MAX)
    rec["revision"] = _int_field(d, "revision", 1, TIME_MAX, 1)
    rec["lastAuthorizedTime"] = _int_field(d, "lastAuthorizedTime", 0, TIME_MAX, 0)
    rec["lastDeauthorizedTime"] = _int_field(d, "lastDeauthorizedTime", 0, TIME_MAX, 0)
    ct = d.get("lastAuthorizedCredentialType")
    rec["lastAuthorizedCredentialType"] = None if ct is None else to_str(ct, "lastAuthorizedCredentialType", 64)
    for k in ("vMajor", "vMinor", "vRev", "vProto"):
        rec[k] = _int_field(d, k, -1, U32, -1)
    return nwid, address, rec

