"""The control channel's plumbing: one bidirectional gRPC stream per connection, frames in and out.

There is no protoc: the listener registers a generic handler for ``/hactl.Control/Connect`` (bidi streaming)
whose (de)serializers are the identity on bytes, and every message is one msgpack frame (see frames.py).

A :class:`Connection` owns one stream, one reader task and ONE writer task. Senders never await the network:
``send()`` appends to a bounded per-connection queue and returns False when it is full, so a slow or stuck
peer only ever fills its own queue. The writer drains two lanes, control first: control frames (raft
messages, pings, calls) always overtake bulk frames (snapshot chunks), so heartbeats keep flowing to a peer
that is receiving a snapshot.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable

import grpc
import grpc.aio

from .frames import (BATCH_MIN_VERSION, DEFAULT_MAX_FRAME, Batch, Close, Frame, FrameError, Hello, decode, encode,
                     unbatch)
from .pki import Identity

log = logging.getLogger("hactl.transport")

BATCH_FRAMES = 512  # frames per batch at most (the frame size limit bounds it too)
BATCH_OVERHEAD = 5  # msgpack's bin header per frame in a batch, at most

SERVICE = "hactl.Control"
METHOD = "Connect"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
# grpc's own message limit sits a little above ours so frames just over the limit reach our check and get an
# explanatory log line; grossly oversized ones are cut off by grpc itself (the stream then just ends).
GRPC_SLACK = 64 * 1024


def grpc_options(max_frame: int, *, server: bool, keepalive_s: float = 10.0) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_frame + GRPC_SLACK),
        ("grpc.max_send_message_length", max_frame + GRPC_SLACK),
        # HTTP/2 keepalive finds dead TCP connections (a peer that lost power sends no FIN).
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_s * 500)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),
    ]
    if server:
        opts += [
            ("grpc.so_reuseport", 0),  # a second process on our port must fail to bind, not share it
            ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive_s * 500)),
            ("grpc.http2.max_ping_strikes", 0),
        ]
    return opts


# ---------------------------------------------------------------------------------------------- streams

class StreamClosed(Exception):
    """The underlying gRPC stream failed; the message carries grpc's status and details."""


