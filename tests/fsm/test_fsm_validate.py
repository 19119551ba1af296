"""Field by field: defaults, coercions and rejections of network and member bodies (the one validator)."""
from __future__ import annotations

from typing import Any

import pytest

from hactl.fsm.coerce import ValidationError
from hactl.fsm.model import ARRAY_MAX, member_defaults, network_defaults
from hactl.fsm.validate import (member_record, network_record, parse_address, parse_nwid,
                                validate_member_changes, validate_network_changes)


def net(body: dict[str, Any]) -> dict[str, Any]:
    return validate_network_changes(body)


def mem(body: dict[str, Any]) -> dict[str, Any]:
    return validate_member_changes(body)


def rejects(fn: Any, body: Any, field: str | None) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        fn(body)
    assert e.value.field == field, (e.value.field, e.value.message)
    assert e.value.message
    return e.value


# ------------------------------------------------------------------------------------------- defaults

def test_network_defaults_match_the_contract() -> None:
    d = network_defaults(123)
    assert d == {
        "name": "", "private": True, "enableBroadcast": True, "v4AssignMode": {"zt": False},
        "v6AssignMode": {"rfc4193": False, "zt": False, "6plane": False}, "mtu": 2800, "multicastLimit": 32,
        "routes": [], "ipAssignmentPools": [], "rules": [{"type": "ACTION_ACCEPT", "not": False, "or": False}],
        "capabilities": [], "tags": [], "dns": {"domain": "", "servers": []}, "creationTime": 123, "revision": 0,
    }
    assert network_defaults(1)["routes"] is not network_defaults(1)["routes"]  # fresh containers


def test_member_defaults_match_the_contract() -> None:
    assert member_defaults(5) == {
        "name": "", "authorized": False, "activeBridge": False, "noAutoAssignIps": False, "ipAssignments": [],
        "tags": [], "capabilities": [], "identity": "", "creationTime": 5, "revision": 0, "lastAuthorizedTime": 0,
        "lastDeauthorizedTime": 0, "lastAuthorizedCredentialType": None, "vMajor": -1, "vMinor": -1, "vRev": -1,
        "vProto": -1,
    }


def test_empty_body_changes_nothing_and_unknown_or_readonly_fields_are_ignored() -> None:
    assert net({}) == {}
    assert net({"id": "x", "nwid": 5, "revision": 9, "creationTime": "z", "objtype": 1, "authTokens": {}}) == {}
    assert mem({"id": "x", "revision": 9, "identity": "abc", "vMajor": 3, "lastAuthorizedTime": 5}) == {}


@pytest.mark.parametrize("body", [[], "x", 5, None])
def test_body_must_be_an_object(body: Any) -> None:
    rejects(net, body, None)
    rejects(mem, body, None)


def test_changes_come_out_in_record_order() -> None:
    assert list(net({"tags": [], "name": "a", "mtu": 1500})) == ["name", "mtu", "tags"]


# -------------------------------------------------------------------------------------- booleans, ints

@pytest.mark.parametrize("v,want", [(True, True), (False, False), (1, True), (0, False), ("true", True),
                                    ("FALSE", False), ("1", True), ("0", False), (" True ", True)])
def test_bool_coercions(v: Any, want: bool) -> None:
    assert net({"private": v}) == {"private": want}
    assert mem({"authorized": v}) == {"authorized": want}


@pytest.mark.parametrize("v", [2, -1, "yes", "t", "", None, 1.5, [], {}])
def test_bool_rejections(v: Any) -> None:
    rejects(net, {"enableBroadcast": v}, "enableBroadcast")
    rejects(mem, {"activeBridge": v}, "activeBridge")
    rejects(mem, {"noAutoAssignIps": v}, "noAutoAssignIps")


@pytest.mark.parametrize("v,want", [(1500, 1500), ("1500", 1500), (1500.0, 1500), (100, 1280), (0, 1280),
                                    (-5, 1280), (20000, 10000), ("99999999999", 10000), (1280, 1280),
                                    (10000, 10000)])
def test_mtu_is_coerced_and_clamped(v: Any, want: int) -> None:
    assert net({"mtu": v}) == {"mtu": want}


