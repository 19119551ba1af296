"""The cluster's own planet: which nodes are its roots, the next signed world, and checking a world file.

Pure functions (no clock, no I/O): the leader computes the next planet from the replicated root records and the
membership and proposes it (planet.set, hactl/fsm); ``hactl zt planet --check`` explains a planet or moon file.

Rules that come from ZeroTier (brief section 7):
- a world lists at most 4 roots (a node refuses to parse one with more: such a planet is not degraded but
  unusable), each with at most 32 stable endpoints;
- a node replaces its planet only by one of the same id and type, with a strictly newer timestamp, signed by the
  key its current planet names (updates_must_be_signed_by). Every planet the cluster makes names the cluster's
  planet key, so the same key signs every update and the chain never breaks.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress, Reader
from hactl.zt.world import (MAX_ROOTS, MAX_STABLE_ENDPOINTS, ZEROTIER_PLANET, ZEROTIER_PLANET_ID, Root, World,
                            WorldType)

__all__ = ["desired_roots", "next_world", "same_roots", "check_world", "inspect_world", "describe_world",
           "WorldReport"]


# ------------------------------------------------------------------------------------------ choosing roots

def _root_of(record: Mapping[str, Any]) -> Root | None:
    """A root record ({identity, endpoints}) as a Root; None when it has no usable endpoint or does not parse."""
    try:
        ident = Identity.from_string(str(record["identity"])).public_only()
        eps = []
        for e in record.get("endpoints") or ():
            ep = InetAddress.from_str(str(e))
            if ep not in eps:
                eps.append(ep)
    except (ValueError, KeyError, TypeError):
        return None
    if not eps:
        return None
    return Root(ident, tuple(eps[:MAX_STABLE_ENDPOINTS]))


def desired_roots(records: Mapping[str, Mapping[str, Any]], voters: Iterable[str], limit: int = MAX_ROOTS,
                  current: World | None = None) -> list[Root]:
    """The roots the planet should list: at most ``limit`` (<= 4) of the voters that have a root record with at
    least one endpoint.

    The choice is deterministic (the same inputs give the same list on every node): eligible voters that the
    ``current`` world already lists come first (so adding a fifth node does not move clients off a working root),
    then the others by node id; the chosen ones are listed in node id order. Learners are not roots: they are
    catching up and may be removed again. Endpoints keep the record's order (the node's preference).
    """
    limit = min(limit, MAX_ROOTS)
    eligible: dict[str, Root] = {}
    for node in sorted(set(voters)):
        rec = records.get(node)
        root = None if rec is None else _root_of(rec)
        if root is not None:
            eligible[node] = root
    listed = set() if current is None else {r.identity.address for r in current.roots}
    keep = [n for n in eligible if eligible[n].identity.address in listed]
    rest = [n for n in eligible if n not in keep]
    chosen = sorted((keep + rest)[:limit]) if limit > 0 else []
    return [eligible[n] for n in chosen]


def same_roots(world: World, roots: Iterable[Root]) -> bool:
    """Whether ``world`` lists exactly these roots, in this order, with these endpoints."""
    return tuple(world.roots) == tuple(roots)


def next_world(current: World | None, roots: Iterable[Root], world_id: int, planet_pub: bytes, planet_priv: bytes,
               now_ms: int) -> World | None:
    """The planet to propose next, or None when there is nothing to change.

    None when ``current`` already is this cluster's planet (``world_id``, naming ``planet_pub``) listing exactly
    ``roots`` (order and endpoints included), and also when ``roots`` is empty (a planet without roots would cut
    every client off; the current one is better than that). Otherwise a new planet of ``world_id`` with timestamp
    max(now_ms, current.timestamp + 1), naming ``planet_pub`` as the next signer and signed with ``planet_priv``,
    which is right for the first planet and for every update of a planet that names ``planet_pub`` (all of ours).

    ValueError for more than 4 roots, or a ``current`` of another id or naming another key (this key could not
    sign an update clients would accept).
    """
    roots = tuple(roots)
    if len(roots) > MAX_ROOTS:
        raise ValueError(f"a planet lists at most {MAX_ROOTS} roots (ZeroTier clients silently ignore a planet with "
                         f"more), got {len(roots)}")
    if not roots:
        return None
    if current is not None:
        if current.type != WorldType.PLANET or current.id != world_id:
            raise ValueError(f"the current world ({current.type.name.lower()} {current.id}) is not planet "
                             f"{world_id}")
        if current.updates_must_be_signed_by != planet_pub:
            raise ValueError("the current planet names another signing key: this key cannot sign its update")
        if same_roots(current, roots):
            return None
    timestamp = now_ms if current is None else max(now_ms, current.timestamp + 1)
    return World.make(WorldType.PLANET, world_id, timestamp, planet_pub, roots, planet_priv)


# ---------------------------------------------------------------------------------------- checking worlds

class WorldReport:
    """What inspect_world found: the world (None if it does not decode), errors (it is unusable, or not as
    expected) and warnings (usable, but probably not what is wanted)."""

    def __init__(self) -> None:
        self.world: World | None = None
        self.errors: list[str] = []
        self.warnings: list[str] = []

    @property
    def usable(self) -> bool:
        return self.world is not None and not self.errors

    def problems(self) -> list[str]:
        return self.errors + [f"warning: {w}" for w in self.warnings]


def _decode_where(data: bytes) -> tuple[World | None, str | None]:
    """The world, or where and why decoding stopped."""
    r = Reader(data)
    try:
        world = World.read(r)
        r.expect_end("the world")
        return world, None
    except (ProtocolError, ValueError) as e:
        return None, f"not decodable as a ZeroTier world at byte {r.pos} of {len(data)}: {e}"


# Private address space (RFC 1918, shared CGNAT space, IPv6 ULA): reachable only inside some network. (Not
# ipaddress's is_private, which also counts the documentation ranges tests and examples use.)
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                   "100.64.0.0/10", "fc00::/7"))


def _endpoint_notes(ep: InetAddress) -> tuple[str | None, str | None]:
    """(error, warning) about one stable endpoint."""
    if ep.ip is None:
        return None, "a nil (or reserved-type) endpoint, which clients skip"
    if ep.port == 0:
        return f"{ep}: port 0", None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ep.ip
    if ip.is_unspecified or ip.is_multicast:
        return f"{ep}: an {'unspecified' if ip.is_unspecified else 'multicast'} address is no endpoint", None
    if ip.is_loopback:
        return None, f"{ep} is a loopback address: only clients on that same machine reach it"
    if ip.is_link_local:
        return None, f"{ep} is link-local: clients cannot tell which interface to use"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return None, f"{ep} is a private address: only clients on that network reach it"
    return None, None


def inspect_world(data: bytes, expect_id: int | None = None, *, expect_type: WorldType | None = None,
                  signer: bytes | None = None, validate_identities: bool = False) -> WorldReport:
    """Everything wrong with a serialized world as a planet (or moon) file for ZeroTier clients.

    ``signer``: the key that must have signed it (the previous world's updates_must_be_signed_by); by default its
    own key, which holds for ZeroTier's planet and every planet of ours. ``validate_identities`` also checks each
    root's address against its key (the memory-hard hash: a few ms each in C, ~0.15 s in Python), since clients
    refuse a root whose address is not derived from its key.
    """
    rep = WorldReport()
    world, why = _decode_where(bytes(data))
    if world is None:
        raw_count = data[177] if len(data) > 177 else None
        if raw_count is not None and raw_count > MAX_ROOTS and why is not None and "roots" in why:
            why += " (ZeroTier clients silently ignore a planet with more than 4 roots)"
        rep.errors.append(why or "not decodable")
        return rep
    rep.world = world
    if world.type == WorldType.NULL:
        rep.errors.append("the world type is 0 (null): neither a planet nor a moon")
    elif expect_type is not None and world.type != expect_type:
        rep.errors.append(f"this is a {world.type.name.lower()}, not a {expect_type.name.lower()}")
    if expect_id is not None and world.id != expect_id:
        rep.errors.append(f"world id {world.id} ({world.id:016x}), expected {expect_id} ({expect_id:016x})")
    if world.id == 0:
        rep.errors.append("world id 0 is the null world")
    if world.type == WorldType.PLANET and world.id == ZEROTIER_PLANET_ID and bytes(data) != ZEROTIER_PLANET:
        rep.warnings.append("this planet uses ZeroTier's own planet id; a private planet should have its own")
    if len(world.roots) > MAX_ROOTS:  # (the decoder refuses this already; kept for worlds built in memory)
        rep.errors.append(f"{len(world.roots)} roots: ZeroTier clients silently ignore a planet with more than "
                          f"{MAX_ROOTS} roots")
    if not world.roots:
        rep.errors.append("no roots: clients would have no root to reach")
    seen: set[int] = set()
    for root in world.roots:
        a = f"{root.identity.address:010x}"
        if root.identity.address in seen:
            rep.errors.append(f"root {a} is listed twice")
        seen.add(root.identity.address)
        if not any(ep.ip is not None for ep in root.stable_endpoints):
            rep.errors.append(f"root {a} has no endpoints: clients cannot reach it")
        for ep in root.stable_endpoints:
            err, warn = _endpoint_notes(ep)
            if err:
                rep.errors.append(f"root {a}: {err}")
            if warn:
                rep.warnings.append(f"root {a}: {warn}")
        if validate_identities and not root.identity.locally_validate():
            rep.errors.append(f"root {a}: its address is not derived from its key; clients refuse such a root")
    key = signer if signer is not None else world.updates_must_be_signed_by
    if not world.verify(key):
        rep.errors.append("bad signature: it does not verify with " + (
            "the given key" if signer is not None else
            "the key it names (a world signed by a previous planet's key is only accepted as that planet's update)"))
    if world.type == WorldType.MOON and world.roots and world.id != world.roots[0].identity.address:
        first = f"{world.roots[0].identity.address:010x}"
        rep.warnings.append(f"a moon's id is by convention its first root's address ({first}); `zerotier-cli "
                            "orbit` needs the id")
    return rep


def check_world(data: bytes, expect_id: int | None = None) -> list[str]:
    """Human-readable problems of a serialized world (empty: none found). Warnings (usable, but e.g. a loopback
    or private endpoint) start with "warning: "; anything else makes the world unusable."""
    return inspect_world(data, expect_id).problems()


def describe_world(world: World) -> list[str]:
    """Lines that say what a world is: type, id, timestamp, signer, roots with addresses and endpoints."""
    kind = world.type.name.lower() if world.type != WorldType.NULL else "null world"
    lines = [f"{kind} {world.id} ({world.id:016x})"
             + (" - ZeroTier's own planet id" if world.id == ZEROTIER_PLANET_ID else ""),
             f"timestamp {world.timestamp}",
             f"next update must be signed by {world.updates_must_be_signed_by.hex()}",
             f"{len(world.roots)} root{'s' if len(world.roots) != 1 else ''}"]
    for root in world.roots:
        eps = ", ".join(str(ep) for ep in root.stable_endpoints) or "no endpoints"
        lines.append(f"  {root.identity.address:010x}  {eps}")
    return lines
