"""Networks through the HTTP API, against the contract tables of shared/zerotier-api.md."""
from __future__ import annotations

from typing import Any

from api_helpers import ApiEnv

NETWORK_DEFAULTS: dict[str, Any] = {
    "objtype": "network",
    "name": "",
    "private": True,
    "enableBroadcast": True,
    "v4AssignMode": {"zt": False},
    "v6AssignMode": {"rfc4193": False, "zt": False, "6plane": False},
    "mtu": 2800,
    "multicastLimit": 32,
    "routes": [],
    "ipAssignmentPools": [],
    "rules": [{"type": "ACTION_ACCEPT", "not": False, "or": False}],
    "capabilities": [],
    "tags": [],
    "dns": {"domain": "", "servers": []},
    "revision": 1,
}


async def test_fresh_network_matches_the_contract_defaults(env: ApiEnv) -> None:
    before = env.cluster.now_ms()
    net = await env.new_network()
    after = env.cluster.now_ms()
    assert set(net) == set(NETWORK_DEFAULTS) | {"id", "nwid", "creationTime"}
    assert {k: net[k] for k in NETWORK_DEFAULTS} == NETWORK_DEFAULTS
    assert net["id"] == net["nwid"] and len(net["id"]) == 16
    assert before <= net["creationTime"] <= after
    assert await env.ok("GET", f"/controller/network/{net['id']}") == net


async def test_random_create_under_this_controller(env: ApiEnv) -> None:
    ids = set()
    ctrl = env.address
    assert ctrl is not None
    for path in ("/controller/network", f"/controller/network/{ctrl}______",
                 f"/controller/network/{ctrl.upper()}______"):
        for method in ("POST", "PUT"):
            net = await env.ok(method, path, {"name": f"{method} {path}"})
            assert net["id"].startswith(ctrl) and net["id"] == net["id"].lower()
            assert int(net["id"][10:], 16) != 0
            assert net["name"] == f"{method} {path}"
            ids.add(net["id"])
    assert len(ids) == 6
    assert sorted(await env.ok("GET", "/controller/network")) == sorted(ids)


async def test_random_create_with_a_foreign_prefix_is_400(env: ApiEnv) -> None:
    r = await env.post("/controller/network/deadbeef01______")
    assert r.status == 400, r
    assert r.json["field"] == "nwid" and r.json["error"] == "INVALID"
    assert await env.ok("GET", "/controller/network") == []


async def test_empty_body_means_defaults(env: ApiEnv) -> None:
    r = await env.request("POST", env.create_path, data=b"")
    assert r.status == 200, r
    assert r.json["name"] == ""
    r = await env.request("POST", env.create_path, data=b"  \n")
    assert r.status == 200, r


async def test_post_creates_or_updates_and_put_is_post(env: ApiEnv) -> None:
    nwid = env.nwid(0x42)
    created = await env.ok("POST", f"/controller/network/{nwid}", {"name": "a"})
    assert created["id"] == nwid and created["revision"] == 1 and created["name"] == "a"
    updated = await env.ok("PUT", f"/controller/network/{nwid}", {"private": False})
    assert updated["revision"] == 2 and updated["name"] == "a" and updated["private"] is False
    assert updated["creationTime"] == created["creationTime"]
    again = await env.ok("POST", f"/controller/network/{nwid}", {"name": "b"})
    assert again["revision"] == 3 and again["name"] == "b" and again["private"] is False


async def test_ids_are_case_insensitive_in_the_path_and_lowercase_in_output(env: ApiEnv) -> None:
    nwid = env.nwid(0xABCDEF)
    net = await env.ok("POST", f"/controller/network/{nwid.upper()}", {})
    assert net["id"] == net["nwid"] == nwid
    assert (await env.ok("GET", f"/controller/network/{nwid.upper()}"))["id"] == nwid
    assert await env.ok("GET", "/controller/network") == [nwid]
    deleted = await env.ok("DELETE", f"/controller/network/{nwid.upper()}")
    assert deleted["id"] == nwid