@pytest.mark.parametrize("v", [True, "15x", 1500.5, None, [1500], "0x100"])
def test_mtu_rejections(v: Any) -> None:
    rejects(net, {"mtu": v}, "mtu")


def test_multicast_limit() -> None:
    assert net({"multicastLimit": "64"}) == {"multicastLimit": 64}
    assert net({"multicastLimit": 0}) == {"multicastLimit": 0}
    rejects(net, {"multicastLimit": -1}, "multicastLimit")
    rejects(net, {"multicastLimit": 1 << 32}, "multicastLimit")


def test_names() -> None:
    assert net({"name": "héllo"}) == {"name": "héllo"}
    assert mem({"name": ""}) == {"name": ""}
    rejects(net, {"name": 5}, "name")
    rejects(mem, {"name": None}, "name")
    rejects(net, {"name": "x" * 1025}, "name")


# -------------------------------------------------------------------------------------- assign modes

def test_v4_assign_mode() -> None:
    assert net({"v4AssignMode": "zt"}) == {"v4AssignMode": {"zt": True}}
    assert net({"v4AssignMode": "none"}) == {"v4AssignMode": {"zt": False}}
    assert net({"v4AssignMode": {"zt": "true", "other": 1}}) == {"v4AssignMode": {"zt": True}}
    assert net({"v4AssignMode": {}}) == {"v4AssignMode": {"zt": False}}
    rejects(net, {"v4AssignMode": "dhcp"}, "v4AssignMode")
    rejects(net, {"v4AssignMode": 1}, "v4AssignMode")
    rejects(net, {"v4AssignMode": {"zt": "maybe"}}, "v4AssignMode.zt")


def test_v6_assign_mode() -> None:
    all_off = {"rfc4193": False, "zt": False, "6plane": False}
    assert net({"v6AssignMode": "rfc4193,6plane"}) == {"v6AssignMode": {**all_off, "rfc4193": True,
                                                                        "6plane": True}}
    assert net({"v6AssignMode": ""}) == {"v6AssignMode": all_off}
    assert net({"v6AssignMode": {"zt": 1}}) == {"v6AssignMode": {**all_off, "zt": True}}
    rejects(net, {"v6AssignMode": "rfc4193,bogus"}, "v6AssignMode")
    rejects(net, {"v6AssignMode": {"6plane": 7}}, "v6AssignMode.6plane")


# ------------------------------------------------------------------------------------- routes & pools

def test_routes_canonical_cidr_and_via() -> None:
    got = net({"routes": [
        {"target": "10.1.2.3/24"},
        {"target": "10.9.0.0/16", "via": "10.1.2.1"},
        {"target": "FD00:0000::1/64", "via": None},
        {"target": "192.168.0.0/16", "via": ""},
    ]})["routes"]
    assert got == [{"target": "10.1.2.0/24", "via": None}, {"target": "10.9.0.0/16", "via": "10.1.2.1"},
                   {"target": "fd00::/64", "via": None}, {"target": "192.168.0.0/16", "via": None}]


@pytest.mark.parametrize("route,field", [
    ({"target": "10.0.0.0"}, "routes[0].target"),  # no prefix length: ambiguous
    ({"target": "10.0.0.0/33"}, "routes[0].target"),
    ({"target": "bogus/8"}, "routes[0].target"),
    ({"target": 5}, "routes[0].target"),
    ({"via": "10.0.0.1"}, "routes[0].target"),
    ({"target": "10.0.0.0/8", "via": "fd00::1"}, "routes[0].via"),
    ({"target": "10.0.0.0/8", "via": "10.0.0.300"}, "routes[0].via"),
    ("10.0.0.0/8", "routes[0]"),
])
def test_invalid_routes_are_rejected_not_dropped(route: Any, field: str) -> None:
    rejects(net, {"routes": [route]}, field)


def test_pools() -> None:
    got = net({"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.1"},
                                     {"ipRangeStart": "FD00::1", "ipRangeEnd": "fd00::00ff"}]})
    assert got == {"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.1"},
                                         {"ipRangeStart": "fd00::1", "ipRangeEnd": "fd00::ff"}]}
    rejects(net, {"ipAssignmentPools": [{"ipRangeStart": "10.0.0.9", "ipRangeEnd": "10.0.0.1"}]},
            "ipAssignmentPools[0].ipRangeEnd")
    rejects(net, {"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "fd00::1"}]},
            "ipAssignmentPools[0].ipRangeEnd")
    rejects(net, {"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1"}]}, "ipAssignmentPools[0].ipRangeEnd")
    rejects(net, {"ipAssignmentPools": [{"ipRangeStart": "x", "ipRangeEnd": "10.0.0.1"}]},
            "ipAssignmentPools[0].ipRangeStart")


