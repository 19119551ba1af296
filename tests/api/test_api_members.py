"""Members through the HTTP API, against the contract tables of shared/zerotier-api.md."""
from __future__ import annotations

import ipaddress
from typing import Any

from api_helpers import ApiEnv

MEMBER_DEFAULTS: dict[str, Any] = {
    "objtype": "member",
    "name": "",
    "authorized": False,
    "activeBridge": False,
    "noAutoAssignIps": False,
    "ipAssignments": [],
    "tags": [],
    "capabilities": [],
    "identity": "",
    "revision": 1,
    "lastAuthorizedTime": 0,
    "lastDeauthorizedTime": 0,
    "vMajor": -1,
    "vMinor": -1,
    "vRev": -1,
    "vProto": -1,
}
POOL_NET = {
    "v4AssignMode": {"zt": True},
    "ipAssignmentPools": [{"ipRangeStart": "10.9.0.1", "ipRangeEnd": "10.9.0.254"}],
    "routes": [{"target": "10.9.0.0/24", "via": None}],
}


def mpath(nwid: str, address: str) -> str:
    return f"/controller/network/{nwid}/member/{address}"


async def network(env: ApiEnv, body: dict[str, Any] | None = None) -> str:
    """Create network 0xabc of this cluster's controller; its id."""
    nwid = env.nwid(0xABC)
    await env.ok("POST", f"/controller/network/{nwid}", body or {})
    return nwid


async def test_fresh_member_matches_the_contract_defaults(env: ApiEnv) -> None:
    nwid = await network(env)
    before = env.cluster.now_ms()
    m = await env.ok("POST", mpath(nwid, "abcdef0123"), {})  # never joined: created by the API alone
    after = env.cluster.now_ms()
    assert {k: m[k] for k in MEMBER_DEFAULTS} == MEMBER_DEFAULTS
    assert m["id"] == m["address"] == "abcdef0123" and m["nwid"] == nwid
    assert before <= m["creationTime"] <= after
    assert set(m) - set(MEMBER_DEFAULTS) <= {"id", "address", "nwid", "creationTime",
                                             "lastAuthorizedCredentialType"}
    assert await env.ok("GET", mpath(nwid, "abcdef0123")) == m
    assert await env.ok("GET", f"/controller/network/{nwid}/member") == {"abcdef0123": 1}


async def test_member_post_needs_the_network(env: ApiEnv) -> None:
    nwid = env.nwid(0xABC)
    r = await env.post(mpath(nwid, "abcdef0123"), {"authorized": True})
    assert r.status == 404 and r.json["error"] == "NOT_FOUND", r
    r = await env.request("PUT", mpath(nwid, "abcdef0123"), body={})
    assert r.status == 404, r


async def test_put_is_post_and_updates_keep_other_fields(env: ApiEnv) -> None:
    nwid = await network(env)
    a = await env.ok("PUT", mpath(nwid, "0123456789"), {"name": "laptop"})
    b = await env.ok("POST", mpath(nwid, "0123456789"), {"activeBridge": True})
    assert b["name"] == "laptop" and b["activeBridge"] is True and b["revision"] == a["revision"] + 1
    assert b["creationTime"] == a["creationTime"]


async def test_ids_case_insensitive(env: ApiEnv) -> None:
    nwid = await network(env)
    m = await env.ok("POST", mpath(nwid.upper(), "ABCDEF0123"), {})
    assert m["id"] == "abcdef0123" and m["nwid"] == nwid
    assert (await env.ok("GET", mpath(nwid, "AbCdEf0123")))["id"] == "abcdef0123"
    assert await env.ok("GET", f"/controller/network/{nwid.upper()}/member") == {"abcdef0123": 1}
    assert (await env.ok("DELETE", mpath(nwid, "ABCDEF0123")))["id"] == "abcdef0123"


