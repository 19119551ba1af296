"""Snapshots of ctrl.db: the store (create, list, verify, retain, stream, receive, restore), the start-up
rebuild of ctrl.db from the newest valid snapshot plus the journal, and the `hactl db` inspection commands."""
from hactl.snapshots.rebuild import SnapshotPolicy, rebuild_ctrl_db
from hactl.snapshots.store import SnapshotError, SnapshotInfo, SnapshotReceiver, SnapshotStore

__all__ = ["SnapshotError", "SnapshotInfo", "SnapshotPolicy", "SnapshotReceiver", "SnapshotStore",
           "rebuild_ctrl_db"]