def test_dns() -> None:
    assert net({"dns": {"domain": "zt.example", "servers": ["10.0.0.1", "FD00::1"]}}) == {
        "dns": {"domain": "zt.example", "servers": ["10.0.0.1", "fd00::1"]}}
    assert net({"dns": {}}) == {"dns": {"domain": "", "servers": []}}
    rejects(net, {"dns": {"servers": ["nope"]}}, "dns.servers[0]")
    rejects(net, {"dns": {"domain": 3}}, "dns.domain")
    rejects(net, {"dns": []}, "dns")


# ------------------------------------------------------------------------------- capabilities & tags

def test_network_capabilities_sorted_by_id_last_duplicate_wins() -> None:
    got = net({"capabilities": [
        {"id": 7, "default": True, "rules": [{"type": "ACTION_DROP"}]},
        {"id": "2"},
        {"id": 7, "rules": []},
    ]})["capabilities"]
    assert got == [{"id": 2, "default": False, "rules": []}, {"id": 7, "default": False, "rules": []}]
    rejects(net, {"capabilities": [{"default": True}]}, "capabilities[0].id")
    rejects(net, {"capabilities": [{"id": 1, "rules": [{"type": "NOPE"}]}]}, "capabilities[0].rules[0].type")


def test_network_tags_sorted_with_optional_default() -> None:
    got = net({"tags": [{"id": 9, "default": "3"}, {"id": 1}, {"id": 1, "default": None}]})["tags"]
    assert got == [{"id": 1, "default": None}, {"id": 9, "default": 3}]
    rejects(net, {"tags": [{"id": -1}]}, "tags[0].id")
    rejects(net, {"tags": [{"id": 1, "default": 1 << 32}]}, "tags[0].default")


def test_member_tags_kept_sorted_pairs() -> None:
    assert mem({"tags": [[5, 1], ["2", 7], [5, 3]]}) == {"tags": [[2, 7], [5, 3]]}
    rejects(mem, {"tags": [[1, 2, 3]]}, "tags[0]")
    rejects(mem, {"tags": [{"id": 1}]}, "tags[0]")
    rejects(mem, {"tags": [[1, "x"]]}, "tags[0][1]")


def test_member_capabilities_sorted_and_deduplicated() -> None:
    assert mem({"capabilities": [5, "1", 5, 3, 1]}) == {"capabilities": [1, 3, 5]}
    rejects(mem, {"capabilities": [1, None]}, "capabilities[1]")
    rejects(mem, {"capabilities": 5}, "capabilities")


def test_member_ip_assignments_canonical_first_occurrence_kept() -> None:
    assert mem({"ipAssignments": ["10.0.0.2", "FD00:0::1", "10.0.0.2", "10.0.0.1"]}) == {
        "ipAssignments": ["10.0.0.2", "fd00::1", "10.0.0.1"]}
    for bad in ["10.0.0.0/24", "fe80::1%eth0", "10.0.0", 5, None]:
        rejects(mem, {"ipAssignments": ["10.0.0.1", bad]}, "ipAssignments[1]")


@pytest.mark.parametrize("fn,key,item", [
    (net, "routes", {"target": "10.0.0.0/8"}),
    (net, "ipAssignmentPools", {"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.2"}),
    (net, "rules", {"type": "ACTION_ACCEPT"}),
    (net, "capabilities", {"id": 1}),
    (net, "tags", {"id": 1}),
    (mem, "ipAssignments", "10.0.0.1"),
    (mem, "tags", [1, 1]),
    (mem, "capabilities", 1),
])
def test_arrays_capped_at_16384(fn: Any, key: str, item: Any) -> None:
    assert len(fn({key: [item] * ARRAY_MAX})[key]) >= 1
    rejects(fn, {key: [item] * (ARRAY_MAX + 1)}, key)


