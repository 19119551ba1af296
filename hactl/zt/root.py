"""The planet-root role, sans-IO (brief §6, §7.3, §9.1): a Node that answers for a root identity and relays.

It is node.py's Node (same peers, paths, validation queue, token buckets, WHOIS parking, replay window, timers)
with the duties of a root on top:
  * OK(HELLO) carries the observed address and, to a node that reports our planet id with an older timestamp,
    the planet we serve (`set_planet` replaces it);
  * WHOIS -> OK(WHOIS) for peers we know and identities we were told about (`know`); silence otherwise;
  * MULTICAST_LIKE recorded from anyone (a root is amUpstream), MULTICAST_GATHER answered;
  * WHOIS for an identity we lack is asked of the other roots (a member HELLOs only the roots it reaches), so the
    asker's next retry is answered;
  * packets and fragments for someone else are relayed with one more hop (hop limit 3, packet.increment_hops) to
    the destination's best path; when it has none, to the other roots of the cluster (`peer_roots`), which may
    have it. RENDEZVOUS goes to both ends when a direct packet was relayed between two direct paths, at most
    once per pair per UNITE_INTERVAL_MS.

Relaying is deliberately narrower than the reference's. A reference root relays for anyone (amUpstream skips the
trust check in Switch::onRemotePacket), which makes it an amplifier-free but open relay. Here a datagram is only
relayed if it arrives from a *learned* path of a known, validated peer (a path proven by an authenticated OK, brief
9.1) and, for a whole packet, that peer is the packet's claimed source or another root of the cluster forwarding.
Every member HELLOs its roots before it uses them as relays, and the root HELLOs back on the new path, so a
legitimate member has a learned path after one round trip. Relaying is also rate limited per source IP.
Drops are counted as dropped.relay_<reason>; relayed datagrams as "relayed", forwards to roots "relayed.to_root".
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.multicast import MulticastGather, OkGather
from hactl.zt.node import Limits, Node, _Expect, _Waiting, _expire_ordered, _family, _inet, _once_per
from hactl.zt.packet import Header, Packet, Verb, hops_of, increment_hops, RELAY_MAX_HOPS
from hactl.zt.peer import Peer, SockAddr, TokenBuckets
from hactl.zt.verbs import Hello, MulticastLike, OkWhois, Rendezvous, Whois
from hactl.zt.world import World

UNITE_INTERVAL_MS = 30_000  # ZT_MIN_UNITE_INTERVAL: one RENDEZVOUS pair per 30 s
MAX_WHOIS_ANSWER = 64  # identities in one OK(WHOIS): ~71 bytes each, well inside one packet


@dataclass
class RootLimits(Limits):
    """Limits plus the relay's own bounds. A member's traffic through a root is its whole network traffic until
    RENDEZVOUS makes it direct, so the relay rate is far above the validation rate."""
    relay_rate: float = 2_000.0  # datagrams relayed per source IP per second
    relay_burst: int = 4_000
    max_unite_pairs: int = 65_536  # (peer, peer) -> last RENDEZVOUS, remembered
    max_known: int = 1_024  # identities told by the glue (`know`), answered in WHOIS
    max_lookups: int = 1_024  # identities being asked of the other roots at once


class Root(Node):
    def __init__(self, identity: Identity, planet: World, *, limits: RootLimits | None = None,
                 version: tuple[int, int, int] = (1, 8, 4), protocol: int = 11) -> None:
        super().__init__(identity, planet, limits=limits if limits is not None else RootLimits(),
                         version=version, protocol=protocol)
        lim = self.limits
        assert isinstance(lim, RootLimits)
        self._rlimits = lim
        self._relay_buckets = TokenBuckets(lim.relay_rate, lim.relay_burst, lim.max_rate_buckets)
        self._unite_at: OrderedDict[tuple[int, int], int] = OrderedDict()
        # Learned path -> the peer it belongs to, to tell in O(1) whether a datagram to relay comes from one.
        self._path_owner: OrderedDict[SockAddr, int] = OrderedDict()
        self._known: OrderedDict[int, Identity] = OrderedDict()
        self.peer_roots: set[int] = set(self._roots)
        self.introduce = True  # send RENDEZVOUS when relaying (False: everything stays relayed)

    # --- the glue's calls ---------------------------------------------------------------------------------------
    def set_planet(self, world: World) -> None:
        """Serve `world` from now on (pushed in OK(HELLO) to nodes with an older one of the same id). Its other
        roots become our upstreams (Node.set_planet) and peer_roots: forwarded to when we lack a path."""
        super().set_planet(world)
        self.peer_roots = set(self._roots)

    def know(self, identity: Identity) -> None:
        """An identity to answer WHOIS for though it never talked to us (the controller's, other roots')."""
        ident = identity.public_only()
        self._known[ident.address] = ident
        self._known.move_to_end(ident.address)
        while len(self._known) > self._rlimits.max_known:
            self._known.popitem(last=False)

    def identity_of(self, address: int) -> Identity | None:
        peer = self._peers.get(address)
        if peer is not None:
            return peer.identity
        return self._known.get(address)

    # --- duties on top of Node ----------------------------------------------------------------------------------
    def _hello_worlds(self, hello: Hello) -> tuple[World, ...]:
        # Only the same planet id with an older timestamp (World::shouldBeReplacedBy; the node also checks the
        # signature against its old world's update key).
        if (hello.planet_id == self.planet.id and hello.planet_timestamp is not None
                and hello.planet_timestamp < self.planet.timestamp):
            self._inc("world_pushed")
            return (self.planet,)
        return ()

    def _dispatch(self, peer: Peer, packet: Packet, src: SockAddr, now: int, received: int) -> bool:
        verb = packet.verb
        if verb == Verb.WHOIS:
            self._on_whois(peer, packet, src, now)
        elif verb == Verb.MULTICAST_LIKE:
            for e in MulticastLike.decode(packet.payload).entries:
                if not self._multicast.like((e.network_id, e.mac, e.adi), peer.address, now):
                    self._drop("multicast_full")
        elif verb == Verb.MULTICAST_GATHER:
            g = MulticastGather.decode(packet.payload)
            total, members = self._multicast.gather(g.group, peer.address, g.limit, now)
            if members:
                reply = OkGather(packet.packet_id, g.network_id, g.mac, g.adi, total, tuple(members))
                self._reply(peer, Verb.OK, reply.encode(), packet.hops, src, now)
        elif verb == Verb.RENDEZVOUS:
            self._inc("ignored")  # a root is introduced to nobody
        else:
            return super()._dispatch(peer, packet, src, now, received)
        return False

    def _on_whois(self, peer: Peer, packet: Packet, src: SockAddr, now: int) -> None:
        found = []
        for addr in Whois.decode(packet.payload).addresses[:MAX_WHOIS_ANSWER]:
            ident = self.identity_of(addr)
            if ident is None:
                self._inc("whois_unknown")
                if peer.address not in self.peer_roots:
                    self._look_up(addr, src, now)
            else:
                found.append(ident.public_only())
        if found:
            self._inc("whois_answered")
            self._reply(peer, Verb.OK, OkWhois(packet.packet_id, tuple(found)).encode(), packet.hops, src, now)

    def _look_up(self, addr: int, src: SockAddr, now: int) -> None:
        """Ask the other roots for a member's identity we do not have (it HELLOs another root only): the member
        asking retries its WHOIS every 500 ms, and the retry after their answer (validated like any other) finds
        it. Never for a root's own WHOIS (no loops), one lookup per address at a time, bounded in total and, per
        source IP, by the same budget as identity validations."""
        if not self.peer_roots or addr == self.address or addr in self._waiting:
            return
        if len(self._waiting) >= self._rlimits.max_lookups or not self._take_token(src[0], now):
            self._drop("lookup_rate")
            return
        self._waiting[addr] = _Waiting()
        self._start_whois(addr, now)
        self._inc("lookups")

    def _send_whois(self, addr: int, waiting: _Waiting, now: int) -> None:
        # Every other root may be the one that knows it (a member HELLOs the roots it reaches): ask them all.
        waiting.whois_last = now
        for root in self._roots.values():
            pid = self._send(root, Verb.WHOIS, Whois((addr,)).encode(), now)
            if pid is not None:
                self._inc("whois_sent")
                self._expect_reply(pid, _Expect(Verb.WHOIS, root.address, now, None, asked=addr))

    def _on_ok(self, peer: Peer, packet: Packet, src: SockAddr, now: int) -> bool:
        learned = super()._on_ok(peer, packet, src, now)
        if learned:
            self._path_owner[src] = peer.address
            self._path_owner.move_to_end(src)
            # A path belongs to one identity at a time; stale entries are also checked on lookup.
            while len(self._path_owner) > self.limits.max_peers * 4:
                self._path_owner.popitem(last=False)
        return learned

    def _owner(self, src: SockAddr, now: int) -> Peer | None:
        """The known peer that src is a live learned path of, if any."""
        addr = self._path_owner.get(src)
        if addr is None:
            return None
        peer = self._peers.get(addr)
        path = peer.path(src) if peer is not None else None
        if path is None or path.expired(now):
            del self._path_owner[src]
            return None
        return peer

    def _root_at(self, src: SockAddr, now: int) -> Peer | None:
        for addr in self.peer_roots:
            root = self._peers.get(addr)
            path = root.path(src) if root is not None else None
            if path is not None and not path.expired(now):
                return root
        return None

    # --- relaying -----------------------------------------------------------------------------------------------
    def _not_for_us(self, datagram: bytes, destination: int, header: Header | None, src: SockAddr,
                    now: int) -> None:
        if hops_of(datagram) >= RELAY_MAX_HOPS:
            self._drop("relay_hops")
            return
        # Who sent it: another root of the cluster forwarding (checked first: one socket may host several
        # identities, e.g. a node's root and the cluster's controller, so a path can be learned for both), else
        # the packet's claimed source on one of its learned paths (a member relays only its own packets through
        # us; anything else is a forgery or someone using a member's address as a reflector). A fragment has no
        # source: the path's owner vouches for it.
        sender = self._root_at(src, now)
        from_root = sender is not None
        if sender is None and header is not None:
            claimed = self._peers.get(header.source)
            path = claimed.path(src) if claimed is not None else None
            if path is None or path.expired(now):
                self._drop("relay_spoofed_source" if self._owner(src, now) is not None else "relay_unknown_source")
                return
            sender = claimed
        elif sender is None:
            sender = self._owner(src, now)
            if sender is None:
                self._drop("relay_unknown_source")
                return
        if destination == self.address or (header is not None and header.source == destination):
            self._drop("relay_loop")
            return
        if not self._relay_buckets.take(src[0], now):
            self._drop("relay_rate")
            return
        try:
            out = increment_hops(datagram)
        except ProtocolError:
            self._drop("relay_hops")
            return
        target = self._peers.get(destination)
        path = target.best_path(now) if target is not None else None
        if path is not None and path.address != src and _family(path.address) in self.families:
            self._out.append((out, path.address))
            path.last_send = now
            self._inc("relayed")
            self._inc("sent")
            if self.introduce and header is not None and header.hops == 0 and not from_root and target is not None:
                self._maybe_unite(sender, src, target, path.address, now)
            return
        if from_root:
            # Another root forwarded it because it had no path either: never bounce it among roots.
            self._drop("relay_no_path")
            return
        sent = False
        for addr in sorted(self.peer_roots):
            root = self._peers.get(addr)
            dest = self._root_dest(root, now) if root is not None else None
            if dest is not None and dest != src:
                self._out.append((out, dest))
                self._inc("relayed.to_root")
                self._inc("sent")
                sent = True
        if not sent:
            self._drop("relay_no_path")

    def _maybe_unite(self, a: Peer, a_path: SockAddr, b: Peer, b_path: SockAddr, now: int) -> None:
        """RENDEZVOUS to both ends (Peer::introduce), once per pair per UNITE_INTERVAL_MS."""
        if _family(a_path) != _family(b_path):
            return  # the reference only introduces paths of one family
        pair = (min(a.address, b.address), max(a.address, b.address))
        if not _once_per(self._unite_at, pair, now, UNITE_INTERVAL_MS, self._rlimits.max_unite_pairs):
            return
        self._send(b, Verb.RENDEZVOUS, Rendezvous(a.address, _inet(a_path)).encode(), now, to=b_path)
        self._send(a, Verb.RENDEZVOUS, Rendezvous(b.address, _inet(b_path)).encode(), now, to=a_path)
        self._inc("rendezvous_sent", 2)

    def _tick(self, now: int) -> None:
        super()._tick(now)
        _expire_ordered(self._unite_at, now, UNITE_INTERVAL_MS)
        for src in [s for s, a in self._path_owner.items() if a not in self._peers]:
            del self._path_owner[src]


__all__ = ["Root", "RootLimits", "UNITE_INTERVAL_MS"]
