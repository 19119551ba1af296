"""Apply semantics of the state machine on a real ctrl.db: model rules, indexes, errors, exactly-once."""
from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest

from hactl.fsm import commands as C
from hactl.fsm.coerce import ValidationError
from hactl.fsm import layout as L
from hactl.fsm import machine as machine_mod
from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import FormatError, StateMachine
from hactl.fsm.model import NETWORK_N_MAX
from hactl.fsm.result import ErrorCode, Result
from tests.identities import bound_identity, bound_key


def ok(r: Result) -> dict[str, Any]:
    assert r.ok, r
    assert r.value is not None
    return r.value


def fails(r: Result, code: ErrorCode, field: str | None = None) -> Result:
    assert not r.ok and r.error == code, r
    assert r.value is None and r.message
    if field is not None:
        assert r.field == field, r
    return r


# ------------------------------------------------------------------------------------------- cluster init

def test_model_commands_need_an_initialised_cluster(raw: Any) -> None:
    fails(raw.network({}), ErrorCode.NOT_INITIALIZED)
    fails(raw.member("a1b2c3d4e5000001", "0000000001"), ErrorCode.NOT_INITIALIZED)
    assert raw.m.cluster_info() is None and raw.m.signing_key() is None


def test_cluster_init_stores_identity_once(raw: Any) -> None:
    assert raw.m.controller_identity() is None
    info = ok(raw.init())
    ident = bound_identity("a1b2c3d4e5")
    assert info == {"cluster_id": "cluster-1", "timeline_id": "timeline-1", "address": "a1b2c3d4e5",
                    "identity": str(ident), "token_hash": "sha256:abc", "initialized_time": raw.time}
    assert raw.m.cluster_info() == info
    assert raw.m.signing_key() == ident.to_bytes(include_private=True)
    assert raw.m.controller_identity() == ident and raw.m.controller_identity().private_key == ident.private_key
    assert "signing_key" not in info and ident.private_key.hex() not in str(info)
    fails(raw.init(address="0102030405", signing_key=bound_key("0102030405")), ErrorCode.ALREADY_INITIALIZED)
    assert raw.m.cluster_info() == info


@pytest.mark.parametrize("key,address,field,text", [
    (bound_key("0102030405"), "a1b2c3d4e5", "address", "not the address of the controller identity"),
    (bytes(range(32)), "a1b2c3d4e5", "signing_key", "cannot be restored"),  # the key before identities
    (bound_identity("a1b2c3d4e5").to_bytes(), "a1b2c3d4e5", "signing_key", "private key"),  # public only
    (bound_key("a1b2c3d4e5")[:-64] + bound_identity("a1b2c3d4e5", 1).private_key, "a1b2c3d4e5", "signing_key",
     "does not match"),
    (b"\x00" * 135, "a1b2c3d4e5", "signing_key", "reserved"),
])
def test_cluster_init_needs_the_controller_identity_with_its_private_key(raw: Any, key: bytes, address: str,
                                                                         field: str, text: str) -> None:
    # A proposer that skipped the builder's checks: apply makes the same ones (and the builder refuses too).
    cmd = C.ClusterInit(request_id=raw.rid(), time=raw.tick(), cluster_id="c", timeline_id="t", address=address,
                        signing_key=key, token_hash="h")
    r = fails(raw.apply(C.encode(cmd)), ErrorCode.INVALID, field)
    assert text in str(r.message)
    with pytest.raises(ValidationError) as e:
        C.build_cluster_init("r", 1, cluster_id="c", timeline_id="t", address=address, signing_key=key,
                             token_hash="h")
    assert e.value.field == field and text in e.value.message
    assert raw.m.cluster_info() is None and raw.m.controller_identity() is None


