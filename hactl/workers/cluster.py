"""The worker's side of the link, and the Cluster the worker's API runs on (hactl.api.cluster.Cluster).

Reads are the worker's own: a read-only StateMachine over the node's ctrl.db, each request in its own LMDB read
transaction (LMDB serves several processes from one file; a new transaction sees everything the node committed
before it began). Writes and read barriers are calls to the node (NodeLink): the node runs its own submit and
read_barrier, so a write a worker took is applied on the node before it answers, and the worker's next read
transaction sees it (read-your-writes across processes).

A call that cannot be sent is ClusterUnavailable (nothing reached the node: 503, retry). A write whose link breaks
or stays silent after it was sent may have been proposed: OutcomeUnknown (504), never "not applied". A barrier
that fails the same way is ClusterUnavailable: a read has no outcome to lose.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable

from hactl.agent.protocol import ProtocolError, encode_frame, read_frame
from hactl.aio import wait_owned
from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.server.tokens import check_token
from hactl.workers import messages as M
from hactl.workers.netconf import SignJob, Signed

log = logging.getLogger("hactl.workers")

REPLY_GRACE = 5.0  # beyond the node's apply timeout: its forwarding to the leader and its answer
NODE_GONE = "this node's controller process is not reachable from its API worker (it is restarting)"


class _LinkLost(Exception):
    """The link ended while the call waited for its reply."""


class NodeLink:
    """The worker's end of the socketpair: calls by id, replies matched to them, and the node's state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int) -> None:
        self._reader, self._writer = reader, writer
        self._max_frame = max_frame
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[M.Reply]] = {}
        self.state = M.State(None)
        self.closed = asyncio.Event()
        self.signer: Callable[[list[SignJob]], list[Signed | None]] | None = None  # answers the node's sign

    async def hello(self) -> M.WorkerSettings:
        """The node's first message (before anything else is read)."""
        obj = await read_frame(self._reader, self._max_frame)
        msg = M.parse_to_worker(obj) if obj is not None else None
        if not isinstance(msg, M.WorkerSettings):
            raise ProtocolError("bad_request", f"expected the node's hello first, got {obj!r:.80}")
        self._max_frame = M.max_frame(msg.max_body_bytes)
        return msg

    def send(self, msg: M.Ready | M.Submit | M.Barrier | M.SignedConfigs) -> None:
        self._writer.write(encode_frame(msg.to_wire(), self._max_frame))

    async def run(self) -> None:
        """Read the node's messages until the link ends (the node stopped or died); then every waiting call fails
        and ``closed`` is set: the worker stops serving."""
        try:
            while True:
                obj = await read_frame(self._reader, self._max_frame)
                if obj is None:
                    log.info("API worker: the node closed its link")
                    return
                msg = M.parse_to_worker(obj)
                if isinstance(msg, M.State):
                    self.state = msg
                elif isinstance(msg, M.Reply):
                    fut = self._pending.get(msg.id)
                    if fut is not None and not fut.done():  # (an abandoned call's reply: nobody waits)
                        fut.set_result(msg)
                elif isinstance(msg, M.Sign):
                    self.send(M.SignedConfigs(msg.id, self._sign(msg.jobs)))
        except ProtocolError as e:
            log.error("API worker: bad frame from the node (%s); stopping", e.message)
        except (ConnectionError, OSError) as e:
            log.info("API worker: link to the node lost: %s", e)
        finally:
            self.closed.set()
            self._writer.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(_LinkLost())

    def _sign(self, jobs: list[SignJob]) -> list[Signed | None]:
        """Declined (None each) while the node's model cannot be served, or if signing fails here: the node then
        answers nothing, and the members ask again."""
        if self.signer is None or self.state.unavailable is not None:
            return [None] * len(jobs)
        try:
            return self.signer(jobs)
        except Exception:  # a bug or a damaged record must not end the link (and with it the worker)
            log.exception("API worker: signing %d ZeroTier configs failed", len(jobs))
            return [None] * len(jobs)

    async def call(self, make: Any, timeout: float) -> M.Reply:
        """Send ``make(id)`` and wait for its reply. ClusterUnavailable when it could not be sent; _LinkLost or
        asyncio.TimeoutError once it was (the caller decides what that means)."""
        if self.closed.is_set() or self._writer.is_closing():
            raise ClusterUnavailable(NODE_GONE, retry_after=2)
        cid = next(self._ids)
        fut: asyncio.Future[M.Reply] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            self.send(make(cid))  # (only buffers: from here on the node may receive it)
            return await wait_owned(fut, timeout)
        finally:
            self._pending.pop(cid, None)


