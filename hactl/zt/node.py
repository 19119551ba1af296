"""The ZeroTier node core for the controller role, sans-IO (brief §3-§6, §9).

One Node answers as the cluster's controller identity. It is fed datagrams (`receive`) and time (`tick`), and
queues what it wants done: datagrams to send, config requests for the glue, identities to validate off-loop. It
never reads a clock, a socket or an RNG (packet ids and config update ids aside), so every behaviour is a
function of its inputs and tests drive it with hand-built packets.

What it does:
  * reassembles fragments, drops what is not addressed to us ("not_for_us": relaying is a later issue);
  * knows peers by identity and 48-byte key; a new peer is accepted only after its identity's memory-hard hash was
    checked (`take_validations` -> `validated`), at most once per (address, key) thanks to a verdict cache, and
    new work from one source IP is rate limited by a token bucket;
  * packets from unknown sources wait (bounded) while a WHOIS goes to our best root;
  * keeps the planet's roots as upstreams: HELLO/ECHO on a cadence, online = heard from a root recently;
  * learns paths from direct OKs (brief 9.1), replies on the request's path, the peer's best live path, or
    through a root that relays;
  * answers HELLO, ECHO, MULTICAST_GATHER; records MULTICAST_LIKE; hands NETWORK_CONFIG_REQUEST to the glue,
    which answers with `answer_config` / `answer_error` or pushes with `push_config` / `push_credentials`.
Everything bad is dropped and counted in `stats()` under "dropped.<reason>".

Timers (documented choices, ms): HELLO to every usable stable endpoint and learned path of each root every
ROOT_HELLO_INTERVAL_MS, every ROOT_RETRY_MS while the root has not been heard for ROOT_SILENT_MS; ECHO on a root's
best path when nothing was sent on it for ECHO_INTERVAL_MS (1.8 nodes' 14 s heartbeat, so the root keeps our path
alive); online = a root answered our HELLO or ECHO (an OK we expected) within ONLINE_TIMEOUT_MS.
"""
from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from hactl.zt.address import address_to_str
from hactl.zt.errors import ProtocolError
from hactl.zt.fragment import Fragment, Reassembler, is_fragment, split
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import NIL, InetAddress
from hactl.zt.multicast import MulticastDirectory, MulticastGather, OkGather
from hactl.zt.packet import Cipher, ErrorCode, Header, Packet, Verb, armor, dearmor, new_packet_id
from hactl.zt.peer import Peer, SockAddr, TokenBuckets
from hactl.zt.verbs import (PUSH_CLUSTER_REDIRECT, ConfigChunk, Echo, Error, Hello, MulticastLike,
                            NetworkConfigRequest, Ok, OkHello, OkNetworkConfig, OkWhois, PushDirectPaths, Rendezvous,
                            Whois, hello_identity)
from hactl.zt.world import World

log = logging.getLogger(__name__)

ROOT_HELLO_INTERVAL_MS = 30_000
ROOT_RETRY_MS = 2_000
ROOT_SILENT_MS = 20_000
ECHO_INTERVAL_MS = 14_000
ONLINE_TIMEOUT_MS = 60_000
PATH_HELLO_INTERVAL_MS = 1_000  # at most one path-discovery HELLO per (peer, path) per second (brief 9.1)
EXPECT_TTL_MS = 60_000  # how long an OK to something we sent is accepted
UPSTREAM_ACTIVITY_MS = 500_000  # ZT_PEER_ACTIVITY_TIMEOUT, for picking the best root
_MIN_HELLO_PROTOCOL = 4
_HEADER = 28


@dataclass(frozen=True)
class ConfigRequest:
    source: int  # member ZeroTier address
    identity: Identity  # the member's identity (validated, public only)
    packet_id: bytes  # the request's 8 header bytes: the in-re id of our OK/ERROR
    request: NetworkConfigRequest  # decoded payload (nwid, metadata bytes, revision, timestamp)
    path: tuple[str, int] | None  # (ip, port) it came from when hops == 0, else None (relayed)
    hops: int
    received: int  # ms, the `now` it was received at


@dataclass
class Limits:
    """Bounds on what untrusted input can make the node hold or do. Defaults sized for a controller of some
    thousands of members on one core: a validation costs ~0.15 s of CPU."""
    validation_rate: float = 4.0  # new-identity work (HELLO validation, WHOIS start) per source IP per second
    validation_burst: int = 16  # ... bucket size
    max_validations: int = 64  # identities queued or being validated, overall
    validation_timeout_ms: int = 30_000  # a validation not answered by then is forgotten, its packets dropped
    validated_cache: int = 16_384  # (address, public key) -> verdict, so a known identity is never re-hashed
    max_rate_buckets: int = 4_096  # source IPs tracked by the token buckets (LRU)
    max_parked_per_source: int = 16  # packets waiting for a WHOIS/validation, per unknown address
    max_parked_total: int = 1_024  # ... overall
    whois_retry_ms: int = 500  # ZeroTier's own WHOIS cadence (Switch.cpp)
    whois_timeout_ms: int = 5_000  # then the parked packets are dropped ("whois_timeout")
    replay_window: int = 128  # packet ids remembered per peer (a member sends a few packets a minute)
    request_interval_ms: int = 1_000  # min interval between config requests of one (member, network)
    max_requests_queued: int = 1_024  # config requests not yet taken by the glue
    max_request_rate_entries: int = 65_536  # (member, network) request times remembered
    max_peers: int = 16_384  # peers kept (LRU; roots are never evicted)
    max_expected: int = 4_096  # outstanding HELLO/WHOIS/ECHO ids we accept an OK for
    authorized_ttl_ms: int = 180_000  # localControllerHasAuthorized: 3 x ZT_NETWORK_AUTOCONF_DELAY
    max_authorized: int = 262_144  # (network, member) authorization marks
    multicast_max_entries: int = 100_000  # MULTICAST_LIKE subscriptions overall
    multicast_max_groups_per_member: int = 1_024
    max_path_hellos: int = 4_096  # (peer, path) HELLO rate-limit entries