class ServerStream:
    """The accepting side of a connection (wraps grpc's servicer context)."""
    outbound = False

    def __init__(self, context: grpc.aio.ServicerContext):
        self.context = context

    async def read(self) -> bytes | None:
        try:
            m = await self.context.read()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # grpc reports a reset peer as EOF in practice; anything else ends the stream
            raise StreamClosed(f"{type(e).__name__}: {e}") from None
        return None if m is grpc.aio.EOF else m

    async def write(self, data: bytes) -> None:
        try:
            await self.context.write(data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the RPC is finished or broken
            raise StreamClosed(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        # The servicer coroutine returning ends the RPC; nothing to do here.
        return None


class ClientStream:
    """The dialing side of a connection: one channel and one call, closed together."""
    outbound = True

    def __init__(self, channel: grpc.aio.Channel, call: Any, target: str):
        self.channel = channel
        self.call = call
        self.target = target

    async def read(self) -> bytes | None:
        try:
            m = await self.call.read()
        except grpc.aio.AioRpcError as e:
            raise StreamClosed(f"{e.code().name}: {e.details()}") from e
        except asyncio.InvalidStateError as e:
            raise StreamClosed(str(e)) from None
        return None if m is grpc.aio.EOF else m

    async def write(self, data: bytes) -> None:
        try:
            await self.call.write(data)
        except grpc.aio.AioRpcError as e:
            raise StreamClosed(f"{e.code().name}: {e.details()}") from e
        except (asyncio.InvalidStateError, grpc.aio.UsageError) as e:
            raise StreamClosed(str(e)) from None

    async def done_writing(self) -> None:
        try:
            await self.call.done_writing()
        except Exception:  # already closed: nothing to half-close
            pass

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(grace=None)


def open_stream(addr: str, identity: Identity, *, server_name: str | None = "localhost",
                max_frame: int = DEFAULT_MAX_FRAME, keepalive_s: float = 10.0) -> ClientStream:
    """Open a TLS channel to ``addr`` and start the Connect call (nothing is sent yet).

    ``server_name`` overrides the TLS target name: with the default ``localhost`` any controller certificate
    issued with the default SANs verifies at TLS level whatever address it is reached at, and the peer's real
    identity is then checked from its signed hello (handshake.py). None verifies the dialed host name instead.
    """
    creds = grpc.ssl_channel_credentials(root_certificates=identity.ca_pem, private_key=identity.key_pem,
                                         certificate_chain=identity.cert_pem)
    opts = grpc_options(max_frame, server=False, keepalive_s=keepalive_s)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    channel = grpc.aio.secure_channel(addr, creds, options=opts)
    call = channel.stream_stream(FULL_METHOD, request_serializer=None, response_deserializer=None)()
    return ClientStream(channel, call, addr)


# ---------------------------------------------------------------------------------------------- connection

class Connection:
    """One authenticated connection (controller or router) with its reader and writer tasks."""

    def __init__(self, stream: ServerStream | ClientStream, *, kind: str, peer_id: str, addr: str,
                 initiator: str, hello: Hello | None, max_frame: int, queue_frames: int, queue_bytes: int,
                 bulk_frames: int, on_frame: Callable[["Connection", Frame], None],
                 on_closed: Callable[["Connection"], None]):
        self.stream = stream
        self.kind = kind  # "controller" | "router"
        self.peer_id = peer_id
        self.serial: str | None = None  # the peer certificate's serial (hex), once authenticated
        self.addr = addr
        self.initiator = initiator  # id of the node that dialed: the dedupe tie-break needs it
        self.outbound = stream.outbound
        self.hello = hello
        self.version = hello.version if hello else None
        self.software = hello.software if hello else ""
        self.incarnation = hello.incarnation if hello else ""
        self.max_frame = max_frame
        self._queue_frames = queue_frames
        self._queue_bytes = queue_bytes
        self._bulk_frames = bulk_frames
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._control: collections.deque[bytes] = collections.deque()
        self._control_bytes = 0
        self._bulk: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._notify: str | None = None
        self.close_reason = ""
        self.close_error = False
        self.closed = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._writer: asyncio.Task | None = None
        self._finisher: asyncio.Task | None = None
        now = time.monotonic()
        self.connected_at = time.time()
        self.last_contact_mono = now
        self.last_contact = time.time()
        self.last_pong: float | None = None
        self.dropped = 0
        self.frames_in = 0
        self.frames_out = 0
        self.batched = 0  # frames that went out inside batch frames

    def __repr__(self) -> str:
        return f"<Connection {self.label} {'out' if self.outbound else 'in'}>"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.peer_id} ({self.addr})"

    @property
    def closing(self) -> bool:
        return self._closing

    def queued(self) -> int:
        return len(self._control) + len(self._bulk)

    def touch(self) -> None:
        self.last_contact_mono = time.monotonic()
        self.last_contact = time.time()

    # ------------------------------------------------------------------ lifecycle

    def start(self, first: list[Frame] | None = None, pending_read: asyncio.Future | None = None) -> None:
        """Start reading and writing. ``first`` frames were read before the connection existed (a router's
        non-hello first frame) and are handled before anything else; ``pending_read`` is a stream read
        already in progress, which the reader awaits before issuing its own."""
        for f in first or ():
            self._handle(f)
        self._reader = asyncio.create_task(self._read_loop(pending_read), name=f"read-{self.peer_id}")
        self._writer = asyncio.create_task(self._write_loop(), name=f"write-{self.peer_id}")

    def close(self, reason: str, *, notify: bool = True, error: bool = False) -> None:
        """Close (idempotent, never blocks). With ``notify`` the peer gets a close frame naming the reason."""
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        self.close_error = error
        self._control.clear()
        self._control_bytes = 0
        self._bulk.clear()
        self._notify = reason if notify else None
        self._wake.set()
        try:
            self._on_closed(self)
        finally:
            self._finisher = asyncio.get_running_loop().create_task(self._finish(), name=f"close-{self.peer_id}")

    async def wait_closed(self) -> None:
        await self.closed.wait()

    async def _finish(self) -> None:
        try:
            if self._writer is not None:
                # The writer sends the close frame itself (one writer per stream), then exits.
                try:
                    await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
                except (asyncio.TimeoutError, Exception):
                    self._writer.cancel()
            elif self._notify is not None:
                try:
                    await asyncio.wait_for(self.stream.write(encode(Close(self._notify))), 1.0)
                except (asyncio.TimeoutError, StreamClosed):
                    pass
            if isinstance(self.stream, ClientStream) and self._reader is not None and not self._reader.done():
                # Half-close and give the peer a moment to end its side, so our close frame is read before
                # the cancel that follows resets the stream.
                await self.stream.done_writing()
                try:
                    await asyncio.wait_for(asyncio.shield(self._reader), 0.5)
                except (asyncio.TimeoutError, Exception):
                    pass
            if self._reader is not None and self._reader is not asyncio.current_task():
                self._reader.cancel()
            try:
                await self.stream.close()
            except Exception:  # pragma: no cover - closing a broken channel
                pass
        finally:
            self.closed.set()

    # ------------------------------------------------------------------ sending

    def send(self, data: bytes, *, bulk: bool = False) -> bool:
        """Queue one encoded frame; False if the connection is closing or its queue is full (never blocks)."""
        if self._closing:
            return False
        if len(data) > self.max_frame:
            # grpc would fail the whole stream on it; refuse this one frame instead.
            log.error("%s: refusing to send a frame of %d bytes (limit %d)", self.label, len(data), self.max_frame)
            self.dropped += 1
            return False
        if bulk:
            if len(self._bulk) >= self._bulk_frames:
                return False
            self._bulk.append(data)
        else:
            if len(self._control) >= self._queue_frames or self._control_bytes + len(data) > self._queue_bytes:
                self.dropped += 1
                return False
            self._control.append(data)
            self._control_bytes += len(data)
        self._wake.set()
        return True

    def send_frame(self, frame: Frame, *, bulk: bool = False) -> bool:
        return self.send(encode(frame), bulk=bulk)

    def _take_control(self) -> bytes:
        """The next control frame, or, for a peer that reads batches, everything queued that fits in one frame."""
        first = self._control.popleft()
        self._control_bytes -= len(first)
        if not self._control or (self.version or 0) < BATCH_MIN_VERSION:
            return first
        frames, size = [first], len(first) + BATCH_OVERHEAD
        while self._control and len(frames) < BATCH_FRAMES and \
                size + len(self._control[0]) + BATCH_OVERHEAD <= self.max_frame:
            data = self._control.popleft()
            self._control_bytes -= len(data)
            frames.append(data)
            size += len(data) + BATCH_OVERHEAD
        if len(frames) == 1:
            return first
        self.batched += len(frames)
        return encode(Batch(frames))

    async def _write_loop(self) -> None:
        try:
            while True:
                if self._closing:
                    if self._notify is not None:
                        await self.stream.write(encode(Close(self._notify)))
                    return
                if self._control:
                    data = self._take_control()
                elif self._bulk:
                    data = self._bulk.popleft()
                else:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self.stream.write(data)
                self.frames_out += 1
        except StreamClosed as e:
            self.close(f"write failed: {e}", notify=False, error=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # pragma: no cover - a bug; keep the process alive
            log.exception("%s: writer failed", self.label)
            self.close(f"writer failed: {e}", notify=False, error=True)

    # ------------------------------------------------------------------ receiving

    async def _read_loop(self, pending: asyncio.Future | None = None) -> None:
        try:
            while not self._closing:
                if pending is not None:
                    raw, pending = await pending, None
                else:
                    raw = await self.stream.read()
                if raw is None:
                    self.close("stream ended by the peer (or grpc refused a message over its size limit)",
                               notify=False)
                    return
                self.touch()
                self.frames_in += 1
                try:
                    frame = decode(raw, max_frame=self.max_frame)
                    frames = unbatch(frame, max_frame=self.max_frame) if isinstance(frame, Batch) else [frame]
                except FrameError as e:
                    log.warning("%s: closing the connection: bad frame: %s", self.label, e)
                    self.close(f"bad frame: {e}", error=True)
                    return
                for frame in frames:
                    if self._closing:
                        break
                    self._handle(frame)
        except StreamClosed as e:
            self.close(f"connection lost: {e}", notify=False, error=True)
        except asyncio.CancelledError:
            if pending is not None:
                pending.cancel()
            raise
        except Exception as e:  # pragma: no cover - a bug; keep the process alive
            log.exception("%s: reader failed", self.label)
            self.close(f"reader failed: {e}", notify=False, error=True)

    def _handle(self, frame: Frame) -> None:
        try:
            self._on_frame(self, frame)
        except Exception:  # a handler bug costs one frame, not the connection
            log.exception("%s: handling a %s frame failed", self.label, type(frame).__name__)