def test_a_ctrl_db_from_before_controller_identities_still_opens(tmp_path: Path) -> None:
    """A legacy ctrl.db (a 32-byte Ed25519 key and a random address): it opens and its model works, but it has no
    controller identity (it cannot answer over ZeroTier) and db check says why."""
    path = tmp_path / "ctrl.db"
    with StateMachine(path) as m:
        assert m.apply(1, 1, C.build_cluster_init("i", 1, cluster_id="c", timeline_id="t", address="0102030405",
                                                  signing_key=bound_key("0102030405"), token_hash="h")).ok
        env, dbs = m.tables()
        with env.begin(write=True) as txn:  # what an earlier version wrote
            txn.put(L.META_SIGNING_KEY, bytes(range(32)), db=dbs["meta"])
            txn.put(L.META_CLUSTER, msgpack.packb({"cluster_id": "c", "timeline_id": "t", "address": "0102030405",
                                                   "public_key": "ab" * 32, "token_hash": "h",
                                                   "initialized_time": 1}), db=dbs["meta"])
    with StateMachine(path) as m:
        assert m.controller_identity() is None and m.signing_key() == bytes(range(32))
        assert (m.cluster_info() or {})["address"] == "0102030405"
        assert m.apply(2, 1, C.build_network_update("n", 2, "0102030405000001", {"name": "x"})).ok
        problems = check_machine(m)
        assert len(problems) == 1 and "cannot answer over ZeroTier" in problems[0]


# ------------------------------------------------------------------------------------------- networks

def test_network_create_defaults_and_id(drv: Any) -> None:
    v = ok(drv.network({"name": "lab"}, start=5))
    assert v["id"] == v["nwid"] == "a1b2c3d4e5000005"
    assert v["objtype"] == "network" and v["name"] == "lab" and v["revision"] == 1
    assert v["creationTime"] == drv.time and v["mtu"] == 2800 and v["private"] is True
    assert drv.m.get_network("A1B2C3D4E5000005") == v
    assert drv.m.list_networks() == ["a1b2c3d4e5000005"] and drv.m.network_count() == 1


def test_network_id_probing_is_deterministic_and_wraps(drv: Any) -> None:
    assert drv.nwid(start=5) == "a1b2c3d4e5000005"
    assert drv.nwid(start=5) == "a1b2c3d4e5000006"
    assert drv.nwid(start=4) == "a1b2c3d4e5000004"
    assert drv.nwid(start=4) == "a1b2c3d4e5000007"  # walks the run 4,5,6 -> 7
    assert drv.nwid(start=NETWORK_N_MAX) == "a1b2c3d4e5ffffff"
    assert drv.nwid(start=NETWORK_N_MAX) == "a1b2c3d4e5000001"  # wraps past 2^24-1 to 1, never 0
    assert drv.nwid(start=NETWORK_N_MAX) == "a1b2c3d4e5000002"
    assert drv.nwid(start=NETWORK_N_MAX) == "a1b2c3d4e5000003"
    assert drv.nwid(start=NETWORK_N_MAX) == "a1b2c3d4e5000008"


def test_network_create_fails_full_when_every_id_is_taken(drv: Any) -> None:
    env, db = drv.m.tables()
    with env.begin(write=True) as txn:  # pretend 2^24-1 networks exist (the count is what guards it)
        txn.put(b"netcount", L.u64(NETWORK_N_MAX), db=db["meta"])
    fails(drv.network({}), ErrorCode.FULL)


def test_network_update_creates_updates_and_counts_revisions(drv: Any) -> None:
    nwid = "a1b2c3d4e5000abc"
    v1 = ok(drv.update_network(nwid, {"name": "a"}))
    created = v1["creationTime"]
    assert v1["revision"] == 1
    v2 = ok(drv.update_network(nwid.upper(), {"name": "b", "mtu": 1500}))
    assert v2["revision"] == 2 and v2["name"] == "b" and v2["mtu"] == 1500 and v2["creationTime"] == created
    v3 = ok(drv.update_network(nwid, {"name": "b", "mtu": "1500"}))  # same values: not a change
    assert v3 == v2
    v4 = ok(drv.update_network(nwid, {}))
    assert v4 == v2
    assert ok(drv.update_network(nwid, {"private": False}))["revision"] == 3


@pytest.mark.parametrize("nwid", ["b1b2c3d4e5000001", "a1b2c3d4e5000000"])
def test_network_ids_must_belong_to_this_controller(drv: Any, nwid: str) -> None:
    fails(drv.update_network(nwid, {}), ErrorCode.INVALID, "nwid")
    assert drv.m.list_networks() == []


