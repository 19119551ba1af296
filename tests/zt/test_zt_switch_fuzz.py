"""The Switch (controller Node + Root) under hostile input: arbitrary bytes and mutations of valid packets (HELLOs
to both identities, WHOIS, ECHO, MULTICAST_LIKE, relayed packets and fragments between two attached members).
It must never raise nor count an internal error; garbage from an address that is no member's learned path is
never relayed; whatever is relayed goes to a member's learned path with at most 3 hops."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from hactl.zt.fragment import Fragment, is_fragment
from hactl.zt.packet import Header, Packet, Verb, armor, hops_of, new_packet_id
from hactl.zt.switch import Switch
from hactl.zt.verbs import Echo, MulticastLike, MulticastSubscription, OkHello, Whois
from tests.zt.test_zt_node import NODE, NODE2, NWID, R, ROOT
from tests.zt.test_zt_node_fuzz import mutate, ops
from tests.zt.test_zt_switch import A_EP, B_EP, T0, hello, new_switch, opened, pkt

STRANGER = ("172.31.0.9", 4444)
MEMBER_PATHS = {A_EP, B_EP}


def attach(sw: Switch) -> None:
    for ident, ep in ((NODE, A_EP), (NODE2, B_EP)):
        sw.receive(hello(ident, ROOT), ep, T0)
        for i in sw.take_validations():
            sw.validated(i, True, T0)
        (h,) = [p for _, p, dest in opened(sw.take_datagrams(), ident) if p.verb == Verb.HELLO and dest == ep]
        sw.receive(pkt(ident, ROOT, Verb.OK, OkHello(h.packet_id, 0, 11, 1, 8, 4).encode()), ep, T0 + 1)
        sw.take_datagrams()


def opaque(src: int, dst: int, hops: int = 0) -> bytes:
    return armor(Packet(new_packet_id(), dst, src, Verb.FRAME, b"f" * 60, hops=hops), bytes(48))


VALID = [
    hello(NODE, R), hello(NODE, ROOT), hello(NODE2, R),
    pkt(NODE, ROOT, Verb.WHOIS, Whois((NODE2.address, R.address)).encode()),
    pkt(NODE, ROOT, Verb.ECHO, Echo(b"e").encode()),
    pkt(NODE, ROOT, Verb.MULTICAST_LIKE, MulticastLike((MulticastSubscription(NWID, 0xFFFFFFFFFFFF, 1),)).encode()),
    opaque(NODE.address, NODE2.address), opaque(NODE.address, NODE2.address, hops=2),
    opaque(NODE.address, 0x1122334455), opaque(NODE.address, R.address),
    Fragment(new_packet_id(), NODE2.address, 3, 1, 0, b"q" * 50).to_bytes(),
]
garbage = st.binary(max_size=1600)
mutated = st.builds(lambda i, o: mutate(VALID[i % len(VALID)], o), st.integers(0, 100), ops)


def feed(datagrams: list[bytes], src: tuple[str, int]) -> tuple[Switch, list[tuple[bytes, tuple[str, int]]]]:
    sw = new_switch()
    attach(sw)
    now = T0 + 10
    out = []
    for d in datagrams:
        sw.receive(d, src, now)
        sw.tick(now)
        for ident in sw.take_validations():
            sw.validated(ident, False, now)  # nothing fresh is genuine here
        out += sw.take_datagrams()
        now += 300
    for name, stats in sw.stats().items():
        assert "dropped.internal_error" not in stats, (name, stats)
    return sw, out


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(garbage, mutated), max_size=6))
def test_nothing_from_a_stranger_is_relayed(datagrams: list[bytes]) -> None:
    sw, out = feed(datagrams, STRANGER)
    s = sw.root.stats()
    assert "relayed" not in s and "relayed.to_root" not in s
    relayed_like = {d[:13] for d in datagrams if len(d) >= 13}
    for d, _ in out:
        assert is_fragment(d) or Header.parse(d).source in (R.address, ROOT.address) or d[:13] not in relayed_like


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated, garbage), min_size=1, max_size=6))
def test_relays_from_a_member_go_only_to_members(datagrams: list[bytes]) -> None:
    sw, out = feed(datagrams, A_EP)
    for d, dest in out:
        assert len(d) <= 1432
        if is_fragment(d) or Header.parse(d).source not in (R.address, ROOT.address):
            assert dest in MEMBER_PATHS and hops_of(d) <= 3, (d.hex(), dest)
