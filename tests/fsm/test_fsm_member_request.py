"""member.request: a ZeroTier node's config request admitted through Raft (ZeroTier's controller, brief 10.1/10.5)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.fsm import commands as C
from hactl.fsm.coerce import ValidationError
from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import ErrorCode, Result
from tests.identities import bound_key

Driver = Any  # tests/fsm/conftest.py's Driver (conftest modules are not imported by name)

A = "00000000ab"
PUBLIC_POOL = {"private": False, "v4AssignMode": {"zt": True},
               "ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.254"}],
               "routes": [{"target": "10.0.0.0/24", "via": None}]}


def ok(r: Result) -> dict[str, Any]:
    assert r.ok, r
    assert r.value is not None
    return r.value


def fails(r: Result, code: ErrorCode, field: str | None) -> Result:
    assert not r.ok and r.error == code and r.field == field and r.message, r
    return r


def test_a_request_records_an_unauthorized_member_on_a_private_network(drv: Driver) -> None:
    nwid = drv.nwid(drv.pool_net)
    v = ok(drv.request(nwid, A, vMajor=1, vMinor=8, vRev=4, vProto=12))
    assert v["identity"] == drv.identity(A) and v["authorized"] is False and v["ipAssignments"] == []
    assert (v["vMajor"], v["vMinor"], v["vRev"], v["vProto"]) == (1, 8, 4, 12)
    assert v["revision"] == 1 and v["creationTime"] == drv.time and v["lastAuthorizedTime"] == 0
    assert drv.m.get_member(nwid, A) == v and drv.m.counts(nwid) == (1, 0)
    # An operator authorizes it; its next request gets an address (ZeroTier assigns at request time).
    assert ok(drv.authorize(nwid, A))["ipAssignments"] == ["10.0.0.172"]  # 10.0.0.1 + (0xab mod 253)
    assert check_machine(drv.m) == []


def test_a_request_fills_in_the_identity_of_a_member_made_through_the_api(drv: Driver) -> None:
    nwid = drv.nwid()
    ok(drv.member(nwid, A, {"name": "laptop"}))
    v = ok(drv.request(nwid, A))
    assert v["identity"] == drv.identity(A) and v["name"] == "laptop" and v["revision"] == 2


def test_another_identity_for_a_known_address_is_a_conflict_and_changes_nothing(drv: Driver) -> None:
    nwid = drv.nwid({"private": False})
    first = ok(drv.request(nwid, A))
    r = fails(drv.request(nwid, A, drv.identity(A, key=1), vMajor=9), ErrorCode.CONFLICT, "identity")
    assert "another identity already holds" in (r.message or "")
    assert drv.m.get_member(nwid, A) == first


def test_public_network_authorizes_at_the_first_request(drv: Driver) -> None:
    nwid = drv.nwid({"private": False})
    v = ok(drv.request(nwid, A))
    assert v["authorized"] is True and v["lastAuthorizedTime"] == drv.time
    assert v["lastAuthorizedCredentialType"] == "public" and drv.m.counts(nwid) == (1, 1)
    # Deauthorized by an operator, it is authorized again by its next request: the network is public.
    ok(drv.authorize(nwid, A, False))
    v = ok(drv.request(nwid, A))
    assert v["authorized"] is True and v["lastAuthorizedTime"] == drv.time and drv.m.counts(nwid) == (1, 1)


def test_a_private_network_never_authorizes_by_request(drv: Driver) -> None:
    nwid = drv.nwid({"private": True})
    for _ in range(2):
        assert ok(drv.request(nwid, A))["authorized"] is False


def test_request_assigns_ipv4_to_an_authorized_member(drv: Driver) -> None:
    nwid = drv.nwid()  # no pool yet: authorizing assigns nothing
    assert ok(drv.member(nwid, A, {"authorized": True}))["ipAssignments"] == []
    ok(drv.update_network(nwid, drv.pool_net))
    v = ok(drv.request(nwid, A))
    assert v["ipAssignments"] == ["10.0.0.172"] and v["revision"] == 2
    # A member that opted out, or one holding a routed address already, gets nothing new.
    assert ok(drv.member(nwid, "0000000001", {"authorized": True, "noAutoAssignIps": True}))["ipAssignments"] == []
    assert ok(drv.request(nwid, "0000000001"))["ipAssignments"] == []
    ok(drv.member(nwid, "0000000002", {"authorized": True, "ipAssignments": ["10.0.0.50"]}))
    assert ok(drv.request(nwid, "0000000002"))["ipAssignments"] == ["10.0.0.50"]
    # Public network: the first request authorizes and assigns at once, skipping addresses already taken.
    pub = drv.nwid({**PUBLIC_POOL, "ipAssignmentPools": [{"ipRangeStart": "10.0.0.171",
                                                          "ipRangeEnd": "10.0.0.180"}]}, start=2)
    ok(drv.member(pub, "0000000003", {"ipAssignments": ["10.0.0.174"]}))
    # span 9, c = 0xab: 171 + (171 mod 9 = 0) = .171; the member at 0xac gets .172 ... and 0xae skips .174.
    got = [ok(drv.request(pub, f"{a:010x}"))["ipAssignments"] for a in (0xAB, 0xAC, 0xAD, 0xAE)]
    assert got == [["10.0.0.171"], ["10.0.0.172"], ["10.0.0.173"], ["10.0.0.175"]]
    assert check_machine(drv.m) == []


def test_a_repeated_request_writes_nothing(drv: Driver) -> None:
    nwid = drv.nwid(PUBLIC_POOL)
    first = ok(drv.request(nwid, A, vMajor=1, vMinor=8, vRev=4, vProto=12))
    model = list(drv.m.iter_model())
    # The same request proposed by another node (another request id, a later time) changes nothing.
    again = ok(drv.request(nwid, A, vMajor=1, vMinor=8, vRev=4, vProto=12))
    assert again == first and again["revision"] == 1
    assert list(drv.m.iter_model()) == model and drv.m.counts(nwid) == (1, 1)
    # A request that does not say its version (-1) keeps the one known.
    assert ok(drv.request(nwid, A)) == first


def test_a_new_version_is_recorded(drv: Driver) -> None:
    nwid = drv.nwid()
    ok(drv.request(nwid, A, vMajor=1, vMinor=8, vRev=4, vProto=12))
    v = ok(drv.request(nwid, A, vMajor=1, vMinor=14, vRev=2, vProto=13))
    assert (v["vMajor"], v["vMinor"], v["vRev"], v["vProto"], v["revision"]) == (1, 14, 2, 13, 2)
    assert drv.m.get_member(nwid, A) == v


def test_missing_or_foreign_network(drv: Driver) -> None:
    fails(drv.request(f"{drv.controller}00abcd", A), ErrorCode.NOT_FOUND, "nwid")
    fails(drv.request("0102030405000001", A), ErrorCode.INVALID, "nwid")
    assert drv.m.network_count() == 0


def test_needs_an_initialised_cluster(raw: Driver) -> None:
    fails(raw.request(f"{raw.controller}000001", A), ErrorCode.NOT_INITIALIZED, None)


@pytest.mark.parametrize("identity,text", [
    ("garbage", "not a ZeroTier identity"),
    ("00000000cd:0:" + "ab" * 64, "not the member address"),  # another node's identity
    ("00000000ab:1:" + "ab" * 64, "not a ZeroTier identity"),
    ("00000000ab:0:" + "ab" * 63, "not a ZeroTier identity"),
    ("", "expected a ZeroTier identity"),
])
def test_a_bad_identity_is_invalid_at_apply_and_in_the_builder(drv: Driver, identity: str, text: str) -> None:
    nwid = drv.nwid()
    # A proposer that skipped the builder's validation: apply validates again.
    r = drv.apply(C.encode(C.MemberRequest(request_id=drv.rid(), time=drv.tick(), nwid=nwid, address=A,
                                           identity=identity)))
    assert text in (fails(r, ErrorCode.INVALID, "identity").message or "")
    with pytest.raises(ValidationError) as e:
        C.build_member_request("r", 1, nwid, A, identity)
    assert e.value.field == "identity"
    assert drv.m.get_member(nwid, A) is None


def test_builder_canonicalises_and_refuses_secrets_and_bad_versions(drv: Driver) -> None:
    nwid = drv.nwid()
    cmd = C.decode(C.build_member_request("r", 1, nwid.upper(), A.upper(), drv.identity(A).upper() + "\n",
                                          vMajor=1, vProto=65535))
    assert isinstance(cmd, C.MemberRequest)
    assert (cmd.nwid, cmd.address, cmd.identity) == (nwid, A, drv.identity(A))
    assert (cmd.vMajor, cmd.vMinor, cmd.vRev, cmd.vProto) == (1, -1, -1, 65535)
    with pytest.raises(ValidationError) as e:
        C.build_member_request("r", 1, nwid, A, drv.identity(A) + ":" + "00" * 64)
    assert e.value.field == "identity" and "secret" in e.value.message
    for bad in (-2, 65536, True):
        with pytest.raises(ValidationError) as e:
            C.build_member_request("r", 1, nwid, A, drv.identity(A), vRev=bad)
        assert e.value.field == "vRev"
    r = drv.apply(C.encode(C.MemberRequest(request_id=drv.rid(), time=drv.tick(), nwid=nwid, address=A,
                                           identity=drv.identity(A), vMajor=70000)))
    fails(r, ErrorCode.INVALID, "vMajor")


def test_two_nodes_proposing_one_request_have_one_effect(drv: Driver) -> None:
    nwid = drv.nwid(PUBLIC_POOL)
    a = C.build_member_request("node1/req", drv.tick(), nwid, A, drv.identity(A), vMajor=1)
    b = C.build_member_request("node2/req", drv.tick(), nwid, A, drv.identity(A), vMajor=1)
    ra, rb = drv.m.apply_batch([(drv.index + 1, 1, a), (drv.index + 2, 1, b)])
    drv.index += 2
    assert ra is not None and rb is not None and ok(ra) == ok(rb) and ok(rb)["revision"] == 1
    assert drv.m.counts(nwid) == (1, 1) and ok(rb)["ipAssignments"] == ["10.0.0.172"]


def test_replaying_the_journal_on_a_fresh_machine_gives_the_same_state(drv: Driver, make_driver: Any) -> None:
    journal: list[bytes] = []
    real_apply = drv.apply

    def apply(data: bytes) -> Result:
        journal.append(data)
        return real_apply(data)
    drv.apply = apply
    nwid = drv.nwid(PUBLIC_POOL)
    private = drv.nwid(drv.pool_net, start=2)
    for i in range(1, 30):
        drv.request(nwid if i % 3 else private, f"{i:010x}", vMajor=i % 4, vProto=12)
    drv.request(nwid, "0000000004", drv.identity("0000000004", key=1))  # a conflict
    drv.authorize(private, "0000000003")
    drv.request(private, "0000000003")
    other = make_driver("replay.db")
    assert other.init().ok
    results = [other.apply(d) for d in journal]
    assert list(other.m.iter_model()) == list(drv.m.iter_model())
    assert [other.m.counts(n) for n in (nwid, private)] == [drv.m.counts(n) for n in (nwid, private)]
    assert all(r.ok for r in results[:-3]) and not results[-3].ok
    assert check_machine(other.m) == [] and check_machine(drv.m) == []


def test_refused_while_an_alarm_is_on() -> None:
    assert "member.request" in C.COMMAND_TYPES and "member.request" not in C.ALARM_EXEMPT_TYPES


# ---------------------------------------------------------------------------------------- property

CTRL = "a1b2c3d4e5"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 400), min_size=1, max_size=60),
       st.sampled_from([("10.0.0.1", "10.0.0.9"), ("10.0.0.250", "10.0.1.3"), ("10.0.0.5", "10.0.0.5")]),
       st.lists(st.sampled_from(["request", "deauthorize", "delete", "release"]), max_size=20))
def test_requests_never_give_two_members_one_address(addresses: list[int], pool: tuple[str, str],
                                                     interleaved: list[str]) -> None:
    """Many members requesting from a small pool (some deauthorized, deleted or releasing their address in
    between): every address is held by at most one member, and a member gets one whenever one is free."""
    net = {**PUBLIC_POOL, "ipAssignmentPools": [{"ipRangeStart": pool[0], "ipRangeEnd": pool[1]}],
           "routes": [{"target": "10.0.0.0/23", "via": None}]}
    with tempfile.TemporaryDirectory() as d:
        m = StateMachine(Path(d) / "ctrl.db")
        try:
            index = 0

            def apply(data: bytes) -> Result:
                nonlocal index
                index += 1
                r = m.apply(index, 1, data)
                assert r is not None
                return r
            assert apply(C.build_cluster_init("init", 1, cluster_id="c", timeline_id="t", address=CTRL,
                                              signing_key=bound_key(CTRL), token_hash="h")).ok
            nwid = f"{CTRL}000001"
            assert apply(C.build_network_create("n", 2, net, start=1)).ok
            ident = {a: f"{a:010x}:0:" + f"{a:02x}".rjust(128, "0") for a in addresses}
            start, end = (int.from_bytes(bytes(map(int, s.split("."))), "big") for s in pool)
            capacity = sum(1 for ip in range(start, max(end, start + 1)) if ip & 0xFF != 0xFF)

            def held() -> list[str]:
                return [ip for mem in m.iter_members(nwid) for ip in mem["ipAssignments"]]

            for i, a in enumerate(addresses):
                v = apply(C.build_member_request(f"q{i}", 10 + i, nwid, f"{a:010x}", ident[a])).value
                assert v is not None and v["authorized"] and len(v["ipAssignments"]) <= 1
                if not v["ipAssignments"]:
                    assert len(held()) == capacity  # it got none only because none was free
                if i < len(interleaved):  # something else happens to an earlier requester
                    other, what = f"{addresses[i // 2]:010x}", interleaved[i]
                    if what == "deauthorize":
                        apply(C.build_member_authorize(f"x{i}", 10 + i, nwid, other, False))
                    elif what == "delete":
                        apply(C.build_member_delete(f"x{i}", 10 + i, nwid, other))
                    elif what == "release":
                        apply(C.build_member_update(f"x{i}", 10 + i, nwid, other, {"ipAssignments": []}))
                    else:
                        apply(C.build_member_request(f"x{i}", 10 + i, nwid, other, ident[addresses[i // 2]]))
                got = held()
                assert len(got) == len(set(got)) <= capacity  # never two members one address
            assert check_machine(m) == []
        finally:
            m.close()
