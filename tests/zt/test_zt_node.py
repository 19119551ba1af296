"""The sans-IO Node against hand-built packets (the brief's appendix C: a real libzt 1.8.4 HELLO and
NETWORK_CONFIG_REQUEST, with the keys that go with them) and against another Node. Time is an explicit ms value;
the node's datagrams are dearmored with the peer's key and decoded with the codec, never mocked."""
from __future__ import annotations

from ipaddress import IPv4Address

from hactl.zt.dictionary import Dictionary
from hactl.zt.fragment import Fragment, Reassembler, is_fragment, split
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.multicast import MulticastGather, OkGather
from hactl.zt.node import ConfigRequest, Limits, Node
from hactl.zt.packet import Cipher, ErrorCode, Header, Packet, Verb, armor, dearmor, new_packet_id
from hactl.zt.verbs import (ConfigChunk, Echo, Error, Hello, MulticastLike, MulticastSubscription,
                            NetworkConfigRequest, Ok, OkHello, OkNetworkConfig, OkWhois, Rendezvous, Whois,
                            chunk_config)
from hactl.zt.world import Root, World, WorldType
from tests.zt import vectors as v

R = Identity.from_string(v.ROOT_SECRET)  # the controller (appendix C's R)
NODE = Identity.from_string(v.NODE_PUBLIC)
NODE2 = Identity.from_string(v.NODE2_PUBLIC)
ROOT = Identity.from_string(v.KNOWN_GOOD_IDENTITY)  # has its private key: the other Node in node-vs-node tests
M1 = Identity.from_string(v.MKWORLD_ROOTS[0])
M2 = Identity.from_string(v.MKWORLD_ROOTS[1])
KEY = bytes.fromhex(v.KEY48)
KEY2 = bytes.fromhex(v.NODE2_KEY48)
HELLO = bytes.fromhex(v.HELLO)
CHUNK = bytes.fromhex(v.CONFIG_CHUNK)
NWID = 0x8EB1AF42A4000001
# Appendix C: the NETWORK_CONFIG_REQUEST node 4efbf013a1 sent to R (140 bytes, cipher 1, LZ4-compressed).
NCR = bytes.fromhex(
    "5d827df291d9ed788eb1af42a44efbf013a188bd5aa0a6a4c609fefae0c1c1757d6ac92490e849129d47859960a1b080278973ebb63ea0"
    "9d275d5edaf1e6156d1260eb28b0503366d3ae33925dca5587e1aca3b5b151dac771c9f3a755c4034e2e48b8308424b9180b2ca0d761"
    "93e1ae2b91e185b25bea8d7a75583545845f7423b747d55cb981ad0f6fcf52")
ROOT_EP = ("10.0.0.1", 9993)
M_SRC = ("10.0.0.7", 9993)
T0 = 1_000_000


def planet(*roots: tuple[Identity, tuple[str, int]], world_id: int = 0xC0FFEE) -> World:
    return World.make(WorldType.PLANET, world_id, 1, R.public_key,
                      [Root(i.public_only(), (InetAddress(IPv4Address(ep[0]), ep[1]),)) for i, ep in roots],
                      sign_with=R.private_key or b"")


def key_of(ident: Identity) -> bytes:
    return R.agree(ident)  # symmetric: what ident would agree with R


def pkt(sender: Identity, verb: int, payload: bytes, *, pid: bytes | None = None, hops: int = 0,
        cipher: int = Cipher.POLY1305_SALSA2012, dest: int = R.address, key: bytes | None = None) -> bytes:
    return armor(Packet(pid or new_packet_id(), dest, sender.address, verb, payload, hops=hops, cipher=cipher),
                 key or key_of(sender))


def hello_from(sender: Identity, *, ts: int = 42, pid: bytes | None = None, proto: int = 12) -> bytes:
    pid = pid or new_packet_id()
    k = key_of(sender)
    h = Hello(proto, 1, 8, 4, ts, sender.public_only(), InetAddress(IPv4Address("10.0.0.2"), 9993), 0xC0FFEE, 1,
              moons=())
    return pkt(sender, Verb.HELLO, h.encode(k, pid), pid=pid, cipher=Cipher.POLY1305_NONE)


