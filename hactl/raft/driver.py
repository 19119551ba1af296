"""The Ready loop's logic without I/O scheduling: what to persist, send and apply, and in which order.

``Driver`` owns the pure core, the journal (a ``LogStore``), the state machine (an ``FSM``) and the snapshot data
that arrived with SNAPSHOT messages. It decides everything; its caller only decides *when* and *on which thread*
each step runs. node.py runs it on asyncio with an I/O thread; the deterministic simulator (tests/sim) runs the
very same object with simulated disks, delays and crashes. A cycle:

    rd = d.next_ready()              loop thread: the core's next batch; send d.outgoing(rd.early_messages) now
    ... d.early() ...                loop thread, while the persist runs: more early messages (see below)
    out = d.persist(rd)              I/O thread: install a snapshot, then ONE durable write; returns what may go out
    results = d.apply(rd)            I/O thread: committed entries into the FSM (membership changes included)
    d.finish(rd)                     loop thread: advance the core, record a finished local snapshot

Early messages (thesis section 10.2.1). While a Ready's write runs, the core keeps being stepped and ticked, and
some of its output may leave before that write is durable. The invariant, checked by the simulator at every send:
a message may leave a node only if everything it vouches for is durable on that node. Concretely the core marks
as early only messages whose term is already durable and that vouch for nothing else: a leader's appends,
heartbeats and snapshots (the leader counts its own copy toward a majority only after its write, in advance()),
heartbeat replies and read-index traffic. Votes and append acknowledgements always wait for the write.

Snapshots. The FSM writes a snapshot on its own thread while applies go on (``take_snapshot``); it returns the
snapshot's (index, term, membership) read from one consistent copy of its state, membership included because
membership entries are applied into the FSM like any other. ``snapshot_taken`` hands it to the core once the
core has applied that far, and the next persist records the marker and compacts the journal behind it.
A SNAPSHOT message is sent only with its data, and a received one is kept only if the core accepted it.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from .confchange import bootstrap_state
from .core import Config, Raft
from .types import ConfState, Entry, HardState, Message, MsgType, Ready, SnapshotMeta

if TYPE_CHECKING:
    from .storage import RaftState

log = logging.getLogger("hactl.raft")


class FSM(Protocol):
    """The replicated state machine (hashicorp/raft's FSM)."""

    def apply_batch(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply committed entries in order, CONF_CHANGE entries included (the FSM stores the membership so that
        a snapshot carries the membership of its own index). Deterministic; raises only when its storage fails."""

    def snapshot(self) -> SnapshotMeta | None:
        """Store a snapshot of the current state (may run on its own thread while apply continues) and return its
        (index, term, membership), all read from the same consistent state; None if there is nothing to store."""

    def snapshot_payload(self, meta: SnapshotMeta) -> Any:
        """What the transport carries to a follower for this stored snapshot; None if it is gone (pruned)."""

    def restore(self, meta: SnapshotMeta, payload: Any) -> None:
        """Replace the whole state by a snapshot received from the leader."""


class LogStore(Protocol):
    """raft.db as the driver uses it (hactl.raft.storage.RaftStorage; the simulator's disk)."""

    path: str

    def load(self) -> RaftState:
        """What a restarting node needs: hard state, snapshot marker, membership, the log's bounds."""

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries [lo, hi) of the log."""

    def save(self, hard_state: HardState | None, entries: Sequence[Entry],
             snapshot: SnapshotMeta | None = None) -> None:
        """Persist one Ready in one durable write."""

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record a newer local snapshot marker."""

    def compact(self, index: int) -> None:
        """Drop entries up to ``index`` (at or below the marker)."""


class DriverError(Exception):
    """The driver cannot go on (a broken invariant, or storage that failed): the node must stop."""


def open_core(config: Config, rng: random.Random, storage: LogStore, *, bootstrap: ConfState | None = None,
              bootstrap_contexts: dict[str, bytes] | None = None, restored: SnapshotMeta | None = None,
              core_class: type[Raft] = Raft) -> Raft:
    """The core of a (re)starting node, from what its journal holds.

    ``bootstrap``: the initial voters, written as the first committed entries of an empty journal.
    ``restored``: the snapshot the FSM was actually rebuilt from, when the caller rebuilt it (newer than the
    journal's marker after a crash between taking a snapshot and recording it; older if the newest snapshot turned
    out corrupt)."""
    st = storage.load()
    if bootstrap is not None and st.last_index == 0 and st.hard_state.term == 0 and st.snapshot.index == 0:
        hard, entries = bootstrap_state(bootstrap.voters, bootstrap_contexts)
        storage.save(hard, entries)
        st = storage.load()
    if restored is not None and restored.index > st.snapshot.index:
        storage.save(None, [], snapshot=restored)  # committed state we hold but did not record yet
        st = storage.load()
    snap = st.snapshot
    if restored is not None and restored.index < snap.index:
        if st.first_index > restored.index + 1:
            raise DriverError(f"{storage.path}: the state machine was rebuilt from snapshot {restored.index} "
                              f"but the journal starts at {st.first_index}; this node cannot replay the gap. "
                              "Move its data directory aside and add it back to the cluster.")
        snap = restored
    conf = snap.conf if snap.index else st.conf
    entries = storage.entries(st.first_index, st.last_index + 1) if st.last_index >= st.first_index else []
    return core_class(config, rng, hard_state=st.hard_state, conf=conf, snapshot=snap,
                      log_start=(st.first_index - 1, st.log_start_term), entries=entries)


@dataclass
class DriverOptions:
    snapshot_every: int = 10_000  # applied entries between snapshots; 0 disables
    snapshot_trailing: int = 5_000  # entries kept behind a snapshot for slow followers


Outgoing = tuple[Message, Any]  # a message and, for SNAPSHOT, its data


class Driver:
    def __init__(self, core: Raft, storage: LogStore, fsm: FSM, options: DriverOptions | None = None):
        self.core = core
        self.storage = storage
        self.fsm = fsm
        self.opts = options or DriverOptions()
        self.persisting = False
        self.snapshotting = False
        self.dropped: Counter[str] = Counter()
        self._payloads: dict[tuple[int, int], Any] = {}  # data of snapshots the core accepted, not yet installed
        self._local_snapshot: SnapshotMeta | None = None  # taken by the FSM, not yet handed to the core
        self._marker: tuple[SnapshotMeta, int] | None = None  # (snapshot, compact-to) the next persist records
        self._installed = core.snapshot.index  # newest snapshot installed from the leader (persist's thread)
        self._last_snapshot = core.snapshot.index
        # The hard state raft.db holds, and a newer one that differs only in its commit index, not written yet.
        self._saved_hs = HardState(core.term, core.vote, core.log.committed)
        self._unsaved_hs: HardState | None = None

    # ------------------------------------------------------------------ inputs (loop thread)

    def step(self, msg: Message, payload: Any = None) -> None:
        """One message from a peer. A SNAPSHOT must come with its data (the transport streams it); one without
        is dropped here, before the core could accept a snapshot nobody can install."""
        if msg.type == MsgType.SNAPSHOT:
            if payload is None or msg.snapshot is None:
                self.dropped["snapshot_without_data"] += 1
                return
            self.core.step(msg)
            s = msg.snapshot
            if self.core.pending_snapshot is not None and self.core.pending_snapshot == s:
                # Keyed by (index, term): a later, older snapshot the core refuses cannot evict this one.
                self._payloads[(s.index, s.term)] = payload
            else:
                self.dropped["snapshot_not_accepted"] += 1
            return
        self.core.step(msg)

    def has_work(self) -> bool:
        return self.core.has_ready() or self._marker is not None

    # ------------------------------------------------------------------ the cycle

    def next_ready(self) -> Ready:
        """The core's next batch. The caller sends ``outgoing(rd.early_messages)`` at once, then runs persist and
        apply (on its I/O thread), then finish."""
        if self.persisting:
            raise DriverError("next_ready while the previous Ready is still being persisted")
        self.persisting = True
        return self.core.ready()

    def early(self) -> list[Message]:
        """While a Ready is being persisted: messages that may leave now (see the module docstring)."""
        return self.core.take_early_messages() if self.persisting else []

    def needs_io(self, rd: Ready) -> bool:
        """False when persist has nothing to write (the caller may then run the cycle inline)."""
        return not (rd.snapshot is None and not rd.entries and self._marker is None
                    and (rd.hard_state is None or self._commit_only(rd.hard_state)))

    def _commit_only(self, hs: HardState) -> bool:
        return hs.term == self._saved_hs.term and hs.vote == self._saved_hs.vote

    def persist(self, rd: Ready) -> list[Message]:
        """I/O thread: install the Ready's snapshot into the FSM, then make the Ready durable in one write; returns
        its messages, which may leave once this returns."""
        if rd.snapshot is not None:
            s = rd.snapshot
            payload = self._payloads.pop((s.index, s.term), None)
            if payload is None:  # step() keeps the data of every snapshot the core accepts
                raise DriverError(f"snapshot {s.index}-{s.term} is to be installed but its data is missing")
            for key in [k for k in list(self._payloads) if k[0] <= s.index]:  # list(): step() adds meanwhile
                self._payloads.pop(key, None)
            self.fsm.restore(s, payload)
            self._installed = max(self._installed, s.index)
        marker, self._marker = self._marker, None
        # A local snapshot older than one installed from the leader meanwhile is moot: the journal moved past it.
        if marker is not None and marker[0].index > self._installed:
            self.storage.set_snapshot(marker[0])
            if marker[1] > 0:
                self.storage.compact(marker[1])
        hs = rd.hard_state
        if hs is not None and rd.snapshot is None and not rd.entries and self._commit_only(hs):
            # Only the commit index moved. Raft needs term and vote durable before answering, and entries before
            # acknowledging them, but never the commit index: a node restarting with an older one learns it
            # again from the leader, and ctrl.db skips entries it has applied already. Writing it would cost a
            # durable commit (two fsyncs) per write on every node, in the path of the answer. It goes to disk
            # with the next write that must be durable anyway, or once the node is idle (flush_commit).
            self._unsaved_hs = hs
            return rd.messages
        if hs is None and self._unsaved_hs is not None and (rd.snapshot is not None or rd.entries):
            hs = self._unsaved_hs
        if rd.snapshot is not None or rd.entries or hs is not None:
            self.storage.save(hs, rd.entries, rd.snapshot)
            if hs is not None:
                self._saved_hs, self._unsaved_hs = hs, None
        return rd.messages

    @property
    def commit_pending(self) -> bool:
        """A commit index persist held back (see persist) is still not on disk."""
        return self._unsaved_hs is not None

    def flush_commit(self) -> None:
        """I/O thread, between Readys: write the commit index persist held back (the caller does this once the
        node is idle, and at a clean stop, so that a restart replays everything this node applied)."""
        hs, self._unsaved_hs = self._unsaved_hs, None
        if hs is not None and self._commit_only(hs) and hs.commit > self._saved_hs.commit:
            self.storage.save(hs, [])
            self._saved_hs = hs

    def apply(self, rd: Ready) -> list[Any]:
        """I/O thread (after persist): committed entries into the FSM; one result per entry."""
        if not rd.committed:
            return []
        return list(self.fsm.apply_batch(rd.committed))

    def finish(self, rd: Ready) -> None:
        """Loop thread: the Ready is durable and applied."""
        if rd.snapshot is not None:
            self._last_snapshot = max(self._last_snapshot, rd.snapshot.index)
        self.core.advance(rd)
        self.persisting = False
        self._use_local_snapshot()

    def outgoing(self, msgs: Sequence[Message]) -> list[Outgoing]:
        """Messages with the data SNAPSHOT ones need. A snapshot whose data is gone (pruned) is not sent: the
        core hears of the failure and tries again later with a newer one."""
        out: list[Outgoing] = []
        for m in msgs:
            if m.type != MsgType.SNAPSHOT or m.snapshot is None:
                out.append((m, None))
                continue
            payload = self.fsm.snapshot_payload(m.snapshot)
            if payload is None:
                self.dropped["snapshot_data_gone"] += 1
                self.core.report_snapshot(m.to, False)
                continue
            out.append((m, payload))
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot_due(self) -> bool:
        every = self.opts.snapshot_every
        return bool(every) and not self.snapshotting and self.core.applied - self._last_snapshot >= every

    def begin_snapshot(self) -> None:
        """Loop thread, before take_snapshot runs (on any thread)."""
        self.snapshotting = True

    def take_snapshot(self) -> SnapshotMeta | None:
        """Any thread: the FSM stores a snapshot of whatever it has applied (possibly ahead of the core)."""
        return self.fsm.snapshot()

    def snapshot_taken(self, meta: SnapshotMeta | None) -> None:
        """Loop thread: take_snapshot finished (None: nothing stored, or it failed)."""
        self.snapshotting = False
        if meta is None or meta.index <= self.core.snapshot.index:
            return
        self._last_snapshot = max(self._last_snapshot, meta.index)
        self._local_snapshot = meta
        self._use_local_snapshot()

    def _use_local_snapshot(self) -> None:
        meta = self._local_snapshot
        if meta is None or meta.index > self.core.applied:
            return  # the FSM applies before the core advances: wait until the core has caught up with it
        self._local_snapshot = None
        if meta.index <= max(self.core.snapshot.index, self._installed):
            return
        self.core.set_snapshot(meta)
        compact_to = min(meta.index - self.opts.snapshot_trailing, self.core.applied)
        if compact_to > self.core.log.offset:
            self.core.compact(compact_to)
        else:
            compact_to = 0
        # Recorded by the next persist, on the I/O thread, so it is ordered with the Readys' writes.
        self._marker = (meta, compact_to)
