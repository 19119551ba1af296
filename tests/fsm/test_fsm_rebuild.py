"""Start-up rebuild of ctrl.db (set aside, restore newest valid snapshot, replay) and the snapshot policy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pytest

from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.snapshots.rebuild import SnapshotPolicy, rebuild_ctrl_db
from hactl.snapshots.store import SnapshotError, SnapshotStore
from tests.identities import bound_key

KEY = bound_key("0102030405")
NWID = "0102030405000001"


def journal(n: int) -> list[tuple[int, int, bytes]]:
    """Entries 1..n: init, a network, then member updates (term 2 from index 10)."""
    out = [(1, 1, C.build_cluster_init("i", 1, cluster_id="c", timeline_id="t", address="0102030405",
                                       signing_key=KEY, token_hash="h")),
           (2, 1, C.build_network_update("n", 2, NWID, {"name": "net"})), (3, 1, b"")]
    for i in range(4, n + 1):
        out.append((i, 1 if i < 10 else 2, C.build_member_update(f"m{i}", i, NWID, f"{i % 7 + 1:010x}",
                                                                  {"name": f"v{i}"})))
    return out


def after(log: list[tuple[int, int, bytes]]) -> Any:
    calls: list[int] = []

    def entries_after(m: StateMachine) -> Iterable[tuple[int, int, bytes]]:
        i = m.applied()[0]
        calls.append(i)
        return (e for e in log if e[0] > i)
    entries_after.calls = calls  # type: ignore[attr-defined]
    return entries_after


def full_replay(tmp: Path, log: list[tuple[int, int, bytes]]) -> list[dict[str, Any]]:
    with StateMachine(tmp / "reference.db") as m:
        m.apply_batch(log)
        return list(m.iter_model())


def test_fresh_node_starts_empty_and_replays_everything(tmp_path: Path) -> None:
    log = journal(30)
    store = SnapshotStore(tmp_path / "snapshots")
    ea = after(log)
    m, _ = rebuild_ctrl_db(tmp_path, store, ea, batch_entries=7)
    try:
        assert ea.calls == [0] and m.applied() == (30, 2)
        assert list(m.iter_model()) == full_replay(tmp_path, log)
    finally:
        m.close()


def test_rebuild_from_snapshot_then_journal_and_prev_kept(tmp_path: Path) -> None:
    log = journal(40)
    store = SnapshotStore(tmp_path / "snapshots")
    m, _ = rebuild_ctrl_db(tmp_path, store, after(log[:20]))
    info = store.create(m, cluster_id="c", timeline_id="t", created=1.0)
    assert info.index == 20
    m.apply_batch(log[20:25])
    m.close()
    ea = after(log)
    m, _ = rebuild_ctrl_db(tmp_path, store, ea)
    try:
        assert ea.calls == [20]  # replay starts after the snapshot, not at 0
        assert m.applied() == (40, 2)
        assert list(m.iter_model()) == full_replay(tmp_path, log)
    finally:
        m.close()
    with StateMachine(tmp_path / "ctrl.db.prev", readonly=True) as prev:
        assert prev.applied() == (25, 2)  # the file set aside is the one from before this start
    m, _ = rebuild_ctrl_db(tmp_path, store, after(log))
    m.close()
    with StateMachine(tmp_path / "ctrl.db.prev", readonly=True) as prev:
        assert prev.applied() == (40, 2)  # one previous copy: replaced, not accumulated
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ctrl.db")) == [
        "ctrl.db", "ctrl.db-lock", "ctrl.db.prev", "ctrl.db.prev-lock"]


def test_corrupt_newest_snapshot_falls_back_to_older_one(tmp_path: Path) -> None:
    log = journal(30)
    store = SnapshotStore(tmp_path / "snapshots")
    m, _ = rebuild_ctrl_db(tmp_path, store, after(log[:10]))
    old = store.create(m, cluster_id="c", timeline_id="t", created=1.0)
    m.apply_batch(log[10:20])
    new = store.create(m, cluster_id="c", timeline_id="t", created=2.0)
    m.close()
    data = bytearray(new.data_path.read_bytes())
    data[100] ^= 1
    new.data_path.write_bytes(bytes(data))
    ea = after(log)
    m, used = rebuild_ctrl_db(tmp_path, store, ea)
    try:
        assert ea.calls == [old.index]
        assert used == old  # the rebuild says which snapshot it used: not the corrupt newer one
        assert list(m.iter_model()) == full_replay(tmp_path, log)
    finally:
        m.close()


def test_no_valid_snapshot_is_an_error_not_an_empty_model(tmp_path: Path) -> None:
    log = journal(12)
    store = SnapshotStore(tmp_path / "snapshots")
    m, _ = rebuild_ctrl_db(tmp_path, store, after(log))
    info = store.create(m, cluster_id="c", timeline_id="t", created=1.0)
    m.close()
    info.data_path.write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match=f"no valid snapshot among {info.name}"):
        rebuild_ctrl_db(tmp_path, store, after(log))


def test_journal_gap_after_snapshot_is_an_error(tmp_path: Path) -> None:
    log = journal(30)
    store = SnapshotStore(tmp_path / "snapshots")
    m, _ = rebuild_ctrl_db(tmp_path, store, after(log[:10]))
    store.create(m, cluster_id="c", timeline_id="t", created=1.0)
    m.close()
    with pytest.raises(SnapshotError, match="jumps from 10 to 15"):
        rebuild_ctrl_db(tmp_path, store, after(log[14:]))


def test_policy_due_and_compaction() -> None:
    p = SnapshotPolicy()
    assert (p.every_entries, p.interval_s, p.retain, p.trailing) == (10_000, None, 5, 5_000)
    assert not p.due(9_999, 0, now=1e9, last_snapshot_time=0)
    assert p.due(10_000, 0, now=0, last_snapshot_time=0)
    assert p.due(25_000, 15_000, now=0, last_snapshot_time=0)
    t = SnapshotPolicy(every_entries=100, interval_s=60)
    assert not t.due(10, 0, now=59, last_snapshot_time=0)
    assert t.due(10, 0, now=60, last_snapshot_time=0)
    assert not t.due(10, 10, now=1000, last_snapshot_time=0)  # nothing new since the last snapshot
    assert p.compact_to(12_000) == 7_000 and p.compact_to(3_000) == 0
    for bad in [dict(every_entries=0), dict(retain=0), dict(trailing=-1), dict(interval_s=0)]:
        with pytest.raises(ValueError):
            SnapshotPolicy(**bad)  # type: ignore[arg-type]