def new_node(**limits: int) -> Node:
    return Node(R, planet((ROOT, ROOT_EP)), limits=Limits(**limits))


def open_(node: Node, ident: Identity) -> list[tuple[Packet, tuple[str, int]]]:
    """Datagrams the node queued for ident, dearmored (fragments reassembled)."""
    out = []
    reasm = Reassembler()
    for d, dest in node.take_datagrams():
        if is_fragment(d) or Header.parse(d).fragmented:
            whole = reasm.add_fragment(Fragment.parse(d), 0) if is_fragment(d) else reasm.add_head(d, 0)
            if whole is None:
                continue
            d = whole
        if Header.parse(d).destination == ident.address:
            out.append((dearmor(d, key_of(ident)), dest))
    return out


def known(node: Node, ident: Identity, src: tuple[str, int] = M_SRC, now: int = T0) -> None:
    """Make ident a validated peer via a HELLO (validation answered by the test), discard the replies."""
    node.receive(hello_from(ident), src, now)
    for i in node.take_validations():
        node.validated(i, True, now)
    node.take_datagrams()
    assert node.peer_identity(ident.address) == ident


def request(ident: Identity, nwid: int = NWID, **kw) -> bytes:
    return pkt(ident, Verb.NETWORK_CONFIG_REQUEST, NetworkConfigRequest(nwid, b"v=7\n", 0, 0).encode(), **kw)


def dropped(node: Node, reason: str) -> int:
    return node.stats().get(f"dropped.{reason}", 0)


# --- appendix C vectors ----------------------------------------------------------------------------------------

def test_real_libzt_hello_gets_the_ok_hello_a_real_node_accepted() -> None:
    node = Node(R, planet((ROOT, ROOT_EP)))
    src = ("10.203.9.1", 29994)
    node.receive(HELLO, src, T0)
    assert node.take_datagrams() == []  # waits for validation
    (ident,) = node.take_validations()
    assert ident == NODE and ident.locally_validate()
    node.validated(ident, True, T0 + 5)
    out = node.take_datagrams()
    replies = [(dearmor(d, KEY), dest) for d, dest in out]
    oks = [(p, dest) for p, dest in replies if p.verb == Verb.OK]
    assert len(oks) == 1 and oks[0][1] == src
    ok, _ = oks[0]
    assert ok.cipher == Cipher.POLY1305_SALSA2012 and ok.source == R.address and ok.destination == NODE.address
    # Byte for byte the payload the real node accepted (appendix C): in-re id, echoed timestamp, protocol 11,
    # version 1.8.4, observed 10.203.9.1/29994, no world update.
    assert ok.payload.hex() == v.OK_HELLO_PAYLOAD
    d = OkHello.decode(ok.payload)
    assert (d.in_re_packet_id.hex(), d.protocol_version, d.observed) == (
        "05d2d0b68d0af396", 11, InetAddress.from_str("10.203.9.1/29994"))
    # The HELLO came from a path we do not know: we HELLO it back so that its OK teaches us the path.
    hellos = [p for p, dest in replies if p.verb == Verb.HELLO and dest == src]
    assert len(hellos) == 1 and hellos[0].cipher == Cipher.POLY1305_NONE
    h = Hello.decode(hellos[0].payload, KEY, hellos[0].packet_id)
    assert (h.protocol_version, h.identity, h.planet_id, h.moons) == (11, R.public_only(), 0xC0FFEE, ())
    assert h.destination == InetAddress.from_str("10.203.9.1/29994")


