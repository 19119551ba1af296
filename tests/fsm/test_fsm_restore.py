"""restore.begin/chunk/commit/abort: a model replaced wholesale through the journal, staged until commit."""
from __future__ import annotations

from typing import Any

import pytest

from hactl.fsm import commands as C
from hactl.fsm.coerce import ValidationError
from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import ErrorCode
from tests.identities import bound_identity, bound_key

NEW_KEY = bound_key("a1b2c3d4e5", 1)  # the restored controller: the same address as the fixtures', another key


def populate(drv: Any) -> tuple[str, str]:
    a = drv.nwid({**drv.pool_net, "name": "a"}, start=3)
    b = drv.nwid({"name": "b", "rules": [{"type": "ACTION_DROP"}]}, start=9)
    for i in range(1, 30):
        assert drv.member(a, f"{i:010x}", {"authorized": i % 3 != 0, "tags": [[1, i]]}).ok
    assert drv.member(b, "0000000005", {"ipAssignments": ["fd00::5"]}).ok
    return a, b


def restore_from(source: StateMachine, target: Any, *, chunk_bytes: int = 2000, address: str = "a1b2c3d4e5",
                 token_hash: str | None = None) -> list[Any]:
    nets = list(source.iter_networks())
    members = list(source.iter_all_members())
    return [target.apply(b) for b in C.build_restore(
        nets, members, request_id=target.rid(), time=target.tick(), restore_id="r1", timeline_id="timeline-2",
        address=address, signing_key=NEW_KEY, token_hash=token_hash, chunk_bytes=chunk_bytes)]


def test_restore_replaces_the_model(drv: Any, make_driver: Any) -> None:
    a, b = populate(drv)
    other = make_driver("other.db")
    other_m = other.m
    if True:
        assert other.init(token_hash="sha256:old").ok
        stale = other.nwid({"name": "stale"}, start=100)
        assert other.member(stale, "0000000001").ok
        results = restore_from(drv.m, other)
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        assert len(results) > 3
        assert results[-1].value == {"restore_id": "r1", "timeline_id": "timeline-2", "networks": 2,
                                     "members": 30}
        assert list(other_m.iter_model()) == list(drv.m.iter_model())
        assert other_m.counts(a) == drv.m.counts(a) and other_m.network_count() == 2
        info = other_m.cluster_info()
        assert info is not None
        assert info["timeline_id"] == "timeline-2" and info["cluster_id"] == "cluster-1"
        assert info["token_hash"] == "sha256:old"  # None keeps the current API token
        assert other_m.signing_key() == NEW_KEY and other_m.controller_identity() == bound_identity("a1b2c3d4e5", 1)
        assert info["identity"] == str(bound_identity("a1b2c3d4e5", 1)) and "public_key" not in info
        assert other_m.restore_pending() is None
        assert check_machine(other_m) == []
        # The restored model keeps working: address index and counts came along.
        taken = drv.m.get_member(a, "0000000001")["ipAssignments"][0]
        assert other.member(a, "00000000fe", {"ipAssignments": [taken]}).error == ErrorCode.CONFLICT


def test_staged_records_are_invisible_until_commit_and_abort_discards_them(drv: Any) -> None:
    populate(drv)
    before = list(drv.m.iter_model())
    cmds = list(C.build_restore([{"id": "a1b2c3d4e5000777", "name": "new"}], [], request_id="x", time=1,
                                restore_id="r9", timeline_id="t9", address="a1b2c3d4e5", signing_key=NEW_KEY))
    assert drv.apply(cmds[0]).ok and drv.apply(cmds[1]).ok
    assert list(drv.m.iter_model()) == before
    assert drv.m.restore_pending() == {"restore_id": "r9", "timeline_id": "t9", "address": "a1b2c3d4e5",
                                       "next_seq": 1, "networks": 1, "members": 0}
    assert drv.apply(C.encode(C.RestoreAbort(request_id="ab", time=1, restore_id="r9"))).ok
    assert drv.m.restore_pending() is None
    r = drv.apply(cmds[2])
    assert r.error == ErrorCode.RESTORE and r.field == "restore_id"
    assert list(drv.m.iter_model()) == before
    assert check_machine(drv.m) == []


def test_restore_sequence_errors(drv: Any) -> None:
    populate(drv)
    before = list(drv.m.iter_model())
    cmds = list(C.build_restore(list(drv.m.iter_networks()), list(drv.m.iter_all_members()), request_id="x",
                                time=1, restore_id="r2", timeline_id="t2", address="a1b2c3d4e5",
                                signing_key=NEW_KEY, chunk_bytes=500))
    begin, chunks, commit = cmds[0], cmds[1:-1], cmds[-1]
    early = C.encode(C.RestoreChunk(request_id="early", time=1, restore_id="r2", seq=0, networks=[], members=[]))
    assert drv.apply(early).error == ErrorCode.RESTORE  # nothing begun
    assert drv.apply(early).error == ErrorCode.RESTORE  # (and a retry gets the first result)
    assert drv.apply(begin).ok
    r = drv.apply(chunks[1])
    assert r.error == ErrorCode.RESTORE and r.field == "seq"
    assert drv.apply(chunks[0]).ok
    assert drv.apply(commit).error == ErrorCode.RESTORE  # counts do not match yet
    wrong_id = C.encode(C.RestoreChunk(request_id="w", time=1, restore_id="other", seq=1, networks=[],
                                       members=[]))
    assert drv.apply(wrong_id).field == "restore_id"
    assert list(drv.m.iter_model()) == before
    # A new begin discards what the abandoned one staged.
    again = list(C.build_restore([], [], request_id="y", time=1, restore_id="r3", timeline_id="t3",
                                 address="a1b2c3d4e5", signing_key=NEW_KEY))
    assert all(drv.apply(c).ok for c in again)
    assert list(drv.m.iter_model()) == [] and drv.m.network_count() == 0
    assert check_machine(drv.m) == []