def test_dns_servers_capped() -> None:
    rejects(net, {"dns": {"servers": ["10.0.0.1"] * (ARRAY_MAX + 1)}}, "dns.servers")


# -------------------------------------------------------------------------------------------- rules

def test_rules_rendered_canonically() -> None:
    got = net({"rules": [
        {"type": "MATCH_ETHERTYPE", "etherType": "2048", "not": 1},
        {"type": "MATCH_MAC_SOURCE", "mac": "AA-BB-CC-DD-EE-FF", "or": "true"},
        {"type": "MATCH_IPV4_DEST", "ip": "10.1.2.3/8"},
        {"type": "MATCH_IPV6_SOURCE", "ip": "FD00::1/64"},
        {"type": "MATCH_IP_DEST_PORT_RANGE", "start": 80},
        {"type": "MATCH_ICMP", "icmpType": 8},
        {"type": "MATCH_ICMP", "icmpType": 3, "icmpCode": "4"},
        {"type": "MATCH_SOURCE_ZEROTIER_ADDRESS", "zt": "ABC"},
        {"type": "ACTION_TEE", "address": "0123456789", "length": 64},
        {"type": "ACTION_REDIRECT", "address": "0123456789", "flags": 2},
        {"type": "MATCH_CHARACTERISTICS", "mask": "8000"},
        {"type": "MATCH_TAGS_EQUAL", "id": 1, "value": 2},
        {"type": "INTEGER_RANGE", "start": 16, "end": "20", "idx": 3, "little": True, "bits": 8},
        {"type": "ACTION_PRIORITY", "qosBucket": 3},
        {"type": "ACTION_DROP"},
    ]})["rules"]
    assert got == [
        {"type": "MATCH_ETHERTYPE", "etherType": 2048, "not": True, "or": False},
        {"type": "MATCH_MAC_SOURCE", "mac": "aa:bb:cc:dd:ee:ff", "not": False, "or": True},
        {"type": "MATCH_IPV4_DEST", "ip": "10.1.2.3/8", "not": False, "or": False},
        {"type": "MATCH_IPV6_SOURCE", "ip": "fd00::1/64", "not": False, "or": False},
        {"type": "MATCH_IP_DEST_PORT_RANGE", "start": 80, "end": 80, "not": False, "or": False},
        {"type": "MATCH_ICMP", "icmpType": 8, "icmpCode": None, "not": False, "or": False},
        {"type": "MATCH_ICMP", "icmpType": 3, "icmpCode": 4, "not": False, "or": False},
        {"type": "MATCH_SOURCE_ZEROTIER_ADDRESS", "zt": "0000000abc", "not": False, "or": False},
        {"type": "ACTION_TEE", "address": "0123456789", "flags": 0, "length": 64, "not": False, "or": False},
        {"type": "ACTION_REDIRECT", "address": "0123456789", "flags": 2, "not": False, "or": False},
        {"type": "MATCH_CHARACTERISTICS", "mask": "0000000000008000", "not": False, "or": False},
        {"type": "MATCH_TAGS_EQUAL", "id": 1, "value": 2, "not": False, "or": False},
        {"type": "INTEGER_RANGE", "start": "0000000000000010", "end": "0000000000000020", "idx": 3,
         "little": True, "bits": 8, "not": False, "or": False},
        {"type": "ACTION_PRIORITY", "qosBucket": 3, "not": False, "or": False},
        {"type": "ACTION_DROP", "not": False, "or": False},
    ]