def test_real_config_request_reaches_the_glue_and_the_real_chunk_goes_back() -> None:
    node = new_node()
    src = ("10.203.9.3", 29994)
    known(node, NODE2, src)
    node.receive(NCR, src, T0 + 100)
    (req,) = node.take_requests()
    assert isinstance(req, ConfigRequest)
    assert (req.source, req.identity, req.packet_id.hex(), req.path, req.hops, req.received) == (
        NODE2.address, NODE2, "5d827df291d9ed78", src, 0, T0 + 100)
    assert req.request.network_id == NWID and (req.request.revision, req.request.timestamp) == (0, 0)
    assert Dictionary.parse(req.request.metadata).keys() == ["v", "vend", "pv", "majv", "minv", "revv", "mr", "mc",
                                                             "mcr", "mt", "f", "revr"]
    node.take_datagrams()
    node.answer_config(req, [ConfigChunk.decode(CHUNK)], T0 + 200)
    (d, dest), = node.take_datagrams()
    assert dest == src and len(d) == 789  # as the real controller's OK on the wire
    p = dearmor(d, KEY2)
    ok = OkNetworkConfig.decode(p.payload)
    assert p.verb == Verb.OK and ok.in_re_packet_id.hex() == "5d827df291d9ed78" and ok.chunk.encode() == CHUNK
    node.answer_error(req, ErrorCode.NETWORK_ACCESS_DENIED, T0 + 300)
    (d, dest), = node.take_datagrams()
    err = Error.decode(dearmor(d, KEY2).payload)
    assert (err.in_re_verb, err.in_re_packet_id.hex(), err.code, err.network_id()) == (
        Verb.NETWORK_CONFIG_REQUEST, "5d827df291d9ed78", ErrorCode.NETWORK_ACCESS_DENIED, NWID)


# --- roots ------------------------------------------------------------------------------------------------------

def test_roots_hello_online_latency_and_offline() -> None:
    node = new_node()
    assert node.status(T0)["online"] is False
    node.tick(T0)
    (p, dest), = open_(node, ROOT)
    assert dest == ROOT_EP and p.verb == Verb.HELLO and p.cipher == Cipher.POLY1305_NONE
    h = Hello.decode(p.payload, key_of(ROOT), p.packet_id)
    assert h.identity == R.public_only() and h.destination == InetAddress.from_str("10.0.0.1/9993")
    assert (h.planet_id, h.planet_timestamp, h.moons, h.protocol_version) == (0xC0FFEE, 1, (), 11)
    node.tick(T0 + 1000)
    assert node.take_datagrams() == []  # no retry before ROOT_RETRY_MS
    # An OK whose in-re id we never sent is ignored; the right one makes us online and measures latency.
    node.receive(pkt(ROOT, Verb.OK, OkHello(new_packet_id(), 0, 12, 1, 8, 4).encode()), ROOT_EP, T0 + 1001)
    assert not node.status(T0 + 1001)["online"]
    ok = OkHello(p.packet_id, h.timestamp, 12, 1, 8, 4, InetAddress.from_str("10.0.0.9/9993"))
    node.receive(pkt(ROOT, Verb.OK, ok.encode()), ROOT_EP, T0 + 1030)
    st = node.status(T0 + 1030)
    assert st["online"] and st["address"] == "8eb1af42a4"
    assert st["roots"] == [{"address": f"{ROOT.address:010x}", "endpoints": ["10.0.0.1/9993"], "online": True,
                            "last_heard_ms": 0, "latency_ms": 1030}]
    # Heard: HELLO every 30 s, ECHO on the path when nothing went there for 14 s.
    node.tick(T0 + 16_000)
    (p, dest), = open_(node, ROOT)
    assert p.verb == Verb.ECHO and dest == ROOT_EP
    node.tick(T0 + 31_000)
    assert [p.verb for p, _ in open_(node, ROOT)] == [Verb.HELLO]
    assert not node.status(T0 + 62_000)["online"]


def test_root_hello_to_us_is_answered_without_validation() -> None:
    node = new_node()
    node.receive(hello_from(ROOT), ROOT_EP, T0)
    assert node.take_validations() == []
    verbs = [(p.verb, dest) for p, dest in open_(node, ROOT)]
    assert (Verb.OK, ROOT_EP) in verbs and (Verb.HELLO, ROOT_EP) in verbs