def test_network_delete_cascades(drv: Any) -> None:
    nwid = drv.nwid(drv.pool_net)
    other = drv.nwid(drv.pool_net)
    for i in range(1, 6):
        ok(drv.member(nwid, f"{i:010x}", {"authorized": True}))
    ok(drv.member(other, "0000000001", {"authorized": True}))
    assert drv.m.counts(nwid) == (5, 5)
    deleted = ok(drv.delete_network(nwid))
    assert deleted["id"] == nwid and deleted["objtype"] == "network"
    assert drv.m.get_network(nwid) is None and drv.m.list_members(nwid) is None
    assert drv.m.counts(nwid) == (0, 0) and drv.m.network_count() == 1
    assert list(drv.m.iter_members(nwid)) == []
    assert drv.m.counts(other) == (1, 1) and drv.m.get_member(other, "0000000001") is not None
    fails(drv.delete_network(nwid), ErrorCode.NOT_FOUND, "nwid")
    fails(drv.member(nwid, "0000000001"), ErrorCode.NOT_FOUND, "nwid")
    assert check_machine(drv.m) == []
    # Recreated under the same id, it starts empty and its addresses are free again.
    ok(drv.update_network(nwid, drv.pool_net))
    assert drv.m.list_members(nwid) == {}
    v = ok(drv.member(nwid, "0000000001", {"authorized": True}))
    assert v["ipAssignments"] == ["10.0.0.2"]


# -------------------------------------------------------------------------------------------- members

def test_member_defaults_and_views(drv: Any) -> None:
    nwid = drv.nwid()
    v = ok(drv.member(nwid, "00000000AB"))
    assert v == {"id": "00000000ab", "address": "00000000ab", "nwid": nwid, "objtype": "member", "name": "",
                 "authorized": False, "activeBridge": False, "noAutoAssignIps": False, "ipAssignments": [],
                 "tags": [], "capabilities": [], "identity": "", "creationTime": drv.time, "revision": 1,
                 "lastAuthorizedTime": 0, "lastDeauthorizedTime": 0, "lastAuthorizedCredentialType": None,
                 "vMajor": -1, "vMinor": -1, "vRev": -1, "vProto": -1}
    assert drv.m.get_member(nwid.upper(), "00000000AB") == v
    assert drv.m.list_members(nwid) == {"00000000ab": 1}
    assert drv.m.get_member(nwid, "00000000ac") is None and drv.m.get_member("bad", "x") is None


def test_member_needs_its_network(drv: Any) -> None:
    fails(drv.member("a1b2c3d4e5000001", "0000000001"), ErrorCode.NOT_FOUND, "nwid")


def test_member_revision_only_on_change_and_authorization_times(drv: Any) -> None:
    nwid = drv.nwid()
    addr = "0000000001"
    assert ok(drv.member(nwid, addr, {"name": "x"}))["revision"] == 1
    assert ok(drv.member(nwid, addr, {"name": "x", "authorized": False}))["revision"] == 1
    v = ok(drv.member(nwid, addr, {"authorized": "true"}))
    assert v["revision"] == 2 and v["authorized"] is True
    assert v["lastAuthorizedTime"] == drv.time and v["lastAuthorizedCredentialType"] == "api"
    t_auth = drv.time
    assert ok(drv.member(nwid, addr, {"authorized": 1}))["revision"] == 2  # already authorized: no change
    v = ok(drv.authorize(nwid, addr, False))
    assert v["revision"] == 3 and v["authorized"] is False
    assert v["lastDeauthorizedTime"] == drv.time and v["lastAuthorizedTime"] == t_auth
    v = ok(drv.member(nwid, addr, {"tags": [[2, 1], [1, 1]], "capabilities": [3, 3, 1]}))
    assert v["revision"] == 4 and v["tags"] == [[1, 1], [2, 1]] and v["capabilities"] == [1, 3]
    assert ok(drv.member(nwid, addr, {"tags": [[1, 1], [2, 1]], "capabilities": [1, 3]})) == v


def test_member_create_and_authorize_semantics(drv: Any) -> None:
    nwid = drv.nwid()
    fails(drv.authorize(nwid, "0000000001"), ErrorCode.NOT_FOUND, "address")
    assert drv.m.get_member(nwid, "0000000001") is None
    ok(drv.create_member(nwid, "0000000001", {"name": "n"}))
    fails(drv.create_member(nwid, "0000000001", {"name": "other"}), ErrorCode.CONFLICT, "address")
    assert drv.m.get_member(nwid, "0000000001")["name"] == "n"
    assert ok(drv.authorize(nwid, "0000000001"))["authorized"] is True