class WorkerCluster:
    """hactl.api.cluster.Cluster in an API worker. The node-state calls (status, health, events, metrics...) are
    never made here: the proxy (proxy.py) sends those requests to the node before any handler runs."""

    def __init__(self, settings: M.WorkerSettings, link: NodeLink, machine: StateMachine) -> None:
        self.node_id = settings.node_id
        self._link = link
        self._machine = machine
        self._timeout = settings.apply_timeout_s + REPLY_GRACE
        self._next_barrier: asyncio.Future[None] | None = None  # the barrier call the reads arriving now share
        self._barrier_out: asyncio.Task | None = None  # the barrier call in flight

    def machine(self) -> StateMachine:
        state = self._link.state
        if state.unavailable is not None:  # the node's own answer (a restart pending: ctrl.db is about to change)
            raise ClusterUnavailable(state.unavailable, retry_after=state.retry_after)
        if self._link.closed.is_set():
            raise ClusterUnavailable(NODE_GONE, retry_after=2)
        return self._machine

    async def submit(self, command: bytes, request_id: str) -> Result:
        try:
            reply = await self._link.call(lambda cid: M.Submit(cid, request_id, command), self._timeout)
        except _LinkLost:
            raise OutcomeUnknown(f"write {request_id}: this node's controller process went away before "
                                 "answering") from None
        except asyncio.TimeoutError:
            raise OutcomeUnknown(f"write {request_id}: this node's controller process did not answer within "
                                 f"{self._timeout:g}s") from None
        result = reply.outcome()
        if result is None:
            raise M.NodeError(f"write {request_id}: the node answered without a result")
        return result

    async def read_barrier(self) -> None:
        """Shared: the reads that arrive while one barrier call is out wait for the next one, sent once that call
        is answered, so the node gets at most one barrier call in flight per worker rather than one per read (a
        barrier call costs the node as much CPU as serving a read). Still linearizable: every read sharing a call
        arrived before that call was sent, so the node takes its read index after each read began."""
        if self._next_barrier is None:
            self._next_barrier = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._barrier(self._next_barrier, self._barrier_out))
            self._barrier_out = task
        await asyncio.shield(self._next_barrier)

    async def _barrier(self, done: asyncio.Future[None], previous: asyncio.Task | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        self._next_barrier = None  # from here on, arriving reads need the next call
        error: Exception | None = None
        try:
            (await self._link.call(M.Barrier, self._timeout)).outcome()
        except (_LinkLost, asyncio.TimeoutError):
            error = ClusterUnavailable(f"cannot confirm the leader for a linearizable read: {NODE_GONE}",
                                       retry_after=2)
        except Exception as e:
            error = e
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
            done.exception()  # (retrieved: the reads that waited for it may all have gone meanwhile)

    def check_token(self, token: str) -> bool:
        return check_token(self._machine.cluster_info(), token)

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def metrics_collector(self) -> Any:
        return None  # /metrics is the node's (proxied)

    def event_bus(self) -> Any:
        return None  # /events is the node's (proxied)

    def _proxied(self) -> Any:
        raise ClusterUnavailable("node state is served by the node process (hactl/workers/proxy.py)")

    status = zerotier_status = health = liveness = readiness = _proxied