def test_two_nodes_bring_each_other_online() -> None:
    a_ep, b_ep = ("192.168.7.1", 9993), ("192.168.7.2", 9993)
    a = Node(R, planet((ROOT, b_ep)))
    b = Node(ROOT, planet((R, a_ep)))
    nodes = {a_ep: a, b_ep: b}
    now = T0
    for _ in range(6):
        for n in (a, b):
            n.tick(now)
        for _ in range(10):  # shuttle until quiet
            moved = False
            for src_ep, n in nodes.items():
                for ident in n.take_validations():
                    n.validated(ident, ident.locally_validate(), now)
                for d, dest in n.take_datagrams():
                    nodes[dest].receive(d, src_ep, now + 3)
                    moved = True
            if not moved:
                break
        now += 2_500
    assert a.status(now)["online"] and b.status(now)["online"]
    assert a.peer_identity(ROOT.address) == ROOT.public_only() and b.peer_identity(R.address) == R.public_only()
    assert 0 <= a.status(now)["roots"][0]["latency_ms"] <= 3
    for n in (a, b):
        assert not any(k.startswith("dropped.") for k in n.stats()), n.stats()


# --- peers: validation, WHOIS, identity -------------------------------------------------------------------------

def test_validation_cache_no_second_validation() -> None:
    node = new_node(max_peers=2)  # the root plus one member
    known(node, NODE)
    known(node, NODE2)  # evicts NODE
    assert node.peer_identity(NODE.address) is None and node.stats()["peers_evicted"] == 1
    node.receive(hello_from(NODE), M_SRC, T0 + 10)
    assert node.take_validations() == []  # the verdict is cached: answered at once
    assert [p.verb for p, _ in open_(node, NODE)][:1] == [Verb.OK]
    assert node.stats()["validations"] == 2


def test_failed_validation_drops_and_is_remembered() -> None:
    node = new_node()
    node.receive(hello_from(NODE), M_SRC, T0)
    (ident,) = node.take_validations()
    node.validated(ident, False, T0)
    assert node.take_datagrams() == [] and dropped(node, "invalid_identity") == 1
    node.receive(hello_from(NODE), M_SRC, T0 + 10)
    assert node.take_validations() == [] and dropped(node, "invalid_identity") == 2


def test_validation_rate_and_queue_bounds() -> None:
    node = new_node(validation_burst=2, validation_rate=1.0)
    for ident in (NODE, NODE2, M1):
        node.receive(hello_from(ident), M_SRC, T0)
    assert len(node.take_validations()) == 2 and dropped(node, "validation_rate") == 1
    node.receive(hello_from(M1), M_SRC, T0 + 1000)  # one token back after a second
    assert len(node.take_validations()) == 1
    node2 = new_node(max_validations=1)
    node2.receive(hello_from(NODE), M_SRC, T0)
    node2.receive(hello_from(NODE2), M_SRC, T0)
    assert len(node2.take_validations()) == 1 and dropped(node2, "validation_queue_full") == 1
    node2.tick(T0 + 30_000)  # the answer never came
    assert dropped(node2, "validation_timeout") == 1


def test_relayed_newcomers_are_charged_per_sender_not_to_the_roots_ip() -> None:
    # Every member reaching us through the root arrives from the root's IP: a bucket per IP alone would let
    # the first two through and starve the third. Direct sources still share their IP's bucket.
    node = new_node(validation_burst=2, validation_rate=1.0)
    node.tick(T0)
    node.take_datagrams()
    for ident in (NODE, NODE2, M1):
        node.receive(request(ident, hops=1), ROOT_EP, T0 + 1)
    whois = [Whois.decode(p.payload).addresses[0] for p, _ in open_(node, ROOT) if p.verb == Verb.WHOIS]
    assert sorted(whois) == sorted([NODE.address, NODE2.address, M1.address]) and dropped(node, "whois_rate") == 0
    for ident in (NODE, NODE2, M1):
        node.receive(hello_from(ident), M_SRC, T0 + 2)
    assert dropped(node, "validation_rate") == 1