def test_member_delete_and_counts(drv: Any) -> None:
    nwid = drv.nwid()
    ok(drv.member(nwid, "0000000001", {"authorized": True}))
    ok(drv.member(nwid, "0000000002"))
    ok(drv.member(nwid, "0000000003", {"authorized": True}))
    assert drv.m.counts(nwid) == (3, 2)
    ok(drv.authorize(nwid, "0000000003", False))
    assert drv.m.counts(nwid) == (3, 1)
    v = ok(drv.delete_member(nwid, "0000000001"))
    assert v["id"] == "0000000001" and v["authorized"] is True
    assert drv.m.counts(nwid) == (2, 0)
    fails(drv.delete_member(nwid, "0000000001"), ErrorCode.NOT_FOUND, "address")
    assert list(drv.m.list_members(nwid)) == ["0000000002", "0000000003"]
    assert [m["id"] for m in drv.m.iter_members(nwid)] == ["0000000002", "0000000003"]
    assert drv.m.counts("a1b2c3d4e5000fff") == (0, 0)


def test_ip_conflicts_are_rejected_and_change_nothing(drv: Any) -> None:
    nwid = drv.nwid()
    ok(drv.member(nwid, "0000000001", {"ipAssignments": ["10.0.0.5", "fd00::5"]}))
    r = fails(drv.member(nwid, "0000000002", {"name": "b", "ipAssignments": ["10.0.0.6", "FD00::5"]}),
              ErrorCode.CONFLICT, "ipAssignments")
    assert "fd00::5" in (r.message or "") and "0000000001" in (r.message or "")
    assert drv.m.get_member(nwid, "0000000002") is None
    assert drv.m.counts(nwid) == (1, 0)
    # 10.0.0.6 was not left behind in the index by the failed command:
    ok(drv.member(nwid, "0000000003", {"ipAssignments": ["10.0.0.6"]}))
    # A member may keep its own addresses; released addresses become free.
    ok(drv.member(nwid, "0000000001", {"ipAssignments": ["10.0.0.5"]}))
    ok(drv.member(nwid, "0000000002", {"ipAssignments": ["fd00::5"]}))
    # The same address on another network is no conflict.
    other = drv.nwid()
    ok(drv.member(other, "0000000009", {"ipAssignments": ["10.0.0.5"]}))
    assert check_machine(drv.m) == []


# ------------------------------------------------------------------------------------ auto-assignment

def test_auto_assign_on_api_authorization(drv: Any) -> None:
    nwid = drv.nwid(drv.pool_net)
    v = ok(drv.member(nwid, "0000000abc", {"authorized": True}))
    assert v["ipAssignments"] == ["10.0.0.219"]  # start + (0xabc mod (end - start)) = 10.0.0.1 + 218
    # Collision: c = 0xabc + 253 maps to the same slot first, then probes one further.
    v = ok(drv.member(nwid, f"{0xabc + 253:010x}", {"authorized": True}))
    assert v["ipAssignments"] == ["10.0.0.220"]
    # Not authorized: nothing; authorizing later assigns.
    assert ok(drv.member(nwid, "0000000001", {}))["ipAssignments"] == []
    assert ok(drv.authorize(nwid, "0000000001"))["ipAssignments"] == ["10.0.0.2"]
    # Already holding a routed IPv4 address: nothing more.
    v = ok(drv.member(nwid, "0000000002", {"authorized": True, "ipAssignments": ["10.0.0.100"]}))
    assert v["ipAssignments"] == ["10.0.0.100"]
    # An unrouted address does not count.
    v = ok(drv.member(nwid, "0000000003", {"authorized": True, "ipAssignments": ["192.168.1.1"]}))
    assert v["ipAssignments"] == ["192.168.1.1", "10.0.0.4"]
    # noAutoAssignIps
    assert ok(drv.member(nwid, "0000000005", {"authorized": True, "noAutoAssignIps": True}))["ipAssignments"] == []
    assert drv.m.counts(nwid) == (6, 6)
    assert check_machine(drv.m) == []


def test_auto_assign_runs_when_authorizing_not_on_every_write(drv: Any) -> None:
    nwid = drv.nwid()  # no pool yet
    assert ok(drv.member(nwid, "0000000001", {"authorized": True}))["ipAssignments"] == []
    ok(drv.update_network(nwid, drv.pool_net))
    assert ok(drv.member(nwid, "0000000001", {"name": "renamed"}))["ipAssignments"] == []
    assert ok(drv.member(nwid, "0000000001", {"ipAssignments": []}))["ipAssignments"] == ["10.0.0.2"]
    ok(drv.member(nwid, "0000000003", {}))
    assert ok(drv.authorize(nwid, "0000000003"))["ipAssignments"] == ["10.0.0.4"]