async def test_revision_grows_only_on_change(env: ApiEnv) -> None:
    nwid = env.nwid(7)
    body = {"name": "n", "mtu": 1500, "routes": [{"target": "10.0.0.0/24"}]}
    first = await env.ok("POST", f"/controller/network/{nwid}", body)
    assert first["revision"] == 1
    same = await env.ok("POST", f"/controller/network/{nwid}", body)
    assert same == first  # no change: same revision, same record
    assert (await env.ok("POST", f"/controller/network/{nwid}", {}))["revision"] == 1
    # read-only and unknown fields are ignored, so they change nothing either
    ro = await env.ok("POST", f"/controller/network/{nwid}", {"revision": 99, "id": env.nwid(8), "creationTime": 5,
                                                              "objtype": "x", "bogus": True})
    assert ro == first
    # a value that canonicalises to the stored one is no change
    assert (await env.ok("POST", f"/controller/network/{nwid}", {"mtu": "1500"}))["revision"] == 1
    changed = await env.ok("POST", f"/controller/network/{nwid}", {"mtu": 1400})
    assert changed["revision"] == 2


async def test_coercions(env: ApiEnv) -> None:
    nwid = env.nwid(1)
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"private": 0}, {"private": False}),
        ({"private": 1}, {"private": True}),
        ({"private": "false"}, {"private": False}),
        ({"private": "TRUE"}, {"private": True}),
        ({"enableBroadcast": "0"}, {"enableBroadcast": False}),
        ({"mtu": "1500"}, {"mtu": 1500}),
        ({"mtu": 100}, {"mtu": 1280}),
        ({"mtu": 99999}, {"mtu": 10000}),
        ({"mtu": -5}, {"mtu": 1280}),
        ({"mtu": 1400.0}, {"mtu": 1400}),
        ({"multicastLimit": "64"}, {"multicastLimit": 64}),
        ({"v4AssignMode": "zt"}, {"v4AssignMode": {"zt": True}}),
        ({"v4AssignMode": {"zt": 0}}, {"v4AssignMode": {"zt": False}}),
        ({"v6AssignMode": {"6plane": "true"}}, {"v6AssignMode": {"rfc4193": False, "zt": False, "6plane": True}}),
        ({"routes": [{"target": "10.1.2.3/24", "via": None}, {"target": "FD00::1/64", "via": "fd00::FE"}]},
         {"routes": [{"target": "10.1.2.0/24", "via": None}, {"target": "fd00::/64", "via": "fd00::fe"}]}),
        ({"routes": [{"target": "192.168.0.0/16", "via": ""}]}, {"routes": [{"target": "192.168.0.0/16", "via": None}]}),
        ({"ipAssignmentPools": [{"ipRangeStart": "10.0.0.10", "ipRangeEnd": "10.0.0.20"}]},
         {"ipAssignmentPools": [{"ipRangeStart": "10.0.0.10", "ipRangeEnd": "10.0.0.20"}]}),
        ({"tags": [{"id": 5, "default": 1}, {"id": "2"}]},
         {"tags": [{"id": 2, "default": None}, {"id": 5, "default": 1}]}),
        ({"capabilities": [{"id": 9, "default": 1}, {"id": 3, "rules": [{"type": "ACTION_DROP"}]}]},
         {"capabilities": [{"id": 3, "default": False, "rules": [{"type": "ACTION_DROP", "not": False, "or": False}]},
                           {"id": 9, "default": True, "rules": []}]}),
        ({"rules": [{"type": "MATCH_ETHERTYPE", "etherType": "2048", "not": 1}, {"type": "ACTION_ACCEPT"}]},
         {"rules": [{"type": "MATCH_ETHERTYPE", "etherType": 2048, "not": True, "or": False},
                    {"type": "ACTION_ACCEPT", "not": False, "or": False}]}),
        ({"dns": {"domain": "zt.example", "servers": ["10.0.0.1"]}},
         {"dns": {"domain": "zt.example", "servers": ["10.0.0.1"]}}),
        ({"name": "ünïcode ☃"}, {"name": "ünïcode ☃"}),
    ]
    for body, expect in cases:
        net = await env.ok("POST", f"/controller/network/{nwid}", body)
        assert {k: net[k] for k in expect} == expect, body
        assert await env.ok("GET", f"/controller/network/{nwid}") == net