def test_bad_chunks_are_rejected_whole(drv: Any) -> None:
    begin = C.encode(C.RestoreBegin(request_id="b", time=1, restore_id="r", timeline_id="t", address="a1b2c3d4e5",
                                    signing_key=NEW_KEY, token_hash="sha256:new"))
    assert drv.apply(begin).ok
    nets = [{"id": "a1b2c3d4e5000001"}]
    dup_ip = [{"nwid": "a1b2c3d4e5000001", "id": "0000000001", "ipAssignments": ["10.0.0.1"]},
              {"nwid": "a1b2c3d4e5000001", "id": "0000000002", "ipAssignments": ["10.0.0.1"]}]

    def chunk(rid: str, networks: list[Any], members: list[Any]) -> Any:
        return drv.apply(C.encode(C.RestoreChunk(request_id=rid, time=1, restore_id="r", seq=0,
                                                 networks=networks, members=members)))

    r = chunk("c1", nets, dup_ip)
    assert r.error == ErrorCode.CONFLICT and r.field == "members[1].ipAssignments"
    r = chunk("c2", nets, [{"nwid": "a1b2c3d4e5000002", "id": "0000000001"}])
    assert r.error == ErrorCode.NOT_FOUND and r.field == "members[0].nwid"
    r = chunk("c3", [{"id": "0102030405000001"}], [])
    assert r.error == ErrorCode.INVALID and r.field == "networks[0].id"
    r = chunk("c4", nets, [{"nwid": "a1b2c3d4e5000001", "id": "0000000001", "mtu": 5, "authorized": "x"}])
    assert r.error == ErrorCode.INVALID and r.field == "members[0].authorized"
    r = chunk("c5", nets + nets, [])
    assert r.error == ErrorCode.CONFLICT and r.field == "networks[1]"
    assert drv.m.restore_pending()["next_seq"] == 0  # type: ignore[index]
    assert chunk("c6", nets, dup_ip[:1]).ok
    commit = C.encode(C.RestoreCommit(request_id="k", time=1, restore_id="r", chunks=1, networks=1, members=1))
    assert drv.apply(commit).ok
    assert drv.m.list_networks() == ["a1b2c3d4e5000001"]
    assert drv.m.cluster_info()["token_hash"] == "sha256:new"  # type: ignore[index]


def test_restore_needs_an_initialised_cluster(raw: Any) -> None:
    cmds = list(C.build_restore([], [], request_id="x", time=1, restore_id="r", timeline_id="t",
                                address="a1b2c3d4e5", signing_key=NEW_KEY))
    assert raw.apply(cmds[0]).error == ErrorCode.NOT_INITIALIZED


def test_a_restore_needs_a_controller_identity_under_its_address(drv: Any) -> None:
    populate(drv)
    before = list(drv.m.iter_model())
    # A backup from before controller identities holds a 32-byte Ed25519 key: refused before anything is proposed,
    # and by apply (a proposer that skipped the check).
    with pytest.raises(ValidationError) as e:
        list(C.build_restore([], [], request_id="x", time=1, restore_id="r", timeline_id="t", address="a1b2c3d4e5",
                             signing_key=bytes(range(32))))
    assert e.value.field == "signing_key" and "cannot be restored" in e.value.message
    for key, address, field in [(bytes(range(32)), "a1b2c3d4e5", "signing_key"),
                                (bound_key("0102030405"), "a1b2c3d4e5", "address")]:
        begin = C.encode(C.RestoreBegin(request_id=drv.rid(), time=1, restore_id="r", timeline_id="t",
                                        address=address, signing_key=key, token_hash=None))
        r = drv.apply(begin)
        assert r.error == ErrorCode.INVALID and r.field == field, r
    assert drv.m.restore_pending() is None and list(drv.m.iter_model()) == before
    assert drv.m.controller_identity() == bound_identity("a1b2c3d4e5")


def test_the_agent_refuses_a_backup_from_before_controller_identities(tmp_path: Any) -> None:
    """`hactl agent cluster restore-from-db` checks the backup before proposing anything: one whose controller key
    is the old 32-byte Ed25519 key is refused with the reason; a current one passes."""
    import msgpack

    from hactl.agent.handle import AgentError
    from hactl.fsm import layout as L
    from hactl.server.operations import Operations

    ops = Operations.__new__(Operations)  # (_validate_backup reads only the file)
    for name, legacy in (("new.db", False), ("old.db", True)):
        with StateMachine(tmp_path / name) as m:
            assert m.apply(1, 1, C.build_cluster_init("i", 1, cluster_id="c", timeline_id="t", address="a1b2c3d4e5",
                                                      signing_key=bound_key("a1b2c3d4e5"), token_hash="h")).ok
            if legacy:  # what an earlier version wrote
                env, dbs = m.tables()
                with env.begin(write=True) as txn:
                    txn.put(L.META_SIGNING_KEY, bytes(range(32)), db=dbs["meta"])
                    info = {"cluster_id": "c", "timeline_id": "t", "address": "a1b2c3d4e5", "public_key": "ab" * 32,
                            "token_hash": "h", "initialized_time": 1}
                    txn.put(L.META_CLUSTER, msgpack.packb(info), db=dbs["meta"])
    assert ops._validate_backup(tmp_path / "new.db")["address"] == "a1b2c3d4e5"
    with pytest.raises(AgentError) as e:
        ops._validate_backup(tmp_path / "old.db")
    assert e.value.code == "invalid_db" and "cannot be restored" in str(e.value)
