"""Streaming a Raft snapshot to one peer in chunks, with flow control, and receiving one.

Sender (leader)::

    snap_begin(sid, meta, raft_msg)  snap_chunk(sid, 0, data) ... snap_chunk(sid, n-1, data)  snap_end(sid, n)

All of these travel on the connection's *bulk* lane, so raft messages on the control lane overtake them
between any two chunks. Flow control is a window: the sender keeps at most ``window`` chunks unacknowledged;
the receiver acks (``snap_ack(sid, written)``) each chunk after its sink has taken it, so a slow disk on the
receiver slows the sender instead of piling chunks up in memory. While the sink's ``finish()`` runs the
receiver repeats its last ack as a keepalive. A peer that makes no progress for ``ack_timeout`` seconds is
abandoned (``snap_abort``), and the raft layer learns the outcome through ``on_status(peer, ok)``.

Receiver: ``sink_factory(meta)`` makes a sink; ``write``/``finish``/``abort`` run on a worker thread because
they may block. The chunk stream is checked against ``meta["size"]`` and ``meta["sha256"]`` (when present)
before ``finish()``; after it the SNAPSHOT raft message is delivered with the value ``finish()`` returned.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

from hactl.raft.types import MalformedError, Message, MsgType

from .channel import Connection
from .frames import SnapAbort, SnapAck, SnapBegin, SnapChunk, SnapDone, SnapEnd, encode

log = logging.getLogger("hactl.transport.snapshot")

DEFAULT_CHUNK = 1024 * 1024
FRAME_OVERHEAD = 64  # msgpack bytes around a chunk's data: tag, sid, seq, bin header


@runtime_checkable
class SnapshotSource(Protocol):
    """What a SNAPSHOT message's payload must provide to be streamed."""

    def meta(self) -> dict:
        """A msgpack-able description; ``size`` (int) and ``sha256`` (hex str) describe the concatenated
        chunks and are verified by the receiver when present. May block (runs on a worker thread)."""

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        """The data, in pieces of at most ``chunk_size`` bytes (longer pieces are split). Iterated on a
        worker thread, so it may read files."""


class SnapshotSink(Protocol):
    def write(self, data: bytes) -> None: ...

    def finish(self) -> Any:
        """All data written and verified: install it and return what raft's receive() should get."""

    def abort(self) -> None: ...


SinkFactory = Callable[[dict], SnapshotSink]


class BytesSource:
    """An in-memory snapshot payload."""

    def __init__(self, data: bytes, extra: dict | None = None):
        self.data = bytes(data)
        self.extra = dict(extra or {})

    def meta(self) -> dict:
        return {**self.extra, "size": len(self.data), "sha256": hashlib.sha256(self.data).hexdigest()}

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        for i in range(0, len(self.data), chunk_size):
            yield self.data[i:i + chunk_size]


class FileSource:
    """A snapshot payload read from one file (hashing and reading happen on the worker thread)."""

    def __init__(self, path: str | os.PathLike, extra: dict | None = None, sha256: str | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})
        self._sha256 = sha256

    def meta(self) -> dict:
        size = self.path.stat().st_size
        digest = self._sha256
        if digest is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                while block := f.read(DEFAULT_CHUNK):
                    h.update(block)
            digest = h.hexdigest()
        return {**self.extra, "size": size, "sha256": digest}

    def chunks(self, chunk_size: int) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while block := f.read(chunk_size):
                yield block


