"""Peers and their paths, as a node keeps them (brief §9): who a peer is, the key we share with it, where it can be
reached, and which packet ids it already used.

A Path is a remote (ip, port) we have *learned* for a peer: one from which an authenticated OK arrived directly
(hops 0), the reply to something we sent there, so the address is proven to reach the peer both ways. Paths are
chosen the way the reference does (Peer::getAppropriatePath, Path::quality): among paths heard within 243 s, the
lowest latency x (8 - IP scope) while alive (heard within 19 s), else a heavily penalised value that grows with
age. Time is always an explicit `now` in ms.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from hactl.zt.identity import Identity

PATH_EXPIRATION_MS = 243_000  # ZT_PEER_PATH_EXPIRATION: a path unheard this long is forgotten
PATH_ALIVE_MS = 19_000  # ZT_PATH_HEARTBEAT_PERIOD + 5 000: a path heard within this is "alive"
LATENCY_UNKNOWN = 0xFFFF  # the reference's starting latency, until an OK(HELLO) measures it
MAX_PATHS = 16  # per peer, as 1.8.x
_MAX_AGE_PENALTY_MS = 140_000

SockAddr = tuple[str, int]


def ip_scope(ip: str) -> int:
    """The reference's InetAddress::ipScope numbers (higher = more local = preferred): PRIVATE 7, SHARED 6,
    LINK_LOCAL 5, GLOBAL 4, LOOPBACK 2, NONE/MULTICAST 0 (pseudo-private DoD ranges are counted as GLOBAL)."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return 0
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.is_multicast or a.is_unspecified:
        return 0
    if a.is_loopback:
        return 2
    if a.is_link_local:
        return 5
    if isinstance(a, ipaddress.IPv4Address) and a in _SHARED:
        return 6
    if a.is_private:
        return 7
    return 4


_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


@dataclass
class Path:
    address: SockAddr
    last_receive: int  # last authenticated packet from it (ms)
    latency: int = LATENCY_UNKNOWN
    last_send: int | None = None
    scope: int = 0

    def __post_init__(self) -> None:
        self.scope = ip_scope(self.address[0])

    def alive(self, now: int) -> bool:
        return now - self.last_receive < PATH_ALIVE_MS

    def expired(self, now: int) -> bool:
        return now - self.last_receive >= PATH_EXPIRATION_MS

    def quality(self, now: int) -> int:
        """Lower is better (Path::quality)."""
        weight = 8 - self.scope
        if self.alive(now):
            return self.latency * weight
        return (self.latency + LATENCY_UNKNOWN + min(now - self.last_receive, _MAX_AGE_PENALTY_MS)) * weight

    def update_latency(self, measured: int) -> None:
        # Running average of two, as Path::updateLatency; the first measurement replaces "unknown".
        measured = max(0, min(measured, LATENCY_UNKNOWN))
        self.latency = measured if self.latency == LATENCY_UNKNOWN else (self.latency + measured) // 2


@dataclass
class Peer:
    identity: Identity
    key: bytes  # the 48-byte symmetric key agreed with it
    created: int
    replay_window: int = 1024
    is_root: bool = False
    paths: list[Path] = field(default_factory=list)
    last_receive: int | None = None  # last authenticated packet, any path, relayed or not
    remote_protocol: int = 0
    remote_version: tuple[int, int, int] | None = None
    latency: int = LATENCY_UNKNOWN
    _seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False)

    @property
    def address(self) -> int:
        return self.identity.address

    # --- replay ---------------------------------------------------------------------------------------------
    def seen(self, replay_key: bytes) -> bool:
        """True if replay_key (a packet id, or id + source for HELLO) was already accepted from this peer within
        the last replay_window packets; else remembers it. Call only after the MAC verified, or a forger could
        fill the window."""
        if replay_key in self._seen:
            return True
        self._seen[replay_key] = None
        while len(self._seen) > self.replay_window:
            self._seen.popitem(last=False)
        return False

    # --- paths ----------------------------------------------------------------------------------------------
    def path(self, address: SockAddr) -> Path | None:
        for p in self.paths:
            if p.address == address:
                return p
        return None

    def received(self, now: int) -> None:
        self.last_receive = now

    def learn(self, address: SockAddr, now: int) -> Path:
        """Learn (or refresh) a path confirmed by a direct OK. When full, the first dead path or one on the same
        IP is replaced, else the worst (Peer::received in 1.8.4)."""
        p = self.path(address)
        if p is not None:
            p.last_receive = now
            return p
        new = Path(address, now, last_send=now)  # the OK answered something we just sent there
        if len(self.paths) < MAX_PATHS:
            self.paths.append(new)
            return new
        for i, old in enumerate(self.paths):
            if not old.alive(now) or old.address[0] == address[0]:
                self.paths[i] = new
                return new
        worst = max(range(len(self.paths)), key=lambda i: self.paths[i].quality(now))
        self.paths[worst] = new
        return new

    def expire(self, now: int) -> None:
        self.paths = [p for p in self.paths if not p.expired(now)]

    def best_path(self, now: int, alive_only: bool = False) -> Path | None:
        """The path the reference would send on: lowest quality among unexpired paths (ties: the later one)."""
        best: Path | None = None
        for p in self.paths:
            if p.expired(now) or (alive_only and not p.alive(now)):
                continue
            if best is None or p.quality(now) <= best.quality(now):
                best = p
        return best

    def relay_quality(self, now: int, activity_timeout: int) -> float:
        """How good this peer (a root) is as an upstream (Peer::relayQuality): latency weighted by silence;
        infinity if not heard within activity_timeout."""
        if self.last_receive is None or now - self.last_receive >= activity_timeout:
            return float("inf")
        return self.latency * ((now - self.last_receive) / 61_000 + 1)


@dataclass
class _Bucket:
    tokens: float
    at: int


class TokenBuckets:
    """Per-key token buckets (key: a source IP, usually), `rate` tokens per second up to `burst`; at most
    `max_keys` keys are tracked (LRU), so a flood from many addresses costs bounded memory. An evicted key comes
    back with a full bucket: the bound on keys is what bounds the total."""

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: int) -> bool:
        """Spend one token of key's bucket; False if it is empty."""
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(float(self.burst), b.tokens + max(0, now - b.at) * self.rate / 1000)
            b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True