def test_auto_assign_skips_255_and_needs_a_route_with_a_prefix(drv: Any) -> None:
    pool = {"v4AssignMode": {"zt": True},
            "ipAssignmentPools": [{"ipRangeStart": "10.0.0.250", "ipRangeEnd": "10.0.1.10"}]}
    no_route = drv.nwid(pool)
    assert ok(drv.member(no_route, "0000000001", {"authorized": True}))["ipAssignments"] == []
    default_route = drv.nwid({**pool, "routes": [{"target": "0.0.0.0/0"}]})
    assert ok(drv.member(default_route, "0000000001", {"authorized": True}))["ipAssignments"] == []
    routed = drv.nwid({**pool, "routes": [{"target": "10.0.0.0/23"}]})
    # span 16, c = 5 -> 10.0.0.255 (skipped) -> 10.0.1.0
    assert ok(drv.member(routed, "0000000005", {"authorized": True}))["ipAssignments"] == ["10.0.1.0"]
    off = drv.nwid({**pool, "v4AssignMode": {"zt": False}, "routes": [{"target": "10.0.0.0/23"}]})
    assert ok(drv.member(off, "0000000001", {"authorized": True}))["ipAssignments"] == []


def test_auto_assign_exhausted_pool_assigns_nothing(drv: Any) -> None:
    nwid = drv.nwid({"v4AssignMode": "zt", "routes": [{"target": "10.0.0.0/24"}],
                     "ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.3"}]})
    got = [ok(drv.member(nwid, f"{i:010x}", {"authorized": True}))["ipAssignments"] for i in range(1, 5)]
    # start + (c mod (end - start)) never reaches the range end itself: ZeroTier's arithmetic, kept as is.
    assert got == [["10.0.0.2"], ["10.0.0.1"], [], []]


# --------------------------------------------------------------------------------- exactly-once, errors

def test_request_id_applied_once_returns_first_result(drv: Any) -> None:
    nwid = drv.nwid()
    first = C.build_member_update("same", drv.tick(), nwid, "0000000001", {"name": "first"})
    r1 = drv.apply(first)
    r2 = drv.apply(first)
    r3 = drv.apply(C.build_member_update("same", drv.tick(), nwid, "0000000001", {"name": "other"}))
    assert r1 == r2 == r3 and ok(r1)["revision"] == 1
    assert drv.m.get_member(nwid, "0000000001")["name"] == "first"
    assert drv.m.result_for("same") == r1
    # Failures are remembered too.
    bad = C.build_member_delete("gone", drv.tick(), nwid, "0000000009")
    e1, e2 = drv.apply(bad), drv.apply(bad)
    assert e1 == e2 and e1.error == ErrorCode.NOT_FOUND
    assert drv.m.result_for("nope") is None


FP1, FP2 = b"\x01" * 32, b"\x02" * 32


def _requests_remembered(m: StateMachine) -> int:
    env, db = m.tables()
    with env.begin() as txn:
        return int(txn.stat(db["requests"])["entries"])


def test_request_id_with_the_same_fingerprint_replays_the_first_result(drv: Any) -> None:
    nwid = drv.nwid()
    cmd = C.with_fingerprint(C.build_member_update("key:k", drv.tick(), nwid, "0000000001", {"name": "a"}), FP1)
    r1, r2 = drv.apply(cmd), drv.apply(cmd)
    assert r1 == r2 and ok(r1)["revision"] == 1
    assert drv.m.result_for("key:k", FP1) == drv.m.result_for("key:k") == r1
    # a side without a fingerprint cannot tell requests apart: the remembered result, as before fingerprints
    unstamped = C.build_member_update("key:k", drv.tick(), nwid, "0000000001", {"name": "b"})
    assert drv.apply(unstamped) == r1
    assert drv.m.get_member(nwid, "0000000001")["name"] == "a"


