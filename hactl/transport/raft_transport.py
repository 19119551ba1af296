"""Raft over the mesh: hactl.raft.node's Transport, plus snapshot streaming.

Each raft message travels as ``["raft", msg.to_wire()]`` on the control lane of the connection to ``msg.to``.
Delivery is best effort, as Raft expects: no connection or a full queue drops the message (counted). A message
is accepted only if its ``frm`` is the peer id the connection authenticated (TLS certificate + hello) and its
``to`` is this node; anything else is dropped and logged.

SNAPSHOT messages with a payload are streamed (snapshot_stream.py); the receiving node gets the message only
after its sink has finished, as ``receiver(msg, payload=sink.finish())``. Wire it to the node like this::

    t = RaftTransport(mesh, snapshot_sink=store.receiver, on_snapshot_status=lambda to, ok: ...)
    node = RaftNode(cfg, storage, fsm, t)
    t.set_receiver(node.receive)
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from typing import Any, Callable

from hactl.raft.types import MalformedError, Message, MsgType

from .channel import Connection
from .frames import RaftFrame, encode
from .mesh import Mesh
from .snapshot_stream import (DEFAULT_CHUNK, FRAME_OVERHEAD, SinkFactory, SnapshotReceiver, SnapshotSender,
                              as_source)

log = logging.getLogger("hactl.transport.raft")

Receiver = Callable[[Message, Any], None]


class _RateLimitedLog:
    """At most one line per key and interval: a misbehaving peer must not flood the log."""

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, key: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            n = self._suppressed.pop(key, 0)
            log.warning(fmt + (f" ({n} similar suppressed)" if n else ""), *args)
            self._last[key] = now
        else:
            self._suppressed[key] += 1


class RaftTransport:
    def __init__(self, mesh: Mesh, *, snapshot_sink: SinkFactory | None = None,
                 on_snapshot_status: Callable[[str, bool], None] | None = None,
                 on_unreachable: Callable[[str], None] | None = None, chunk_size: int = DEFAULT_CHUNK,
                 window: int = 4, ack_timeout: float = 30.0, io_threads: int = 2):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.mesh = mesh
        self.id = mesh.node_id
        self._receiver: Receiver | None = None
        self.on_snapshot_status = on_snapshot_status
        self.on_unreachable = on_unreachable
        self._executor = concurrent.futures.ThreadPoolExecutor(io_threads, thread_name_prefix=f"snap-io-{self.id}")
        # A chunk frame must fit the frame limit whatever chunk size was asked for.
        chunk_size = max(1, min(chunk_size, mesh.max_frame - FRAME_OVERHEAD))
        self.sender = SnapshotSender(connection=mesh.connection, on_status=self._snapshot_status,
                                     executor=self._executor, chunk_size=chunk_size, window=window,
                                     ack_timeout=ack_timeout)
        self.receiver = SnapshotReceiver(my_id=self.id, sink_factory=snapshot_sink, deliver=self._deliver,
                                         executor=self._executor, max_queued=max(64, window + 16))
        self.stats: collections.Counter[str] = collections.Counter()
        # By message type (hactl_raft_messages_{sent,received}_total{type}): keyed by the MsgType itself, named
        # only at scrape time, so the hot path is one dict increment.
        self.sent_by_type: collections.Counter[MsgType] = collections.Counter()
        self.received_by_type: collections.Counter[MsgType] = collections.Counter()
        self._rlog = _RateLimitedLog()
        mesh.on_frame("raft", self._on_raft)
        for tag in ("snap_begin", "snap_chunk", "snap_end", "snap_abort"):
            mesh.on_frame(tag, self.receiver.on_frame)
        for tag in ("snap_ack", "snap_done"):
            mesh.on_frame(tag, self.sender.on_ack)
        mesh.on_disconnect(self._on_disconnect)

    def set_receiver(self, callback: Receiver) -> None:
        self._receiver = callback

    def set_snapshot_sink(self, factory: SinkFactory | None) -> None:
        self.receiver.sink_factory = factory

    async def close(self) -> None:
        await self.sender.stop()
        await self.receiver.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ sending

    def send(self, msg: Message, payload: Any = None) -> None:
        """Best effort and non-blocking; call on the event loop thread."""
        if msg.type == MsgType.SNAPSHOT and payload is not None and msg.snapshot is not None:
            source = as_source(payload)
            if source is None:
                log.error("snapshot to %s not sent: payload of type %s is neither a SnapshotSource, bytes nor a "
                          "path", msg.to, type(payload).__name__)
                asyncio.get_running_loop().call_soon(self._snapshot_status, msg.to, False)  # not re-entrant
                return
            self.stats["snapshots_started"] += 1
            self.sent_by_type[MsgType.SNAPSHOT] += 1
            self.sender.start(msg, source)
            return
        conn = self.mesh.connection(msg.to)
        if conn is None:
            self.stats["dropped_unreachable"] += 1
            self._unreachable(msg.to)
            return
        data = encode(RaftFrame(msg.to_wire()))
        if len(data) > conn.max_frame:
            self.stats["dropped_too_large"] += 1
            self._rlog.warning("too-large", "raft %s to %s dropped: %d bytes exceed the frame limit of %d; lower "
                               "raft's max message size below the frame limit", msg.type.name, msg.to, len(data),
                               conn.max_frame)
            return
        if conn.send(data):
            self.stats["sent"] += 1
            self.sent_by_type[msg.type] += 1
        else:
            # Raft retransmits; a slow peer only loses its own messages.
            self.stats["dropped_queue_full"] += 1
            self._unreachable(msg.to)

    def _unreachable(self, peer: str) -> None:
        cb = self.on_unreachable
        if cb is not None:
            asyncio.get_running_loop().call_soon(cb, peer)

    def _snapshot_status(self, peer: str, ok: bool) -> None:
        self.stats["snapshots_ok" if ok else "snapshots_failed"] += 1
        cb = self.on_snapshot_status
        if cb is not None:
            cb(peer, ok)

    # ------------------------------------------------------------------ receiving

    def _on_raft(self, conn: Connection, frame: RaftFrame) -> None:
        try:
            msg = Message.from_wire(frame.wire)
        except MalformedError as e:
            self.stats["dropped_malformed"] += 1
            self._rlog.warning(f"malformed-{conn.peer_id}", "malformed raft message from %s dropped: %s",
                               conn.peer_id, e)
            return
        if msg.frm != conn.peer_id:
            self.stats["dropped_wrong_sender"] += 1
            self._rlog.warning(f"frm-{conn.peer_id}", "raft %s claiming to be from %s dropped: the connection is "
                               "authenticated as %s", msg.type.name, msg.frm, conn.peer_id)
            return
        if msg.type == MsgType.SNAPSHOT:
            # A snapshot is only ever delivered by the stream, with its verified data: one on the message lane
            # could make the node accept a snapshot it has nothing to install from.
            self.stats["dropped_snapshot_without_stream"] += 1
            self._rlog.warning(f"snap-{conn.peer_id}", "raft SNAPSHOT from %s on the message lane dropped: "
                               "snapshots travel only as a stream with their data", conn.peer_id)
            return
        if msg.to != self.id:
            self.stats["dropped_misdirected"] += 1
            self._rlog.warning(f"to-{conn.peer_id}", "raft %s from %s addressed to %s dropped: this node is %s",
                               msg.type.name, msg.frm, msg.to, self.id)
            return
        self._deliver(msg, None)

    def _deliver(self, msg: Message, payload: Any) -> None:
        receiver = self._receiver
        if receiver is None:
            self.stats["dropped_no_receiver"] += 1
            return
        self.stats["received"] += 1
        self.received_by_type[msg.type] += 1
        try:
            receiver(msg, payload)
        except Exception:  # the raft node's problem, but the connection must survive it
            log.exception("raft receiver failed on %s from %s", msg.type.name, msg.frm)

    def _on_disconnect(self, conn: Connection) -> None:
        self.sender.on_closed(conn)
        self.receiver.on_closed(conn)
