"""The sans-IO Root against hand-built packets (our codec): OK(HELLO) with the observed address and the world
push, ECHO, WHOIS, relaying (hop limit, known sources only, rate limit, fragments, other roots), RENDEZVOUS at most
once per pair per 30 s, multicast as an upstream, and bounded validation. The root is appendix C's R; members are
identities whose key with R the test computes from R's side (agreement is symmetric)."""
from __future__ import annotations

from ipaddress import IPv4Address

from hactl.zt.fragment import Fragment
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.packet import Cipher, Header, Packet, Verb, armor, dearmor, new_packet_id
from hactl.zt.root import Root, RootLimits, UNITE_INTERVAL_MS
from hactl.zt.verbs import (Echo, Hello, MulticastLike, MulticastSubscription, Ok, OkHello, OkWhois, Rendezvous,
                            Whois)
from hactl.zt.multicast import OkGather
from hactl.zt.world import Root as WorldRoot, World, WorldType
from tests.zt import vectors as v
from tests.zt.test_zt_node import M1, M2, NODE, NODE2, ROOT, NWID, R, gather, key_of

R_EP = ("10.0.0.1", 9993)
PEER_ROOT_EP = ("10.0.0.2", 9993)
A_EP = ("192.168.1.10", 9993)
B_EP = ("192.168.1.20", 9993)
T0 = 1_000_000
WORLD_ID = 0xC0FFEE


def world(ts: int = 10, *, with_peer_root: bool = False, world_id: int = WORLD_ID) -> World:
    roots = [WorldRoot(R.public_only(), (InetAddress(IPv4Address(R_EP[0]), R_EP[1]),))]
    if with_peer_root:
        roots.append(WorldRoot(ROOT.public_only(), (InetAddress(IPv4Address(PEER_ROOT_EP[0]), PEER_ROOT_EP[1]),)))
    return World.make(WorldType.PLANET, world_id, ts, R.public_key, roots, sign_with=R.private_key or b"")


def new_root(w: World | None = None, **limits) -> Root:
    return Root(R, w or world(), limits=RootLimits(**limits))


def pkt(sender: Identity, verb: int, payload: bytes, *, pid: bytes | None = None, hops: int = 0,
        cipher: int = Cipher.POLY1305_SALSA2012) -> bytes:
    return armor(Packet(pid or new_packet_id(), R.address, sender.address, verb, payload, hops=hops,
                        cipher=cipher), key_of(sender))


def hello(sender: Identity, *, planet_id: int = WORLD_ID, planet_ts: int = 10, pid: bytes | None = None) -> bytes:
    pid = pid or new_packet_id()
    h = Hello(11, 1, 8, 4, 42, sender.public_only(), InetAddress(IPv4Address(R_EP[0]), R_EP[1]), planet_id,
              planet_ts, moons=())
    return pkt(sender, Verb.HELLO, h.encode(key_of(sender), pid), pid=pid, cipher=Cipher.POLY1305_NONE)


def to(root: Root, ident: Identity) -> list[tuple[Packet, tuple[str, int]]]:
    """The root's datagrams for ident, dearmored; others are discarded."""
    return [(dearmor(d, key_of(ident)), dest) for d, dest in root.take_datagrams()
            if Header.parse(d).destination == ident.address]


def attach(root: Root, ident: Identity, ep: tuple[str, int], now: int = T0) -> None:
    """ident HELLOs the root from ep, is validated, and answers the root's HELLO back: ep becomes a learned
    path (brief 9.1)."""
    root.receive(hello(ident), ep, now)
    for i in root.take_validations():
        root.validated(i, True, now)
    hellos = [p for p, dest in to(root, ident) if p.verb == Verb.HELLO and dest == ep]
    assert hellos, "the root HELLOs a new path"
    ok = OkHello(hellos[0].packet_id, 0, 11, 1, 8, 4).encode()
    root.receive(pkt(ident, Verb.OK, ok), ep, now + 1)
    root.take_datagrams()
    assert ep in root.peer_paths(ident.address)


def dropped(root: Root, reason: str) -> int:
    return root.stats().get(f"dropped.{reason}", 0)


def relay_pkt(src: Identity, dst: Identity, hops: int = 0, body: bytes = b"x" * 40) -> bytes:
    """An opaque packet from src to dst (the root cannot read it, and need not)."""
    return armor(Packet(new_packet_id(), dst.address, src.address, Verb.FRAME, body, hops=hops), bytes(48))


# --- HELLO, worlds, ECHO ----------------------------------------------------------------------------------------