@dataclass
class _Expect:
    verb: int
    address: int  # who we sent it to
    sent_at: int
    dest: SockAddr | None
    asked: int | None = None  # WHOIS: the address asked about


@dataclass
class _Parked:
    datagram: bytes
    src: SockAddr
    received: int
    hello_key: tuple[int, bytes] | None  # set for a HELLO: the identity it presented


@dataclass
class _Waiting:
    """Packets from one unknown address, and the WHOIS fetching its identity."""
    items: list[_Parked] = field(default_factory=list)
    whois_first: int | None = None
    whois_last: int | None = None
    whois_key: tuple[int, bytes] | None = None  # the identity the root answered with, once it did


def _src(src: tuple) -> SockAddr:
    return (str(src[0]), int(src[1]))


def _inet(addr: SockAddr) -> InetAddress:
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return InetAddress(ip, addr[1])


def _family(addr: SockAddr) -> int:
    return 6 if ":" in addr[0] else 4


# Counter keys per verb (rx.<verb>, tx.<verb>), built once: every packet in and out is counted by verb.
_RX_KEYS = {int(v): f"rx.{v.name.lower()}" for v in Verb}
_TX_KEYS = {int(v): f"tx.{v.name.lower()}" for v in Verb}


def _verb_name(verb: int) -> str:
    try:
        return Verb(verb).name.lower()
    except ValueError:
        return "unknown"


