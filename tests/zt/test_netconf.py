"""Netconf against appendix C: the network and member behind the config a real libzt 1.8.4 node accepted,
reconstructed as API views, give the same dictionary key for key and byte for byte (ts is the only field that
depends on the clock, so the test passes the real one as `now`; the COM signature and the chunk signature are
deterministic C25519), and the same signed chunk with the real update id. Plus IPv6 auto-addresses, DNS,
chunking and a fuzz test of the chunk parser."""
from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from hactl.fsm.model import member_defaults, member_view, network_defaults, network_view
from hactl.zt.com import CertificateOfMembership
from hactl.zt.dictionary import Dictionary
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.netconf import (ConfigChunk, assemble, build_netconf, new_update_id, rfc4193_address, sign_chunks,
                              sixplane_address)
from hactl.zt.rules import decode_rules
from tests.zt import vectors as v

R = Identity.from_string(v.ROOT_SECRET)
NODE = Identity.from_string(v.NODE2_PUBLIC)
NWID = 0x8EB1AF42A4000001
TS = 0x1A230C9042A
UPDATE_ID = 0x5FBA07223DC85DA7
CHUNK = bytes.fromhex(v.CONFIG_CHUNK)
REAL = Dictionary.parse(CHUNK[10:10 + 626])


def views(**net: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    network = network_view(NWID, {**network_defaults(0), "name": "ztval", "revision": 1,
                                  "routes": [{"target": "10.147.17.0/24", "via": None}], **net})
    member = member_view(NWID, NODE.address, {**member_defaults(0), "authorized": True, "identity": str(NODE),
                                              "ipAssignments": ["10.147.17.10"]})
    return network, member


def real_config() -> Dictionary:
    network, member = views()
    return build_netconf(network, member, now=TS, com=CertificateOfMembership.build(NWID, NODE, TS, 1_800_000)
                         .sign(R))


def test_same_keys_and_values_as_real_config() -> None:
    ours = real_config()
    assert ours.keys() == REAL.keys()
    for key in REAL.keys():
        assert ours.get(key) == REAL.get(key), key
    assert ours.encode() == CHUNK[10:10 + 626]


def test_only_ts_depends_on_the_clock() -> None:
    network, member = views()
    com = CertificateOfMembership.build(NWID, NODE, TS, 1_800_000).sign(R)
    later = build_netconf(network, member, now=TS + 5, com=com)
    assert [k for k in REAL.keys() if later.get(k) != REAL.get(k)] == ["ts"]


def test_signed_chunk_equals_real_chunk() -> None:
    chunks = sign_chunks(real_config().encode(), NWID, R, UPDATE_ID, chunk_size=9740)
    assert [c.encode() for c in chunks] == [CHUNK]
    real = ConfigChunk.decode(CHUNK)
    assert real.verify(R.public_key) and (real.update_id, real.total_length, real.index) == (UPDATE_ID, 626, 0)


def test_small_chunks_reassemble_and_verify() -> None:
    data = real_config().encode()
    chunks = sign_chunks(data, NWID, R, new_update_id(), chunk_size=100)
    assert len(chunks) == 7 and all(ConfigChunk.decode(c.encode()).verify(R.public_key) for c in chunks)
    assert assemble(list(reversed(chunks))) == data
    with pytest.raises(ProtocolError):
        assemble(chunks[:-1])
    tampered = bytearray(chunks[0].encode())
    tampered[20] ^= 1
    assert not ConfigChunk.decode(bytes(tampered)).verify(R.public_key)


def test_ipv6_auto_addresses_dns_public_and_mtu() -> None:
    network, member = views(v6AssignMode={"rfc4193": True, "6plane": True, "zt": False}, private=False,
                            mtu=99999, enableBroadcast=False, multicastLimit=0,
                            dns={"domain": "zt.example", "servers": ["10.147.17.1", "fd00::53"]},
                            rules=[{"type": "MATCH_ETHERTYPE", "etherType": 2048, "not": True, "or": False},
                                   {"type": "ACTION_DROP", "not": False, "or": False},
                                   {"type": "ACTION_ACCEPT", "not": False, "or": False}])
    d = build_netconf(network, member, now=TS, com=None)
    assert "C" not in d and d.keys()[-1] == "DNS"
    assert d.get_int("f") == 0x4 and d.get_int("t") == 1 and d.get_int("mtu") == 10000 and d.get_int("ml") == 0
    # fd + nwid + 9993 + address /88, then fc + folded nwid + address ... 01 /40, then the routed IPv4.
    rfc = ipaddress.IPv6Address("fd8e:b1af:42a4:0000:0199:934e:fbf0:13a1")
    plane = ipaddress.IPv6Address("fc2a:b1af:434e:fbf0:13a1::1")  # a4000001 ^ 8eb1af42
    assert rfc4193_address(NWID, NODE.address) == rfc and sixplane_address(NWID, NODE.address) == plane
    assert d.get("I") == (b"\x06" + rfc.packed + b"\x00\x58" + b"\x06" + plane.packed + b"\x00\x28"
                          + bytes.fromhex("040a93110a0018"))
    dns = d.get("DNS") or b""
    assert dns == (b"zt.example".ljust(128, b"\x00") + bytes.fromhex("040a9311010000")
                   + b"\x06" + ipaddress.IPv6Address("fd00::53").packed + b"\x00\x00" + b"\x00\x00")
    assert [r["type"] for r in decode_rules(d.get("R") or b"")] == ["MATCH_ETHERTYPE", "ACTION_DROP",
                                                                     "ACTION_ACCEPT"]


def test_unrouted_assignment_left_out_and_old_members_get_allow_all() -> None:
    network, member = views(routes=[{"target": "10.0.0.0/8", "via": None},
                                    {"target": "10.147.0.0/16", "via": "10.0.0.1"}],
                            rules=[{"type": "ACTION_DROP", "not": False, "or": False}])
    member["ipAssignments"] = ["10.147.17.10", "192.168.1.1"]
    d = build_netconf(network, member, now=TS, com=None, rules_engine=False)
    assert d.get("I") == bytes.fromhex("040a93110a0010")  # most specific containing route: /16
    assert d.get("RT") == bytes.fromhex("040a0000000008" "00" "00000000" "040a9300000010" "040a00000100" "00"
                                        "00000000")
    assert d.get("R") == b"\x01\x00"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_chunk_parser(data: bytes) -> None:
    try:
        ConfigChunk.decode(data).verify(R.public_key)
    except ProtocolError:
        pass