def test_hello_with_foreign_identity_or_bad_mac() -> None:
    node = new_node()
    known(node, NODE)
    impostor = Identity(NODE.address, M1.public_key)
    node.receive(pkt(impostor, Verb.HELLO, Hello(12, 1, 8, 4, 1, impostor).encode(), cipher=Cipher.POLY1305_NONE),
                 M_SRC, T0)
    assert dropped(node, "identity_mismatch") == 1 and node.take_datagrams() == []
    # Unknown address, header source != identity address.
    bad = bytearray(hello_from(M1))
    bad[13:18] = M2.address.to_bytes(5, "big")
    node.receive(bytes(bad), M_SRC, T0)
    assert dropped(node, "bad_hello") == 1
    # Known and unknown peers: a flipped byte fails the MAC.
    for d in (pkt(NODE, Verb.ECHO, b"x"), hello_from(M2)):
        broken = bytearray(d)
        broken[-1] ^= 1
        node.receive(bytes(broken), M_SRC, T0)
    assert dropped(node, "bad_mac") == 2 and node.take_validations() == [] and node.take_datagrams() == []


def test_whois_parks_relayed_request_and_reply_goes_through_the_root() -> None:
    node = new_node()
    node.tick(T0)
    node.take_datagrams()
    # M1 is unknown; its request arrives relayed by the root (hops 1).
    node.receive(request(M1, hops=1), ROOT_EP, T0 + 10)
    node.receive(pkt(M1, Verb.ECHO, b"second", hops=1), ROOT_EP, T0 + 11)
    assert node.take_requests() == []
    (w, dest), = open_(node, ROOT)
    assert dest == ROOT_EP and w.verb == Verb.WHOIS and Whois.decode(w.payload).addresses == (M1.address,)
    node.tick(T0 + 510)
    (w2, _), = open_(node, ROOT)
    assert w2.verb == Verb.WHOIS and w2.packet_id != w.packet_id
    # OK(WHOIS) from a member, or in re an id we never sent, is ignored.
    known(node, NODE)
    node.receive(pkt(NODE, Verb.OK, OkWhois(w.packet_id, (M1,)).encode()), M_SRC, T0 + 520)
    node.receive(pkt(ROOT, Verb.OK, OkWhois(new_packet_id(), (M1,)).encode()), ROOT_EP, T0 + 521)
    # An answer naming someone else is refused.
    node.receive(pkt(ROOT, Verb.OK, OkWhois(w2.packet_id, (M2,)).encode()), ROOT_EP, T0 + 522)
    assert node.take_validations() == [] and dropped(node, "whois_mismatch") == 1
    node.receive(pkt(ROOT, Verb.OK, OkWhois(w.packet_id, (M1,)).encode()), ROOT_EP, T0 + 530)
    (ident,) = node.take_validations()
    assert ident == M1
    node.validated(ident, True, T0 + 700)
    (req,) = node.take_requests()
    assert (req.source, req.path, req.hops, req.received) == (M1.address, None, 1, T0 + 10)
    # The parked ECHO was processed too, after the request; its OK goes via the root (no path to M1).
    (echo_ok, dest), = open_(node, M1)
    assert dest == ROOT_EP and Ok.decode(echo_ok.payload).body == b"second"
    node.answer_config(req, chunk_config(R, NWID, b"v=7\nnwid=x\n", 77), T0 + 800)
    (ok, dest), = open_(node, M1)
    assert dest == ROOT_EP and ok.destination == M1.address and ok.verb == Verb.OK
    assert OkNetworkConfig.decode(ok.payload).in_re_packet_id == req.packet_id
    node.tick(T0 + 6000)  # no WHOIS retries once answered
    assert [p for p, _ in open_(node, ROOT) if p.verb == Verb.WHOIS] == []