def test_request_id_with_another_fingerprint_is_key_reused_and_changes_nothing(drv: Any) -> None:
    nwid = drv.nwid()
    first = drv.apply(C.with_fingerprint(C.build_member_update("key:k", drv.tick(), nwid, "0000000001",
                                                               {"name": "a"}), FP1))
    before, remembered = list(drv.m.iter_model()), _requests_remembered(drv.m)
    for other in (C.build_member_update("key:k", drv.tick(), nwid, "0000000001", {"name": "b"}),
                  C.build_member_delete("key:k", drv.tick(), nwid, "0000000001"),
                  C.build_network_delete("key:k", drv.tick(), nwid)):
        r = fails(drv.apply(C.with_fingerprint(other, FP2)), ErrorCode.KEY_REUSED, "Idempotency-Key")
        assert "another request" in str(r.message) and ErrorCode.KEY_REUSED.http_status == 422
    assert list(drv.m.iter_model()) == before
    # not remembered: the key still belongs to the first request
    assert _requests_remembered(drv.m) == remembered
    assert drv.m.result_for("key:k", FP1) == drv.m.result_for("key:k") == first
    assert drv.m.result_for("key:k", FP2) == r
    assert drv.apply(C.with_fingerprint(C.build_noop("key:k", drv.tick()), FP1)) == first
    assert check_machine(drv.m) == []


def test_two_requests_under_one_id_in_one_batch_the_second_is_key_reused(drv: Any) -> None:
    """Two clients racing with one key: both entries commit, in one batch; only the first applies."""
    nwid = drv.nwid()
    i = drv.index
    a = C.with_fingerprint(C.build_member_update("key:race", 1, nwid, "0000000001", {"name": "a"}), FP1)
    b = C.with_fingerprint(C.build_member_update("key:race", 1, nwid, "0000000002", {"name": "b"}), FP2)
    ra, rb = drv.m.apply_batch([(i + 1, 1, a), (i + 2, 1, b)])
    drv.index = i + 2
    assert ra is not None and ok(ra)["id"] == "0000000001"
    assert rb is not None
    fails(rb, ErrorCode.KEY_REUSED, "Idempotency-Key")
    assert drv.m.list_members(nwid) == {"0000000001": 1} and drv.m.counts(nwid) == (1, 0)
    assert drv.m.result_for("key:race", FP1) == ra and drv.m.result_for("key:race", FP2) == rb
    assert drv.m.applied() == (i + 2, 1)
    assert check_machine(drv.m) == []


def test_dedupe_window_forgets_old_request_ids(drv: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "DEDUPE_WINDOW", 5)
    monkeypatch.setattr(machine_mod, "_PRUNE_EVERY", 4)
    monkeypatch.setattr(machine_mod, "_PRUNE_MAX", 16)
    nwid = drv.nwid()
    old = C.build_member_update("old", drv.tick(), nwid, "0000000001", {"name": "a"})
    drv.apply(old)
    for _ in range(12):
        drv.apply(C.build_noop(drv.rid(), drv.tick()))
    assert drv.m.result_for("old") is None
    ok(drv.member(nwid, "0000000001", {"name": "b"}))
    assert ok(drv.apply(old))["name"] == "a"  # applied again once forgotten
    env, db = drv.m.tables()
    with env.begin() as txn:
        assert txn.stat(db["requests"])["entries"] <= 5 + 4
    assert check_machine(drv.m) == []


@pytest.mark.parametrize("data", [
    b"\xc1", b"garbage", msgpack.packb([1, 2]), msgpack.packb({"v": 1}),
    msgpack.packb({"v": 2, "type": "noop", "request_id": "r", "time": 1}),
    msgpack.packb({"v": 1, "type": "bogus", "request_id": "r", "time": 1}),
    msgpack.packb({"v": 1, "type": "noop", "request_id": "", "time": 1}),
    msgpack.packb({"v": 1, "type": "noop", "request_id": "r", "time": -1}),
    msgpack.packb({"v": 1, "type": "member.update", "request_id": "r", "time": 1, "nwid": "x", "address": "y"}),
    msgpack.packb({"v": 1, "type": "member.update", "request_id": "r", "time": 1, "nwid": 5, "address": "y",
                   "changes": {}}),
    msgpack.packb({"v": 1, "type": "network.create", "request_id": "r", "time": 1, "start": True,
                   "changes": {}}),
    msgpack.packb({1: 2}, strict_types=False),
])
def test_undecodable_entries_give_bad_command_and_change_nothing(drv: Any, data: bytes) -> None:
    before = list(drv.m.iter_model())
    r = drv.apply(data)
    fails(r, ErrorCode.BAD_COMMAND)
    assert list(drv.m.iter_model()) == before
    assert drv.m.applied() == (drv.index, 1)


@pytest.mark.parametrize("changes,field", [({"mtu": "big"}, "mtu"), ({"routes": [{"target": "x"}]},
                                                                     "routes[0].target")])
