"""Start-up: rebuild ctrl.db from the newest valid snapshot plus the journal; and when to snapshot/compact.

ctrl.db is never trusted across a restart (it is not fsynced, and not the system of record): the old file is
renamed aside to ctrl.db.prev (one previous copy, for forensics), the newest snapshot that verifies is copied in,
and the journal entries after its index are replayed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from hactl.fsm.machine import DEFAULT_MAP_SIZE, StateMachine
from hactl.fsm.membership import Membership
from hactl.snapshots.store import SnapshotError, SnapshotInfo, SnapshotStore

log = logging.getLogger("hactl.snapshots")

CTRL_DB = "ctrl.db"
Entries = Iterable[tuple[int, int, "bytes | Membership"]]


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    every_entries: int = 10_000  # snapshot after this many applied entries
    interval_s: float | None = None  # ... or this long after the last snapshot, if anything was applied since
    retain: int = 5  # snapshots kept on disk
    trailing: int = 5_000  # journal entries kept behind the newest snapshot for slow followers

    def __post_init__(self) -> None:
        if self.every_entries < 1 or self.retain < 1 or self.trailing < 0:
            raise ValueError("every_entries and retain must be >= 1, trailing >= 0")
        if self.interval_s is not None and self.interval_s <= 0:
            raise ValueError("interval_s must be positive (or None for no timer)")

    def due(self, applied_index: int, last_snapshot_index: int, now: float, last_snapshot_time: float) -> bool:
        """True when a snapshot should be taken now; never when nothing was applied since the last one."""
        if applied_index <= last_snapshot_index:
            return False
        if applied_index - last_snapshot_index >= self.every_entries:
            return True
        return self.interval_s is not None and now - last_snapshot_time >= self.interval_s

    def compact_to(self, snapshot_index: int) -> int:
        """The highest journal index that may be discarded once a snapshot at ``snapshot_index`` exists."""
        return max(0, snapshot_index - self.trailing)


def rebuild_ctrl_db(data_dir: str | os.PathLike[str], store: SnapshotStore,
                    entries_after: Callable[[StateMachine], Entries], *, batch_entries: int = 1000,
                    sync: bool = False, map_size: int = DEFAULT_MAP_SIZE) -> tuple[StateMachine, SnapshotInfo | None]:
    """Set the old ctrl.db aside, restore the newest valid snapshot (none at all: start empty, a fresh node),
    replay ``entries_after(machine)`` (the journal after the machine's applied index, with memberships as the
    machine stores them) in batches, and return the open StateMachine and the snapshot it was rebuilt from.

    Raises SnapshotError if snapshot directories exist but none verifies (starting empty would serve an empty
    model as if it were the real one), or if the journal does not continue where the snapshot ends.
    """
    ctrl = Path(data_dir) / CTRL_DB
    _set_aside(ctrl)
    info = store.newest_valid()
    if info is None and store.names():
        raise SnapshotError(f"{store.dir}: no valid snapshot among {', '.join(store.names())} "
                            f"(see the warnings above); refusing to start from an empty model")
    if info is not None:
        store.restore_to(info, ctrl)
        log.info("ctrl.db restored from snapshot %s", info.name)
    machine = StateMachine(ctrl, sync=sync, map_size=map_size)
    try:
        start = machine.applied()[0]
        if info is not None and start != info.index:
            raise SnapshotError(f"{info.data_path}: holds applied index {start}, meta.json says {info.index}")
        replayed = _replay(machine, entries_after(machine), start, batch_entries)
        log.info("ctrl.db rebuilt: snapshot index %d, %d journal entries replayed, applied %d",
                 start, replayed, machine.applied()[0])
    except BaseException:
        machine.close()
        raise
    return machine, info


def _replay(machine: StateMachine, entries: Entries, start: int, batch_entries: int) -> int:
    batch: list[tuple[int, int, bytes]] = []
    last = start
    count = 0
    for index, term, data in entries:
        if index <= last:
            continue
        if index != last + 1:
            raise SnapshotError(f"the journal jumps from {last} to {index}: entries after the snapshot are "
                                f"missing (compacted too far?)")
        batch.append((index, term, data))
        last = index
        if len(batch) >= batch_entries:
            machine.apply_batch(batch)
            count += len(batch)
            batch = []
    if batch:
        machine.apply_batch(batch)
        count += len(batch)
    return count


def _set_aside(ctrl: Path) -> None:
    """ctrl.db -> ctrl.db.prev (replacing an older .prev); LMDB lock files of both go."""
    prev = ctrl.with_name(ctrl.name + ".prev")
    if ctrl.exists():
        os.replace(ctrl, prev)
        Path(f"{prev}-lock").unlink(missing_ok=True)
        log.info("previous ctrl.db kept as %s", prev)
    Path(f"{ctrl}-lock").unlink(missing_ok=True)
    ctrl.with_name(ctrl.name + ".restoring").unlink(missing_ok=True)  # a restore_to cut short