async def test_authorization_times_and_revision(env: ApiEnv) -> None:
    nwid = await network(env)
    m0 = await env.ok("POST", mpath(nwid, "1000000001"), {})
    assert m0["lastAuthorizedCredentialType"] is None
    t0 = env.cluster.now_ms()
    m1 = await env.ok("POST", mpath(nwid, "1000000001"), {"authorized": "true"})
    assert m1["authorized"] is True and m1["revision"] == 2
    assert m1["lastAuthorizedTime"] >= t0 and m1["lastDeauthorizedTime"] == 0
    assert m1["lastAuthorizedCredentialType"] == "api"
    same = await env.ok("POST", mpath(nwid, "1000000001"), {"authorized": 1})
    assert same == m1  # no change: times and revision stay
    m2 = await env.ok("POST", mpath(nwid, "1000000001"), {"authorized": False})
    assert m2["authorized"] is False and m2["revision"] == 3
    assert m2["lastDeauthorizedTime"] >= m1["lastAuthorizedTime"]
    assert m2["lastAuthorizedTime"] == m1["lastAuthorizedTime"]


async def test_coercions(env: ApiEnv) -> None:
    nwid = await network(env)
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"name": "x"}, {"name": "x"}),
        ({"activeBridge": 1}, {"activeBridge": True}),
        ({"activeBridge": "0"}, {"activeBridge": False}),
        ({"noAutoAssignIps": "TRUE"}, {"noAutoAssignIps": True}),
        ({"capabilities": [3, 1, "3", 2, 1]}, {"capabilities": [1, 2, 3]}),
        ({"tags": [[5, 1], [2, "3"], [5, 7]]}, {"tags": [[2, 3], [5, 7]]}),
        ({"ipAssignments": ["10.1.0.5", "FD00::0001", "10.1.0.5"]}, {"ipAssignments": ["10.1.0.5", "fd00::1"]}),
    ]
    for body, expect in cases:
        m = await env.ok("POST", mpath(nwid, "2000000002"), body)
        assert {k: m[k] for k in expect} == expect, body


async def test_rejections_name_the_field(env: ApiEnv) -> None:
    nwid = await network(env)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": []}, "name"),
        ({"authorized": "yes"}, "authorized"),
        ({"authorized": None}, "authorized"),
        ({"activeBridge": 3}, "activeBridge"),
        ({"ipAssignments": "10.0.0.1"}, "ipAssignments"),
        ({"ipAssignments": ["10.0.0.1", "10.0.0.300"]}, "ipAssignments[1]"),
        ({"ipAssignments": ["10.0.0.0/24"]}, "ipAssignments[0]"),
        ({"tags": [[1]]}, "tags[0]"),
        ({"tags": [[1, -2]]}, "tags[0][1]"),
        ({"tags": [["x", 2]]}, "tags[0][0]"),
        ({"capabilities": [1, "two"]}, "capabilities[1]"),
        ({"capabilities": [2 ** 32]}, "capabilities[0]"),
        ({"capabilities": [0] * 16385}, "capabilities"),
        ({"ipAssignments": [f"10.0.{i // 256 % 256}.{i % 256}" for i in range(16385)]}, "ipAssignments"),
    ]
    for body, field in cases:
        r = await env.post(mpath(nwid, "3000000003"), body)
        assert r.status == 400, (field, r)
        assert r.json["error"] == "INVALID" and r.json["field"] == field, (field, r)
    assert (await env.get(mpath(nwid, "3000000003"))).status == 404  # nothing was written


async def test_reserved_and_malformed_addresses_are_400(env: ApiEnv) -> None:
    nwid = await network(env)
    for bad in ("0000000000", "ff00000001", "FFFFFFFFFF", "ff12345678", "123456789", "12345678901", "zz23456789"):
        for method in ("GET", "POST", "PUT", "DELETE"):
            r = await env.request(method, mpath(nwid, bad), body={} if method in ("POST", "PUT") else None)
            assert r.status == 400, (bad, method, r)
            assert r.json["field"] == "address", r
    assert await env.ok("GET", f"/controller/network/{nwid}/member") == {}


