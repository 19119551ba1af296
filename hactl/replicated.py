"""The model as Raft sees it: hactl/raft's FSM protocol over ctrl.db (fsm) and the snapshot store (snapshots).

A snapshot received from the leader is installed by restarting the process (exit code 3): the new ctrl.db is
already in the snapshot store and raft.db records it, so the next start rebuilds from it. Swapping an LMDB
environment under live readers in-process is where subtle crashes live; a restart is simple and always correct.
Until then, applies are refused (the old ctrl.db is stale) and the API answers 503.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft.types import ConfState, SnapshotMeta
from hactl.snapshots.store import SnapshotInfo, SnapshotStore

log = logging.getLogger("hactl.controller")


def conf_to_json(conf: ConfState, addresses: dict[str, str]) -> dict[str, Any]:
    members = conf.members()
    return {"voters": list(conf.voters), "learners": list(conf.learners),
            "addresses": {k: v for k, v in sorted(addresses.items()) if k in members}}


def conf_from_json(value: Any) -> tuple[ConfState, dict[str, str]]:
    if not isinstance(value, dict):
        return ConfState(), {}
    addrs = value.get("addresses") or {}
    return (ConfState(tuple(value.get("voters") or ()), tuple(value.get("learners") or ())),
            {str(k): str(v) for k, v in addrs.items()} if isinstance(addrs, dict) else {})


class StoredSnapshot:
    """A stored snapshot as the transport streams it (hactl.transport.snapshot_stream.SnapshotSource)."""

    def __init__(self, store: SnapshotStore, info: SnapshotInfo):
        self.store, self.info = store, info

    def meta(self) -> dict[str, Any]:
        return self.info.to_meta()

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        return self.store.open_chunks(self.info, chunk_size)


class ReplicatedModel:
    def __init__(self, machine: StateMachine, store: SnapshotStore, *,
                 addresses: Callable[[], dict[str, str]], on_restart_needed: Callable[[str], None]):
        self.machine = machine
        self.store = store
        self._addresses = addresses
        self._on_restart_needed = on_restart_needed
        self.restart_reason: str | None = None
        self._lock = threading.Lock()  # a snapshot copy and a restore never overlap
        self.conf_at: Callable[[int], ConfState] | None = None  # set by the controller once the node exists
        self._timeline = (machine.cluster_info() or {}).get("timeline_id")

    # raft FSM protocol -------------------------------------------------------------------------------

    def apply_batch(self, entries: Sequence[tuple[int, int, bytes]]) -> list[Result | None]:
        if self.restart_reason is not None:
            return [None] * len(entries)  # stale ctrl.db: the restart rebuilds it from the snapshot and journal
        results = self.machine.apply_batch(entries)
        if any(r is not None and r.ok and r.value and "timeline_id" in r.value for r in results):
            self._check_timeline()
        return results

    def _check_timeline(self) -> None:
        """A committed restore starts a new timeline: snapshot right here (so the restarted process starts from
        the restored model and never applies the restore twice), then restart to load it."""
        timeline = (self.machine.cluster_info() or {}).get("timeline_id")
        if timeline == self._timeline:
            return
        previous, self._timeline = self._timeline, timeline
        if previous is None or self.conf_at is None:
            return  # cluster initialisation, not a restore
        meta = self.snapshot(self.conf_at)
        self.restart_reason = f"restored model on timeline {timeline} (snapshot {meta and meta.index})"
        self._on_restart_needed(self.restart_reason)

    def apply(self, index: int, term: int, data: bytes) -> Result | None:
        return self.apply_batch([(index, term, data)])[0]

    def snapshot(self, conf_at: Callable[[int], ConfState]) -> SnapshotMeta | None:
        with self._lock:
            if self.restart_reason is not None or self.machine.applied()[0] == 0:
                return None
            info_ = self.machine.cluster_info() or {}
            addrs = self._addresses()
            info = self.store.create(self.machine, conf=lambda i: conf_to_json(conf_at(i), addrs),
                                     cluster_id=str(info_.get("cluster_id", "")),
                                     timeline_id=str(info_.get("timeline_id", "")), created=time.time())
        return SnapshotMeta(info.index, info.term, conf_at(info.index))

    def snapshot_payload(self, meta: SnapshotMeta) -> StoredSnapshot | None:
        try:
            info = self.store.load(f"{meta.index}-{meta.term}")
        except Exception as e:  # pruned or damaged: the transport reports failure, raft retries later
            log.warning("snapshot %d-%d requested for a follower is not available: %s", meta.index, meta.term, e)
            return None
        return StoredSnapshot(self.store, info)

    def restore(self, meta: SnapshotMeta, payload: Any) -> None:
        if not isinstance(payload, SnapshotInfo) or (payload.index, payload.term) != (meta.index, meta.term):
            raise RuntimeError(f"snapshot {meta.index}-{meta.term} arrived without its verified data")
        with self._lock:
            self.restart_reason = f"installed snapshot {payload.name} from the leader"
        log.warning("installed snapshot %s received from the leader; restarting to load it", payload.name)
        self._on_restart_needed(self.restart_reason)