class Node:
    def __init__(self, identity: Identity, planet: World, *, limits: Limits | None = None,
                 version: tuple[int, int, int] = (1, 8, 4), protocol: int = 11) -> None:
        if not identity.has_private:
            raise ValueError("the node's identity needs its private key")
        self.identity = identity
        self.address = identity.address
        self.planet = planet
        self.limits = limits if limits is not None else Limits()
        self.version = version
        # 11 keeps nodes on Salsa20/12-Poly1305: they switch to AES-GMAC-SIV only for peers advertising >= 12.
        self.protocol = protocol
        # IP families the socket can send to; the endpoint narrows this after binding.
        self.families: set[int] = {4, 6}
        self._public = identity.public_only()
        self._stats: dict[str, int] = {"received": 0, "sent": 0}
        self._out: list[tuple[bytes, SockAddr]] = []
        self._requests: list[ConfigRequest] = []
        self._validation_queue: list[Identity] = []
        self._validating: dict[tuple[int, bytes], tuple[Identity, int]] = {}
        self._verdicts: OrderedDict[tuple[int, bytes], bool] = OrderedDict()
        self._buckets = TokenBuckets(self.limits.validation_rate, self.limits.validation_burst,
                                     self.limits.max_rate_buckets)
        self._peers: OrderedDict[int, Peer] = OrderedDict()
        self._roots: dict[int, Peer] = {}
        self._root_endpoints: dict[int, list[SockAddr]] = {}
        self._root_hello_at: dict[int, int] = {}
        self._root_answered: dict[int, int] = {}  # root -> last OK to our HELLO/ECHO
        self._waiting: OrderedDict[int, _Waiting] = OrderedDict()
        self._parked_total = 0
        self._expect: OrderedDict[bytes, _Expect] = OrderedDict()
        self._path_hello_at: OrderedDict[tuple[int, SockAddr], int] = OrderedDict()
        self._request_at: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._authorized: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._multicast = MulticastDirectory(self.limits.multicast_max_entries,
                                             self.limits.multicast_max_groups_per_member)
        self._reassembler = Reassembler()
        self._online = False
        self.set_planet(planet)

    # --- outputs ------------------------------------------------------------------------------------------------
    def take_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._out = self._out, []
        return out

    def take_requests(self) -> list[ConfigRequest]:
        out, self._requests = self._requests, []
        return out

    def take_validations(self) -> list[Identity]:
        out, self._validation_queue = self._validation_queue, []
        return out

    def count(self, reason: str) -> None:
        """The glue's own drops (e.g. "write_rate") land next to ours, as dropped.<reason>."""
        self._drop(reason)

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def direct_peers(self, now: int) -> set[int]:
        """Addresses of the peers (roots aside) that reached this node directly within PATH_ALIVE_MS."""
        return {a for a, p in self._peers.items() if not p.is_root and any(x.alive(now) for x in p.paths)}

    def peer_identity(self, address: int) -> Identity | None:
        peer = self._peers.get(address)
        return peer.identity if peer is not None else None

    def remember(self, identity: Identity, paths: list[tuple[str, int]], now: int) -> None:
        """A peer this controller knew before a restart (the service's saved registry, our own 0600 file): taken
        as validated, its paths usable at once, so pushes reach it without waiting for it to ask again."""
        ident = identity.public_only()
        self._verdicts[(ident.address, ident.public_key)] = True
        while len(self._verdicts) > self.limits.validated_cache:
            self._verdicts.popitem(last=False)
        peer = self._add_peer(ident, now)
        for p in paths[:4]:
            if self._usable(p):
                peer.learn(p, now)

    def peer_paths(self, address: int) -> list[tuple[str, int]]:
        peer = self._peers.get(address)
        return [p.address for p in peer.paths] if peer is not None else []

    def set_planet(self, world: World) -> None:
        """A new planet (the cluster committed one): its roots, ourselves aside, become our upstreams (HELLOed on a
        cadence, asked WHOIS); roots no longer listed stay as ordinary peers."""
        self.planet = world
        listed: set[int] = set()
        for root in world.roots:
            ident = root.identity
            if ident.address == self.address:
                continue  # we are this root (root.py): nobody to HELLO
            listed.add(ident.address)
            # Root identities are trusted by configuration (the planet): no validation.
            peer = self._peers.get(ident.address)
            if peer is None or peer.identity.public_key != ident.public_key:
                peer = Peer(ident, self.identity.agree(ident), created=0, replay_window=self.limits.replay_window)
                self._peers[ident.address] = peer
            peer.is_root = True
            self._roots[ident.address] = peer
            self._root_endpoints[ident.address] = [(str(ep.ip), ep.port) for ep in root.stable_endpoints
                                                   if ep.ip is not None]
        for addr in list(self._roots):
            if addr not in listed:  # no longer a root: an ordinary peer from now on
                self._roots.pop(addr).is_root = False
                self._root_endpoints.pop(addr, None)
                self._root_hello_at.pop(addr, None)
                self._root_answered.pop(addr, None)

    def _root_online(self, addr: int, now: int) -> bool:
        at = self._root_answered.get(addr)
        return at is not None and now - at < ONLINE_TIMEOUT_MS

    def online(self, now: int) -> bool:
        """A root answered (an OK to our HELLO or ECHO) within ONLINE_TIMEOUT_MS."""
        return any(self._root_online(a, now) for a in self._roots)

    def status(self, now: int) -> dict:
        roots = []
        for addr, r in self._roots.items():
            best = r.best_path(now)
            roots.append({
                "address": address_to_str(addr),
                "endpoints": [f"{ip}/{port}" for ip, port in self._root_endpoints[addr]],
                "online": self._root_online(addr, now),
                "last_heard_ms": None if r.last_receive is None else now - r.last_receive,
                "latency_ms": None if best is None or best.latency >= 0xFFFF else best.latency,
            })
        return {"address": address_to_str(self.address), "online": self.online(now), "roots": roots}

    # --- counters -----------------------------------------------------------------------------------------------
    def _inc(self, name: str, n: int = 1) -> None:
        self._stats[name] = self._stats.get(name, 0) + n

    def _drop(self, reason: str, n: int = 1) -> None:
        self._inc(f"dropped.{reason}", n)

    # --- input --------------------------------------------------------------------------------------------------
    def receive(self, datagram: bytes, src: tuple[str, int], now: int) -> None:
        """One datagram from src. Never raises: whatever is wrong with it is counted and dropped."""
        self._inc("received")
        try:
            self._receive(bytes(datagram), _src(src), now)
        except ProtocolError:
            self._drop("malformed")
        except Exception:  # a bug, not bad input: keep serving, but say so
            log.exception("zt node: internal error on a datagram from %s", src)
            self._drop("internal_error")

    def _receive(self, datagram: bytes, src: SockAddr, now: int) -> None:
        if len(datagram) < _HEADER and not is_fragment(datagram):
            self._drop("short")  # 13-byte LAN beacons and 14-16-byte probes included
            return
        if is_fragment(datagram):
            frag = Fragment.parse(datagram)
            if frag.destination != self.address:
                self._not_for_us(datagram, frag.destination, None, src, now)
                return
            whole = self._reassembler.add_fragment(frag, now)
            if whole is None:
                return
            datagram = whole
        else:
            header = Header.parse(datagram)
            if header.destination != self.address:
                self._not_for_us(datagram, header.destination, header, src, now)
                return
            if header.fragmented:
                whole = self._reassembler.add_head(datagram, now)
                if whole is None:
                    return
                datagram = whole
        self._packet(datagram, src, now, now)

    def _not_for_us(self, datagram: bytes, destination: int, header: Header | None, src: SockAddr,
                    now: int) -> None:
        """A packet (header given) or fragment (header None) for someone else: a root relays it (root.py)."""
        self._drop("not_for_us")

    def _packet(self, datagram: bytes, src: SockAddr, now: int, received: int) -> None:
        """A whole packet addressed to us (still armored)."""
        header = Header.parse(datagram)
        if header.destination != self.address:
            self._drop("not_for_us")
            return
        if header.source == self.address:
            self._drop("from_self")
            return
        clear_hello = header.cipher == Cipher.POLY1305_NONE and datagram[27] == Verb.HELLO
        peer = self._peers.get(header.source)
        if peer is None:
            if clear_hello:
                self._unknown_hello(header, datagram, src, now, received)
            else:
                self._unknown_source(header, datagram, src, now, received)
            return
        if clear_hello and hello_identity(datagram[_HEADER:]).public_key != peer.identity.public_key:
            # Someone else claims this address (or the peer's key changed, which it cannot). IDENTITY_COLLISION
            # is optional and only helps an attacker probe, so: silence.
            self._drop("identity_mismatch")
            return
        try:
            packet = dearmor(datagram, peer.key)
        except ProtocolError as e:
            self._drop("bad_mac" if str(e).startswith("MAC") else "malformed")
            return
        if packet.cipher == Cipher.POLY1305_NONE and packet.verb != Verb.HELLO:
            # Nodes use MAC-only packets for HELLO alone (HELLO must be readable before the key is known);
            # accepting them for other verbs would only give a downgrade path to an unencrypted channel.
            self._drop("cipher0")
            return
        # Nodes send each HELLO from every local socket with one packet id: those copies are not replays,
        # so for HELLO the source address is part of the key.
        replay_key = packet.packet_id + (repr(src).encode() if packet.verb == Verb.HELLO else b"")
        if peer.seen(replay_key):
            self._drop("replay")
            return
        peer.received(now)
        self._peers.move_to_end(peer.address)
        self._inc(_RX_KEYS.get(packet.verb, "rx.unknown"))
        learned = self._dispatch(peer, packet, src, now, received)
        if packet.hops == 0:
            self._note_direct(peer, packet.verb, src, learned, now)

    def _note_direct(self, peer: Peer, verb: int, src: SockAddr, learned: bool, now: int) -> None:
        """Path learning (brief 9.1): a known path is refreshed; an expected OK teaches a new one (done by the OK
        handler: `learned`); anything else from a new path earns it a HELLO, whose OK will teach it."""
        path = peer.path(src)
        if path is not None:
            path.last_receive = now
        elif not learned and verb != Verb.OK:
            self._hello_path(peer, src, now)

    # --- unknown sources ----------------------------------------------------------------------------------------
    def _unknown_hello(self, header: Header, datagram: bytes, src: SockAddr, now: int, received: int) -> None:
        ident = hello_identity(datagram[_HEADER:])
        if ident.address != header.source or ident.has_private:
            self._drop("bad_hello")
            return
        if datagram[_HEADER] < _MIN_HELLO_PROTOCOL:
            self._drop("old_protocol")
            return
        key = (ident.address, ident.public_key)
        verdict = self._verdicts.get(key)
        if verdict is False:
            self._drop("invalid_identity")
            return
        peer_key = self.identity.agree(ident)
        try:
            dearmor(datagram, peer_key)
        except ProtocolError:
            self._drop("bad_mac")
            return
        if verdict:
            self._verdicts.move_to_end(key)
            self._add_peer(ident, now)
            self._packet(datagram, src, now, received)
            return
        if key not in self._validating and not self._take_token(_rate_key(header, src), now):
            self._drop("validation_rate")
            return
        if not self._park(ident.address, _Parked(datagram, src, received, key)):
            return
        if key not in self._validating and not self._queue_validation(ident, now):
            self._drop_parked(ident.address, lambda p: p.hello_key == key, "validation_queue_full")

    def _unknown_source(self, header: Header, datagram: bytes, src: SockAddr, now: int, received: int) -> None:
        addr = header.source
        waiting = self._waiting.get(addr)
        busy = waiting is not None and (waiting.whois_first is not None or waiting.whois_key is not None)
        busy = busy or any(a == addr for a, _ in self._validating)
        if not busy and not self._take_token(_rate_key(header, src), now):
            self._drop("whois_rate")
            return
        if not self._park(addr, _Parked(datagram, src, received, None)):
            return
        if not busy:
            self._start_whois(addr, now)

    def _park(self, addr: int, item: _Parked) -> bool:
        waiting = self._waiting.get(addr)
        if self._parked_total >= self.limits.max_parked_total or (
                waiting is not None and len(waiting.items) >= self.limits.max_parked_per_source):
            self._drop("parked_full")
            return False
        if waiting is None:
            waiting = self._waiting[addr] = _Waiting()
        waiting.items.append(item)
        self._parked_total += 1
        return True

    def _drop_parked(self, addr: int, which, reason: str) -> None:
        waiting = self._waiting.get(addr)
        if waiting is None:
            return
        keep = [p for p in waiting.items if not which(p)]
        dropped = len(waiting.items) - len(keep)
        if dropped:
            self._drop(reason, dropped)
            self._parked_total -= dropped
        waiting.items = keep
        if not keep:
            del self._waiting[addr]

    def _start_whois(self, addr: int, now: int) -> None:
        waiting = self._waiting[addr]
        waiting.whois_first = now
        self._send_whois(addr, waiting, now)

    def _send_whois(self, addr: int, waiting: _Waiting, now: int) -> None:
        waiting.whois_last = now
        root = self._best_root(now)
        if root is None:
            self._drop("no_root")
            return
        pid = self._send(root, Verb.WHOIS, Whois((addr,)).encode(), now)
        if pid is not None:
            self._inc("whois_sent")
            self._expect_reply(pid, _Expect(Verb.WHOIS, root.address, now, None, asked=addr))

    def _take_token(self, ip: str, now: int) -> bool:
        # (ip is a bucket key: a source IP, or the relay's IP and the claimed sender, see _rate_key)
        return self._buckets.take(ip, now)

    def _queue_validation(self, ident: Identity, now: int) -> bool:
        if len(self._validating) >= self.limits.max_validations:
            return False
        self._validating[(ident.address, ident.public_key)] = (ident, now)
        self._validation_queue.append(ident)
        self._inc("validations")
        return True

    def validated(self, identity: Identity, ok: bool, now: int) -> None:
        """The verdict of identity.locally_validate(): parked packets of that identity proceed, or are dropped."""
        try:
            self._validated(identity, ok, now)
        except Exception:
            log.exception("zt node: internal error handling the validation of %s", identity.address)
            self._drop("internal_error")

    def _validated(self, identity: Identity, ok: bool, now: int) -> None:
        key = (identity.address, identity.public_key)
        if self._validating.pop(key, None) is None:
            return  # not asked, or timed out meanwhile: the parked packets are gone
        self._verdicts[key] = bool(ok)
        while len(self._verdicts) > self.limits.validated_cache:
            self._verdicts.popitem(last=False)
        if not ok:
            log.info("zt node: identity of %s failed validation; its packets are dropped",
                     address_to_str(identity.address))
            self._fail_identity(key, "invalid_identity")
            return
        self._add_peer(identity.public_only(), now)
        self._release(identity.address, now)

    def _fail_identity(self, key: tuple[int, bytes], reason: str) -> None:
        """Drop what waited on this identity: HELLOs presenting it and, if a root's WHOIS answer named it, the
        other parked packets (a later packet may start a new WHOIS)."""
        waiting = self._waiting.get(key[0])
        if waiting is None:
            return
        whois_was = waiting.whois_key == key
        if whois_was:
            waiting.whois_key = None
            waiting.whois_first = None
        self._drop_parked(key[0], lambda p: p.hello_key == key or (whois_was and p.hello_key is None), reason)

    def _release(self, addr: int, now: int) -> None:
        waiting = self._waiting.pop(addr, None)
        if waiting is None:
            return
        self._parked_total -= len(waiting.items)
        for item in waiting.items:
            try:
                self._packet(item.datagram, item.src, now, item.received)
            except ProtocolError:
                self._drop("malformed")

    def _add_peer(self, ident: Identity, now: int) -> Peer:
        peer = self._peers.get(ident.address)
        if peer is not None:
            return peer
        peer = Peer(ident, self.identity.agree(ident), created=now, replay_window=self.limits.replay_window)
        self._peers[ident.address] = peer
        self._inc("peers_added")
        if len(self._peers) > self.limits.max_peers:
            for addr in list(self._peers):
                if addr not in self._roots and addr != ident.address:
                    del self._peers[addr]
                    self._inc("peers_evicted")
                    break
        return peer

    # --- verbs --------------------------------------------------------------------------------------------------
    def _dispatch(self, peer: Peer, packet: Packet, src: SockAddr, now: int, received: int) -> bool:
        """Handle one authenticated packet; True if it taught us its path."""
        verb = packet.verb
        if verb == Verb.HELLO:
            self._on_hello(peer, packet, src, now)
        elif verb == Verb.OK:
            return self._on_ok(peer, packet, src, now)
        elif verb == Verb.ECHO:
            self._reply(peer, Verb.OK, Echo.decode(packet.payload).reply(packet.packet_id).encode(), packet.hops,
                        src, now)
        elif verb == Verb.NETWORK_CONFIG_REQUEST:
            self._on_config_request(peer, packet, src, now, received)
        elif verb == Verb.MULTICAST_LIKE:
            self._on_like(peer, packet, now)
        elif verb == Verb.MULTICAST_GATHER:
            self._on_gather(peer, packet, src, now)
        elif verb == Verb.RENDEZVOUS:
            self._on_rendezvous(peer, packet, now)
        else:
            # ERROR, NOP, WHOIS (we are not a root), frames, and verbs we do not know: counted (rx.*), ignored.
            self._inc("ignored")
        return False

    def _on_hello(self, peer: Peer, packet: Packet, src: SockAddr, now: int) -> None:
        hello = Hello.decode(packet.payload, peer.key, packet.packet_id)
        if hello.protocol_version < _MIN_HELLO_PROTOCOL:
            self._drop("old_protocol")
            return
        peer.remote_protocol = hello.protocol_version
        peer.remote_version = (hello.version_major, hello.version_minor, hello.version_revision)
        # The observed address is what we saw the HELLO come from; for a relayed HELLO that would be the relay,
        # which is not the peer's address, so we report nil (the node parses it as optional).
        observed = _inet(src) if packet.hops == 0 else NIL
        ok = OkHello(packet.packet_id, hello.timestamp, self.protocol, *self.version, observed=observed,
                     worlds=self._hello_worlds(hello))
        self._reply(peer, Verb.OK, ok.encode(), packet.hops, src, now)

    def _hello_worlds(self, hello: Hello) -> tuple[World, ...]:
        """Worlds to push in OK(HELLO): none from the controller; a root sends its newer planet (root.py)."""
        return ()

    def _on_ok(self, peer: Peer, packet: Packet, src: SockAddr, now: int) -> bool:
        ok = Ok.decode(packet.payload)
        exp = self._expect.get(ok.in_re_packet_id)
        if exp is None or exp.address != peer.address or exp.verb != ok.in_re_verb:
            # Among these: a member's ack of a pushed config (OK in re ECHO with an id we never sent, sic).
            self._inc("ok_unexpected")
            return False
        learned = False
        path = None
        if packet.hops == 0:
            path = peer.learn(src, now)
            learned = True
        if peer.is_root and ok.in_re_verb in (Verb.HELLO, Verb.ECHO):
            self._root_answered[peer.address] = now
        if ok.in_re_verb == Verb.HELLO:
            reply = OkHello.decode(packet.payload)
            peer.remote_protocol = reply.protocol_version
            peer.remote_version = (reply.version_major, reply.version_minor, reply.version_revision)
            if path is not None:
                path.update_latency(now - exp.sent_at)
                peer.latency = path.latency
            if peer.is_root and not self._online:
                self._online = True
                log.info("zt node %s: online (OK(HELLO) from root %s via %s)", address_to_str(self.address),
                         address_to_str(peer.address), src)
        elif ok.in_re_verb == Verb.WHOIS:
            self._expect.pop(ok.in_re_packet_id, None)
            self._on_ok_whois(peer, packet, exp, now)
        return learned

    def _on_ok_whois(self, peer: Peer, packet: Packet, exp: _Expect, now: int) -> None:
        if not peer.is_root:
            self._drop("whois_not_from_root")
            return
        ident = OkWhois.decode(packet.payload).identities[0]
        if ident.address != exp.asked:
            self._drop("whois_mismatch")
            return
        waiting = self._waiting.get(ident.address)
        if ident.address in self._peers or waiting is None or waiting.whois_key is not None:
            return  # already known, nothing waiting any more, or a retry's duplicate answer
        key = (ident.address, ident.public_key)
        waiting.whois_key = key
        verdict = self._verdicts.get(key)
        if verdict is True:
            self._add_peer(ident, now)
            self._release(ident.address, now)
        elif verdict is False:
            self._fail_identity(key, "invalid_identity")
        elif key not in self._validating and not self._queue_validation(ident, now):
            self._fail_identity(key, "validation_queue_full")

    def _on_config_request(self, peer: Peer, packet: Packet, src: SockAddr, now: int, received: int) -> None:
        req = NetworkConfigRequest.decode(packet.payload)
        if req.network_id >> 24 != self.address:
            self._drop("foreign_network")  # the reference ignores these silently too
            return
        rk = (peer.address, req.network_id)
        last = self._request_at.get(rk)
        if last is not None and now - last < self.limits.request_interval_ms:
            self._drop("request_rate")
            return
        if len(self._requests) >= self.limits.max_requests_queued:
            self._drop("request_queue_full")
            return
        self._request_at[rk] = now
        self._request_at.move_to_end(rk)
        while len(self._request_at) > self.limits.max_request_rate_entries:
            self._request_at.popitem(last=False)
        self._requests.append(ConfigRequest(peer.address, peer.identity.public_only(), packet.packet_id, req,
                                            src if packet.hops == 0 else None, packet.hops, received))
        self._inc("requests")

    def _authorized_now(self, nwid: int, member: int, now: int) -> bool:
        at = self._authorized.get((nwid, member))
        return at is not None and now - at < self.limits.authorized_ttl_ms

    def _on_like(self, peer: Peer, packet: Packet, now: int) -> None:
        for e in MulticastLike.decode(packet.payload).entries:
            if not self._authorized_now(e.network_id, peer.address, now):
                self._drop("like_unauthorized")
            elif not self._multicast.like((e.network_id, e.mac, e.adi), peer.address, now):
                self._drop("multicast_full")

    def _on_gather(self, peer: Peer, packet: Packet, src: SockAddr, now: int) -> None:
        g = MulticastGather.decode(packet.payload)
        if not self._authorized_now(g.network_id, peer.address, now):
            self._drop("gather_unauthorized")
            return
        total, members = self._multicast.gather(g.group, peer.address, g.limit, now)
        if members:  # the reference answers only when it has someone to name
            reply = OkGather(packet.packet_id, g.network_id, g.mac, g.adi, total, tuple(members))
            self._reply(peer, Verb.OK, reply.encode(), packet.hops, src, now)

    def _on_rendezvous(self, peer: Peer, packet: Packet, now: int) -> None:
        if not peer.is_root:
            self._drop("rendezvous_not_from_root")
            return
        rv = Rendezvous.decode(packet.payload)
        other = self._peers.get(rv.peer)
        if other is None or rv.endpoint.ip is None:
            self._inc("rendezvous_unknown_peer")
            return
        self._hello_path(other, (str(rv.endpoint.ip), rv.endpoint.port), now)

    # --- the glue's calls ---------------------------------------------------------------------------------------
    def note_authorized(self, nwid: int, address: int, now: int) -> None:
        """The controller sent `address` a config for `nwid`: its MULTICAST_LIKE/GATHER for nwid count for
        the next authorized_ttl_ms (the reference's localControllerHasAuthorized)."""
        k = (nwid, address)
        self._authorized[k] = now
        self._authorized.move_to_end(k)
        while len(self._authorized) > self.limits.max_authorized:
            self._authorized.popitem(last=False)

    def answer_config(self, req: ConfigRequest, chunks: list[ConfigChunk], now: int) -> None:
        """One OK(NETWORK_CONFIG_REQUEST) per chunk, in re the request."""
        peer = self._peers.get(req.source)
        if peer is None:
            self._drop("answer_no_peer")
            return
        self.note_authorized(req.request.network_id, req.source, now)
        self._inc("config_replies")
        for chunk in chunks:
            self._send(peer, Verb.OK, OkNetworkConfig(req.packet_id, chunk).encode(), now,
                       to=req.path or self._route(peer, now, alive_only=True))

    def answer_error(self, req: ConfigRequest, code: ErrorCode, now: int) -> None:
        """ERROR in re the request, with the network id the node insists on (brief 5.12)."""
        peer = self._peers.get(req.source)
        if peer is None:
            self._drop("answer_no_peer")
            return
        err = Error.network_config(req.packet_id, code, req.request.network_id)
        self._inc("config_errors")
        self._send(peer, Verb.ERROR, err.encode(), now, to=req.path or self._route(peer, now, alive_only=True))

    def push_config(self, address: int, chunks: list[ConfigChunk], now: int) -> bool:
        """NETWORK_CONFIG, unsolicited (a push must not be an OK: nodes only take OKs they expect). False if the
        peer is unknown or unreachable."""
        peer = self._peers.get(address)
        if peer is None or not chunks:
            return False
        dest = self._route(peer, now)
        if dest is None:
            self._drop("no_path")
            return False
        self._inc("config_pushes")
        for chunk in chunks:
            self.note_authorized(chunk.network_id, address, now)
            self._send(peer, Verb.NETWORK_CONFIG, chunk.encode(), now, to=dest)
        return True

    def push_credentials(self, address: int, payload: bytes, now: int) -> bool:
        """NETWORK_CREDENTIALS (e.g. a revocation, revocation.py builds the payload)."""
        peer = self._peers.get(address)
        if peer is None:
            return False
        dest = self._route(peer, now)
        if dest is None:
            self._drop("no_path")
            return False
        return self._send(peer, Verb.NETWORK_CREDENTIALS, payload, now, to=dest) is not None

    def redirect(self, address: int, endpoint: tuple[str, int], now: int) -> bool:
        """Hand a member over to another endpoint of this same identity (another node of the cluster):
        PUSH_DIRECT_PATHS with the cluster-redirect flag, which makes it say HELLO there and use that path from
        then on."""
        peer = self._peers.get(address)
        if peer is None:
            return False
        dest = self._route(peer, now)
        if dest is None or not self._usable(endpoint):
            self._drop("no_path")
            return False
        payload = PushDirectPaths(((PUSH_CLUSTER_REDIRECT, _inet(endpoint)),)).encode()
        if self._send(peer, Verb.PUSH_DIRECT_PATHS, payload, now, to=dest) is None:
            return False
        self._inc("redirected")
        return True

    # --- sending ------------------------------------------------------------------------------------------------
    def _usable(self, addr: SockAddr) -> bool:
        return _family(addr) in self.families

    def _root_dest(self, root: Peer, now: int) -> SockAddr | None:
        best = root.best_path(now)
        if best is not None:
            return best.address
        for ep in self._root_endpoints.get(root.address, ()):
            if self._usable(ep):
                return ep
        return None

    def _best_root(self, now: int) -> Peer | None:
        best: Peer | None = None
        best_q = float("inf")
        for r in self._roots.values():
            q = r.relay_quality(now, UPSTREAM_ACTIVITY_MS)
            if best is None or q < best_q:
                best, best_q = r, q
        return best

    def _route(self, peer: Peer, now: int, alive_only: bool = False) -> SockAddr | None:
        """Where a packet for peer goes: its best path, or (roots aside) our best root, which relays it."""
        if peer.is_root:
            return self._root_dest(peer, now)
        path = peer.best_path(now, alive_only=alive_only)
        if path is not None:
            return path.address
        root = self._best_root(now)
        return self._root_dest(root, now) if root is not None else None

    def _reply(self, peer: Peer, verb: int, payload: bytes, hops: int, src: SockAddr, now: int) -> None:
        """A reply goes back where a direct request came from; a relayed one's by the usual route."""
        self._send(peer, verb, payload, now, to=src if hops == 0 else self._route(peer, now, alive_only=True))

    def _send(self, peer: Peer, verb: int, payload: bytes, now: int, *, to: SockAddr | None = None,
              cipher: int = Cipher.POLY1305_SALSA2012, packet_id: bytes | None = None) -> bytes | None:
        dest = to if to is not None else self._route(peer, now)
        if dest is None:
            self._drop("no_path")
            return None
        pid = packet_id or new_packet_id()
        try:
            wire = armor(Packet(pid, peer.address, self.address, verb, payload, cipher=cipher), peer.key)
            pieces = split(wire)
        except ValueError as e:  # our own packet too big: a glue bug (e.g. a huge chunk), not a crash
            log.error("zt node: cannot send verb %s to %s: %s", _verb_name(verb), address_to_str(peer.address), e)
            self._drop("too_big")
            return None
        for d in pieces:
            self._out.append((d, dest))
        self._inc("sent", len(pieces))
        self._inc(_TX_KEYS.get(verb, "tx.unknown"))  # packets, not datagrams: a fragmented one counts once
        path = peer.path(dest)
        if path is not None:
            path.last_send = now
        return pid

    def _expect_reply(self, pid: bytes, exp: _Expect) -> None:
        self._expect[pid] = exp
        while len(self._expect) > self.limits.max_expected:
            self._expect.popitem(last=False)

    def _send_hello(self, peer: Peer, dest: SockAddr, now: int) -> None:
        pid = new_packet_id()
        hello = Hello(self.protocol, *self.version, now, self._public, _inet(dest), self.planet.id,
                      self.planet.timestamp, moons=())
        # HELLO goes MAC-only (cipher 0): the receiver must read our identity before it has our key.
        if self._send(peer, Verb.HELLO, hello.encode(peer.key, pid), now, to=dest, cipher=Cipher.POLY1305_NONE,
                      packet_id=pid) is not None:
            self._inc("hello_sent")
            self._expect_reply(pid, _Expect(Verb.HELLO, peer.address, now, dest))

    def _hello_path(self, peer: Peer, dest: SockAddr, now: int) -> None:
        """A HELLO to a path we want to learn, at most once per PATH_HELLO_INTERVAL_MS per (peer, path)."""
        if not self._usable(dest):
            return
        if _once_per(self._path_hello_at, (peer.address, dest), now, PATH_HELLO_INTERVAL_MS,
                     self.limits.max_path_hellos):
            self._send_hello(peer, dest, now)

    # --- timers -------------------------------------------------------------------------------------------------
    def tick(self, now: int) -> None:
        try:
            self._tick(now)
        except Exception:
            log.exception("zt node: internal error in tick")
            self._drop("internal_error")

    def _tick(self, now: int) -> None:
        self._reassembler.expire(now)
        self._ping_roots(now)
        self._whois_timers(now)
        lim = self.limits
        for key, (_, started) in list(self._validating.items()):
            if now - started >= lim.validation_timeout_ms:
                del self._validating[key]
                self._fail_identity(key, "validation_timeout")
        while self._expect:
            pid, exp = next(iter(self._expect.items()))
            if now - exp.sent_at < EXPECT_TTL_MS:
                break
            del self._expect[pid]
        _expire_ordered(self._authorized, now, lim.authorized_ttl_ms)
        _expire_ordered(self._request_at, now, lim.request_interval_ms)
        _expire_ordered(self._path_hello_at, now, PATH_HELLO_INTERVAL_MS)
        self._multicast.expire(now)
        for peer in self._peers.values():
            peer.expire(now)
        online = self.online(now)
        if self._online and not online:
            log.warning("zt node %s: offline: no root heard for %d s (roots: %s)", address_to_str(self.address),
                        ONLINE_TIMEOUT_MS // 1000, ", ".join(
                            f"{address_to_str(a)}@{eps}" for a, eps in self._root_endpoints.items()))
        self._online = online

    def _ping_roots(self, now: int) -> None:
        for addr, root in self._roots.items():
            heard = root.last_receive is not None and now - root.last_receive < ROOT_SILENT_MS
            last = self._root_hello_at.get(addr)
            if last is None or now - last >= (ROOT_HELLO_INTERVAL_MS if heard else ROOT_RETRY_MS):
                self._root_hello_at[addr] = now
                targets = [ep for ep in self._root_endpoints[addr] if self._usable(ep)]
                targets += [p.address for p in root.paths if p.address not in targets and self._usable(p.address)]
                for dest in targets:
                    self._send_hello(root, dest, now)
                continue
            best = root.best_path(now)
            if best is not None and (best.last_send is None or now - best.last_send >= ECHO_INTERVAL_MS):
                pid = self._send(root, Verb.ECHO, b"", now, to=best.address)
                if pid is not None:
                    self._expect_reply(pid, _Expect(Verb.ECHO, addr, now, best.address))

    def _whois_timers(self, now: int) -> None:
        lim = self.limits
        for addr, waiting in list(self._waiting.items()):
            if waiting.whois_first is None or waiting.whois_key is not None:
                continue
            if now - waiting.whois_first >= lim.whois_timeout_ms:
                self._drop_parked(addr, lambda p: p.hello_key is None, "whois_timeout")
                if addr in self._waiting:
                    self._waiting[addr].whois_first = None
            elif waiting.whois_last is None or now - waiting.whois_last >= lim.whois_retry_ms:
                self._send_whois(addr, waiting, now)