def test_hello_gets_observed_address_and_no_world_when_current() -> None:
    root = new_root()
    root.receive(hello(NODE), A_EP, T0)
    (ident,) = root.take_validations()
    root.validated(ident, True, T0)
    out = to(root, NODE)
    oks = [p for p, _ in out if p.verb == Verb.OK]
    assert len(oks) == 1 and out[0][1] == A_EP
    reply = OkHello.decode(oks[0].payload)
    assert reply.observed == InetAddress(IPv4Address(A_EP[0]), A_EP[1]) and reply.worlds == ()
    assert reply.protocol_version == 11


def test_world_pushed_only_to_older_timestamps_of_the_same_id() -> None:
    root = new_root(world(ts=20))
    cases = [(WORLD_ID, 10, True), (WORLD_ID, 20, False), (WORLD_ID, 30, False), (0xBEEF, 10, False)]
    for i, (wid, ts, pushed) in enumerate(cases):
        root.receive(hello(NODE, planet_id=wid, planet_ts=ts), A_EP, T0 + i)
        for ident in root.take_validations():
            root.validated(ident, True, T0 + i)
        (ok,) = [p for p, _ in to(root, NODE) if p.verb == Verb.OK]
        worlds = OkHello.decode(ok.payload).worlds
        assert worlds == ((root.planet,) if pushed else ()), (wid, ts)
    assert root.stats()["world_pushed"] == 1
    # set_planet: what is served changes at once
    newer = world(ts=40)
    root.set_planet(newer)
    root.receive(hello(NODE, planet_ts=20), A_EP, T0 + 10)
    (ok,) = [p for p, _ in to(root, NODE) if p.verb == Verb.OK]
    (w,) = OkHello.decode(ok.payload).worlds
    assert w.timestamp == 40 and w.verify(R.public_key)


def test_echo() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    e = pkt(NODE, Verb.ECHO, Echo(b"ping").encode())
    root.receive(e, A_EP, T0 + 5)
    (reply, dest), = to(root, NODE)
    assert dest == A_EP and Ok.decode(reply.payload) == Ok(Verb.ECHO, e[:8], b"ping")


# --- WHOIS ------------------------------------------------------------------------------------------------------

def test_whois_known_told_and_unknown() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    root.know(M1)  # e.g. the controller identity, told by the switch
    w = pkt(NODE, Verb.WHOIS, Whois((NODE2.address,)).encode())
    root.receive(w, A_EP, T0 + 10)
    (reply, dest), = to(root, NODE)
    ok = OkWhois.decode(reply.payload)
    assert dest == A_EP and ok.in_re_packet_id == w[:8] and ok.identities == (NODE2.public_only(),)
    root.receive(pkt(NODE, Verb.WHOIS, Whois((M1.address,)).encode()), A_EP, T0 + 11)
    (reply, _), = to(root, NODE)
    assert OkWhois.decode(reply.payload).identities == (M1.public_only(),)
    root.receive(pkt(NODE, Verb.WHOIS, Whois((M2.address,)).encode()), A_EP, T0 + 12)
    assert root.take_datagrams() == [] and root.stats()["whois_unknown"] == 1


# --- relaying ---------------------------------------------------------------------------------------------------

def test_relay_between_known_peers_with_hops_and_rendezvous_once_per_30s() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    d = relay_pkt(NODE, NODE2)
    root.receive(d, A_EP, T0 + 10)
    out = root.take_datagrams()
    relayed = [(x, dest) for x, dest in out if x[8:13] == NODE2.address.to_bytes(5, "big")
               and Header.parse(x).source == NODE.address]
    assert relayed == [(d[:18] + bytes([d[18] | 1]) + d[19:], B_EP)]
    assert Header.parse(relayed[0][0]).hops == 1
    rv = {}
    for x, dest in out:
        h = Header.parse(x)
        if h.source == R.address:
            ident = NODE if h.destination == NODE.address else NODE2
            p = dearmor(x, key_of(ident))
            assert p.verb == Verb.RENDEZVOUS
            rv[ident.address] = (Rendezvous.decode(p.payload), dest)
    assert rv[NODE2.address] == (Rendezvous(NODE.address, InetAddress(IPv4Address(A_EP[0]), A_EP[1])), B_EP)
    assert rv[NODE.address] == (Rendezvous(NODE2.address, InetAddress(IPv4Address(B_EP[0]), B_EP[1])), A_EP)
    # within 30 s: relayed, no RENDEZVOUS (either direction)
    root.receive(relay_pkt(NODE2, NODE), B_EP, T0 + 20)
    assert [dest for _, dest in root.take_datagrams()] == [A_EP]
    # after 30 s: again (paths kept alive by the test)
    later = T0 + 10 + UNITE_INTERVAL_MS
    for ident, ep in ((NODE, A_EP), (NODE2, B_EP)):
        root.receive(pkt(ident, Verb.ECHO, b""), ep, later - 1)
    root.take_datagrams()
    root.receive(relay_pkt(NODE, NODE2), A_EP, later)
    assert len(root.take_datagrams()) == 3
    s = root.stats()
    assert s["relayed"] == 3 and s["rendezvous_sent"] == 4