async def test_rejections_name_the_field(env: ApiEnv) -> None:
    nwid = env.nwid(2)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": 5}, "name"),
        ({"private": "maybe"}, "private"),
        ({"private": 2}, "private"),
        ({"enableBroadcast": None}, "enableBroadcast"),
        ({"mtu": "abc"}, "mtu"),
        ({"mtu": 1.5}, "mtu"),
        ({"mtu": True}, "mtu"),
        ({"multicastLimit": -1}, "multicastLimit"),
        ({"multicastLimit": 10 ** 30}, "multicastLimit"),
        ({"v4AssignMode": "dhcp"}, "v4AssignMode"),
        ({"v4AssignMode": {"zt": "perhaps"}}, "v4AssignMode.zt"),
        ({"v6AssignMode": "warp"}, "v6AssignMode"),
        ({"routes": "10.0.0.0/24"}, "routes"),
        ({"routes": [{"target": "10.0.0.0/33"}]}, "routes[0].target"),
        ({"routes": [{"target": "10.0.0.0"}]}, "routes[0].target"),
        ({"routes": [{"via": "10.0.0.1"}]}, "routes[0].target"),
        ({"routes": [{"target": "10.0.0.0/24"}, {"target": "10.0.0.0/8", "via": "fd00::1"}]}, "routes[1].via"),
        ({"routes": [{"target": "10.0.0.0/24", "via": "nope"}]}, "routes[0].via"),
        ({"ipAssignmentPools": [{"ipRangeStart": "10.0.0.9", "ipRangeEnd": "10.0.0.1"}]},
         "ipAssignmentPools[0].ipRangeEnd"),
        ({"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1"}]}, "ipAssignmentPools[0].ipRangeEnd"),
        ({"ipAssignmentPools": [{"ipRangeStart": "x", "ipRangeEnd": "10.0.0.1"}]},
         "ipAssignmentPools[0].ipRangeStart"),
        ({"ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "fd00::1"}]},
         "ipAssignmentPools[0].ipRangeEnd"),
        ({"rules": [{"type": "NOPE"}]}, "rules[0].type"),
        ({"rules": [{"type": "ACTION_ACCEPT"}, {"type": "MATCH_ETHERTYPE"}]}, "rules[1].etherType"),
        ({"rules": [{"type": "MATCH_VLAN_ID", "vlanId": 70000}]}, "rules[0].vlanId"),
        ({"rules": {"type": "ACTION_ACCEPT"}}, "rules"),
        ({"capabilities": [{"default": True}]}, "capabilities[0].id"),
        ({"capabilities": [{"id": 1, "rules": [{"type": "BAD"}]}]}, "capabilities[0].rules[0].type"),
        ({"tags": [{"id": -1}]}, "tags[0].id"),
        ({"tags": [{"id": 1, "default": "x"}]}, "tags[0].default"),
        ({"dns": {"servers": ["not-an-ip"]}}, "dns.servers[0]"),
        ({"dns": "x"}, "dns"),
        ({"routes": [{"target": f"10.{i // 256 % 256}.{i % 256}.0/24"} for i in range(16385)]}, "routes"),
        ({"rules": [{"type": "ACTION_ACCEPT"}] * 16385}, "rules"),
    ]
    for body, field in cases:
        r = await env.post(f"/controller/network/{nwid}", body)
        assert r.status == 400, (body if len(str(body)) < 200 else field, r)
        assert r.json["error"] == "INVALID" and r.json["field"] == field, (field, r)
        assert r.json["message"]
    # nothing was proposed: the network was never created
    assert (await env.get(f"/controller/network/{nwid}")).status == 404
    assert env.cluster.machine().network_count() == 0


async def test_arrays_of_exactly_16384_are_accepted(env: ApiEnv) -> None:
    rules = [{"type": "ACTION_ACCEPT"}] * 16384
    net = await env.ok("POST", f"/controller/network/{env.nwid(3)}", {"rules": rules})
    assert len(net["rules"]) == 16384


async def test_bad_network_ids_in_the_path(env: ApiEnv) -> None:
    for bad in ("c0ffee123400000", "c0ffee12340000011", "c0ffee12340000zz", "xyz", "c0ffee1234______x"):
        for method in ("GET", "POST", "PUT", "DELETE"):
            r = await env.request(method, f"/controller/network/{bad}", body={} if method in ("POST", "PUT") else None)
            assert r.status == 400, (bad, method, r)
            assert r.json["field"] == "nwid"
        for path in (f"/controller/network/{bad}/member", f"/controller/network/{bad}/member/abcdef0123",
                     f"/unstable/controller/network/{bad}/member"):
            r = await env.get(path)
            assert r.status == 400 and r.json["field"] == "nwid", (path, r)
    # {ctrl}______ is a create-only path: reading or deleting it is a bad network id
    for method in ("GET", "DELETE"):
        r = await env.request(method, env.create_path)
        assert r.status == 400 and r.json["field"] == "nwid", r
    # a network of another controller, or n == 0, cannot be created here
    for bad in ("deadbeef01000001", env.nwid(0)):
        r = await env.post(f"/controller/network/{bad}")
        assert r.status == 400 and r.json["field"] == "nwid", (bad, r)
    assert env.cluster.machine().network_count() == 0