def as_source(payload: Any) -> SnapshotSource | None:
    """Adapt what an FSM's snapshot_payload() returned: a SnapshotSource, bytes, or a file path."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return BytesSource(bytes(payload))
    if isinstance(payload, (str, os.PathLike)):
        return FileSource(payload)
    if isinstance(payload, SnapshotSource):
        return payload
    return None


class _Abandon(Exception):
    pass


# ---------------------------------------------------------------------------------------------- sender

@dataclass(eq=False)
class _Out:
    sid: int
    peer: str
    conn: Connection
    msg: Message
    source: SnapshotSource
    key: tuple[int, int]
    acked: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: tuple[bool, str] | None = None
    failed: str | None = None
    superseded: bool = False
    task: asyncio.Task | None = None
    chunks_sent: int = 0
    bytes_sent: int = 0


class SnapshotSender:
    def __init__(self, *, connection: Callable[[str], Connection | None], on_status: Callable[[str, bool], None],
                 executor: concurrent.futures.Executor, chunk_size: int = DEFAULT_CHUNK, window: int = 4,
                 ack_timeout: float = 30.0):
        self._connection = connection
        self._on_status = on_status
        self._executor = executor
        self.chunk_size = chunk_size
        self.window = window
        self.ack_timeout = ack_timeout
        self._by_sid: dict[int, _Out] = {}
        self._by_peer: dict[str, _Out] = {}
        self.sent_ok = 0
        self.failed = 0

    def active(self, peer: str) -> bool:
        out = self._by_peer.get(peer)
        return out is not None and out.task is not None and not out.task.done()

    def start(self, msg: Message, source: SnapshotSource) -> None:
        assert msg.snapshot is not None
        key = (msg.snapshot.index, msg.snapshot.term)
        old = self._by_peer.get(msg.to)
        if old is not None and old.task is not None and not old.task.done():
            if old.key == key:
                return  # raft re-sent the same snapshot while it is still streaming
            old.superseded = True  # raft moved on to a newer snapshot: drop the old one without a status
            old.task.cancel()
        conn = self._connection(msg.to)
        if conn is None:
            log.info("snapshot %d/%d to %s not sent: no connection", key[0], key[1], msg.to)
            self._report(msg.to, False)
            return
        out = _Out(secrets.randbits(63), msg.to, conn, msg, source, key)
        self._by_sid[out.sid] = out
        self._by_peer[msg.to] = out
        out.task = asyncio.create_task(self._run(out), name=f"snapshot-to-{msg.to}")

    def on_ack(self, conn: Connection, frame: SnapAck | SnapDone) -> None:
        out = self._by_sid.get(frame.sid)
        if out is None or out.conn is not conn:
            return
        out.last_progress = time.monotonic()
        if isinstance(frame, SnapAck):
            out.acked = max(out.acked, frame.written)
        else:
            out.done = (frame.ok, frame.reason)
        out.progress.set()

    def on_closed(self, conn: Connection) -> None:
        for out in list(self._by_sid.values()):
            if out.conn is conn:
                out.failed = f"connection closed ({conn.close_reason})"
                out.progress.set()

    async def stop(self) -> None:
        tasks = [o.task for o in self._by_sid.values() if o.task is not None and not o.task.done()]
        for o in self._by_sid.values():
            o.superseded = True  # shutting down: nobody to report to
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _report(self, peer: str, ok: bool) -> None:
        def call() -> None:
            try:
                self._on_status(peer, ok)
            except Exception:
                log.exception("on_snapshot_status(%s, %s) failed", peer, ok)
        # Never re-enter raft from inside its own send(): report on the next loop iteration.
        asyncio.get_running_loop().call_soon(call)

    async def _wait_progress(self, out: _Out, until: Callable[[], bool]) -> None:
        while not until():
            if out.failed is not None:
                raise _Abandon(out.failed)
            remaining = out.last_progress + self.ack_timeout - time.monotonic()
            if remaining <= 0:
                raise _Abandon(f"peer made no progress for {self.ack_timeout:g}s")
            out.progress.clear()
            try:
                await asyncio.wait_for(out.progress.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _put(self, out: _Out, data: bytes) -> None:
        while not out.conn.send(data, bulk=True):
            if out.conn.closing:
                raise _Abandon(f"connection closed ({out.conn.close_reason})")
            await asyncio.sleep(0.005)  # bulk lane full (window larger than the lane): wait for the writer

    async def _run(self, out: _Out) -> None:
        loop = asyncio.get_running_loop()
        it: Iterator[bytes] | None = None
        ok = False
        started = time.monotonic()
        try:
            meta = dict(await loop.run_in_executor(self._executor, out.source.meta))
            begin = encode(SnapBegin(out.sid, meta, out.msg.to_wire()))
            if len(begin) > out.conn.max_frame:
                raise _Abandon(f"snapshot meta of {len(begin)} bytes exceeds the frame limit")
            await self._put(out, begin)
            it = await loop.run_in_executor(self._executor, lambda: iter(out.source.chunks(self.chunk_size)))
            seq = 0
            while True:
                block = await loop.run_in_executor(self._executor, next, it, None)
                if block is None:
                    break
                for i in range(0, len(block), self.chunk_size):
                    piece = bytes(block[i:i + self.chunk_size])
                    await self._wait_progress(out, lambda: seq - out.acked < self.window)
                    await self._put(out, encode(SnapChunk(out.sid, seq, piece)))
                    seq += 1
                    out.chunks_sent += 1
                    out.bytes_sent += len(piece)
            await self._put(out, encode(SnapEnd(out.sid, seq)))
            await self._wait_progress(out, lambda: out.done is not None)
            assert out.done is not None
            ok, reason = out.done
            if ok:
                log.info("snapshot %d/%d sent to %s: %d bytes in %d chunks, %.1fs", out.key[0], out.key[1],
                         out.peer, out.bytes_sent, out.chunks_sent, time.monotonic() - started)
            else:
                log.warning("snapshot %d/%d to %s failed on the receiver: %s", out.key[0], out.key[1], out.peer,
                            reason)
        except _Abandon as e:
            log.warning("snapshot %d/%d to %s abandoned: %s", out.key[0], out.key[1], out.peer, e)
            out.conn.send_frame(SnapAbort(out.sid, str(e)))
        except asyncio.CancelledError:
            out.conn.send_frame(SnapAbort(out.sid, "superseded by a newer snapshot or shutting down"))
            self._finish(out, False, report=not out.superseded)
            raise
        except Exception as e:  # the source failed (unreadable file, bad meta...)
            log.error("snapshot %d/%d to %s failed: %s: %s", out.key[0], out.key[1], out.peer, type(e).__name__, e)
            out.conn.send_frame(SnapAbort(out.sid, f"sender failed: {type(e).__name__}"))
        finally:
            if it is not None and hasattr(it, "close"):
                _in_background(loop, self._executor, it.close)  # closes the file behind a generator
        self._finish(out, ok)

    def _finish(self, out: _Out, ok: bool, *, report: bool = True) -> None:
        self._by_sid.pop(out.sid, None)
        if self._by_peer.get(out.peer) is out:
            del self._by_peer[out.peer]
        if ok:
            self.sent_ok += 1
        else:
            self.failed += 1
        if report:
            self._report(out.peer, ok)


# ---------------------------------------------------------------------------------------------- receiver

@dataclass(eq=False)
class _In:
    sid: int
    conn: Connection
    msg: Message
    meta: dict
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None


class SnapshotReceiver:
    def __init__(self, *, my_id: str, sink_factory: SinkFactory | None, deliver: Callable[[Message, Any], None],
                 executor: concurrent.futures.Executor, max_queued: int = 64, keepalive: float = 2.0):
        self.my_id = my_id
        self.sink_factory = sink_factory
        self._deliver = deliver
        self._executor = executor
        self.max_queued = max_queued
        self.keepalive = keepalive
        self._streams: dict[tuple[int, int], _In] = {}  # (id(conn), sid)
        self._by_peer: dict[str, _In] = {}
        self.received = 0
        self.failed = 0

    def on_frame(self, conn: Connection, frame: SnapBegin | SnapChunk | SnapEnd | SnapAbort) -> None:
        if isinstance(frame, SnapBegin):
            self._begin(conn, frame)
            return
        st = self._streams.get((id(conn), frame.sid))
        if st is None:
            return  # a stream we refused or already finished: its trailing frames are expected
        if isinstance(frame, SnapChunk):
            if st.queue.qsize() >= self.max_queued:
                # The sender ignores the window: refuse rather than buffer without bound.
                self._fail_fast(st, f"sender exceeded the flow-control window ({self.max_queued} chunks queued)")
                return
            st.queue.put_nowait(("chunk", frame.seq, frame.data))
        elif isinstance(frame, SnapEnd):
            st.queue.put_nowait(("end", frame.count, b""))
        elif isinstance(frame, SnapAbort):
            st.queue.put_nowait(("abort", 0, frame.reason.encode()))

    def _begin(self, conn: Connection, frame: SnapBegin) -> None:
        try:
            msg = Message.from_wire(frame.wire)
        except MalformedError as e:
            log.warning("snapshot from %s refused: malformed raft message: %s", conn.peer_id, e)
            conn.send_frame(SnapDone(frame.sid, False, f"malformed raft message: {e}"))
            return
        reason = None
        if msg.frm != conn.peer_id:
            reason = f"message claims to be from {msg.frm} but the connection is authenticated as {conn.peer_id}"
        elif msg.type != MsgType.SNAPSHOT or msg.snapshot is None:
            reason = f"snap_begin carries a {msg.type.name} message, not SNAPSHOT"
        elif msg.to != self.my_id:
            reason = f"snapshot addressed to {msg.to}, this node is {self.my_id}"
        elif self.sink_factory is None:
            reason = "this node has no snapshot sink configured"
        if reason is not None:
            log.warning("snapshot from %s refused: %s", conn.peer_id, reason)
            conn.send_frame(SnapDone(frame.sid, False, reason))
            return
        old = self._by_peer.get(conn.peer_id)
        if old is not None and old.task is not None and not old.task.done():
            old.task.cancel()  # the leader moved on to a newer snapshot
        st = _In(frame.sid, conn, msg, frame.meta)
        self._streams[(id(conn), frame.sid)] = st
        self._by_peer[conn.peer_id] = st
        st.task = asyncio.create_task(self._run(st), name=f"snapshot-from-{conn.peer_id}")

    def _fail_fast(self, st: _In, reason: str) -> None:
        log.warning("snapshot from %s aborted: %s", st.conn.peer_id, reason)
        st.conn.send_frame(SnapDone(st.sid, False, reason))
        if st.task is not None:
            st.task.cancel()

    def on_closed(self, conn: Connection) -> None:
        for st in [s for s in self._streams.values() if s.conn is conn]:
            if st.task is not None:
                st.task.cancel()

    async def stop(self) -> None:
        tasks = [s.task for s in self._streams.values() if s.task is not None and not s.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, st: _In) -> None:
        loop = asyncio.get_running_loop()
        sink: SnapshotSink | None = None
        hasher = hashlib.sha256()
        size = expected = 0
        snap = st.msg.snapshot
        assert snap is not None and self.sink_factory is not None
        what = f"snapshot {snap.index}/{snap.term} from {st.conn.peer_id}"
        started = time.monotonic()

        def write(data: bytes) -> None:
            sink.write(data)  # type: ignore[union-attr]
            hasher.update(data)

        try:
            sink = await loop.run_in_executor(self._executor, self.sink_factory, dict(st.meta))
            while True:
                kind, n, data = await st.queue.get()
                if kind == "chunk":
                    if n != expected:
                        raise _Abandon(f"chunk {n} arrived, expected {expected}")
                    await loop.run_in_executor(self._executor, write, data)
                    size += len(data)
                    expected += 1
                    st.conn.send_frame(SnapAck(st.sid, expected))
                elif kind == "abort":
                    raise _Abandon(f"the sender aborted: {data.decode(errors='replace')}")
                else:  # end
                    if n != expected:
                        raise _Abandon(f"stream ended after {expected} chunks, sender says {n}")
                    self._verify(st.meta, size, hasher.hexdigest())
                    fut = loop.run_in_executor(self._executor, sink.finish)
                    while True:  # keep the sender's stall timer quiet while finish() installs the data
                        try:
                            result = await asyncio.wait_for(asyncio.shield(fut), self.keepalive)
                            break
                        except asyncio.TimeoutError:
                            st.conn.send_frame(SnapAck(st.sid, expected))
                    sink = None  # finished: nothing to abort any more
                    st.conn.send_frame(SnapDone(st.sid, True))
                    self.received += 1
                    log.info("%s installed into the sink: %d bytes in %d chunks, %.1fs", what, size, expected,
                             time.monotonic() - started)
                    self._deliver(st.msg, result)
                    return
        except asyncio.CancelledError:
            self.failed += 1
            if sink is not None:
                _in_background(loop, self._executor, _abort_quietly, sink, what)
            raise
        except Exception as e:
            self.failed += 1
            reason = str(e) if isinstance(e, _Abandon) else f"sink failed: {type(e).__name__}: {e}"
            log.warning("%s failed: %s", what, reason)
            if sink is not None:
                await loop.run_in_executor(self._executor, _abort_quietly, sink, what)
            st.conn.send_frame(SnapDone(st.sid, False, reason))
        finally:
            self._streams.pop((id(st.conn), st.sid), None)
            if self._by_peer.get(st.conn.peer_id) is st:
                del self._by_peer[st.conn.peer_id]

    @staticmethod
    def _verify(meta: dict, size: int, digest: str) -> None:
        want_size = meta.get("size")
        if isinstance(want_size, int) and not isinstance(want_size, bool) and want_size != size:
            raise _Abandon(f"received {size} bytes, meta says {want_size}")
        want = meta.get("sha256")
        if isinstance(want, str) and want.lower() != digest:
            raise _Abandon(f"sha256 mismatch: received {digest}, meta says {want}")


def _abort_quietly(sink: SnapshotSink, what: str) -> None:
    try:
        sink.abort()
    except Exception:
        log.exception("%s: sink.abort() failed", what)


def _in_background(loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor,
                   fn: Callable[..., Any], *args: Any) -> None:
    """Fire-and-forget cleanup on the worker thread (we may be cancelled and unable to await it)."""
    def safe() -> None:
        try:
            fn(*args)
        except Exception as e:  # e.g. closing a generator another thread is still advancing
            log.debug("snapshot cleanup %s failed: %s", getattr(fn, "__name__", fn), e)
    try:
        loop.run_in_executor(executor, safe)
    except RuntimeError:  # executor already shut down: do it here, it is only cleanup
        safe()
