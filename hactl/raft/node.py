"""The asyncio driver that runs the pure core against real storage, a state machine and a transport.

One loop iteration handles one Ready: persist (snapshot install, entries and hard state in one raft.db
transaction) on the I/O thread, then send, then apply committed entries, then advance. While a Ready is being
persisted the event loop keeps stepping messages, ticking and accepting proposals, which all land in the next Ready:
that is the group commit, and a slow fsync never stalls heartbeats.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from hactl.aio import cancel_and_wait

from .core import (Config, NotLeader, ProposalRefused, Raft, Status, bootstrap_state, conf_after,
                   decode_conf_change)
from .storage import RaftStorage
from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MsgType, Ready, Role, SnapshotMeta

log = logging.getLogger("hactl.raft")


class FSM(Protocol):
    """The replicated state machine (hashicorp/raft's FSM)."""

    def apply(self, index: int, term: int, data: bytes) -> Any:
        """Apply one committed entry; must be deterministic and must not raise for bad data."""

    def snapshot(self, conf_at: Callable[[int], ConfState]) -> SnapshotMeta | None:
        """Store a snapshot of the current state; may run on its own thread while apply continues.
        Returns the meta of what was stored (index/term read consistently with the data), or None."""

    def snapshot_payload(self, meta: SnapshotMeta) -> Any:
        """What the transport carries to a follower for this snapshot (bytes, a path, a chunk iterator...)."""

    def restore(self, meta: SnapshotMeta, payload: Any) -> None:
        """Replace the whole state by a snapshot received from the leader."""


class Transport(Protocol):
    def send(self, msg: Message, payload: Any = None) -> None:
        """Best effort, non-blocking. SNAPSHOT messages come with the FSM's payload for their meta."""


class RaftError(Exception):
    pass


class NoLeader(RaftError):
    """No leader is known: the client should retry later (HTTP 503)."""


class ResultUnknown(RaftError):
    """The proposal may or may not have committed (the entry was replaced by a snapshot, or timed out)."""


class ProposalDropped(RaftError):
    """The proposal was overwritten by another leader's entry: it did not commit."""


@dataclass
class NodeOptions:
    tick_interval: float = 0.1
    snapshot_every: int = 10_000  # applied entries between snapshots; 0 disables
    snapshot_trailing: int = 5_000  # entries kept behind a snapshot for slow followers
    apply_batch: int = 4096
    inline_apply: int = 16  # at most this many committed entries are applied on the event loop itself


class RaftNode:
    def __init__(self, config: Config, storage: RaftStorage, fsm: FSM, transport: Transport, *,
                 options: NodeOptions | None = None, seed: int | None = None,
                 bootstrap: ConfState | None = None, restored: SnapshotMeta | None = None,
                 bootstrap_contexts: dict[str, bytes] | None = None):
        """`restored`: the snapshot the FSM was actually rebuilt from, when the caller rebuilt it (it may be newer
        than raft.db's marker after a crash mid-install, or older if the newest snapshot turned out corrupt)."""
        self.cfg = config
        self.id = config.id
        self.storage = storage
        self.fsm = fsm
        self.transport = transport
        self.opts = options or NodeOptions()
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
                raise RaftError(f"{storage.path}: the state machine was rebuilt from snapshot {restored.index} "
                                f"but the journal starts at {st.first_index}; this node cannot replay the gap. "
                                "Move its data directory aside and add it back to the cluster.")
            snap = restored
        conf = snap.conf if snap.index else st.conf
        entries = storage.entries(st.first_index, st.last_index + 1) if st.last_index >= st.first_index else []
        self.core = Raft(config, random.Random(seed), hard_state=st.hard_state, conf=conf, snapshot=snap,
                         log_start=(st.first_index - 1, st.log_start_term), entries=entries)
        self._conf_history: list[tuple[int, ConfState]] = [(snap.index, conf)]
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{self.id}")
        self._snap_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-snap-{self.id}")
        self._wake = asyncio.Event()
        self._persisting = False
        self._early_scheduled = False
        self._tasks: list[asyncio.Task] = []
        self._proposals: dict[int, tuple[int, asyncio.Future]] = {}
        self._reads: dict[bytes, list[asyncio.Future]] = {}  # read round context -> its waiting reads
        self._read_queue: list[asyncio.Future] = []  # reads waiting for the next round
        self._read_inflight: bytes | None = None
        self._applied_waiters: list[tuple[int, asyncio.Future]] = []
        self._payloads: dict[tuple[int, int], Any] = {}
        self._read_seq = itertools.count(1)
        self._snapshotting = False
        self._local_snapshot: SnapshotMeta | None = None
        self._last_snapshot = snap.index
        self._running = False
        self.applied = self.core.applied
        self.on_role_change: Callable[[Role, str | None], None] | None = None
        self.on_conf_change: Callable[[ConfChange, ConfState], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._running = True
        self._tasks = [asyncio.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
                       asyncio.create_task(self._run(), name=f"raft-run-{self.id}")]

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        await cancel_and_wait(self._tasks)
        self._fail_all(RaftError("node stopped"))
        self._io.shutdown(wait=True)
        self._snap_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ inputs

    def receive(self, msg: Message, payload: Any = None) -> None:
        """Called by the transport for every incoming message (on the event loop)."""
        if msg.type == MsgType.SNAPSHOT and msg.snapshot is not None and payload is not None:
            self._payloads = {(msg.snapshot.index, msg.snapshot.term): payload}  # only the newest is useful
        self.core.step(msg)
        self._poke()

    async def propose(self, data: bytes, timeout: float | None = None) -> tuple[int, Any]:
        """Replicate one entry; returns (index, the state machine's result) once applied here."""
        try:
            index = self.core.propose(data)
        except NotLeader as e:
            raise (NoLeader(str(e)) if e.leader is None else e)
        return index, await self._wait_entry(index, timeout)

    async def change_membership(self, cc: ConfChange, timeout: float | None = None) -> int:
        index = self.core.propose_conf_change(cc)
        await self._wait_entry(index, timeout)
        return index

    async def add_voter(self, node: str, context: bytes = b"", timeout: float = 30.0) -> None:
        """Add as a learner, wait until it has caught up, then promote it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if node not in self.core.conf.members():
            await self.change_membership(ConfChange(ConfChangeType.ADD_LEARNER, node, context), timeout)
        while node not in self.core.conf.voters:
            try:
                await self.change_membership(ConfChange(ConfChangeType.PROMOTE, node, context),
                                             max(0.1, deadline - loop.time()))
            except ProposalRefused:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(self.opts.tick_interval)

    async def transfer_leadership(self, target: str | None = None, timeout: float = 5.0) -> str:
        self.core.transfer_leadership(target)
        self._poke()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(self.opts.tick_interval / 2)
            if self.core.leader is not None and self.core.leader != self.id:
                return self.core.leader
        raise RaftError(f"leadership transfer did not complete within {timeout}s")

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Linearizable read: wait until this node has applied everything committed before the call.

        Reads are batched: one ReadIndex round is in flight at a time, and reads arriving meanwhile share the
        next round, which starts after they arrived (so its index covers everything committed before them)."""
        if self.core.leader is None:
            raise NoLeader("no leader is known")
        fut = asyncio.get_running_loop().create_future()
        self._read_queue.append(fut)
        if self._read_inflight is None:
            self._start_read_round()
        index = await asyncio.wait_for(asyncio.shield(fut), timeout)
        await self.wait_applied(index, timeout)
        return index

    def _start_read_round(self) -> None:
        batch, self._read_queue = [f for f in self._read_queue if not f.done()], []
        if not batch:
            return
        ctx = next(self._read_seq).to_bytes(8, "big")
        try:
            self.core.read_index(ctx)
        except NotLeader as e:
            for f in batch:
                f.set_exception(NoLeader(str(e)))
            return
        self._read_inflight = ctx
        self._reads[ctx] = batch
        self._poke()
        # An answer lost with a leader change must not block later reads: give up after two election timeouts.
        asyncio.get_running_loop().call_later(2 * self.cfg.election_tick * self.opts.tick_interval,
                                              self._read_round_done, ctx, NoLeader("no answer to a read round"))

    def _read_round_done(self, ctx: bytes, outcome: int | Exception) -> None:
        batch = self._reads.pop(ctx, None)
        for f in batch or ():
            if not f.done():
                f.set_exception(outcome) if isinstance(outcome, Exception) else f.set_result(outcome)
        if self._read_inflight == ctx:
            self._read_inflight = None
            if self._read_queue:
                self._start_read_round()

    async def wait_applied(self, index: int, timeout: float | None = None) -> None:
        if self.applied >= index:
            return
        fut = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await asyncio.wait_for(fut, timeout)

    def report_snapshot(self, to: str, ok: bool) -> None:
        """The transport finished (or gave up) streaming a snapshot to `to`."""
        self.core.report_snapshot(to, ok)
        self._poke()

    def report_unreachable(self, to: str) -> None:
        self.core.report_unreachable(to)
        self._poke()

    def status(self) -> Status:
        st = self.core.status()
        st.applied = self.applied
        return st

    @property
    def is_leader(self) -> bool:
        return self.core.role == Role.LEADER

    @property
    def leader(self) -> str | None:
        return self.core.leader

    # ------------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        while self._running:
            await asyncio.sleep(self.opts.tick_interval)
            self.core.tick()
            self._poke()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            while self._running and self.core.has_ready():
                rd = self.core.ready()
                self._send_all(rd.early_messages)
                try:
                    if self._nothing_to_persist(rd) and len(rd.committed) <= self.opts.inline_apply:
                        # Nothing to fsync and little to apply: a thread hop would cost more than the work.
                        self._send_all(rd.messages)
                        results = self._apply(rd)
                    else:
                        self._persisting = True
                        try:
                            results = await loop.run_in_executor(self._io, self._persist_and_apply_io, rd, loop)
                        finally:
                            self._persisting = False
                except Exception:  # storage failure: we cannot go on safely without durable state
                    log.exception("raft node %s: persisting a Ready failed; stopping the node", self.id)
                    self._running = False
                    self._fail_all(RaftError("storage failure"))
                    raise
                self._after_io(rd, results)

    def _poke(self) -> None:
        """Something happened (message, tick, proposal, read). While a Ready is being persisted, heartbeats and a
        leader's new appends go out at once, so a slow disk stalls nobody: one flush per loop iteration."""
        self._wake.set()
        if self._persisting and not self._early_scheduled:
            self._early_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_early)

    def _flush_early(self) -> None:
        self._early_scheduled = False
        if self._persisting:
            self._send_all(self.core.take_early_messages())

    def _persist_and_apply_io(self, rd: Ready, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """On the I/O thread: install snapshot, persist, send, apply (the Ready contract's order)."""
        if rd.snapshot is not None:
            payload = self._payloads.pop((rd.snapshot.index, rd.snapshot.term), None)
            self.fsm.restore(rd.snapshot, payload)
        if not self._nothing_to_persist(rd):
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        if rd.messages:
            # Durable now: the loop thread sends while this thread applies.
            loop.call_soon_threadsafe(self._send_all, rd.messages)
        return self._apply(rd)

    @staticmethod
    def _nothing_to_persist(rd: Ready) -> bool:
        return rd.snapshot is None and not rd.entries and rd.hard_state is None

    def _apply(self, rd: Ready) -> list[Any]:
        # Every committed index goes to the FSM (membership entries as empty data) so its applied index is
        # exactly raft's.
        batch = [(e.index, e.term, e.data if e.type == EntryType.NORMAL else b"") for e in rd.committed]
        apply_batch = getattr(self.fsm, "apply_batch", None)
        if apply_batch is not None:
            return list(apply_batch(batch))
        return [self.fsm.apply(*b) for b in batch]

    def _send_all(self, msgs: list[Message]) -> None:
        for m in msgs:
            payload = self.fsm.snapshot_payload(m.snapshot) if m.snapshot is not None else None
            try:
                self.transport.send(m, payload)
            except Exception:  # a transport fault for one peer must not stop the node
                log.exception("raft node %s: sending %s to %s failed", self.id, m.type.name, m.to)

    def _after_io(self, rd: Ready, results: list[Any]) -> None:
        if rd.snapshot is not None:
            self._conf_history = [(rd.snapshot.index, rd.snapshot.conf)]
            self._last_snapshot = rd.snapshot.index
            # Proposals this snapshot jumped over may or may not have committed.
            for idx in [i for i in self._proposals if i <= rd.snapshot.index]:
                _, fut = self._proposals.pop(idx)
                if not fut.done():
                    fut.set_exception(ResultUnknown(f"entry {idx} was covered by an installed snapshot"))
        for e, result in zip(rd.committed, results):
            if e.type == EntryType.CONF_CHANGE:
                new = conf_after(self._conf_history[-1][1], e.data)
                if new is not None:
                    self._conf_history.append((e.index, new))
                    if self.on_conf_change is not None:
                        self.on_conf_change(decode_conf_change(e.data), new)
                result = None
            waiter = self._proposals.pop(e.index, None)
            if waiter is not None and not waiter[1].done():
                if waiter[0] == e.term:
                    waiter[1].set_result(result)
                else:
                    waiter[1].set_exception(ProposalDropped(f"entry {e.index} was replaced by a newer leader"))
        self.core.advance(rd)
        self.applied = self.core.applied
        for rs in rd.read_states:
            self._read_round_done(rs.context, rs.index)
        if self._applied_waiters:
            keep = []
            for index, fut in self._applied_waiters:
                if fut.done():
                    continue
                if index <= self.applied:
                    fut.set_result(None)
                else:
                    keep.append((index, fut))
            self._applied_waiters = keep
        if rd.soft_state is not None:
            if rd.soft_state.role != Role.LEADER:
                self._fail_reads()
            if self.on_role_change is not None:
                self.on_role_change(rd.soft_state.role, rd.soft_state.leader)
        self._use_local_snapshot()
        self._maybe_snapshot()

    async def _wait_entry(self, index: int, timeout: float | None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._proposals[index] = (self.core.term, fut)
        self._poke()
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ResultUnknown(f"entry {index} not applied within {timeout}s; it may still commit") from None
        finally:
            self._proposals.pop(index, None)

    def _fail_reads(self) -> None:
        for ctx in list(self._reads):
            self._read_round_done(ctx, NoLeader("leadership changed during a linearizable read"))

    def _fail_all(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            if not fut.done():
                fut.set_exception(exc)
        for _, fut in self._applied_waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._fail_reads()

    # ------------------------------------------------------------------ snapshots and compaction

    def conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for i, c in self._conf_history:
            if i <= index:
                conf = c
        return conf

    def _maybe_snapshot(self) -> None:
        every = self.opts.snapshot_every
        if every and not self._snapshotting and self.applied - self._last_snapshot >= every:
            self.request_snapshot()

    def request_snapshot(self) -> asyncio.Future:
        """Take a snapshot now (off the event loop), then compact the log behind it."""
        self._snapshotting = True
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._snap_pool, self.fsm.snapshot, self.conf_at)
        fut.add_done_callback(self._snapshot_done)
        return fut

    def _snapshot_done(self, fut: asyncio.Future) -> None:
        self._snapshotting = False
        if fut.cancelled() or fut.exception() is not None:
            log.error("raft node %s: snapshot failed: %s", self.id, fut.exception())
            return
        meta: SnapshotMeta | None = fut.result()
        if meta is None or meta.index <= self.core.snapshot.index:
            return
        self._last_snapshot = meta.index
        # The FSM applies on the I/O thread before the core hears of it (advance): it may be ahead of the core.
        self._local_snapshot = meta
        self._use_local_snapshot()

    def _use_local_snapshot(self) -> None:
        meta = self._local_snapshot
        if meta is None or meta.index > self.core.applied:
            return
        self._local_snapshot = None
        if meta.index <= self.core.snapshot.index:
            return
        self.core.set_snapshot(meta)
        compact_to = min(meta.index - self.opts.snapshot_trailing, self.core.applied)
        if compact_to > self.core.log.offset:
            self.core.compact(compact_to)

        def record() -> None:  # on the I/O thread so it is ordered with Ready writes
            self.storage.set_snapshot(meta)
            if compact_to > 0:
                self.storage.compact(compact_to)
        self._io.submit(record)
        self._conf_history = [(i, c) for i, c in self._conf_history if i >= meta.index] or [(meta.index, meta.conf)]