async def test_delete_member(env: ApiEnv) -> None:
    nwid = await network(env)
    m = await env.ok("POST", mpath(nwid, "4000000004"), {"name": "gone", "authorized": True})
    deleted = await env.ok("DELETE", mpath(nwid, "4000000004"))
    assert deleted == m
    assert (await env.get(mpath(nwid, "4000000004"))).status == 404
    r = await env.delete(mpath(nwid, "4000000004"))
    assert r.status == 404 and r.json["error"] == "NOT_FOUND"
    assert await env.ok("GET", f"/controller/network/{nwid}/member") == {}


async def test_member_list_and_unstable_with_counts(env: ApiEnv) -> None:
    nwid = await network(env)
    expected = {}
    for i in range(1, 8):
        a = f"{i:010x}"
        m = await env.ok("POST", mpath(nwid, a), {"authorized": i % 3 == 0, "name": str(i)})
        if i % 2 == 0:
            m = await env.ok("POST", mpath(nwid, a), {"name": f"renamed {i}"})
        expected[a] = m["revision"]
    assert await env.ok("GET", f"/controller/network/{nwid}/member") == expected
    un = await env.ok("GET", f"/unstable/controller/network/{nwid}/member")
    assert un["meta"] == {"totalCount": 7, "authorizedCount": 2}
    assert [m["id"] for m in un["data"]] == sorted(expected)
    for m in un["data"]:
        assert m == await env.ok("GET", mpath(nwid, m["id"]))


async def test_large_member_listing_streams_correctly(env: ApiEnv) -> None:
    """Enough members for several streamed batches (written straight through the cluster, not HTTP, for speed)."""
    from hactl.fsm import commands as C
    nwid = await network(env)
    n = 2500
    for i in range(1, n + 1):
        cmd = C.build_member_update(f"bulk-{i}", env.cluster.now_ms(), nwid, f"{i:010x}",
                                    {"authorized": i % 2 == 0})
        assert (await env.cluster.submit(cmd, f"bulk-{i}")).ok
    listing = await env.ok("GET", f"/controller/network/{nwid}/member")
    assert listing == {f"{i:010x}": 1 for i in range(1, n + 1)}
    un = await env.ok("GET", f"/unstable/controller/network/{nwid}/member")
    assert len(un["data"]) == n and un["meta"] == {"totalCount": n, "authorizedCount": n // 2}
    nets = await env.ok("GET", "/unstable/controller/network")
    assert nets["data"][0]["meta"] == {"totalMemberCount": n, "authorizedMemberCount": n // 2}


async def test_ip_conflict_is_409(env: ApiEnv) -> None:
    nwid = await network(env)
    await env.ok("POST", mpath(nwid, "5000000005"), {"ipAssignments": ["10.2.0.1"]})
    r = await env.post(mpath(nwid, "6000000006"), {"ipAssignments": ["10.2.0.1"]})
    assert r.status == 409 and r.json["error"] == "CONFLICT" and r.json["field"] == "ipAssignments", r


async def test_authorizing_through_the_api_assigns_an_ipv4_address(env: ApiEnv) -> None:
    nwid = await network(env, POOL_NET)
    m = await env.ok("POST", mpath(nwid, "7000000007"), {"authorized": True})
    assert len(m["ipAssignments"]) == 1
    ip = ipaddress.ip_address(m["ipAssignments"][0])
    assert ip in ipaddress.ip_network("10.9.0.0/24") and not str(ip).endswith(".255")
    # not when noAutoAssignIps, and never a second one
    assert (await env.ok("POST", mpath(nwid, "8000000008"), {"authorized": True, "noAutoAssignIps": True}))[
        "ipAssignments"] == []
    assert (await env.ok("POST", mpath(nwid, "7000000007"), {"name": "again"}))["ipAssignments"] == m["ipAssignments"]
