"""Rules binary form: the default rule set against the `R` bytes of the config a real node accepted (appendix C),
hand-assembled layouts from Capability.hpp serializeRules for every field type, round trips through hactl's own
canonical rule parser, and a fuzz test of the decoder."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from hactl.fsm.model import network_defaults
from hactl.fsm.rules import parse_rule
from hactl.zt.dictionary import Dictionary
from hactl.zt.errors import ProtocolError
from hactl.zt.rules import decode_rules, encode_rule, encode_rules
from tests.zt import vectors as v

REAL_R = Dictionary.parse(bytes.fromhex(v.CONFIG_CHUNK)[10:10 + 626]).get("R")


def test_default_rules_match_real_config() -> None:
    assert REAL_R == b"\x01\x00"
    assert encode_rules(network_defaults(0)["rules"]) == REAL_R
    assert decode_rules(REAL_R) == [{"type": "ACTION_ACCEPT", "not": False, "or": False}]


# (rule as a client might send it, expected bytes written out from the serializeRules layout)
CASES: list[tuple[dict[str, Any], str]] = [
    ({"type": "ACTION_DROP"}, "0000"),
    ({"type": "ACTION_BREAK", "not": True}, "8500"),
    ({"type": "ACTION_TEE", "address": "0123456789", "flags": 3, "length": 64},
     "020e" "0000000123456789" "00000003" "0040"),
    ({"type": "ACTION_WATCH", "address": "0123456789"}, "030e" "0000000123456789" "00000000" "0000"),
    ({"type": "ACTION_REDIRECT", "address": "0123456789", "flags": 1}, "040e" "0000000123456789" "00000001" "0000"),
    ({"type": "MATCH_SOURCE_ZEROTIER_ADDRESS", "zt": "4efbf013a1", "or": True}, "5805" "4efbf013a1"),
    ({"type": "MATCH_DEST_ZEROTIER_ADDRESS", "zt": "4efbf013a1"}, "1905" "4efbf013a1"),
    ({"type": "MATCH_VLAN_ID", "vlanId": 100}, "1a02" "0064"),
    ({"type": "MATCH_VLAN_PCP", "vlanPcp": 5}, "1b01" "05"),
    ({"type": "MATCH_VLAN_DEI", "vlanDei": 1}, "1c01" "01"),
    ({"type": "MATCH_MAC_SOURCE", "mac": "aa:bb:cc:dd:ee:ff"}, "1d06" "aabbccddeeff"),
    ({"type": "MATCH_MAC_DEST", "mac": "02:00:00:00:00:01"}, "1e06" "020000000001"),
    ({"type": "MATCH_IPV4_SOURCE", "ip": "10.147.17.0/24"}, "1f05" "0a931100" "18"),
    ({"type": "MATCH_IPV4_DEST", "ip": "10.0.0.1/32", "not": True}, "a005" "0a000001" "20"),
    ({"type": "MATCH_IPV6_SOURCE", "ip": "fd00::1/64"}, "2111" "fd000000000000000000000000000001" "40"),
    ({"type": "MATCH_IPV6_DEST", "ip": "::/0"}, "2211" + "00" * 16 + "00"),
    ({"type": "MATCH_IP_TOS", "mask": 252, "start": 8, "end": 16}, "2303" "fc0810"),
    ({"type": "MATCH_IP_PROTOCOL", "ipProtocol": 6}, "2401" "06"),
    ({"type": "MATCH_ETHERTYPE", "etherType": 0x0800}, "2502" "0800"),
    ({"type": "MATCH_ICMP", "icmpType": 8}, "2603" "080000"),
    ({"type": "MATCH_ICMP", "icmpType": 3, "icmpCode": 1}, "2603" "030101"),
    ({"type": "MATCH_IP_SOURCE_PORT_RANGE", "start": 22}, "2704" "00160016"),
    ({"type": "MATCH_IP_DEST_PORT_RANGE", "start": 80, "end": 443}, "2804" "005001bb"),
    ({"type": "MATCH_CHARACTERISTICS", "mask": "8000000000000000"}, "2908" "8000000000000000"),
    ({"type": "MATCH_FRAME_SIZE_RANGE", "start": 0, "end": 1500}, "2a04" "000005dc"),
    ({"type": "MATCH_RANDOM", "probability": 0x7FFFFFFF}, "2b04" "7fffffff"),
    ({"type": "MATCH_TAGS_DIFFERENCE", "id": 1, "value": 2}, "2c08" "0000000100000002"),
    ({"type": "MATCH_TAGS_BITWISE_AND", "id": 1, "value": 2}, "2d08" "0000000100000002"),
    ({"type": "MATCH_TAGS_BITWISE_OR", "id": 1, "value": 2}, "2e08" "0000000100000002"),
    ({"type": "MATCH_TAGS_BITWISE_XOR", "id": 1, "value": 2}, "2f08" "0000000100000002"),
    ({"type": "MATCH_TAGS_EQUAL", "id": 1, "value": 2}, "3008" "0000000100000002"),
    ({"type": "MATCH_TAG_SENDER", "id": 1, "value": 2}, "3108" "0000000100000002"),
    ({"type": "MATCH_TAG_RECEIVER", "id": 1, "value": 2}, "3208" "0000000100000002"),
    ({"type": "INTEGER_RANGE", "start": "10", "end": "20", "idx": 3, "little": True, "bits": 16},
     "3313" "0000000000000010" "0000000000000020" "0003" "8f"),
]


@pytest.mark.parametrize("rule,expected", CASES, ids=[c[0]["type"] + str(i) for i, c in enumerate(CASES)])
def test_known_layouts_and_round_trip(rule: dict[str, Any], expected: str) -> None:
    canonical = parse_rule(rule, "rule")
    assert encode_rule(canonical).hex() == expected
    assert decode_rules(bytes.fromhex(expected)) == [canonical]


def test_priority_has_an_empty_field() -> None:
    canonical = parse_rule({"type": "ACTION_PRIORITY", "qosBucket": 3}, "r")
    assert encode_rule(canonical) == b"\x06\x00"
    assert decode_rules(b"\x06\x00")[0]["qosBucket"] == 0  # the reference never sends the bucket


def test_unknown_types_are_skipped_and_bad_fields_rejected() -> None:
    assert decode_rules(bytes.fromhex("0703aabbcc" "0100")) == [{"type": "ACTION_ACCEPT", "not": False,
                                                                  "or": False}]
    for bad in ("01", "2502" "08", "1f04" "0a000001", "1f05" "0a00000121"):
        with pytest.raises(ProtocolError):
            decode_rules(bytes.fromhex(bad))


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_decode(data: bytes) -> None:
    try:
        rules = decode_rules(data)
    except ProtocolError:
        return
    for r in rules:
        encode_rule(r)
