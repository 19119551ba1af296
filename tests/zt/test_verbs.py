"""Verb payload codecs against the brief's appendix C: packets a real libzt 1.8.4 node sent (HELLO,
NETWORK_CONFIG_REQUEST) and accepted (OK(HELLO), a signed config chunk), dearmored with packet.py first."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.packet import ErrorCode, Packet, Verb, armor, dearmor
from hactl.zt.verbs import (ConfigChunk, Echo, Error, Hello, MoonRef, MulticastLike, MulticastSubscription,
                            NetworkConfigRequest, Ok, OkHello, OkNetworkConfig, OkWhois, Rendezvous, Whois,
                            chunk_config, hello_identity)
from hactl.zt.world import World, zerotier_planet
from tests.zt import vectors as v

KEY = bytes.fromhex(v.KEY48)
KEY2 = bytes.fromhex(v.NODE2_KEY48)
HELLO = bytes.fromhex(v.HELLO)
OK_HELLO = bytes.fromhex(v.OK_HELLO)
CHUNK = bytes.fromhex(v.CONFIG_CHUNK)
R = Identity.from_string(v.ROOT_SECRET)
NODE = Identity.from_string(v.NODE_PUBLIC)
NODE2 = Identity.from_string(v.NODE2_PUBLIC)
NWID = 0x8EB1AF42A4000001
# Appendix C: the NETWORK_CONFIG_REQUEST node 4efbf013a1 sent to R (140 bytes, cipher 1, LZ4-compressed).
NCR = bytes.fromhex(
    "5d827df291d9ed788eb1af42a44efbf013a188bd5aa0a6a4c609fefae0c1c1757d6ac92490e849129d47859960a1b080278973ebb63ea0"
    "9d275d5edaf1e6156d1260eb28b0503366d3ae33925dca5587e1aca3b5b151dac771c9f3a755c4034e2e48b8308424b9180b2ca0d761"
    "93e1ae2b91e185b25bea8d7a75583545845f7423b747d55cb981ad0f6fcf52")
NCR_KEYS = ["v", "vend", "pv", "majv", "minv", "revv", "mr", "mc", "mcr", "mt", "f", "revr"]


# --- HELLO / OK(HELLO) -----------------------------------------------------------------------------------------

def test_real_hello() -> None:
    p = dearmor(HELLO, KEY)
    assert hello_identity(p.payload) == NODE
    h = Hello.decode(p.payload, KEY, p.packet_id)
    assert (h.protocol_version, h.version_major, h.version_minor, h.version_revision) == (12, 1, 8, 4)
    assert h.timestamp == 0x1A230B7D8DC and h.identity == NODE
    assert str(h.destination) == "10.203.9.1/29993"
    assert (h.planet_id, h.planet_timestamp) == (0xC0FFEE, 0x1A230B66E23)
    assert h.moons == ()
    # re-encoding (with the same key and packet id for the tail) gives the node's bytes, and re-armoring them
    # the node's datagram
    assert h.encode(KEY, p.packet_id) == p.payload
    assert armor(Packet(p.packet_id, p.destination, p.source, Verb.HELLO, h.encode(KEY, p.packet_id), cipher=0),
                 KEY) == HELLO
    # without the key the moon list stays unread
    assert Hello.decode(p.payload).moons is None


def test_hello_with_moons_and_old_forms() -> None:
    pid = bytes(range(8))
    moons = (MoonRef(127, 0x1122334455, 7), MoonRef(127, 0xABCDEF0123, 0))
    h = Hello(12, 1, 14, 2, 123, NODE, InetAddress.from_str("fd00::5/9993"), 0xC0FFEE, 9, moons)
    raw = h.encode(KEY, pid)
    assert Hello.decode(raw, KEY, pid) == h
    assert raw[-34:] != b"".join(bytes([m.type]) + m.id.to_bytes(8, "big") + m.timestamp.to_bytes(8, "big")
                                 for m in moons)  # the tail really is encrypted
    # old nodes stop after the identity, or after the address
    for short in (Hello(4, 1, 0, 0, 5, NODE), Hello(4, 1, 0, 0, 5, NODE, InetAddress.from_str("1.2.3.4/5"))):
        assert Hello.decode(short.encode()) == short
    with pytest.raises(ProtocolError):
        Hello.decode(raw[:-1], KEY, pid)  # moon list cut short


def test_real_ok_hello() -> None:
    p = dearmor(OK_HELLO, KEY)
    ok = OkHello.decode(p.payload)
    assert ok.in_re_packet_id == HELLO[:8]
    assert ok.timestamp_echo == 0x1A230B7D8DC
    assert (ok.protocol_version, ok.version_major, ok.version_minor, ok.version_revision) == (11, 1, 8, 4)
    assert str(ok.observed) == "10.203.9.1/29994" and ok.worlds == ()
    assert ok.encode() == p.payload == bytes.fromhex(v.OK_HELLO_PAYLOAD)


def test_ok_hello_carries_worlds() -> None:
    planet = zerotier_planet()
    mine = World.make(1, 0xC0FFEE, 5, R.public_key, [], R.private_key)
    ok = OkHello(HELLO[:8], 1, 11, 1, 8, 4, InetAddress.from_str("10.0.0.9/9993"), (planet, mine))
    raw = ok.encode()
    assert OkHello.decode(raw) == ok
    assert OkHello.decode(raw).worlds[0].verify()
    # the observed address and world length are optional on the wire
    bare = OkHello(HELLO[:8], 1, 11, 1, 8, 4)
    assert OkHello.decode(bare.encode()) == bare
    with pytest.raises(ProtocolError):
        OkHello.decode(Ok(Verb.ECHO, HELLO[:8], raw[9:]).encode())


# --- generic OK / ERROR, WHOIS, ECHO, RENDEZVOUS, MULTICAST_LIKE -------------------------------------------

def test_ok_and_error_layouts() -> None:
    assert Ok(Verb.ECHO, b"12345678", b"hi").encode() == b"\x08" b"12345678" b"hi"
    e = Error.network_config(b"\x5d\x82\x7d\xf2\x91\xd9\xed\x78", ErrorCode.NETWORK_ACCESS_DENIED, NWID)
    assert e.encode().hex() == "0b" "5d827df291d9ed78" "07" "8eb1af42a4000001"
    d = Error.decode(e.encode())
    assert d == e and d.network_id() == NWID and d.code == ErrorCode.NETWORK_ACCESS_DENIED
    with_dict = Error.network_config(b"\0" * 8, ErrorCode.OBJ_NOT_FOUND, NWID, b"a=b")
    assert with_dict.encode()[-5:] == b"\x00\x03a=b"
    with pytest.raises(ProtocolError):
        Error.decode(b"\x0b" + bytes(7))
    with pytest.raises(ProtocolError):
        Error.decode(b"\x0b" + bytes(9)).network_id()  # network id missing


def test_whois() -> None:
    assert Whois.decode(bytes.fromhex("8eb1af42a4")).addresses == (R.address,)
    assert Whois((1, 2)).encode() == bytes.fromhex("0000000001" "0000000002")
    for bad in (b"", b"\x01\x02"):
        with pytest.raises(ProtocolError):
            Whois.decode(bad)
    ok = OkWhois(b"abcdefgh", (NODE, NODE2))
    raw = ok.encode()
    assert raw[:9] == b"\x04abcdefgh" and raw[9:80] == NODE.to_bytes()
    assert OkWhois.decode(raw) == ok
    with pytest.raises(ProtocolError):
        OkWhois.decode(raw[:-1])


def test_echo() -> None:
    e = Echo.decode(b"ping")
    assert e.encode() == b"ping"
    assert e.reply(b"12345678").encode() == b"\x08" b"12345678" b"ping"


def test_rendezvous() -> None:
    rz = Rendezvous(0x1122334455, InetAddress(IPv4Address("10.203.9.1"), 29993))
    assert rz.encode().hex() == "00" "1122334455" "7529" "04" "0acb0901"
    assert Rendezvous.decode(rz.encode()) == rz
    rz6 = Rendezvous(0x1122334455, InetAddress(IPv6Address("fd00::1"), 9993))
    assert Rendezvous.decode(rz6.encode()) == rz6 and len(rz6.encode()) == 25
    with pytest.raises(ProtocolError):
        Rendezvous.decode(bytes.fromhex("00" "1122334455" "7529" "05" "0acb090100"))


def test_multicast_like() -> None:
    # the ARP group of 10.147.17.5: broadcast MAC, ADI = the IPv4 address
    entry = MulticastSubscription(NWID, 0xFFFFFFFFFFFF, 0x0A931105)
    raw = MulticastLike((entry,)).encode()
    assert raw.hex() == "8eb1af42a4000001" "ffffffffffff" "0a931105"
    assert MulticastLike.decode(raw + raw).entries == (entry, entry)
    with pytest.raises(ProtocolError):
        MulticastLike.decode(raw[:-1])


# --- NETWORK_CONFIG_REQUEST and config chunks -------------------------------------------------------------

def test_real_network_config_request() -> None:
    p = dearmor(NCR, KEY2)
    assert (p.verb, p.source, p.destination, len(p.payload)) == (Verb.NETWORK_CONFIG_REQUEST, NODE2.address,
                                                                 R.address, 274)
    req = NetworkConfigRequest.decode(p.payload)
    assert req.network_id == NWID and len(req.metadata) == 0xF8
    assert (req.revision, req.timestamp) == (0, 0)
    keys = [line.split(b"=", 1)[0].decode() for line in req.metadata.split(b"\n") if line]
    assert keys == NCR_KEYS
    assert b"v=0000000000000007" in req.metadata and b"pv=000000000000000c" in req.metadata
    assert req.encode() == p.payload


def test_network_config_request_optional_fields() -> None:
    for req in (NetworkConfigRequest(NWID), NetworkConfigRequest(NWID, b"a=1", 5),
                NetworkConfigRequest(NWID, b"a=1", 5, 6)):
        assert NetworkConfigRequest.decode(req.encode()) == req
    assert NetworkConfigRequest.decode(NWID.to_bytes(8, "big")) == NetworkConfigRequest(NWID)
    with pytest.raises(ProtocolError):
        NetworkConfigRequest.decode(NWID.to_bytes(8, "big") + b"\x00\x05abc")


def test_real_config_chunk() -> None:
    c = ConfigChunk.decode(CHUNK)
    assert (c.network_id, len(c.data), c.flags, c.update_id, c.total_length, c.index) == (
        NWID, 626, 0, 0x5FBA07223DC85DA7, 626, 0)
    assert c.data.startswith(b"v=0000000000000007\nnwid=8eb1af42a4000001\n")
    assert c.signed_bytes() == CHUNK[:653]
    assert c.verify(R.public_key) and not c.verify(NODE2.public_key)
    assert c.encode() == CHUNK
    # Ed25519 is deterministic: signing the same bytes with R reproduces the chunk the node accepted
    assert ConfigChunk.make(R, NWID, c.data, c.update_id, 626, 0) == c
    assert chunk_config(R, NWID, c.data, c.update_id, chunk_size=1200) == [c]


def test_ok_network_config_as_sent() -> None:
    c = ConfigChunk.decode(CHUNK)
    ok = OkNetworkConfig(NCR[:8], c)
    raw = ok.encode()
    assert len(raw) + 28 == 789  # the OK(NETWORK_CONFIG_REQUEST) was 789 bytes on the wire
    assert raw[:9].hex() == "0b5d827df291d9ed78"
    assert OkNetworkConfig.decode(raw) == ok


def test_chunking_reassembles_and_each_chunk_verifies() -> None:
    dictionary = bytes(range(256)) * 11
    chunks = chunk_config(R, NWID, dictionary, 42, chunk_size=1000)
    assert [c.index for c in chunks] == [0, 1000, 2000]
    assert b"".join(c.data for c in chunks) == dictionary
    assert all(c.verify(R.public_key) and c.total_length == len(dictionary) for c in chunks)
    assert len({c.chunk_id for c in chunks}) == 3
    for c in chunks:
        assert len(c.encode()) + 28 <= 1432
    with pytest.raises(ValueError):
        chunk_config(R, NWID, dictionary, 0)


def test_chunk_refusals() -> None:
    legacy = CHUNK[:8 + 2 + 626]
    with pytest.raises(ProtocolError):
        ConfigChunk.decode(legacy)
    bad_type = bytearray(CHUNK)
    bad_type[653] = 2
    with pytest.raises(ProtocolError):
        ConfigChunk.decode(bytes(bad_type))
    past_end = bytearray(CHUNK)
    past_end[649:653] = (1).to_bytes(4, "big")  # index 1 + 626 bytes > total 626
    with pytest.raises(ProtocolError):
        ConfigChunk.decode(bytes(past_end))
    tampered = bytearray(CHUNK)
    tampered[100] ^= 1
    assert not ConfigChunk.decode(bytes(tampered)).verify(R.public_key)


# --- fuzz: every decoder raises ProtocolError and nothing else --------------------------------------------

_DECODERS = [Ok.decode, Error.decode, Hello.decode, lambda b: Hello.decode(b, KEY, b"12345678"), OkHello.decode,
             Whois.decode, OkWhois.decode, Echo.decode, Rendezvous.decode, MulticastLike.decode,
             NetworkConfigRequest.decode, ConfigChunk.decode, OkNetworkConfig.decode, hello_identity,
             lambda b: Error.decode(b).network_id()]
_REAL = [dearmor(HELLO, KEY).payload, dearmor(OK_HELLO, KEY).payload, dearmor(NCR, KEY2).payload, CHUNK,
         OkNetworkConfig(NCR[:8], ConfigChunk.decode(CHUNK)).encode(),
         OkHello(HELLO[:8], 1, 11, 1, 8, 4, InetAddress.from_str("10.0.0.9/9993"), (zerotier_planet(),)).encode()]


def _decode_all(data: bytes) -> None:
    for decode in _DECODERS:
        try:
            decode(data)
        except ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_all(data)


@settings(max_examples=200, deadline=None)
@given(which=st.integers(0, len(_REAL) - 1), cut=st.integers(0, 800))
def test_fuzz_truncations(which: int, cut: int) -> None:
    _decode_all(_REAL[which][:cut])


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(_REAL) - 1), pos=st.integers(0, 800), bit=st.integers(0, 7))
def test_fuzz_bit_flips(which: int, pos: int, bit: int) -> None:
    data = bytearray(_REAL[which])
    data[pos % len(data)] ^= 1 << bit
    _decode_all(bytes(data))


def test_push_direct_paths_cluster_redirect_layout() -> None:
    """The record ZeroTierOne's cluster code built (Peer.cpp, 1.2's clustering): count, then flags 0x02, no
    extensions, type 4, length 6, IP, port; IPv6 as type 6, length 18. Unknown types are skipped."""
    from hactl.zt.verbs import PUSH_CLUSTER_REDIRECT, PushDirectPaths
    v4 = InetAddress.from_str("10.0.0.2/9993")
    v6 = InetAddress.from_str("fd00::7/9994")
    raw = PushDirectPaths(((PUSH_CLUSTER_REDIRECT, v4), (0, v6))).encode()
    assert raw.hex() == ("0002" + "02" + "0000" + "04" + "06" + "0a000002" + "2709"
                         + "00" + "0000" + "06" + "12" + "fd000000000000000000000000000007" + "270a")
    assert PushDirectPaths.decode(raw).paths == ((PUSH_CLUSTER_REDIRECT, v4), (0, v6))
    # an extension is skipped; an address type we do not know is skipped, not an error
    odd = bytes.fromhex("0002" + "00" + "0002abcd" + "04" + "06" + "0a000002" + "2709" + "00" + "0000" + "07" + "02"
                        + "beef")
    assert PushDirectPaths.decode(odd).paths == ((0, v4),)
    with pytest.raises(ProtocolError):
        PushDirectPaths.decode(bytes.fromhex("0001" + "02" + "0000" + "04" + "06" + "0a00"))