def _once_per(table: OrderedDict, key: object, now: int, interval: int, max_keys: int) -> bool:
    """True (and noted) if `key` was not allowed within the last `interval`; the table, kept in time order for
    _expire_ordered, remembers at most max_keys keys (the oldest forgotten first)."""
    last = table.get(key)
    if last is not None and now - last < interval:
        return False
    table[key] = now
    table.move_to_end(key)
    while len(table) > max_keys:
        table.popitem(last=False)
    return True


def _expire_ordered(table: OrderedDict, now: int, ttl: int) -> None:
    """Drop entries older than ttl from a table kept in time order (updates move_to_end)."""
    while table:
        k, at = next(iter(table.items()))
        if now - at < ttl:
            break
        del table[k]


__all__ = ["ConfigRequest", "Limits", "Node"]


def _rate_key(header: Header, src: SockAddr) -> str:
    """The token bucket new-identity work from this datagram is charged to. Direct: its source IP. Relayed: every
    member that reaches us through a root arrives from that root's IP, so one bucket per IP would let 16 joins
    through and then 4 per second for the whole planet; the claimed sender is used too. Forging senders buys
    nothing: a WHOIS for an address the root does not know gets no answer, so no validation work follows, and
    parked packets and queued validations have global bounds."""
    return src[0] if header.hops == 0 else f"{src[0]}/{header.source:010x}"
