"""Raft's FSM (hactl.raft.driver.FSM) over ctrl.db (hactl.fsm) and the snapshot store (hactl.snapshots).

Every committed entry goes into ctrl.db, membership changes included: ``MembershipTracker`` turns each CONF_CHANGE
entry into the Membership in force after it, which the state machine writes in the same transaction as the
applied index. A snapshot is a consistent copy of ctrl.db, so its (index, term, membership) cannot disagree; raft
owns the snapshot's configuration the way hashicorp/raft does, but here it is read from the copy itself.

A snapshot received from the leader is installed by restarting the process (exit code 3): the new ctrl.db is
already in the snapshot store and raft.db records it, so the next start rebuilds from it. Swapping an LMDB
environment under live readers in-process is where subtle crashes live; a restart is simple and always correct.
Until then, applies are refused (the old ctrl.db is stale) and the API answers 503.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from hactl.fsm.machine import StateMachine
from hactl.fsm.membership import Membership
from hactl.fsm.result import Result
from hactl.raft.confchange import apply_change, decode_conf_change
from hactl.raft.types import ConfChangeType, ConfState, Entry, EntryType, MalformedError, SnapshotMeta
from hactl.snapshots.store import SnapshotInfo, SnapshotStore

log = logging.getLogger("hactl.server")


def conf_of(m: Membership | None) -> ConfState:
    return ConfState() if m is None else ConfState(tuple(m.voters), tuple(m.learners))


def meta_of(info: SnapshotInfo) -> SnapshotMeta:
    """A stored snapshot as raft's SnapshotMeta (its membership is the one its meta.json recorded)."""
    m = None if info.conf is None else Membership.from_plain(info.conf, f"snapshot {info.name} meta.json conf")
    return SnapshotMeta(info.index, info.term, conf_of(m))


class MembershipTracker:
    """Turns CONF_CHANGE entries into the Membership after each, starting from the one ctrl.db holds.

    The context of an ADD_LEARNER/PROMOTE is the member's control-channel address (its entry in the address
    book); a REMOVE drops the member and its address."""

    def __init__(self, current: Membership | None):
        self.current = current or Membership()

    def after(self, e: Entry) -> Membership:
        m = self.current
        try:
            cc = decode_conf_change(e.data)
        except MalformedError:
            return m  # every node skips the same bad entry the same way
        conf = apply_change(conf_of(m), cc)
        if conf is None:
            return m
        addresses = dict(m.addresses)
        if cc.type == ConfChangeType.REMOVE:
            addresses.pop(cc.node, None)
        elif cc.context:
            addresses[cc.node] = cc.context.decode("utf-8", "replace")
        self.current = Membership(tuple(sorted(conf.voters)), tuple(sorted(conf.learners)),
                                  {k: v for k, v in addresses.items() if k in conf.members()})
        return self.current

    def translate(self, entries: Iterable[Entry]) -> Iterator[tuple[int, int, bytes | Membership]]:
        """Journal entries as StateMachine.apply_batch takes them."""
        for e in entries:
            if e.type == EntryType.CONF_CHANGE:
                yield e.index, e.term, self.after(e)
            else:
                yield e.index, e.term, e.data


class StoredSnapshot:
    """A stored snapshot as the transport streams it (hactl.transport.snapshot_stream.SnapshotSource)."""

    def __init__(self, store: SnapshotStore, info: SnapshotInfo):
        self.store, self.info = store, info

    def meta(self) -> dict[str, Any]:
        return self.info.to_meta()

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        return self.store.open_chunks(self.info, chunk_size)


class ControllerFSM:
    def __init__(self, machine: StateMachine, store: SnapshotStore, *, on_restart_needed: Callable[[str], None]):
        self.machine = machine
        self.store = store
        self._on_restart_needed = on_restart_needed
        self.restart_reason: str | None = None
        self._lock = threading.Lock()  # a snapshot copy and a restore never overlap
        self._members = MembershipTracker(machine.membership())
        self._timeline = (machine.cluster_info() or {}).get("timeline_id")
        # Told the commands of each applied batch that succeeded (from the Raft I/O thread): the ZeroTier
        # service pushes configs after changes. Must be quick and must not raise.
        self.on_applied: Callable[[list[bytes]], None] | None = None
        # Told (first, last) index of each applied batch, and each membership applied (its index and the members
        # after it), from the Raft I/O thread: events. Must be quick and must not raise.
        self.on_batch: Callable[[int, int], None] | None = None
        self.on_membership: Callable[[int, Membership], None] | None = None

    @property
    def membership(self) -> Membership:
        """The membership ctrl.db holds (as of the last applied batch)."""
        return self._members.current

    # raft FSM protocol -------------------------------------------------------------------------------

    def apply_batch(self, entries: Sequence[Entry]) -> list[Result | None]:
        if self.restart_reason is not None:
            return [None] * len(entries)  # stale ctrl.db: the restart rebuilds it from the snapshot and journal
        translated = list(self._members.translate(entries))
        results = self.machine.apply_batch(translated)
        if self.on_membership is not None:
            for index, _, data in translated:
                if isinstance(data, Membership):
                    self.on_membership(index, data)
        if any(r is not None and r.ok and r.value and "timeline_id" in r.value for r in results):
            self._check_timeline()
        if self.on_batch is not None and entries:
            self.on_batch(entries[0].index, entries[-1].index)
        if self.on_applied is not None:
            done = [e.data for e, r in zip(entries, results) if r is not None and r.ok and e.data]
            if done:
                try:
                    self.on_applied(done)
                except Exception:  # a push is an optimisation; applying must go on
                    log.exception("on_applied listener failed")
        return results

    def _check_timeline(self) -> None:
        """A committed restore starts a new timeline: snapshot right here (so the restarted process starts from
        the restored model and never applies the restore twice), then restart to load it."""
        timeline = (self.machine.cluster_info() or {}).get("timeline_id")
        if timeline == self._timeline:
            return
        previous, self._timeline = self._timeline, timeline
        if previous is None:
            return  # cluster initialisation, not a restore
        meta = self.snapshot()
        self.restart_reason = f"restored model on timeline {timeline} (snapshot {meta and meta.index})"
        self._on_restart_needed(self.restart_reason)

    def snapshot(self) -> SnapshotMeta | None:
        with self._lock:
            if self.restart_reason is not None or self.machine.applied()[0] == 0:
                return None
            info_ = self.machine.cluster_info() or {}
            info = self.store.create(self.machine, cluster_id=str(info_.get("cluster_id", "")),
                                     timeline_id=str(info_.get("timeline_id", "")), created=time.time())
        return meta_of(info)

    def snapshot_payload(self, meta: SnapshotMeta) -> StoredSnapshot | None:
        try:
            info = self.store.load(f"{meta.index}-{meta.term}")
        except Exception as e:  # pruned or damaged: the driver reports failure, raft retries later
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
