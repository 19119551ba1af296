"""Replicated alarms (alarm.raise / alarm.clear) and the live-data measure the storage alarm compares with the map."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

from hactl.fsm import commands as C
from hactl.fsm import layout as L
from hactl.fsm.coerce import ValidationError
from hactl.fsm.machine import StateMachine
from tests.identities import bound_key

Driver = Any  # tests/fsm/conftest.py's Driver (conftest modules are not imported by name)

MSG = "ctrl.db holds 3.7 MiB of its 4.0 MiB map (storage.ctrl_db_max_bytes)"


def raise_(drv: Driver, node: str, name: str = "NOSPACE", message: str = MSG) -> Any:
    return drv.apply(C.build_alarm_raise(drv.rid(), drv.tick(), node, name, message))


def clear(drv: Driver, node: str, name: str = "NOSPACE") -> Any:
    return drv.apply(C.build_alarm_clear(drv.rid(), drv.tick(), node, name))


def test_raise_records_the_alarm_and_clear_removes_it(raw: Driver) -> None:
    assert raw.m.alarms() == []
    r = raise_(raw, "ctrl2")
    index, time = raw.index, raw.time
    record = {"node": "ctrl2", "name": "NOSPACE", "message": MSG, "index": index, "time": time}
    assert r.ok and r.value == record
    assert raw.m.alarms() == [record]  # the index of the raise entry and the proposer's clock, as applied
    r = clear(raw, "ctrl2")
    assert r.ok and r.value == {"node": "ctrl2", "name": "NOSPACE", "cleared": True}
    assert raw.m.alarms() == []
    env, dbs = raw.m.tables()
    with env.begin() as txn:  # no alarm: no record at all (the check before every write is a miss)
        assert txn.get(L.META_ALARMS, db=dbs["meta"]) is None


def test_raise_and_clear_are_idempotent(raw: Driver) -> None:
    assert raise_(raw, "ctrl2").ok
    first = raw.m.alarms()
    r = raise_(raw, "ctrl2", message="the disk is nearly full")  # already on: the first raise stands
    assert r.ok and r.value == first[0] and raw.m.alarms() == first
    assert clear(raw, "ctrl2").value["cleared"] is True
    r = clear(raw, "ctrl2")  # a duplicate clear (a retry, another leader's) is not an error
    assert r.ok and r.value["cleared"] is False and raw.m.alarms() == []
    assert clear(raw, "ctrl9").ok  # nor is clearing one that never was on


def test_alarms_are_kept_per_node_and_name_in_a_fixed_order(raw: Driver) -> None:
    for node, name in (("ctrl3", "NOSPACE"), ("ctrl1", "NOSPACE"), ("ctrl1", "CORRUPT")):
        assert raise_(raw, node, name).ok
    assert [(a["node"], a["name"]) for a in raw.m.alarms()] == [
        ("ctrl1", "CORRUPT"), ("ctrl1", "NOSPACE"), ("ctrl3", "NOSPACE")]
    assert clear(raw, "ctrl1", "NOSPACE").ok
    assert [(a["node"], a["name"]) for a in raw.m.alarms()] == [("ctrl1", "CORRUPT"), ("ctrl3", "NOSPACE")]


def test_two_machines_applying_the_same_entries_hold_the_same_alarms(make_driver: Callable[[str], Driver]) -> None:
    a, b = make_driver("a.db"), make_driver("b.db")
    commands = [
        C.build_alarm_raise("r1", 1_000, "ctrl2", "NOSPACE", MSG),
        C.build_alarm_raise("r2", 2_000, "ctrl1", "NOSPACE", "the disk is nearly full"),
        C.build_alarm_raise("r1", 3_000, "ctrl2", "NOSPACE", MSG),  # a retried request id: applied once
        C.build_alarm_clear("r3", 4_000, "ctrl1", "NOSPACE"),
        C.build_alarm_raise("r4", 5_000, "ctrl1", "NOSPACE", "again"),
    ]
    # One machine applies them in one batch, the other one by one: batching must not matter.
    assert all(r is not None and r.ok for r in a.m.apply_batch([(i, 1, c) for i, c in enumerate(commands, 1)]))
    for i, c in enumerate(commands, 1):
        assert b.m.apply(i, 1, c).ok
    assert a.m.alarms() == b.m.alarms() == [
        {"node": "ctrl1", "name": "NOSPACE", "message": "again", "index": 5, "time": 5_000},
        {"node": "ctrl2", "name": "NOSPACE", "message": MSG, "index": 1, "time": 1_000}]

    def stored(m: StateMachine) -> bytes:
        env, dbs = m.tables()
        with env.begin() as txn:
            return bytes(txn.get(L.META_ALARMS, db=dbs["meta"]))
    assert stored(a.m) == stored(b.m)  # the same bytes: snapshots of either are interchangeable


def test_only_members_raise_and_a_removed_node_takes_its_alarms_along(raw: Driver) -> None:
    raw.membership(("ctrl1", "ctrl2"), ("ctrl4",))
    assert raise_(raw, "ctrl2").ok and raise_(raw, "ctrl4").ok  # learners are members too
    # A raise still in flight when its node was removed would refuse writes for good: nobody would clear it.
    r = raise_(raw, "ctrl3")
    assert not r.ok and r.error == "NOT_FOUND" and r.field == "node" and "ctrl3" in r.message
    raw.membership(("ctrl1",), ("ctrl4",))
    assert [a["node"] for a in raw.m.alarms()] == ["ctrl4"]


@pytest.mark.parametrize("build, field", [
    (lambda: C.build_alarm_raise("r", 1, "ctrl1", "nospace", MSG), "name"),
    (lambda: C.build_alarm_raise("r", 1, "ctrl1", "", MSG), "name"),
    (lambda: C.build_alarm_raise("r", 1, "ctrl1", "NOSPACE", ""), "message"),
    (lambda: C.build_alarm_raise("r", 1, "ctrl1", "NOSPACE", "x" * (C.ALARM_MESSAGE_MAX + 1)), "message"),
    (lambda: C.build_alarm_raise("r", 1, "", "NOSPACE", MSG), "node"),
    (lambda: C.build_alarm_clear("r", 1, "ctrl1", "NO SPACE"), "name"),
])
def test_builders_refuse_bad_alarms_naming_the_field(build: Callable[[], bytes], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        build()
    assert e.value.field == field


def test_apply_refuses_a_bad_alarm_that_bypassed_the_builder(raw: Driver) -> None:
    data = msgpack.packb({"v": 1, "type": "alarm.raise", "request_id": "r", "time": 1, "node": "ctrl1",
                          "name": "nospace", "message": MSG})
    r = raw.apply(data)
    assert not r.ok and r.error == "INVALID" and r.field == "name"
    assert raw.m.alarms() == []


def test_usage_counts_live_data_which_shrinks_when_data_is_deleted(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "ctrl.db", map_size=8 << 20) as m:
        commands = iter([C.build_cluster_init("init", 1, cluster_id="c", timeline_id="t", address="a1b2c3d4e5",
                                              signing_key=bound_key("a1b2c3d4e5"), token_hash="h"),
                         C.build_network_update("net", 2, "a1b2c3d4e5000001", {})])
        index = 0

        def apply(data: bytes) -> None:
            nonlocal index
            index += 1
            r = m.apply(index, 1, data)
            assert r is not None and r.ok, r
        for c in commands:
            apply(c)
        empty, map_size = m.usage()
        assert map_size == 8 << 20 and 0 < empty < 64 << 10
        for i in range(200):
            apply(C.build_member_update(f"m{i}", 3, "a1b2c3d4e5000001", f"{i + 1:010x}", {"name": "n" * 1000}))
        full, _ = m.usage()
        assert full > empty + 200 * 1000  # the members, and their remembered results
        file_size = (tmp_path / "ctrl.db").stat().st_size
        apply(C.build_network_delete("del", 4, "a1b2c3d4e5000001"))  # the cascade frees the member pages...
        after, _ = m.usage()
        assert after < full - 100 * 1000
        assert (tmp_path / "ctrl.db").stat().st_size >= file_size  # ...which the file size would never show