def test_whois_timeout_and_parking_bounds() -> None:
    node = new_node(max_parked_per_source=2, whois_timeout_ms=5000)
    node.tick(T0)
    node.take_datagrams()
    for i in range(3):
        node.receive(pkt(M1, Verb.ECHO, bytes([i])), ROOT_EP, T0 + i)
    assert dropped(node, "parked_full") == 1
    for t in range(T0 + 500, T0 + 5001, 500):
        node.tick(t)
    whois = [p for p, _ in open_(node, ROOT) if p.verb == Verb.WHOIS]
    assert len(whois) >= 9  # first + a retry every 500 ms
    assert dropped(node, "whois_timeout") == 2
    node.tick(T0 + 6000)
    assert [p for p, _ in open_(node, ROOT) if p.verb == Verb.WHOIS] == []


# --- packets: replay, ciphers, destinations, fragments ----------------------------------------------------------

def test_replay_echo_cipher0_and_ignored_verbs() -> None:
    node = new_node()
    known(node, NODE)
    echo = pkt(NODE, Verb.ECHO, b"ping")
    node.receive(echo, M_SRC, T0)
    node.receive(echo, M_SRC, T0 + 1)
    replies = open_(node, NODE)
    oks = [p for p, dest in replies if p.verb == Verb.OK]
    assert len(oks) == 1 and Ok.decode(oks[0].payload) == Echo(b"ping").reply(echo[:8])
    assert dropped(node, "replay") == 1
    node.receive(pkt(NODE, Verb.ECHO, b"clear", cipher=Cipher.POLY1305_NONE), M_SRC, T0 + 2)
    assert dropped(node, "cipher0") == 1
    node.receive(pkt(NODE, Verb.ERROR, Error(Verb.HELLO, new_packet_id(), 1).encode()), M_SRC, T0 + 3)
    node.receive(pkt(NODE, Verb.NOP, b""), M_SRC, T0 + 4)
    node.receive(pkt(NODE, 0x1F, b"future verb"), M_SRC, T0 + 5)
    node.receive(pkt(NODE, Verb.WHOIS, Whois((M1.address,)).encode()), M_SRC, T0 + 6)
    st = node.stats()
    assert st["rx.error"] == 1 and st["rx.nop"] == 1 and st["rx.unknown"] == 1 and st["ignored"] == 4
    assert [p.verb for p, _ in open_(node, NODE)] == []
    # A config ack (OK in re ECHO, an id we never sent) is ignored.
    node.receive(pkt(NODE, Verb.OK, Ok(Verb.ECHO, new_packet_id(), bytes(16)).encode()), M_SRC, T0 + 7)
    assert node.stats()["ok_unexpected"] == 1


def test_not_for_us_from_self_and_short() -> None:
    node = new_node()
    node.receive(pkt(NODE, Verb.ECHO, b"", dest=M1.address), M_SRC, T0)
    frag = split(armor(Packet(new_packet_id(), M1.address, NODE.address, Verb.ECHO, bytes(3000)), KEY))[1]
    node.receive(frag, M_SRC, T0)
    assert dropped(node, "not_for_us") == 2
    node.receive(armor(Packet(new_packet_id(), R.address, R.address, Verb.ECHO, b""), KEY), M_SRC, T0)
    assert dropped(node, "from_self") == 1
    node.receive(b"\x00" * 13, M_SRC, T0)
    assert dropped(node, "short") == 1 and node.take_datagrams() == []


def test_fragments_in_any_order_and_large_replies_fragmented() -> None:
    node = new_node()
    known(node, NODE)
    node.note_authorized(NWID, NODE.address, T0)
    entries = tuple(MulticastSubscription(NWID, 0xFFFFFFFFFFFF, i) for i in range(100))  # 1800 bytes
    pieces = split(pkt(NODE, Verb.MULTICAST_LIKE, MulticastLike(entries).encode()))
    assert len(pieces) == 2
    for d in reversed(pieces):
        node.receive(d, M_SRC, T0 + 1)
    assert node.stats()["rx.multicast_like"] == 1
    # A reply over the MTU leaves as a head and fragments.
    big = ConfigChunk.make(R, NWID, b"x" * 3000, 5, 3000, 0)
    node.receive(request(NODE), M_SRC, T0 + 2)
    (req,) = node.take_requests()
    node.take_datagrams()
    node.answer_config(req, [big], T0 + 3)
    out = node.take_datagrams()
    assert len(out) == 3 and all(len(d) <= 1432 for d, _ in out)
    node.answer_config(req, [big], T0 + 4)
    (ok, _), = open_(node, NODE)
    assert OkNetworkConfig.decode(ok.payload).chunk == big