def test_invalid_changes_at_apply_give_invalid(drv: Any, changes: dict[str, Any], field: str) -> None:
    # A proposer that skipped validation: apply validates again with the same validator.
    data = C.encode(C.NetworkUpdate(request_id=drv.rid(), time=drv.tick(), nwid="a1b2c3d4e5000001",
                                    changes=changes))
    fails(drv.apply(data), ErrorCode.INVALID, field)
    assert drv.m.list_networks() == []


def test_a_bug_in_a_handler_rolls_back_that_command_only(drv: Any) -> None:
    nwid = drv.nwid()

    def broken(txn: lmdb.Transaction, cmd: Any, index: int) -> Result:
        drv.m._member_upsert(txn, C.MemberUpdate(request_id="inner", time=1, nwid=nwid, address="0000000009",
                                                 changes={"name": "half"}), index)
        raise KeyError("boom")

    drv.m._handlers[C.NoOp] = broken
    i = drv.index
    results = drv.m.apply_batch([(i + 1, 1, C.build_member_update("a", 1, nwid, "0000000001", {})),
                                 (i + 2, 1, C.build_noop("b", 1)),
                                 (i + 3, 1, C.build_member_update("c", 1, nwid, "0000000002", {}))])
    assert [r.ok for r in results if r] == [True, False, True]
    assert results[1] is not None and results[1].error == ErrorCode.INTERNAL and "boom" in str(results[1].message)
    assert drv.m.get_member(nwid, "0000000009") is None
    assert sorted(drv.m.list_members(nwid) or {}) == ["0000000001", "0000000002"]
    assert drv.m.applied() == (i + 3, 1)


# ----------------------------------------------------------------------------------------- batches

def test_batch_skips_applied_and_empty_entries(machine: StateMachine) -> None:
    e = [(1, 1, C.build_noop("a", 1)), (2, 1, b""), (3, 2, C.build_noop("b", 1))]
    results = machine.apply_batch(e)
    assert results[0] == Result(True) and results[1] is None and results[2] == Result(True)
    assert machine.applied() == (3, 2)
    assert machine.apply_batch(e) == [None, None, None]
    assert machine.apply(3, 2, C.build_noop("c", 1)) is None
    assert machine.apply_batch([(4, 2, b"")]) == [None]
    assert machine.applied() == (4, 2)
    assert machine.apply_batch([]) == []


def test_applied_index_and_model_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ctrl.db"
    with StateMachine(path) as m:
        m.apply(7, 3, C.build_cluster_init("i", 1, cluster_id="c", timeline_id="t", address="0102030405",
                                           signing_key=bound_key("0102030405"), token_hash="h"))
        m.apply(8, 3, C.build_network_update("n", 2, "0102030405000001", {"name": "x"}))
    with StateMachine(path) as m:
        assert m.applied() == (8, 3)
        assert (m.get_network("0102030405000001") or {}).get("name") == "x"
    with StateMachine(path, readonly=True) as m:
        assert m.applied() == (8, 3) and m.list_networks() == ["0102030405000001"]


