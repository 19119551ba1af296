"""RaftNode: the asyncio shell around driver.Driver (which decides everything; see its docstring).

One loop iteration handles one Ready: persist and apply on the I/O thread, then finish on the loop. While a Ready
is being persisted the event loop keeps stepping messages, ticking and accepting proposals, which all land in the
next Ready: that is the group commit, and a slow fsync never stalls heartbeats. Here live only what needs asyncio:
the ticker, futures for proposals, reads and applied indexes, and the threads.

Fail-stop: if persisting or applying fails (disk full, EIO, a failed restore) or the driver finds a broken
invariant, the node stops at once, fails every waiter and resolves ``failed`` with the cause: the process must
exit (a supervisor restarts it) rather than serve a frozen model.
"""
from __future__ import annotations

import asyncio
import time
import collections
import concurrent.futures
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from hactl.aio import cancel_and_wait, wait_owned

from .confchange import decode_conf_change
from .core import Config, NotLeader, ProposalRefused, Status
from .driver import FSM, Driver, DriverError, DriverOptions, LogStore, open_core
from .metrics_hooks import SNAPSHOT_BUCKETS, DurationHistogram, clock
from .storage import RaftStorage
from .types import ConfChange, ConfChangeType, ConfState, EntryType, Message, Ready, Role, SnapshotMeta

log = logging.getLogger("hactl.raft")

__all__ = ["FSM", "LogStore", "Transport", "RaftNode", "NodeOptions", "RaftError", "NoLeader", "ResultUnknown",
           "ProposalDropped", "NodeFailed"]


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


class NodeFailed(RaftError):
    """The node stopped because persisting or applying failed; the process must exit."""