def test_relay_hop_limit() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    root.receive(relay_pkt(NODE, NODE2, hops=2), A_EP, T0 + 10)
    (out, dest), = [(x, dest) for x, dest in root.take_datagrams() if Header.parse(x).source == NODE.address]
    assert Header.parse(out).hops == 3 and dest == B_EP
    root.receive(relay_pkt(NODE, NODE2, hops=3), A_EP, T0 + 11)
    assert root.take_datagrams() == [] and dropped(root, "relay_hops") == 1


def test_relay_refused_for_unknown_sources_spoofed_senders_and_unknown_destinations() -> None:
    root = new_root()
    attach(root, NODE2, B_EP)
    # NODE never talked to us: its packet is not relayed (the reference would; we are no open relay)
    root.receive(relay_pkt(NODE, NODE2), A_EP, T0 + 10)
    # a known peer's address claimed from another path
    root.receive(relay_pkt(NODE2, NODE), ("192.168.1.99", 9993), T0 + 11)
    assert root.take_datagrams() == [] and dropped(root, "relay_unknown_source") == 2
    # from a known path, but claiming to be someone else
    attach(root, NODE, A_EP)
    root.receive(relay_pkt(M1, NODE2), A_EP, T0 + 12)
    assert root.take_datagrams() == [] and dropped(root, "relay_spoofed_source") == 1
    # to nobody we know, and no other root: dropped
    root.receive(relay_pkt(NODE, M2), A_EP, T0 + 13)
    assert root.take_datagrams() == [] and dropped(root, "relay_no_path") == 1
    assert "relayed" not in root.stats()


def test_relay_rate_limit_per_source_ip() -> None:
    root = new_root(relay_burst=2, relay_rate=1.0)
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    for i in range(3):
        root.receive(relay_pkt(NODE, NODE2), A_EP, T0 + 10)
    root.take_datagrams()
    assert root.stats()["relayed"] == 2 and dropped(root, "relay_rate") == 1
    root.receive(relay_pkt(NODE2, NODE), B_EP, T0 + 10)  # another IP has its own bucket
    root.receive(relay_pkt(NODE, NODE2), A_EP, T0 + 1010)  # a token back after a second
    assert root.stats()["relayed"] == 4


def test_fragments_are_relayed_with_their_hops() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    frag = Fragment(new_packet_id(), NODE2.address, 3, 1, 0, b"y" * 100).to_bytes()
    root.receive(frag, A_EP, T0 + 10)
    (out, dest), = root.take_datagrams()
    assert dest == B_EP and Fragment.parse(out).hops == 1 and Fragment.parse(out).data == b"y" * 100
    root.receive(Fragment(new_packet_id(), NODE2.address, 3, 2, 3, b"z").to_bytes(), A_EP, T0 + 11)
    root.receive(frag, ("192.168.1.99", 1), T0 + 12)  # from nobody we know
    assert root.take_datagrams() == []
    assert dropped(root, "relay_hops") == 1 and dropped(root, "relay_unknown_source") == 1


def test_unknown_destination_goes_to_the_other_roots_but_never_back() -> None:
    root = new_root(world(with_peer_root=True))
    assert root.peer_roots == {ROOT.address}
    root.tick(T0)  # HELLOs the other root at its stable endpoint
    (h, dest), = [(p, dest) for p, dest in to(root, ROOT) if p.verb == Verb.HELLO]
    assert dest == PEER_ROOT_EP
    root.receive(pkt(ROOT, Verb.OK, OkHello(h.packet_id, 0, 11, 1, 8, 4).encode()), PEER_ROOT_EP, T0 + 1)
    attach(root, NODE, A_EP, T0 + 2)
    d = relay_pkt(NODE, M2)  # M2 is attached to the other root
    root.receive(d, A_EP, T0 + 10)
    (out, dest), = root.take_datagrams()
    assert dest == PEER_ROOT_EP and Header.parse(out).hops == 1 and root.stats()["relayed.to_root"] == 1
    # the other root forwards a packet for NODE (source M2, unknown to us): relayed to NODE, no RENDEZVOUS
    root.receive(relay_pkt(M2, NODE, hops=1), PEER_ROOT_EP, T0 + 11)
    (out, dest), = root.take_datagrams()
    assert dest == A_EP and Header.parse(out).hops == 2
    # ... and one for someone we do not know either: dropped, not bounced back among roots
    root.receive(relay_pkt(M2, NODE2, hops=1), PEER_ROOT_EP, T0 + 12)
    assert root.take_datagrams() == [] and dropped(root, "relay_no_path") == 1
    # set_planet without the other root: no forwarding any more
    root.set_planet(world(ts=11))
    assert root.peer_roots == set()


