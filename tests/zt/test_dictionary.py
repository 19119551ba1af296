"""Dictionary against the config a real libzt 1.8.4 node accepted (brief appendix C), plus the escaping rules
and a fuzz test (parsers raise only ProtocolError)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hactl.zt.dictionary import MAX_SIZE, Dictionary, escape, unescape
from hactl.zt.errors import ProtocolError
from tests.zt import vectors as v

CHUNK = bytes.fromhex(v.CONFIG_CHUNK)
REAL_DICT = CHUNK[10:10 + 626]  # nwid(8) + length(2), then the 626-byte dictionary


def test_real_config_parses_and_reencodes_byte_for_byte() -> None:
    d = Dictionary.parse(REAL_DICT)
    assert d.keys() == ["v", "nwid", "ts", "ctmd", "r", "id", "tt", "tl", "f", "ml", "t", "n", "mtu", "C", "RT",
                        "I", "R"]
    assert d.get_int("v") == 7
    assert d.get_int("nwid") == 0x8EB1AF42A4000001
    assert d.get_int("ts") == 0x1A230C9042A
    assert d.get_int("ctmd") == 1_800_000
    assert d.get_str("id") == "4efbf013a1"
    assert d.get_str("n") == "ztval"
    assert d.get_int("mtu") == 2800 and d.get_int("ml") == 32 and d.get_int("f") == 2
    # Binary values come back unescaped: 10.147.17.10/24 has an LF (0x0a) in it, sent as \n.
    assert d.get("I") == bytes.fromhex("040a93110a0018")
    assert d.get("RT") == bytes.fromhex("040a93110000180000000000")
    assert d.get("R") == b"\x01\x00"
    assert len(d.get("C") or b"") == 1 + 2 + 7 * 24 + 5 + 96
    assert d.encode() == REAL_DICT


def test_escapes() -> None:
    assert escape(b"a\x00b\rc\nd\\e=f") == b"a\\0b\\rc\\nd\\\\e\\ef"
    assert unescape(b"a\\0b\\rc\\nd\\\\e\\ef") == b"a\x00b\rc\nd\\e=f"
    assert unescape(b"\\x\\") == b"x"  # unknown escape = the byte itself; a lone trailing backslash is dropped


def test_reading_rules() -> None:
    d = Dictionary.parse(b"a=1\r\nnoequals\nb=x=y\na=2\x00c=3")
    assert d.get("a") == b"1"  # first occurrence wins
    assert d.get("b") == b"x=y"
    assert d.get("c") is None  # NUL ends the dictionary
    assert d.get_int("missing", 5) == 5
    assert Dictionary.parse(b"x=ffZZ").get_int("x") == 0xFF  # strtoull-like
    assert Dictionary.parse(b"x=t").get_bool("x") and not Dictionary.parse(b"x=0").get_bool("x", True)


def test_add_forms_and_limits() -> None:
    d = Dictionary()
    d.add_u64("v", 7)
    d.add("n", "x\ny")
    d.add_bool("b", True)
    assert d.encode() == b"v=0000000000000007\nn=x\\ny\nb=1"
    with pytest.raises(ValueError):
        d.add("a=b", b"")
    big = Dictionary()
    big.add("x", b"\x00" * (MAX_SIZE // 2))  # doubles when escaped
    with pytest.raises(ProtocolError):
        big.encode()
    with pytest.raises(ProtocolError):
        Dictionary.parse(b"x" * MAX_SIZE)


@given(st.lists(st.tuples(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
                          st.binary(max_size=64)), max_size=10))
def test_round_trip(entries: list[tuple[str, bytes]]) -> None:
    d = Dictionary()
    for k, val in entries:
        d.add(k, val)
    assert Dictionary.parse(d.encode()).entries == d.entries


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_parse(data: bytes) -> None:
    try:
        d = Dictionary.parse(data)
    except ProtocolError:
        return
    for k in d.keys():
        d.get_str(k)
        try:
            d.get_int(k)
        except ProtocolError:
            pass
        d.get_bool(k)
    d.encode()