@pytest.mark.parametrize("rule,field", [
    ({"type": "MATCH_NOTHING"}, "rules[0].type"),
    ({"etherType": 1}, "rules[0].type"),
    ({"type": "MATCH_ETHERTYPE"}, "rules[0].etherType"),
    ({"type": "MATCH_ETHERTYPE", "etherType": 70000}, "rules[0].etherType"),
    ({"type": "MATCH_VLAN_PCP", "vlanPcp": 256}, "rules[0].vlanPcp"),
    ({"type": "MATCH_MAC_DEST", "mac": "aa:bb:cc"}, "rules[0].mac"),
    ({"type": "MATCH_IPV4_SOURCE", "ip": "fd00::/8"}, "rules[0].ip"),
    ({"type": "MATCH_IPV4_SOURCE", "ip": "10.0.0.1"}, "rules[0].ip"),
    ({"type": "MATCH_IP_SOURCE_PORT_RANGE", "start": 90, "end": 80}, "rules[0].end"),
    ({"type": "ACTION_TEE"}, "rules[0].address"),
    ({"type": "ACTION_TEE", "address": "xyz"}, "rules[0].address"),
    ({"type": "ACTION_ACCEPT", "not": "perhaps"}, "rules[0].not"),
    ({"type": "INTEGER_RANGE", "start": 10, "end": 5}, "rules[0].end"),
    ({"type": "INTEGER_RANGE", "start": 0, "end": 1 << 33}, "rules[0].end"),
    ({"type": "ACTION_PRIORITY", "qosBucket": 9}, "rules[0].qosBucket"),
    ("ACTION_ACCEPT", "rules[0]"),
])
def test_invalid_rules_are_rejected(rule: Any, field: str) -> None:
    rejects(net, {"rules": [rule]}, field)


# -------------------------------------------------------------------------------------- idempotence

def test_canonical_output_validates_to_itself() -> None:
    body = {"name": "n", "mtu": "1400", "v4AssignMode": "zt", "v6AssignMode": "zt",
            "routes": [{"target": "10.1.2.3/24", "via": "10.1.2.1"}],
            "ipAssignmentPools": [{"ipRangeStart": "10.1.2.10", "ipRangeEnd": "10.1.2.20"}],
            "rules": [{"type": "MATCH_ICMP", "icmpType": 1}, {"type": "ACTION_ACCEPT"}],
            "capabilities": [{"id": 3, "rules": [{"type": "ACTION_DROP"}]}], "tags": [{"id": 2}],
            "dns": {"domain": "d", "servers": ["10.0.0.1"]}, "private": "0", "enableBroadcast": 1,
            "multicastLimit": "5"}
    once = net(body)
    assert net(once) == once
    m = mem({"authorized": "1", "tags": [[3, 1], [1, 2]], "capabilities": [3, 1], "ipAssignments": ["::1"]})
    assert mem(m) == m


# ------------------------------------------------------------------------------------ ids and records

def test_ids() -> None:
    assert parse_nwid("A1B2C3D4E5000001") == 0xA1B2C3D4E5000001
    assert parse_address("00000000AB") == 0xAB
    for bad in ["a1b2c3d4e500000", "a1b2c3d4e50000011", "a1b2c3d4e500000z", 5, None, " 1b2c3d4e5000001"]:
        with pytest.raises(ValidationError) as e:
            parse_nwid(bad)
        assert e.value.field == "nwid"
    for bad in ["0000000000", "ff00000001", "FFaaaaaaaa", "123", "12345678901"]:
        with pytest.raises(ValidationError) as e:
            parse_address(bad)
        assert e.value.field == "address"


def test_whole_records_for_restore() -> None:
    nwid, rec = network_record({"id": "a1b2c3d4e5000001", "name": "x", "creationTime": 5, "revision": 3},
                               0xA1B2C3D4E5)
    assert nwid == 0xA1B2C3D4E5000001 and rec["name"] == "x" and rec["revision"] == 3 and rec["mtu"] == 2800
    with pytest.raises(ValidationError) as e:
        network_record({"id": "b1b2c3d4e5000001"}, 0xA1B2C3D4E5)
    assert e.value.field == "id"
    with pytest.raises(ValidationError) as e:
        network_record({"id": "a1b2c3d4e5000000"}, 0xA1B2C3D4E5)
    assert e.value.field == "id"
    n, a, m = member_record({"nwid": "a1b2c3d4e5000001", "id": "00000000ab", "identity": "ab:0:xyz",
                             "vMajor": 1, "lastAuthorizedCredentialType": "api", "revision": 4})
    assert (n, a) == (0xA1B2C3D4E5000001, 0xAB)
    assert m["identity"] == "ab:0:xyz" and m["vMajor"] == 1 and m["revision"] == 4 and m["vProto"] == -1
    with pytest.raises(ValidationError) as e:
        member_record({"nwid": "a1b2c3d4e5000001", "id": "00000000ab", "vRev": -2})
    assert e.value.field == "vRev"
