"""The changes table (entityChange events): what apply records for each entry, in the entry's own transaction.

Each write that changes a network or member is recorded with its state before and after (as the API shows them)
and who asked; a write that changes nothing, and a failed one, records nothing; pruning is by index alone, so two
nodes that batched the same entries differently hold the same records."""
from __future__ import annotations

from typing import Any

from hactl.fsm import commands as C
from hactl.fsm import machine as machine_mod


def summary(m: Any, after: int = 0, upto: int = 10**9) -> list[tuple]:
    return [(c.index, c.n, c.entity, c.action, c.id) for c in m.changes(after, upto)]


def test_each_change_is_recorded_with_before_after_and_author(drv: Any) -> None:
    nwid = drv.nwid({"name": "a"}, start=7)
    drv.update_network(nwid, {"name": "b"})
    drv.update_network(nwid, {"name": "b"})  # no change: nothing recorded
    r = drv.apply(C.with_origin(C.build_member_update(drv.rid(), drv.tick(), nwid, "0000000001",
                                                      {"authorized": True}), {"kind": "api", "node": "ctrl2"}))
    assert r.ok
    drv.request(nwid, "0000000002")  # a ZeroTier node's request creates its (unauthorized) record
    assert not drv.delete_member(nwid, "00000000ff").ok  # a failure records nothing
    drv.delete_member(nwid, "0000000001")
    drv.delete_network(nwid)
    rows = list(drv.m.changes(0, drv.index))
    assert [(c.entity, c.action) for c in rows] == [
        ("network", "created"), ("network", "updated"), ("member", "created"), ("member", "created"),
        ("member", "deleted"), ("network", "deleted")]
    created, renamed, authorized, requested, m_deleted, n_deleted = rows
    assert created.before is None and created.after["name"] == "a" and created.after["revision"] == 1
    assert renamed.before["name"] == "a" and renamed.after["name"] == "b" and renamed.after["revision"] == 2
    assert authorized.by == {"kind": "api", "node": "ctrl2"} and authorized.after["authorized"] is True
    assert authorized.after["ipAssignments"] == [] and authorized.id == f"{nwid}/0000000001"
    assert requested.by is None and requested.after["authorized"] is False and requested.after["identity"]
    assert m_deleted.after is None and m_deleted.before == authorized.after
    assert n_deleted.after is None and n_deleted.before["name"] == "b"
    assert all(c.time > 0 and c.n == 0 for c in rows)
    # A window of indexes, and nothing for entries that changed nothing
    assert summary(drv.m, created.index, renamed.index) == [(renamed.index, 0, "network", "updated", nwid)]
    assert summary(drv.m, renamed.index, renamed.index + 1) == []


def test_the_same_entries_batched_differently_keep_the_same_records(make_driver: Any, monkeypatch: Any) -> None:
    """Pruning keeps the last CHANGES_KEPT indexes, decided by index alone: one entry per batch or many per batch,
    every node ends with the same records."""
    monkeypatch.setattr(machine_mod, "CHANGES_KEPT", 100)
    one, many = make_driver("one.db"), make_driver("many.db")
    assert one.init().ok and many.init().ok
    nwid = one.nwid({}, start=1)
    many.nwid({}, start=1)
    cmds = [C.build_member_update(f"r{i}", 1_700_000_000_000 + i, nwid, f"{i + 1:010x}", {"name": f"m{i}"})
            for i in range(400)]
    for c in cmds:
        one.apply(c)
    base = many.index
    for lo in range(0, len(cmds), 37):
        chunk = cmds[lo:lo + 37]
        many.m.apply_batch([(base + lo + k + 1, 1, c) for k, c in enumerate(chunk)])
    many.index = base + len(cmds)
    assert one.index == many.index
    assert summary(one.m) == summary(many.m)
    kept = summary(one.m)
    assert kept[-1][0] == one.index and one.index - kept[0][0] < 100 + 4 * 64  # pruned (in steps), bounded
    assert [c.after for c in one.m.changes(0, one.index)] == [c.after for c in many.m.changes(0, many.index)]