@dataclass
class NodeOptions:
    tick_interval: float = 0.1
    snapshot_every: int = 10_000  # applied entries between snapshots; 0 disables
    snapshot_trailing: int = 5_000  # entries kept behind a snapshot for slow followers
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
        try:
            core = open_core(config, random.Random(seed), storage, bootstrap=bootstrap,
                             bootstrap_contexts=bootstrap_contexts, restored=restored)
        except DriverError as e:
            raise RaftError(str(e)) from None
        self.driver = Driver(core, storage, fsm, DriverOptions(snapshot_every=self.opts.snapshot_every,
                                                               snapshot_trailing=self.opts.snapshot_trailing))
        self.core = core  # for tests and status; the composition uses the properties below
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-io-{self.id}")
        self._snap_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"raft-snap-{self.id}")
        self._wake = asyncio.Event()
        self._io_since: float | None = None  # when the I/O thread's current fsync/apply began
        self._early_scheduled = False
        self._readies = 0  # Readys with entries to write or apply so far: the ticker tells an idle node by it
        self._flush_due = False
        self._tasks: list[asyncio.Task] = []
        self._proposals: dict[int, tuple[int, asyncio.Future]] = {}
        self._reads: dict[bytes, list[asyncio.Future]] = {}  # read round context -> its waiting reads
        self._read_queue: list[asyncio.Future] = []  # reads waiting for the next round
        self._read_inflight: bytes | None = None
        self._applied_waiters: list[tuple[int, asyncio.Future]] = []
        self._read_seq = itertools.count(1)
        self._running = False
        self._failed: asyncio.Future | None = None
        self.applied = core.applied
        self.on_role_change: Callable[[Role, str | None], None] | None = None
        self.on_conf_change: Callable[[ConfChange, ConfState], None] | None = None
        # Read by the Prometheus collector at scrape time. Plain ints: a proposal's fate is counted once, where it
        # is decided; durations are observed per applied batch and per snapshot, never per entry.
        self.leader_changes = 0
        self._seen_leader: str | None = None
        self.proposals_applied = 0
        self.proposals_dropped = 0  # another leader's entry took the index: it never commits
        self.proposals_failed: collections.Counter[str] = collections.Counter()  # by reason
        self.apply_seconds = DurationHistogram()
        self.snapshot_seconds = DurationHistogram(SNAPSHOT_BUCKETS)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._running = True
        self._failed = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
                       asyncio.create_task(self._run(), name=f"raft-run-{self.id}")]

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        await cancel_and_wait(self._tasks)
        # NodeFailed like a failure: a proposal in flight may still commit elsewhere (a forwarded write answers
        # "unknown", 504), and nothing else is to be asked of this node.
        self._fail_all(NodeFailed(f"raft node {self.id} stopped"))
        if self._failed is None or not self._failed.done():  # (a failed node writes nothing more)
            self._io.submit(self._flush_at_stop)  # after any persist still running: one I/O thread
        self._io.shutdown(wait=True)
        self._snap_pool.shutdown(wait=True)

    def _flush_at_stop(self) -> None:
        """A clean stop leaves the commit index of everything applied on disk: the restart replays it all."""
        try:
            self.driver.flush_commit()
        except Exception as e:  # the next start learns the commit index from the leader instead
            log.warning("raft node %s: writing the commit index at stop failed: %s", self.id, e)

    async def wait_failed(self) -> BaseException:
        """Returns (never raises) the cause once the node has failed; waits forever while it runs."""
        assert self._failed is not None, "start() first"
        return await asyncio.shield(self._failed)

    def _fail(self, cause: BaseException) -> None:
        """Fail-stop: nothing more is persisted, applied or sent; every waiter learns it; wait_failed returns."""
        if not self._running:
            return
        log.critical("raft node %s stopped: %s: %s", self.id, type(cause).__name__, cause)
        self._running = False
        self._wake.set()
        self._fail_all(NodeFailed(f"raft node {self.id} stopped: {cause}"))
        if self._failed is not None and not self._failed.done():
            self._failed.set_result(cause)

    # ------------------------------------------------------------------ public surface

    @property
    def is_leader(self) -> bool:
        return self.core.role == Role.LEADER

    @property
    def leader(self) -> str | None:
        return self.core.leader

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def membership(self) -> ConfState:
        """The membership in force (as of the applied index)."""
        return self.core.conf

    @property
    def commit_index(self) -> int:
        return self.core.log.committed

    @property
    def snapshot_index(self) -> int:
        return self.core.snapshot.index

    @property
    def snapshot_in_progress(self) -> bool:
        return self.driver.snapshotting

    @property
    def io_stalled_s(self) -> float:
        """How long the fsync/apply in progress on the I/O thread has been running (0 when none is): a disk
        that hangs shows here, while the event loop still answers."""
        since = self._io_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def running(self) -> bool:
        return self._running

    @property
    def proposals_pending(self) -> int:
        """Proposals made on this node that wait for their entry to be applied here."""
        return len(self._proposals)

    def dropped(self) -> dict[str, int]:
        """Counts of inputs dropped by the core and the driver, by reason."""
        return dict(self.core.dropped + self.driver.dropped)

    def status(self) -> Status:
        st = self.core.status()
        st.applied = self.applied
        return st

    # ------------------------------------------------------------------ inputs

    def receive(self, msg: Message, payload: Any = None) -> None:
        """Called by the transport for every incoming message (on the event loop)."""
        if not self._running:
            return
        self.driver.step(msg, payload)
        self._poke()

    async def propose(self, data: bytes, timeout: float | None = None) -> tuple[int, Any]:
        """Replicate one entry; returns (index, the state machine's result) once applied here.

        Raises NoLeader/NotLeader/ProposalRefused if nothing was appended; ProposalDropped if the entry was
        appended but another leader's entry took its index (it can never commit); ResultUnknown if it was
        appended and its fate is not known in time."""
        self._check_running()
        try:
            index = self.core.propose(data)
        except NotLeader as e:
            self.proposals_failed["not_leader"] += 1
            raise (NoLeader(str(e)) if e.leader is None else e)
        except ProposalRefused:
            self.proposals_failed["refused"] += 1
            raise
        return index, await self._wait_entry(index, timeout)

    async def change_membership(self, cc: ConfChange, timeout: float | None = None) -> int:
        self._check_running()
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
        self._check_running()
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
        self._check_running()
        if self.core.leader is None:
            raise NoLeader("no leader is known")
        fut = asyncio.get_running_loop().create_future()
        self._read_queue.append(fut)
        if self._read_inflight is None:
            self._start_read_round()
        # wait_owned, not wait_for(shield(...)): a read whose caller went away (cancelled) cancels its own future,
        # so a round failing later does not leave an exception nobody retrieves (asyncio logs each one).
        index = await wait_owned(fut, timeout)
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
        self._check_running()
        fut = asyncio.get_running_loop().create_future()
        self._applied_waiters.append((index, fut))
        await wait_owned(fut, timeout)

    def report_snapshot(self, to: str, ok: bool) -> None:
        """The transport finished (or gave up) streaming a snapshot to `to`."""
        if self._running:
            self.core.report_snapshot(to, ok)
            self._poke()

    def leader_lost(self) -> None:
        """The control connection to the leader closed (see Raft.leader_lost). On the loop."""
        if self._running:
            self.core.leader_lost()

    def report_unreachable(self, to: str) -> None:
        if self._running:
            self.core.report_unreachable(to)
            self._poke()

    def _check_running(self) -> None:
        if not self._running:
            raise NodeFailed(f"raft node {self.id} is not running")

    # ------------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        seen = -1
        while self._running:
            await asyncio.sleep(self.opts.tick_interval)
            if not self._running:
                return
            if self._readies == seen and self.driver.commit_pending:
                self._flush_due = True  # a tick without new entries: write the held-back commit index now
            seen = self._readies
            self.core.tick()
            self._poke()

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # storage failure, a failed restore, a broken invariant: fail-stop
            self._fail(e)

    async def _io_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the I/O thread (one at a time: the driver's persist state is that thread's), timed for
        liveness (io_stalled_s)."""
        self._io_since = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        finally:
            self._io_since = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        d = self.driver
        while self._running:
            await self._wake.wait()
            self._wake.clear()
            while self._running and d.has_work():
                rd = d.next_ready()
                self._send_all(rd.early_messages)
                if not d.needs_io(rd) and len(rd.committed) <= self.opts.inline_apply:
                    # Nothing to fsync and little to apply: a thread hop would cost more than the work.
                    self._send_all(d.persist(rd))
                    results = self._apply(rd)
                else:
                    results = await self._io_call(self._persist_and_apply_io, rd, loop)
                if not self._running:
                    return
                d.finish(rd)
                if rd.entries or rd.committed:
                    self._readies += 1
                self._after_io(rd, results)
            if self._flush_due and self._running and not d.has_work():
                self._flush_due = False
                d.persisting = True  # as for a Ready: heartbeats and appends leave meanwhile (_poke, early)
                try:
                    await self._io_call(d.flush_commit)
                finally:
                    d.persisting = False

    def _poke(self) -> None:
        """Something happened (message, tick, proposal, read). While a Ready is being persisted, heartbeats and a
        leader's new appends go out at once, so a slow disk stalls nobody: one flush per loop iteration."""
        self._wake.set()
        if self.driver.persisting and not self._early_scheduled:
            self._early_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_early)

    def _flush_early(self) -> None:
        self._early_scheduled = False
        if self._running:
            self._send_all(self.driver.early())

    def _persist_and_apply_io(self, rd: Ready, loop: asyncio.AbstractEventLoop) -> list[Any]:
        """On the I/O thread: persist (the messages may leave as soon as it returns), then apply."""
        msgs = self.driver.persist(rd)
        if msgs:
            loop.call_soon_threadsafe(self._send_all, msgs)  # the loop thread sends while this thread applies
        return self._apply(rd)

    def _apply(self, rd: Ready) -> list[Any]:
        """The driver's apply, timed per batch (hactl_apply_duration_seconds); Readys with nothing committed,
        most of them on a follower, are not observations."""
        if not rd.committed:
            return self.driver.apply(rd)
        t0 = clock()
        results = self.driver.apply(rd)
        self.apply_seconds.observe(clock() - t0)
        return results

    def _send_all(self, msgs: list[Message]) -> None:
        if not self._running or not msgs:
            return
        for m, payload in self.driver.outgoing(msgs):
            try:
                self.transport.send(m, payload)
            except Exception:  # a transport fault for one peer must not stop the node
                log.exception("raft node %s: sending %s to %s failed", self.id, m.type.name, m.to)

    def _after_io(self, rd: Ready, results: list[Any]) -> None:
        if rd.snapshot is not None:
            # Proposals this snapshot jumped over may or may not have committed.
            for idx in [i for i in self._proposals if i <= rd.snapshot.index]:
                _, fut = self._proposals.pop(idx)
                if not fut.done():
                    self.proposals_failed["snapshot"] += 1
                    fut.set_exception(ResultUnknown(f"entry {idx} was covered by an installed snapshot"))
        for e, result in zip(rd.committed, results):
            if e.type == EntryType.CONF_CHANGE:
                if self.on_conf_change is not None and e.index > self.core.log.offset:
                    self.on_conf_change(decode_conf_change(e.data), self.core.conf)
                result = None
            waiter = self._proposals.pop(e.index, None)
            if waiter is not None and not waiter[1].done():
                if waiter[0] == e.term:
                    self.proposals_applied += 1
                    waiter[1].set_result(result)
                else:
                    self.proposals_dropped += 1
                    waiter[1].set_exception(ProposalDropped(f"entry {e.index} was replaced by a newer leader"))
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
            leader = rd.soft_state.leader
            if leader is not None and leader != self._seen_leader:  # as etcd's leader_changes_seen_total
                self.leader_changes += 1
                self._seen_leader = leader
            if rd.soft_state.role != Role.LEADER:
                self._fail_reads()
            if self.on_role_change is not None:
                self.on_role_change(rd.soft_state.role, rd.soft_state.leader)
        if self.driver.snapshot_due():
            self.request_snapshot()

    async def _wait_entry(self, index: int, timeout: float | None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._proposals[index] = (self.core.term, fut)
        self._poke()
        try:
            return await wait_owned(fut, timeout)
        except asyncio.TimeoutError:
            self.proposals_failed["timeout"] += 1
            raise ResultUnknown(f"entry {index} not applied within {timeout}s; it may still commit") from None
        finally:
            self._proposals.pop(index, None)

    def _fail_reads(self) -> None:
        for ctx in list(self._reads):
            self._read_round_done(ctx, NoLeader("leadership changed during a linearizable read"))

    def _fail_all(self, exc: Exception) -> None:
        for _, fut in self._proposals.values():
            if not fut.done():
                self.proposals_failed["stopped"] += 1
                fut.set_exception(exc)
        for _, fut in self._applied_waiters:
            if not fut.done():
                fut.set_exception(exc)
        for fut in self._read_queue:
            if not fut.done():
                fut.set_exception(exc)
        self._fail_reads()

    # ------------------------------------------------------------------ snapshots and compaction

    def request_snapshot(self) -> asyncio.Future:
        """Take a snapshot now (off the event loop), then compact the log behind it."""
        self.driver.begin_snapshot()
        fut = asyncio.get_running_loop().run_in_executor(self._snap_pool, self._take_snapshot)
        fut.add_done_callback(self._snapshot_done)
        return fut

    def _take_snapshot(self) -> SnapshotMeta | None:
        """On the snapshot thread; hactl_raft_snapshot_duration_seconds counts the snapshots actually stored."""
        t0 = clock()
        meta = self.driver.take_snapshot()
        if meta is not None:
            self.snapshot_seconds.observe(clock() - t0)
        return meta

    def _snapshot_done(self, fut: asyncio.Future) -> None:
        meta = None
        if fut.cancelled():
            pass
        elif fut.exception() is not None:
            log.error("raft node %s: snapshot failed: %s", self.id, fut.exception())
        else:
            meta = fut.result()
        if self._running:
            self.driver.snapshot_taken(meta)
            self._poke()
