"""The Switch: one socket, the controller identity (appendix C's R, a Node) and this machine's root identity
(ROOT, a Root). Dispatch by destination, shared validation, the root answering WHOIS for the controller, the
controller reaching the local root without touching the network, and the Endpoint driving a Switch over UDP."""
from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

from hactl.zt.endpoint import Endpoint
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.node import Node
from hactl.zt.packet import Cipher, Header, Packet, Verb, armor, dearmor, new_packet_id
from hactl.zt.root import Root
from hactl.zt.switch import Switch, destination_of
from hactl.zt.verbs import Hello, OkWhois, Whois
from hactl.zt.world import Root as WorldRoot, World, WorldType
from tests.zt.test_zt_node import NODE, NODE2, R, ROOT

SELF_EP = ("10.0.0.1", 9993)  # this machine's endpoint, as the planet lists it
A_EP = ("192.168.1.10", 9993)
B_EP = ("192.168.1.20", 9993)
T0 = 1_000_000


def planet(ep: tuple[str, int] = SELF_EP) -> World:
    return World.make(WorldType.PLANET, 0xC0FFEE, 10, R.public_key,
                      [WorldRoot(ROOT.public_only(), (InetAddress(IPv4Address(ep[0]), ep[1]),))],
                      sign_with=R.private_key or b"")


def new_switch(ep: tuple[str, int] = SELF_EP) -> Switch:
    w = planet(ep)
    return Switch(Root(ROOT, w), Node(R, w))


def key(local: Identity, member: Identity) -> bytes:
    return local.agree(member)


def pkt(member: Identity, local: Identity, verb: int, payload: bytes, cipher: int = Cipher.POLY1305_SALSA2012,
        pid: bytes | None = None) -> bytes:
    return armor(Packet(pid or new_packet_id(), local.address, member.address, verb, payload, cipher=cipher),
                 key(local, member))


def hello(member: Identity, local: Identity) -> bytes:
    pid = new_packet_id()
    h = Hello(11, 1, 8, 4, 42, member.public_only(), InetAddress(IPv4Address(SELF_EP[0]), SELF_EP[1]), 0xC0FFEE,
              10, moons=())
    return pkt(member, local, Verb.HELLO, h.encode(key(local, member), pid), Cipher.POLY1305_NONE, pid)


def opened(out: list[tuple[bytes, tuple[str, int]]], member: Identity) -> list[tuple[int, Packet, tuple]]:
    """(sender, packet, destination) of the datagrams for member, dearmored with the sender's key."""
    res = []
    for d, dest in out:
        h = Header.parse(d)
        if h.destination == member.address:
            local = R if h.source == R.address else ROOT
            res.append((h.source, dearmor(d, key(local, member)), dest))
    return res


def test_dispatch_by_destination_and_one_validation_for_both() -> None:
    sw = new_switch()
    sw.receive(hello(NODE, R), A_EP, T0)
    sw.receive(hello(NODE, ROOT), A_EP, T0)
    (ident,) = sw.take_validations()  # asked by both, validated once
    sw.validated(ident, True, T0)
    oks = [(src, p) for src, p, dest in opened(sw.take_datagrams(), NODE) if p.verb == Verb.OK and dest == A_EP]
    assert sorted(src for src, _ in oks) == sorted([R.address, ROOT.address])
    # verdict shared: a new member validated through one identity is not re-hashed for the other
    sw.receive(hello(NODE2, ROOT), B_EP, T0 + 1)
    (ident,) = sw.take_validations()
    sw.validated(ident, True, T0 + 1)
    sw.receive(hello(NODE2, R), B_EP, T0 + 2)
    assert sw.take_validations() == []
    assert any(src == R.address and p.verb == Verb.OK for src, p, _ in opened(sw.take_datagrams(), NODE2))
    assert destination_of(b"short") is None


def test_a_handed_over_members_packets_for_the_controller_go_on_to_its_node() -> None:
    """After the glue hands NODE to another node (sw.handoff), NODE's own packets for the controller that still
    arrive here are forwarded there with one more hop, untouched; anything else is handled as before."""
    other = ("10.0.0.2", 9993)
    sw = new_switch()
    sw.handoff[NODE.address] = other
    d = pkt(NODE, R, Verb.ECHO, b"ping")
    sw.receive(d, A_EP, T0)
    (out, dest), = sw.take_datagrams()
    assert dest == other and Header.parse(out).hops == 1 and out[:18] == d[:18] and out[19:] == d[19:]
    assert sw.root.stats()["handed_on"] == 1
    # already forwarded once (hops 1), or coming from that node itself: ours to answer, never bounced
    sw.receive(out, other, T0 + 1)
    sw.receive(d, other, T0 + 2)
    assert sw.root.stats()["handed_on"] == 1
    # another member, and the member's packets for the root: handled here
    sw.receive(pkt(NODE2, R, Verb.ECHO, b"ping"), B_EP, T0 + 3)
    sw.receive(pkt(NODE, ROOT, Verb.ECHO, b"ping"), A_EP, T0 + 4)
    assert sw.root.stats()["handed_on"] == 1
    assert all(dest != other for _, dest in sw.take_datagrams())


