"""InetAddress against the brief's examples (§1.1, appendix C's HELLO and OK(HELLO), the built-in planet)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.errors import ProtocolError
from hactl.zt.inetaddress import NIL, InetAddress, Reader


@pytest.mark.parametrize("hex_form, text", [
    ("040a931105" "0018", "10.147.17.5/24"),  # §1.1: a CIDR with the prefix length in the port field
    ("040acb0901" "7529", "10.203.9.1/29993"),  # appendix C HELLO: the address the node sent to
    ("040acb0901" "752a", "10.203.9.1/29994"),  # appendix C OK(HELLO): the observed address
    ("0468c20886" "2709", "104.194.8.134/9993"),  # built-in planet, root cafe9efeb9
    ("062a026ea0d405000000000000000099932709", "2a02:6ea0:d405::9993/9993"),  # built-in planet, root cafe04eba9
])
def test_known_forms(hex_form: str, text: str) -> None:
    raw = bytes.fromhex(hex_form)
    addr = InetAddress.decode(raw)
    assert str(addr) == text
    assert addr.encode() == raw
    assert InetAddress.from_str(text) == addr


def test_cidr_netmask_bits() -> None:
    assert InetAddress.decode(bytes.fromhex("040a93110500" "18")).netmask_bits == 24


def test_nil() -> None:
    assert InetAddress.decode(b"\x00") == NIL and NIL.is_nil and NIL.encode() == b"\x00"
    assert str(NIL) == "nil"


def test_reserved_types_are_skipped_as_nil() -> None:
    # 0x01/0x02: 6 more bytes; 0x03: a u16 length and that many bytes. The reader must land after them.
    for raw in (b"\x01" + bytes(6), b"\x02" + b"abcdef", b"\x03\x00\x03xyz", b"\x03\x00\x00"):
        addr, end = InetAddress.decode_prefix(raw + b"\xee")
        assert addr == NIL and end == len(raw)


def test_decode_prefix_offsets() -> None:
    raw = b"\xaa" + InetAddress(IPv6Address("::1"), 9993).encode() + b"\x00"
    addr, end = InetAddress.decode_prefix(raw, 1)
    assert (str(addr), end) == ("::1/9993", 20)
    assert InetAddress.decode_prefix(raw, end) == (NIL, 21)


@pytest.mark.parametrize("raw", [b"", b"\x05", b"\xff" + bytes(18), b"\x04\x01\x02\x03\x04\x00", b"\x06" + bytes(17),
                                 b"\x01\x00", b"\x03\x00\x05ab", b"\x04" + bytes(6) + b"\x00"])
def test_malformed(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        InetAddress.decode(raw)


@pytest.mark.parametrize("text", ["10.0.0.1", "10.0.0.1/x", "10.0.0.1/70000", "nope/1", "/1", ""])
def test_bad_text(text: str) -> None:
    with pytest.raises(ProtocolError):
        InetAddress.from_str(text)


def test_constructor_bounds() -> None:
    with pytest.raises(ProtocolError):
        InetAddress(IPv4Address("1.2.3.4"), 65536)
    with pytest.raises(ProtocolError):
        InetAddress(None, 5)


def test_reader_bounds() -> None:
    r = Reader(b"\x01\x02\x03")
    assert r.u16() == 0x0102 and r.remaining == 1
    with pytest.raises(ProtocolError):
        r.u16()
    with pytest.raises(ProtocolError):
        r.expect_end("x")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        addr, end = InetAddress.decode_prefix(data)
    except ProtocolError:
        return
    assert 0 < end <= len(data)
    if data[0] in (0, 4, 6):  # the forms we write come back byte for byte
        assert addr.encode() == data[:end]


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 0xFFFF))
def test_roundtrip(ip: IPv4Address | IPv6Address, port: int) -> None:
    addr = InetAddress(ip, port)
    raw = addr.encode()
    assert InetAddress.decode(raw) == addr
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            InetAddress.decode(raw[:cut])
