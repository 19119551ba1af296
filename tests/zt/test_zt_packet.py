"""The packet codec against the brief's appendix C: a HELLO captured from a real libzt 1.8.4 node and the OK(HELLO)
that node accepted. Plus LZ4 payloads made by liblz4's own compressor and hand-written LZ4 blocks."""
from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt import _native
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.packet import (FLAG_FRAGMENTED, PHYSICAL_MTU, Cipher, Header, Packet, Verb, armor, crypt_hello_tail,
                             dearmor, hops_of, increment_hops)
from hactl.zt.compression import lz4_decompress
from tests.zt import vectors as v

KEY = bytes.fromhex(v.KEY48)
HELLO = bytes.fromhex(v.HELLO)
OK_HELLO = bytes.fromhex(v.OK_HELLO)
ROOT = 0x8EB1AF42A4
NODE = 0xE7C09F30B1


def test_header_of_real_hello() -> None:
    h = Header.parse(HELLO)
    assert (h.packet_id.hex(), h.destination, h.source) == ("05d2d0b68d0af396", ROOT, NODE)
    assert (h.cipher, h.hops, h.fragmented) == (0, 0, False)


def test_dearmor_real_hello_cipher0() -> None:
    p = dearmor(HELLO, KEY)
    assert (p.verb, p.cipher, p.source, p.destination) == (Verb.HELLO, Cipher.POLY1305_NONE, NODE, ROOT)
    # protocol 12, version 1.8.4, then the node's identity at packet offset 41 (payload offset 13)
    assert p.payload[:5] == bytes([12, 1, 8, 0, 4])
    assert Identity.from_bytes_prefix(p.payload, 13)[0].to_string() == v.NODE_PUBLIC
    # 10.203.9.1/29993, planet 0xc0ffee; then the encrypted moon count: 0 moons
    assert p.payload[84:91].hex() == "040acb09017529"
    assert int.from_bytes(p.payload[91:99], "big") == 0xC0FFEE
    assert crypt_hello_tail(KEY, p.packet_id, p.payload[107:]) == b"\x00\x00"


def test_dearmor_real_ok_hello_cipher1() -> None:
    p = dearmor(OK_HELLO, KEY)
    assert (p.verb, p.cipher, p.source, p.destination) == (Verb.OK, Cipher.POLY1305_SALSA2012, ROOT, NODE)
    assert p.payload.hex() == v.OK_HELLO_PAYLOAD


def test_armor_reproduces_the_ok_hello_the_node_accepted() -> None:
    pkt = Packet(packet_id=OK_HELLO[:8], destination=NODE, source=ROOT, verb=Verb.OK,
                 payload=bytes.fromhex(v.OK_HELLO_PAYLOAD))
    wire = armor(pkt, KEY)
    assert wire == OK_HELLO and wire[18] == 0x88


def test_armor_reproduces_the_real_hello_with_cipher0() -> None:
    p = dearmor(HELLO, KEY)
    assert armor(p, KEY) == HELLO


def test_hops_are_outside_the_mac() -> None:
    relayed = increment_hops(OK_HELLO)
    assert hops_of(relayed) == 1 and relayed[:18] == OK_HELLO[:18] and relayed[19:] == OK_HELLO[19:]
    assert dearmor(relayed, KEY).hops == 1
    assert dearmor(relayed, KEY).payload == dearmor(OK_HELLO, KEY).payload
    three = increment_hops(increment_hops(relayed))
    with pytest.raises(ProtocolError, match="hop limit"):
        increment_hops(three)


def test_wrong_key_and_tampering_fail_the_mac() -> None:
    with pytest.raises(ProtocolError, match="MAC"):
        dearmor(OK_HELLO, bytes.fromhex(v.NODE2_KEY48))
    tampered = bytearray(OK_HELLO)
    tampered[18] ^= 0x40  # the fragmented flag is inside the MAC, unlike hops
    with pytest.raises(ProtocolError, match="MAC"):
        dearmor(bytes(tampered), KEY)
    with pytest.raises(ProtocolError, match="MAC"):
        dearmor(OK_HELLO + b"\x00", KEY)  # the length is in the key


def test_cipher_policy() -> None:
    with pytest.raises(ProtocolError, match="unencrypted"):
        dearmor(HELLO, KEY, allow_cipher0=False)
    for flags in (0x10, 0x18, 0x28):  # trusted path, AES-GMAC-SIV, undefined
        bad = bytearray(OK_HELLO)
        bad[18] = flags
        with pytest.raises(ProtocolError, match="cipher suite"):
            dearmor(bytes(bad), KEY)


def test_short_and_fragment_datagrams_are_not_packets() -> None:
    with pytest.raises(ProtocolError, match="shorter"):
        dearmor(OK_HELLO[:27], KEY)
    frag = bytearray(OK_HELLO)
    frag[13] = 0xFF
    with pytest.raises(ProtocolError, match="fragment"):
        Header.parse(bytes(frag))