def test_root_answers_whois_for_the_controller() -> None:
    sw = new_switch()
    sw.receive(hello(NODE, ROOT), A_EP, T0)
    for i in sw.take_validations():
        sw.validated(i, True, T0)
    sw.take_datagrams()
    sw.receive(pkt(NODE, ROOT, Verb.WHOIS, Whois((R.address,)).encode()), A_EP, T0 + 1)
    (src, reply, dest), = opened(sw.take_datagrams(), NODE)
    assert src == ROOT.address and dest == A_EP
    assert OkWhois.decode(reply.payload).identities == (R.public_only(),)


def test_controller_online_through_the_local_root_without_the_network() -> None:
    sw = new_switch()
    now = T0
    for _ in range(3):
        sw.tick(now)
        out = sw.take_datagrams()
        assert [dest for _, dest in out if dest == SELF_EP] == []  # nothing to ourselves went out
        now += 1000
    assert sw.controller is not None and sw.controller.online(now)
    assert SELF_EP in sw.root.peer_paths(R.address)  # the root can relay to the controller
    assert sw.root.stats().get("validations", 0) == 0  # our own identity is not hashed
    assert sw.take_validations() == []
    assert not any(k.startswith("dropped.") for k in sw.root.stats()), sw.root.stats()


def test_set_planet_changes_what_the_root_serves_and_its_self_endpoints() -> None:
    sw = new_switch()
    newer = World.make(WorldType.PLANET, 0xC0FFEE, 20, R.public_key,
                       [WorldRoot(ROOT.public_only(), (InetAddress(IPv4Address("10.0.0.9"), 9993),))],
                       sign_with=R.private_key or b"")
    sw.set_planet(newer)
    assert sw.root.planet == newer and sw._planet_endpoints == {("10.0.0.9", 9993)}


async def _endpoint_scenario() -> None:
    loop = asyncio.get_running_loop()
    sw = new_switch(("127.0.0.1", 1))  # the planet's endpoint is not ours here: nothing is looped
    ep = Endpoint(sw, ("127.0.0.1", 0), on_request=lambda r: None, tick_ms=100)
    await ep.start()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0), family=socket.AF_INET)
    try:
        transport.sendto(hello(NODE, R), ep.local_address)
        transport.sendto(hello(NODE, ROOT), ep.local_address)
        answered = set()
        while len(answered) < 2:
            d = await asyncio.wait_for(got.get(), 10)
            h = Header.parse(d)
            local = R if h.source == R.address else ROOT
            if dearmor(d, key(local, NODE)).verb == Verb.OK:
                answered.add(h.source)
        assert answered == {R.address, ROOT.address}
    finally:
        transport.close()
        await ep.stop()


def test_endpoint_drives_a_switch() -> None:
    asyncio.run(_endpoint_scenario())


def test_node_set_planet_gives_the_controller_new_roots() -> None:
    sw = new_switch()
    other = Identity.from_string("3a46f1bf30:0:76e66fab33e28549a62ee2064d1843273c2c300ba45c3f20bef02dbad225723bb59a9bb4b"
                                 "13535730961aeecf5a163ace477cceb0727025b99ac14a5166a09a3")
    w = World.make(WorldType.PLANET, 0xC0FFEE, 30, R.public_key,
                   [WorldRoot(ROOT.public_only(), (InetAddress(IPv4Address(SELF_EP[0]), SELF_EP[1]),)),
                    WorldRoot(other, (InetAddress(IPv4Address("10.0.0.5"), 9993),))],
                   sign_with=R.private_key or b"")
    sw.set_planet(w)
    assert sw.controller is not None
    assert len(sw.controller.status(T0)["roots"]) == 1  # the switch leaves the controller's upstreams alone
    sw.controller.set_planet(w)
    assert [r["address"] for r in sw.controller.status(T0)["roots"]] == [f"{ROOT.address:010x}", "3a46f1bf30"]
    assert sw.root.peer_roots == {other.address}
    sw.tick(T0)
    assert ("10.0.0.5", 9993) in [dest for _, dest in sw.take_datagrams()]  # both HELLO the new root
