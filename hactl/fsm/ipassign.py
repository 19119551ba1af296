"""Deterministic automatic IPv4 assignment, ZeroTier's algorithm (shared/zerotier-api.md).

For each IPv4 pool: len = end - start, c = member address & 0xffffffff; try start + (c++ mod len) up to 1000
times (and at most len + 1 times), skipping .255, requiring a covering route with a non-zero prefix, and skipping
addresses already taken on the network. ``taken`` is a point lookup in the per-network address index, so the
cost is bounded by the number of trials, never by the number of members.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

MAX_TRIALS = 1000


@dataclass(frozen=True, slots=True)
class V4Plan:
    """A network's IPv4 routes and pools as integers (parsed once per network revision, not per member)."""
    routes: tuple[tuple[int, int], ...]  # (network address, mask) of each IPv4 route
    pools: tuple[tuple[int, int], ...]  # (start, end) of each IPv4 pool
    covering: tuple[tuple[int, int], ...]  # the routes that can cover an assignment: a /0 route does not

    @staticmethod
    def of(routes: Iterable[dict[str, Any]], pools: Iterable[dict[str, str]]) -> "V4Plan":
        rs = []
        for r in routes:
            net = ipaddress.ip_network(r["target"], strict=False)
            if net.version == 4:
                rs.append((int(net.network_address), int(net.netmask)))
        ps = []
        for p in pools:
            start = ipaddress.ip_address(p["ipRangeStart"])
            if start.version == 4:
                ps.append((int(start), int(ipaddress.ip_address(p["ipRangeEnd"]))))
        return V4Plan(tuple(rs), tuple(ps), tuple((net, mask) for net, mask in rs if mask))


def has_routed_v4(ip_assignments: Iterable[str], plan: V4Plan) -> bool:
    """True if any assigned IPv4 address lies inside some IPv4 route (any prefix length, as ZeroTier counts)."""
    for s in ip_assignments:
        if ":" not in s:
            a = int.from_bytes(socket.inet_aton(s), "big")
            if any(a & mask == net for net, mask in plan.routes):
                return True
    return False


def pick_v4(address: int, plan: V4Plan, taken: Callable[[int], bool]) -> str | None:
    """The first free address the algorithm reaches, or None."""
    routes = plan.covering
    for start, end in plan.pools:
        if end < start or start == 0:
            continue
        span = end - start
        counter = address & 0xFFFFFFFF
        for _ in range(min(span + 1, MAX_TRIALS)):
            ip = start + (counter % span) if span else start
            counter = (counter + 1) & 0xFFFFFFFF  # a uint32 in ZeroTier
            if ip & 0xFF == 0xFF:
                continue
            for net, mask in routes:
                if ip & mask == net:
                    if not taken(ip):
                        return socket.inet_ntoa(ip.to_bytes(4, "big"))
                    break
    return None