def test_large_packets_get_the_fragmented_flag() -> None:
    pkt = Packet(b"\x01" * 8, NODE, ROOT, Verb.ECHO, bytes(PHYSICAL_MTU))
    wire = armor(pkt, KEY)
    assert wire[18] & FLAG_FRAGMENTED
    assert dearmor(wire, KEY).payload == bytes(PHYSICAL_MTU)


# --- LZ4 ----------------------------------------------------------------------------------------------------

def _reference_lz4(data: bytes) -> bytes:
    """Compress with liblz4's own LZ4_compress_default (the reference encoder nodes use), not code of ours."""
    fn = _native.lz4.LZ4_compress_default
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    out = ctypes.create_string_buffer(len(data) + 64)
    n = fn(data, out, len(data), len(out))
    assert n > 0
    return out.raw[:n]


def _compressed_packet(payload: bytes) -> bytes:
    """A cipher-1 packet whose verb byte carries the compressed flag, built as a node builds it: compress, then
    armor the verb byte as it is."""
    pkt = Packet(bytes.fromhex("5d827df291d9ed78"), ROOT, 0x4EFBF013A1, Verb.NETWORK_CONFIG_REQUEST | 0x80,
                 _reference_lz4(payload))
    return armor(pkt, bytes.fromhex(v.NODE2_KEY48))


def test_compressed_config_request_is_decompressed() -> None:
    nwid = bytes.fromhex("8eb1af42a4000001")
    meta = b"v=0000000000000007\nvend=0000000000000001\npv=000000000000000c\n" * 3
    payload = nwid + len(meta).to_bytes(2, "big") + meta + bytes(16)
    wire = _compressed_packet(payload)
    assert wire[27] != 0x8B  # encrypted on the wire
    p = dearmor(wire, bytes.fromhex(v.NODE2_KEY48))
    assert p.verb == Verb.NETWORK_CONFIG_REQUEST and p.payload == payload


def test_lz4_hand_written_blocks() -> None:
    assert lz4_decompress(bytes([0x50]) + b"hello") == b"hello"  # 5 literals, no match
    # 3 literals, match offset 3 length 4+5, then 5 final literals
    assert lz4_decompress(bytes([0x35]) + b"abc" + b"\x03\x00" + bytes([0x50]) + b"xyzzy") == b"abc" * 4 + b"xyzzy"


def test_lz4_bomb_is_refused() -> None:
    # One literal then a match of 4 + 15 + 255 * 60 bytes (~15 KB) from a few dozen bytes.
    bomb = bytes([0x1F]) + b"a" + b"\x01\x00" + b"\xff" * 60 + b"\x00" + bytes([0x50]) + b"tail!"
    assert len(lz4_decompress(bomb, limit=20_000)) == 1 + 4 + 15 + 255 * 60 + 5
    with pytest.raises(ProtocolError, match="more than"):
        lz4_decompress(bomb)


def test_lz4_refuses_empty_and_malformed() -> None:
    for bad in (b"", b"\xf0", bytes([0x35]) + b"abc" + b"\x09\x00"):  # truncated; offset beyond output
        with pytest.raises(ProtocolError):
            lz4_decompress(bad)


# --- fuzz: only ProtocolError may come out ------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_dearmor_random_bytes(data: bytes) -> None:
    try:
        dearmor(data, KEY)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from([HELLO, OK_HELLO]), pos=st.integers(0, 136), bit=st.integers(0, 7))
def test_fuzz_bit_flips_of_real_packets(which: bytes, pos: int, bit: int) -> None:
    pos %= len(which)
    data = bytearray(which)
    data[pos] ^= 1 << bit
    try:
        p = dearmor(bytes(data), KEY)
    except ProtocolError:
        return
    assert pos == 18 and bit < 3  # only a hop-count flip may still authenticate
    assert p.payload == dearmor(which, KEY).payload


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from([HELLO, OK_HELLO]), cut=st.integers(0, 136))
def test_fuzz_truncations_of_real_packets(which: bytes, cut: int) -> None:
    with pytest.raises(ProtocolError):
        dearmor(which[:cut % len(which)], KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_compressed_payloads(data: bytes) -> None:
    # Random bytes behind a valid MAC: the decompressor's bound and checks are all that stand.
    pkt = Packet(b"\x02" * 8, ROOT, NODE, Verb.MULTICAST_LIKE | 0x80, data)
    try:
        p = dearmor(armor(pkt, KEY), KEY)
    except ProtocolError:
        return
    assert len(p.payload) <= 10_024 - 28


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_hops_and_header(data: bytes) -> None:
    for fn in (Header.parse, hops_of, increment_hops):
        try:
            fn(data)
        except ProtocolError:
            pass