# --- network config requests ------------------------------------------------------------------------------------

def test_foreign_network_request_rate_and_queue_bound() -> None:
    node = new_node(max_requests_queued=2)
    known(node, NODE)
    node.receive(request(NODE, nwid=0x1122334455000001), M_SRC, T0)
    assert dropped(node, "foreign_network") == 1 and node.take_requests() == []
    node.receive(request(NODE), M_SRC, T0 + 1)
    node.receive(request(NODE), M_SRC, T0 + 900)
    assert dropped(node, "request_rate") == 1
    node.receive(request(NODE), M_SRC, T0 + 1001)
    node.receive(request(NODE, nwid=NWID + 1), M_SRC, T0 + 1002)
    assert dropped(node, "request_queue_full") == 1
    reqs = node.take_requests()
    assert [r.received for r in reqs] == [T0 + 1, T0 + 1001]
    node.count("write_rate")
    assert dropped(node, "write_rate") == 1 and node.stats()["requests"] == 2


def test_path_learning_then_push_goes_to_the_learned_path() -> None:
    node = new_node()
    known(node, NODE)
    node.receive(request(NODE), M_SRC, T0 + 1001)
    (req,) = node.take_requests()
    # The request came from a path we do not know: we HELLO it.
    hellos = [p for p, dest in open_(node, NODE) if p.verb == Verb.HELLO and dest == M_SRC]
    assert len(hellos) == 1
    node.receive(request(NODE, nwid=NWID + 1), M_SRC, T0 + 1002)
    assert [p for p, _ in open_(node, NODE) if p.verb == Verb.HELLO] == []  # at most one per second
    # Before the OK: a push goes via the root; after it, to the learned path.
    chunks = chunk_config(R, NWID, b"v=7\n", 9)
    assert node.push_config(NODE.address, chunks, T0 + 3)
    (p, dest), = open_(node, NODE)
    assert dest == ROOT_EP and p.verb == Verb.NETWORK_CONFIG and ConfigChunk.decode(p.payload) == chunks[0]
    node.receive(pkt(NODE, Verb.OK, OkHello(hellos[0].packet_id, 0, 12, 1, 8, 4).encode()), M_SRC, T0 + 40)
    assert node.push_config(NODE.address, chunks, T0 + 50)
    (p, dest), = open_(node, NODE)
    assert dest == M_SRC
    assert node.push_credentials(NODE.address, b"\x00" + bytes(8), T0 + 51)
    (p, dest), = open_(node, NODE)
    assert p.verb == Verb.NETWORK_CREDENTIALS and dest == M_SRC
    assert not node.push_config(M2.address, chunks, T0) and not node.push_credentials(M2.address, b"", T0)


def test_redirect_hands_a_member_to_another_endpoint_of_the_same_identity() -> None:
    from hactl.zt.verbs import PUSH_CLUSTER_REDIRECT, PushDirectPaths
    node = new_node()
    known(node, NODE)
    assert node.redirect(NODE.address, ("10.0.0.9", 9995), T0 + 10)
    (p, dest), = open_(node, NODE)
    assert p.verb == Verb.PUSH_DIRECT_PATHS and dest == ROOT_EP  # (no learned path yet: through the root)
    assert PushDirectPaths.decode(p.payload).paths == ((PUSH_CLUSTER_REDIRECT, InetAddress.from_str("10.0.0.9/9995")),)
    assert node.stats()["redirected"] == 1
    assert not node.redirect(M2.address, ("10.0.0.9", 9995), T0 + 11)  # unknown member: nothing sent
    node.families = {4}  # the endpoint is bound to IPv4 only
    assert not node.redirect(NODE.address, ("fd00::9", 9995), T0 + 12)
    assert node.take_datagrams() == []


