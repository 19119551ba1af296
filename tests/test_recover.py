"""`hactl cluster recover` on a raft.db whose commit index lags what the node applied.

The driver writes the commit index only with writes that must be durable anyway (hactl/raft/driver.py), so a
stopped node's raft.db may say commit 3 while its ctrl.db applied 5: those two entries were committed (a node
applies nothing else), and recover must keep them rather than drop them as uncommitted and write its membership
changes over them (ctrl.db would then skip those changes as already applied)."""
from __future__ import annotations

from pathlib import Path

from hactl.raft.confchange import bootstrap_state
from hactl.raft.recover import recover
from hactl.raft.storage import RaftStorage
from hactl.raft.types import Entry, EntryType, HardState


def _node(tmp_path: Path, commit: int) -> Path:
    (tmp_path / "node-id").write_text("a\n")
    hard, entries = bootstrap_state(("a", "b", "c"))
    with RaftStorage(tmp_path / "raft.db") as s:
        s.save(hard, entries)
        last = entries[-1].index
        more = [Entry(last + i, 1, EntryType.NORMAL, b"write %d" % i) for i in range(1, 4)]
        s.save(HardState(1, "a", last + commit), more)
    return tmp_path


def _log(path: Path) -> list[Entry]:
    with RaftStorage(path / "raft.db") as s:
        return s.entries(s.first_index(), s.last_index() + 1)


def test_entries_the_state_machine_applied_are_kept_though_the_stored_commit_lags(tmp_path: Path) -> None:
    data = _node(tmp_path, commit=1)  # raft.db: the first of the three writes committed
    before = _log(data)
    out = recover(data, applied=before[-1].index)  # ctrl.db applied all three
    after = _log(data)
    assert out["dropped_uncommitted"] == 0 and out["removed"] == ["b", "c"]
    assert after[:len(before)] == before  # every applied write kept, in place
    assert [e.type for e in after[len(before):]] == [EntryType.CONF_CHANGE, EntryType.CONF_CHANGE]


def test_without_the_state_machine_the_stored_commit_decides(tmp_path: Path) -> None:
    data = _node(tmp_path, commit=1)
    before = _log(data)
    out = recover(data)  # no ctrl.db to vouch: the two writes after the stored commit are dropped
    after = _log(data)
    assert out["dropped_uncommitted"] == 2
    assert after[:len(before) - 2] == before[:-2] and after[len(before) - 2].type == EntryType.CONF_CHANGE