def test_foreign_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ctrl.db"
    StateMachine(path).close()
    env = lmdb.open(str(path), subdir=False, max_dbs=20)
    with env.begin(write=True) as txn:
        txn.put(L.META_FORMAT, L.u64(99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(FormatError, match="format 99"):
        StateMachine(path)
    with pytest.raises(FileNotFoundError):
        StateMachine(tmp_path / "missing.db", readonly=True)


def test_a_reader_sees_one_state_while_another_thread_applies(drv: Any) -> None:
    a = drv.nwid(start=1)
    ok(drv.member(a, "0000000001", {"authorized": True}))

    def seen(r: Any) -> Any:
        return (r.network_count(), r.list_networks(), [n["revision"] for n in r.iter_networks()], r.counts(a),
                r.list_members(a), r.get_network(a), r.get_member(a, "0000000001"))

    with drv.m.reader() as r, concurrent.futures.ThreadPoolExecutor(1) as pool:
        before = seen(r)
        networks = r.iter_networks()
        assert next(networks)["id"] == a  # an iterator part-way through when the writes land

        def writes() -> None:
            drv.nwid(start=5)
            ok(drv.member(a, "0000000002", {"authorized": True}))
            ok(drv.update_network(a, {"name": "changed"}))
            ok(drv.delete_network(a))

        pool.submit(writes).result()
        assert drv.m.list_networks() == [f"{drv.controller}000005"]  # applied, and seen by a fresh transaction
        assert list(networks) == []  # the rest of the listing is of the reader's state: no new network
        assert seen(r) == before
        assert before[0] == 1 and before[3] == (1, 1) and before[4] == {"0000000001": 1}


def test_a_reader_frees_its_lmdb_reader_slot_when_its_block_ends(drv: Any) -> None:
    """Even while the Reader and a started iterator are still referenced (as an exception's traceback may keep
    them until the next GC pass): ctrl.db has a fixed number of reader slots."""
    drv.nwid(start=1)
    drv.nwid(start=2)
    env, _ = drv.m.tables()
    with drv.m.reader() as r:
        started = r.iter_networks()
        next(started)
        assert "no active readers" not in env.readers()
    assert "no active readers" in env.readers(), env.readers()
    with pytest.raises(RuntimeError, match="ended"):
        r.network_count()
    del started


def test_reads_list_and_iterate_in_order(drv: Any) -> None:
    b = drv.nwid(start=9)
    a = drv.nwid(start=2)
    for addr in ["0000000003", "0000000001", "0000000002"]:
        ok(drv.member(b, addr, {"authorized": addr != "0000000002"}))
    ok(drv.member(a, "0000000007"))
    assert drv.m.list_networks() == [a, b]
    assert [n["id"] for n in drv.m.iter_networks()] == [a, b]
    assert [m["id"] for m in drv.m.iter_members(b)] == ["0000000001", "0000000002", "0000000003"]
    model = list(drv.m.iter_model())
    assert [(x["objtype"], x["id"]) for x in model] == [
        ("network", a), ("network", b), ("member", "0000000007"), ("member", "0000000001"),
        ("member", "0000000002"), ("member", "0000000003")]
    assert [m["id"] for m in drv.m.iter_all_members()] == [x["id"] for x in model[2:]]
    assert drv.m.counts(b) == (3, 2) and drv.m.list_members(a) == {"0000000007": 1}
    assert list(drv.m.iter_member_revisions(b)) == [("0000000001", 1), ("0000000002", 1), ("0000000003", 1)]
    assert list(drv.m.iter_members("zz")) == [] and drv.m.list_members("a1b2c3d4e5000123") is None


def test_controller_certificates_are_recorded_revoked_and_denied_on_removal(drv: Any) -> None:
    from hactl.fsm import commands as C
    drv.membership(("a", "b", "c"))
    for node, serial in (("a", "0A"), ("b", "0b"), ("b", "ff01"), ("c", "c0")):
        assert drv.apply(C.build_cluster_certificate(drv.rid(), drv.tick(), node, serial)).ok
    assert drv.apply(C.build_cluster_certificate(drv.rid(), drv.tick(), "b", "b")).ok  # same serial: recorded once
    certs, revoked = drv.m.certificates()
    assert certs == {"a": ["a"], "b": ["b", "ff01"], "c": ["c0"]} and revoked == {}
    # Removing b from the membership denies every certificate recorded for it, in the same entry.
    drv.membership(("a", "c"))
    certs, revoked = drv.m.certificates()
    assert "b" not in certs and set(revoked) == {"b", "ff01"} and revoked["b"]["reason"] == "removed"
    # A revoked certificate cannot be recorded again.
    r = drv.apply(C.build_cluster_certificate(drv.rid(), drv.tick(), "b", "ff01"))
    assert not r.ok and r.error == "CONFLICT" and r.field == "serial"
    # Revoking one serial of a member; then every recorded one.
    assert drv.apply(C.build_cluster_certificate(drv.rid(), drv.tick(), "c", "c1")).ok
    r = drv.apply(C.build_cluster_revoke(drv.rid(), drv.tick(), "c", "c0"))
    assert r.ok and r.value == {"node": "c", "revoked": ["c0"]}
    r = drv.apply(C.build_cluster_revoke(drv.rid(), drv.tick(), "a"))
    assert r.ok and r.value == {"node": "a", "revoked": ["a"]}
    certs, revoked = drv.m.certificates()
    assert certs == {"c": ["c1"]} and set(revoked) == {"b", "ff01", "c0", "a"}
    r = drv.apply(C.build_cluster_revoke(drv.rid(), drv.tick(), "a"))  # nothing left to revoke: a clear error
    assert not r.ok and r.error == "NOT_FOUND" and "name its serial" in r.message
    with pytest.raises(Exception, match="serial"):
        C.build_cluster_revoke("x", 1, "a", "not-hex")