async def test_unknown_networks_are_404(env: ApiEnv) -> None:
    missing = env.nwid(0x999)
    for method, path in [("GET", f"/controller/network/{missing}"), ("DELETE", f"/controller/network/{missing}"),
                         ("GET", f"/controller/network/{missing}/member"),
                         ("GET", f"/unstable/controller/network/{missing}/member"),
                         ("GET", f"/controller/network/{missing}/member/abcdef0123"),
                         ("GET", "/controller/network/deadbeef01000001")]:
        r = await env.request(method, path)
        assert r.status == 404, (method, path, r)
        assert r.json["error"] == "NOT_FOUND"


async def test_delete_returns_the_network_and_takes_its_members(env: ApiEnv) -> None:
    nwid = env.nwid(5)
    await env.ok("POST", f"/controller/network/{nwid}", {"name": "doomed"})
    for a in ("1111111111", "2222222222"):
        await env.ok("POST", f"/controller/network/{nwid}/member/{a}", {"authorized": True})
    other = await env.new_network()
    await env.ok("POST", f"/controller/network/{other['id']}/member/1111111111", {})
    deleted = await env.ok("DELETE", f"/controller/network/{nwid}")
    assert deleted["id"] == nwid and deleted["name"] == "doomed"
    assert (await env.get(f"/controller/network/{nwid}")).status == 404
    assert (await env.get(f"/controller/network/{nwid}/member")).status == 404
    assert (await env.get(f"/controller/network/{nwid}/member/1111111111")).status == 404
    assert (await env.delete(f"/controller/network/{nwid}")).status == 404
    # recreated empty: the members really went with it
    await env.ok("POST", f"/controller/network/{nwid}", {})
    assert await env.ok("GET", f"/controller/network/{nwid}/member") == {}
    unstable = await env.ok("GET", f"/unstable/controller/network/{nwid}/member")
    assert unstable == {"data": [], "meta": {"totalCount": 0, "authorizedCount": 0}}
    # the other network is untouched
    assert await env.ok("GET", f"/controller/network/{other['id']}/member") == {"1111111111": 1}


async def test_unstable_network_list_with_counts(env: ApiEnv) -> None:
    empty = await env.ok("GET", "/unstable/controller/network")
    assert empty == {"data": [], "meta": {"networkCount": 0}}
    a, b = env.nwid(0x10), env.nwid(0x20)
    await env.ok("POST", f"/controller/network/{a}", {"name": "a"})
    await env.ok("POST", f"/controller/network/{b}", {"name": "b"})
    for i, auth in enumerate([True, True, False]):
        await env.ok("POST", f"/controller/network/{a}/member/{i + 1:010x}", {"authorized": auth})
    await env.ok("DELETE", f"/controller/network/{a}/member/{2:010x}")
    got = await env.ok("GET", "/unstable/controller/network")
    assert got["meta"] == {"networkCount": 2}
    by_id = {n["id"]: n for n in got["data"]}
    assert by_id[a]["meta"] == {"totalMemberCount": 2, "authorizedMemberCount": 1}
    assert by_id[b]["meta"] == {"totalMemberCount": 0, "authorizedMemberCount": 0}
    plain = await env.ok("GET", f"/controller/network/{a}")
    assert {k: v for k, v in by_id[a].items() if k != "meta"} == plain


async def test_network_before_initialisation(noleader_env: ApiEnv) -> None:
    # No leader ever, so no cluster.init: writes are 503, and so are local reads, although the (empty) local model
    # could answer them: before initialisation ctrl.db holds no token hash, so the controller cannot tell whether
    # the caller may read, and answers "retry soon" rather than serve or refuse (Controller.check_token).
    env = noleader_env
    for params in ({"consistency": "local"}, None):
        r = await env.get("/controller/network", params=params)
        assert r.status == 503 and r.json["error"] == "CLUSTER_NO_LEADER", r
    r = await env.post("/controller/network")  # no controller address exists yet: the create path without one
    assert r.status == 503 and r.json["error"] == "CLUSTER_NO_LEADER", r