def test_rendezvous_only_from_root_for_known_peers() -> None:
    node = new_node()
    known(node, NODE)
    rv = Rendezvous(NODE.address, InetAddress.from_str("10.0.0.50/12345")).encode()
    node.receive(pkt(NODE, Verb.RENDEZVOUS, rv), M_SRC, T0 + 1)
    assert dropped(node, "rendezvous_not_from_root") == 1
    node.take_datagrams()
    node.receive(pkt(ROOT, Verb.RENDEZVOUS, rv), ROOT_EP, T0 + 2)
    assert [(p.verb, dest) for p, dest in open_(node, NODE)] == [(Verb.HELLO, ("10.0.0.50", 12345))]
    node.receive(pkt(ROOT, Verb.RENDEZVOUS, Rendezvous(M2.address, InetAddress.from_str("10.0.0.5/1")).encode()),
                 ROOT_EP, T0 + 3)
    assert node.stats()["rendezvous_unknown_peer"] == 1


# --- multicast --------------------------------------------------------------------------------------------------

def gather(ident: Identity, group: tuple[int, int, int] = (NWID, 0xFFFFFFFFFFFF, 0x0A000001),
           limit: int = 32) -> bytes:
    return pkt(ident, Verb.MULTICAST_GATHER, MulticastGather(group[0], 0, group[1], group[2], limit).encode())


def test_multicast_like_and_gather_need_authorization() -> None:
    node = new_node()
    for ident, ep in ((NODE, M_SRC), (NODE2, ("10.0.0.8", 9993)), (M1, ("10.0.0.9", 9993))):
        known(node, ident, ep)
    like = MulticastLike((MulticastSubscription(NWID, 0xFFFFFFFFFFFF, 0x0A000001),)).encode()
    node.receive(pkt(NODE, Verb.MULTICAST_LIKE, like), M_SRC, T0)
    assert dropped(node, "like_unauthorized") == 1
    node.note_authorized(NWID, NODE.address, T0)
    node.receive(pkt(NODE, Verb.MULTICAST_LIKE, like), M_SRC, T0 + 1)
    # NODE2 is not authorized: no answer; once it is, it learns NODE.
    node.receive(gather(NODE2), ("10.0.0.8", 9993), T0 + 2)
    assert dropped(node, "gather_unauthorized") == 1
    node.take_datagrams()
    node.answer_config(ConfigRequest(NODE2.address, NODE2, new_packet_id(), NetworkConfigRequest(NWID), None, 0,
                                     T0), [], T0 + 3)  # answering a request authorizes too
    g = gather(NODE2)
    node.receive(g, ("10.0.0.8", 9993), T0 + 4)
    (p, dest), = open_(node, NODE2)
    ans = OkGather.decode(p.payload)
    assert dest == ("10.0.0.8", 9993) and ans.in_re_packet_id == g[:8]
    assert (ans.network_id, ans.adi, ans.total, ans.addresses) == (NWID, 0x0A000001, 1, (NODE.address,))
    # The requester is never named, and an empty answer is not sent.
    node.receive(gather(NODE), M_SRC, T0 + 5)
    assert open_(node, NODE) == []
    node.receive(gather(NODE2, (NWID, 0xFFFFFFFFFFFF, 0)), ("10.0.0.8", 9993), T0 + 6)
    assert open_(node, NODE2) == []
    # Authorization lapses after 180 s; subscriptions after 600 s.
    node.tick(T0 + 180_010)
    node.receive(gather(NODE2), ("10.0.0.8", 9993), T0 + 180_010)
    assert dropped(node, "gather_unauthorized") == 2
    node.note_authorized(NWID, NODE2.address, T0 + 600_010)
    node.tick(T0 + 600_010)
    node.receive(gather(NODE2), ("10.0.0.8", 9993), T0 + 600_011)
    assert [p for p, _ in open_(node, NODE2) if p.verb == Verb.OK] == []