def linked_to_peer_root() -> Root:
    """Our root with the cluster's other root (ROOT) on a learned path."""
    root = new_root(world(with_peer_root=True))
    root.tick(T0)
    (h, dest), = [(p, dest) for p, dest in to(root, ROOT) if p.verb == Verb.HELLO]
    root.receive(pkt(ROOT, Verb.OK, OkHello(h.packet_id, 0, 11, 1, 8, 4).encode()), PEER_ROOT_EP, T0 + 1)
    return root


def test_whois_for_a_member_of_another_root_is_asked_of_the_other_roots() -> None:
    """NODE is attached here, M2 only to the other root: NODE's WHOIS for M2 makes us ask the other root; its
    answer is validated like any identity, and NODE's retry (members retry every 500 ms) is answered."""
    root = linked_to_peer_root()
    attach(root, NODE, A_EP, T0 + 2)
    root.receive(pkt(NODE, Verb.WHOIS, Whois((M2.address,)).encode()), A_EP, T0 + 10)
    out = root.take_datagrams()
    assert [dest for _, dest in out] == [PEER_ROOT_EP], out
    asked = dearmor(out[0][0], key_of(ROOT))
    assert asked.verb == Verb.WHOIS and Whois.decode(asked.payload).addresses == (M2.address,)
    # a retry meanwhile starts no second lookup
    root.receive(pkt(NODE, Verb.WHOIS, Whois((M2.address,)).encode()), A_EP, T0 + 20)
    assert root.take_datagrams() == [] and root.stats()["lookups"] == 1
    root.receive(pkt(ROOT, Verb.OK, OkWhois(asked.packet_id, (M2.public_only(),)).encode()), PEER_ROOT_EP, T0 + 30)
    (ident,) = root.take_validations()
    assert ident.address == M2.address
    root.validated(ident, True, T0 + 31)
    w = pkt(NODE, Verb.WHOIS, Whois((M2.address,)).encode())
    root.receive(w, A_EP, T0 + 510)
    (reply, dest), = to(root, NODE)
    assert dest == A_EP and OkWhois.decode(reply.payload).identities == (M2.public_only(),)
    # the other root's own WHOIS for someone we lack is not passed on (no loops among roots)
    root.receive(pkt(ROOT, Verb.WHOIS, Whois((NODE2.address,)).encode()), PEER_ROOT_EP, T0 + 600)
    assert root.take_datagrams() == [] and root.stats()["lookups"] == 1


def test_lookups_are_bounded_per_source_and_in_total() -> None:
    root = linked_to_peer_root()
    attach(root, NODE, A_EP, T0 + 2)
    for i in range(100):  # a member asking for 100 addresses nobody has, at once
        root.receive(pkt(NODE, Verb.WHOIS, Whois((0x1000000000 + i,)).encode()), A_EP, T0 + 10)
    lookups = root.stats()["lookups"]
    assert 0 < lookups <= 20 and dropped(root, "lookup_rate") == 100 - lookups
    root.take_datagrams()
    root.tick(T0 + 10 + 6_000)  # unanswered lookups end with the WHOIS timeout
    assert not root._waiting


# --- multicast --------------------------------------------------------------------------------------------------

def test_multicast_like_from_anyone_and_gather() -> None:
    root = new_root()
    attach(root, NODE, A_EP)
    attach(root, NODE2, B_EP)
    group = (NWID, 0xFFFFFFFFFFFF, 0x0A000001)
    like = MulticastLike((MulticastSubscription(*group),)).encode()
    root.receive(pkt(NODE, Verb.MULTICAST_LIKE, like), A_EP, T0 + 10)
    g = gather(NODE2, group)
    g = pkt(NODE2, Verb.MULTICAST_GATHER, dearmor(g, key_of(NODE2)).payload)
    root.receive(g, B_EP, T0 + 11)
    (reply, dest), = to(root, NODE2)
    assert dest == B_EP and OkGather.decode(reply.payload).addresses == (NODE.address,)


# --- bounded validation -----------------------------------------------------------------------------------------

def test_hello_flood_with_fresh_identities_is_bounded() -> None:
    root = new_root(validation_burst=4, validation_rate=1.0, max_validations=6)
    idents = [Identity.from_string(s) for s in (v.NODE_PUBLIC, v.NODE2_PUBLIC, *v.MKWORLD_ROOTS)]
    for i in range(40):
        root.receive(hello(idents[i % 4]), (f"172.16.0.{i % 3}", 9993), T0)
    queued = root.take_validations()
    assert len(queued) == 4  # four distinct identities; the rest waits on them or was refused
    for i in range(20):
        root.receive(hello(idents[i % 4]), ("172.16.9.9", 9993), T0)
    assert len(root.take_validations()) == 0
    assert len(root._waiting) <= 4 and root._parked_total <= root.limits.max_parked_total
