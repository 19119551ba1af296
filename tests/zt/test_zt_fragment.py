"""Fragments and reassembly: layout per the brief (§3.7), bounds, explicit time, and fuzzing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.errors import ProtocolError
from hactl.zt.fragment import MAX_PENDING, Fragment, Reassembler, is_fragment, split
from hactl.zt.packet import PHYSICAL_MTU, Packet, Verb, armor, dearmor
from tests.zt import vectors as v

KEY = bytes.fromhex(v.KEY48)
ROOT, NODE = 0x8EB1AF42A4, 0xE7C09F30B1


def _big_packet(size: int, pid: bytes = b"\x11" * 8) -> bytes:
    return armor(Packet(pid, ROOT, NODE, Verb.MULTICAST_LIKE, (bytes(range(256)) * (size // 256 + 1))[:size]), KEY)


def test_fragment_layout() -> None:
    wire = _big_packet(3000)
    parts = split(wire)
    assert len(parts) == 3 and len(parts[0]) == PHYSICAL_MTU and not is_fragment(parts[0])
    f1 = parts[1]
    assert f1[:8] == wire[:8] and f1[8:13] == wire[8:13] and f1[13] == 0xFF and f1[14] == 0x31 and f1[15] == 0
    assert len(f1) == PHYSICAL_MTU and f1[16:] == wire[PHYSICAL_MTU:2 * PHYSICAL_MTU - 16]
    frag = Fragment.parse(f1)
    assert (frag.total, frag.number, frag.destination) == (3, 1, ROOT)
    assert frag.to_bytes() == f1


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (2, 0, 1)])
def test_reassembly_in_any_order(order: tuple[int, ...]) -> None:
    wire = _big_packet(3000)
    parts = split(wire)
    r = Reassembler()
    results = []
    for i in order:
        if i == 0:
            results.append(r.add_head(parts[0], now=0))
        else:
            results.append(r.add_fragment(Fragment.parse(parts[i]), now=0))
    assert results[:-1] == [None, None] and results[-1] == wire and len(r) == 0
    assert dearmor(results[-1], KEY).verb == Verb.MULTICAST_LIKE


def test_duplicates_are_ignored_and_timeout_forgets() -> None:
    parts = split(_big_packet(3000))
    r = Reassembler(timeout_ms=5000)
    assert r.add_fragment(Fragment.parse(parts[1]), now=0) is None
    assert r.add_fragment(Fragment.parse(parts[1]), now=10) is None
    assert r.add_head(parts[0], now=4999) is None
    r.expire(now=5000)
    assert len(r) == 0
    assert r.add_fragment(Fragment.parse(parts[2]), now=5001) is None  # the rest was forgotten


def test_pending_table_is_bounded() -> None:
    r = Reassembler()
    for i in range(MAX_PENDING * 3):
        head = bytearray(_big_packet(2000)[:PHYSICAL_MTU])
        head[0:8] = i.to_bytes(8, "big")
        r.add_head(bytes(head), now=i)
    assert len(r) == MAX_PENDING


def test_inconsistent_totals_drop_the_packet() -> None:
    parts = split(_big_packet(3000))
    r = Reassembler()
    r.add_fragment(Fragment.parse(parts[1]), now=0)
    forged = bytearray(parts[2])
    forged[14] = 0x42  # claims 4 pieces
    with pytest.raises(ProtocolError, match="pieces"):
        r.add_fragment(Fragment.parse(bytes(forged)), now=0)
    assert len(r) == 0


@pytest.mark.parametrize("byte14", [0x00, 0x10, 0x11, 0x80, 0x87, 0x30, 0x33, 0x3F, 0xF1])
def test_bad_fragment_numbers(byte14: int) -> None:
    data = bytes(8) + b"\x01" * 5 + bytes([0xFF, byte14, 0]) + b"x"
    with pytest.raises(ProtocolError):
        Fragment.parse(data)


def test_largest_reassembly_stays_within_the_packet_bound() -> None:
    # Seven MTU-sized pieces are the most a sender can claim; the result is still a legal packet size.
    r = Reassembler()
    pid = b"\x07" * 8
    head = bytearray(_big_packet(2000)[:PHYSICAL_MTU])
    head[0:8] = pid
    assert r.add_head(bytes(head), now=0) is None
    out = None
    for n in range(1, 7):
        out = r.add_fragment(Fragment(pid, ROOT, 7, n, 0, bytes(PHYSICAL_MTU - 16)), now=0)
    assert out is not None and len(out) == 7 * PHYSICAL_MTU - 6 * 16 <= 10_024
    with pytest.raises(ProtocolError, match="MTU"):
        Fragment.parse(bytes(8) + b"\x01" * 5 + b"\xff\x71\x00" + bytes(PHYSICAL_MTU))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_fragment_parse(data: bytes) -> None:
    try:
        Fragment.parse(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=0, max_size=40), st.integers(0, 20_000)),
                max_size=40))
def test_fuzz_reassembler(ops: list[tuple[bool, bytes, int]]) -> None:
    r = Reassembler(max_pending=4)
    for as_fragment, data, now in ops:
        try:
            if as_fragment:
                data = data[:13] + b"\xff" + data[14:]
                r.add_fragment(Fragment.parse(data), now)
            else:
                r.add_head(data, now)
        except ProtocolError:
            pass
        assert len(r) <= 4
