"""Node.receive under hostile input: arbitrary bytes and mutations of valid packets (appendix C's real HELLO and
NETWORK_CONFIG_REQUEST, hand-built ECHO, MULTICAST_LIKE, OK(HELLO), WHOIS answers, fragments). It must never
raise, never count an internal error, never queue a request or a validation that no genuine packet asked for,
and its counters only grow."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from hactl.zt.fragment import split
from hactl.zt.node import Node
from hactl.zt.packet import Verb, new_packet_id
from hactl.zt.verbs import MulticastLike, MulticastSubscription, OkHello, OkWhois
from tests.zt.test_zt_node import (HELLO, M1, M_SRC, NCR, NODE, NODE2, NWID, ROOT, ROOT_EP, T0, gather, hello_from,
                                   known, new_node, pkt, request)

NCR_ID = NCR[:8]


def setup() -> tuple[Node, list[bytes]]:
    node = new_node()
    known(node, NODE2, ("10.203.9.3", 29994))
    node.note_authorized(NWID, NODE2.address, T0)
    big_like = pkt(NODE2, Verb.MULTICAST_LIKE, MulticastLike(tuple(
        MulticastSubscription(NWID, 0xFFFFFFFFFFFF, i) for i in range(100))).encode())
    valid = [HELLO, NCR, hello_from(M1), pkt(NODE2, Verb.ECHO, b"abc"), gather(NODE2),
             pkt(ROOT, Verb.OK, OkHello(new_packet_id(), 0, 12, 1, 8, 4).encode()),
             pkt(ROOT, Verb.OK, OkWhois(new_packet_id(), (M1,)).encode()),
             request(M1, hops=1), *split(big_like)]
    return node, valid


_NODE, VALID = setup()
GENUINE_REQUESTS = {NCR_ID, VALID[7][:8]}
GENUINE_IDENTITIES = {NODE, M1}


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, pos, val in ops:
        if not out:
            break
        pos %= len(out)
        if kind == 0:
            out[pos] ^= 1 << (val % 8)
        elif kind == 1:
            out[pos] = val
        elif kind == 2:
            del out[pos:]
        else:
            out[pos:pos] = bytes([val]) * (1 + val % 7)
    return bytes(out)


ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20_000), st.integers(0, 255)), min_size=1, max_size=4)
garbage = st.binary(max_size=1600)
mutated = st.builds(lambda i, o: mutate(VALID[i % len(VALID)], o), st.integers(0, 100), ops)


def feed(datagrams: list[bytes], src: tuple[str, int] = M_SRC) -> Node:
    node, _ = setup()
    now = T0 + 10
    before = node.stats()
    for i, d in enumerate(datagrams):
        node.receive(d, ROOT_EP if i % 2 else src, now)
        node.tick(now)
        after = node.stats()
        assert all(after.get(k, 0) >= n for k, n in before.items()), (before, after)
        before = after
        now += 700
    assert "dropped.internal_error" not in node.stats()
    return node


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(garbage, max_size=6))
def test_garbage_never_raises_nor_queues(datagrams: list[bytes]) -> None:
    node = feed(datagrams)
    assert node.take_requests() == [] and node.take_validations() == []


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(mutated, garbage), min_size=1, max_size=6))
def test_mutated_valid_packets(datagrams: list[bytes]) -> None:
    node = feed(datagrams)
    # A mutation that only touches the hop bits leaves a genuine packet: that one may pass, nothing else.
    assert {r.packet_id for r in node.take_requests()} <= GENUINE_REQUESTS
    assert set(node.take_validations()) <= GENUINE_IDENTITIES
    for d, _ in node.take_datagrams():
        assert len(d) <= 1432


def test_the_mutations_reach_past_the_mac() -> None:
    """The hop bits are outside the MAC (relays change them): such a mutation is still the genuine request."""
    node = feed([mutate(NCR, [(1, 18, NCR[18] | 2)])], src=("10.203.9.3", 29994))
    (req,) = node.take_requests()
    assert req.packet_id == NCR_ID and req.hops == 2 and req.path is None
