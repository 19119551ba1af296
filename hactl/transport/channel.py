"""The control channel's plumbing: one mutual-TLS TCP stream per connection, length-prefixed frames in and out.

Wire: TLS (1.2 or later, both sides present a certificate of the cluster CA, ALPN ``hactl-control/3``), then
records of a 4-byte big-endian length and that many bytes, each one msgpack frame (see frames.py). A length with
the top bit set is an abort record instead: ``CODE reason`` in UTF-8, after which the sender closes; the reader
raises StreamClosed carrying the code (refusals: PERMISSION_DENIED, ALREADY_EXISTS, RESOURCE_EXHAUSTED...).

Control protocols 1 and 2 ran over gRPC (one bidi stream per connection). bench/channel.py measured a gRPC
message at ~130 us of client CPU and a round trip at ~210 us on this machine's loopback, against ~9 us and ~70 us
for this stream; raft messages and forwarded writes are that traffic, so the stream layer was replaced. A gRPC
peer is recognised by its HTTP/2 preface and refused with that explanation.

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
import os
import socket
import ssl
import struct
import time
from typing import Callable

from .frames import (BATCH_MIN_VERSION, DEFAULT_MAX_FRAME, Batch, Close, Frame, FrameError, Hello, decode, encode,
                     unbatch)
from .pki import Identity

log = logging.getLogger("hactl.transport")

BATCH_FRAMES = 512  # frames per batch at most (the frame size limit bounds it too)
BATCH_OVERHEAD = 5  # msgpack's bin header per frame in a batch, at most

ALPN = "hactl-control/3"
_HEADER = struct.Struct(">I")
_ABORT = 0x8000_0000
_MAX_ABORT = 4096
_HTTP2_PREFACE = b"PRI "
# Frames a little over our limit are still read, so that the frame check (frames.decode) names the limit in the
# close frame it sends back; beyond this slack the stream is aborted without reading the body.
READ_SLACK = 64 * 1024
WRITE_HIGH_WATER = 256 * 1024  # bytes buffered in the transport before a writer waits for the socket


def tls_context(identity: Identity, *, server: bool) -> ssl.SSLContext:
    """Mutual TLS against the cluster CA, from the PEM bytes of ``identity`` (the key never touches the disk again:
    OpenSSL reads it from an anonymous memory file)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=identity.ca_pem.decode())
    fd = os.memfd_create("hactl-tls-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, identity.cert_pem + b"\n" + identity.key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    ctx.set_alpn_protocols([ALPN])
    return ctx


def set_keepalive(sock: socket.socket | None, seconds: float) -> None:
    """TCP keepalive: a peer that lost power sends no FIN; the kernel probes and ends the connection."""
    if sock is None:
        return
    idle = max(1, int(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 2))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def remote_label(writer: asyncio.StreamWriter) -> str:
    """The peer address as ``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5`` (the form logs and mesh.ip_of have always used)."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


# ---------------------------------------------------------------------------------------------- streams

class StreamClosed(Exception):
    """The stream failed or the peer aborted it; ``code`` is the peer's abort code (None for a transport error)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code
        self.details = message


class ProtocolViolation(StreamClosed):
    """What the peer sent is not our protocol (an oversized frame, an HTTP/2 preface): raised by this side."""

    def __init__(self, message: str, code: str):
        super().__init__(message, code)


class FrameStream:
    """One TLS stream carrying frames, either side. ``read()`` returns one frame's bytes, or None at a clean end."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, outbound: bool,
                 max_frame: int = DEFAULT_MAX_FRAME):
        self.reader = reader
        self.writer = writer
        self.outbound = outbound
        self.max_read = max_frame + READ_SLACK
        self.remote = remote_label(writer)

    async def read(self) -> bytes | None:
        r = self.reader
        try:
            head = await r.readexactly(4)
            (n,) = _HEADER.unpack(head)
            if n & _ABORT:
                body = await r.readexactly(min(n & ~_ABORT, _MAX_ABORT))
                code, _, reason = body.decode("utf-8", "replace").partition(" ")
                raise StreamClosed(f"{code}: {reason}", code)
            if head == _HTTP2_PREFACE:
                raise ProtocolViolation("the peer speaks HTTP/2 (gRPC): a hactl older than control protocol 3; "
                                        "upgrade it", "UNIMPLEMENTED")
            if n > self.max_read:
                raise ProtocolViolation(f"a frame of {n} bytes exceeds the limit of {self.max_read}",
                                        "RESOURCE_EXHAUSTED")
            return await r.readexactly(n)
        except asyncio.IncompleteReadError as e:
            if e.partial or e.expected != 4:
                raise StreamClosed("connection closed in the middle of a frame") from None
            return None
        except (OSError, EOFError) as e:  # ssl.SSLError is an OSError: a TLS alert, a reset
            raise StreamClosed(f"{type(e).__name__}: {e}") from None

    async def write(self, data: bytes) -> None:
        w = self.writer
        if w.is_closing():
            raise StreamClosed("the connection is closed")
        w.writelines((_HEADER.pack(len(data)), data))
        # Frames go to the transport's buffer without a wait; the writer only waits when the socket lags.
        if w.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                await w.drain()
            except (OSError, RuntimeError) as e:
                raise StreamClosed(f"{type(e).__name__}: {e}") from None

    async def abort(self, code: str, reason: str) -> None:
        """Tell the peer why (the reader on its side raises StreamClosed with this code), then close."""
        body = f"{code} {reason}".encode()[:_MAX_ABORT]
        try:
            if not self.writer.is_closing():
                self.writer.write(_HEADER.pack(_ABORT | len(body)) + body)
                await asyncio.wait_for(self.writer.drain(), 1.0)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        w = self.writer
        w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError, RuntimeError):
            w.transport.abort()  # a peer that does not answer TLS close_notify: drop the socket


class DialedStream:
    """The dialing side: connects (TCP, then TLS) on first use, so opening never blocks the caller."""
    outbound = True

    def __init__(self, addr: str, ctx: ssl.SSLContext, server_name: str | None, max_frame: int,
                 keepalive_s: float, timeout: float):
        self.target = addr
        self._stream: FrameStream | None = None
        self._connecting = asyncio.ensure_future(self._connect(addr, ctx, server_name, max_frame, keepalive_s,
                                                               timeout))

    async def _connect(self, addr: str, ctx: ssl.SSLContext, server_name: str | None, max_frame: int,
                       keepalive_s: float, timeout: float) -> FrameStream:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, int(port), ssl=ctx, server_hostname=server_name or host, ssl_handshake_timeout=timeout),
                timeout)
        except ssl.SSLError as e:
            raise StreamClosed(f"TLS handshake failed: {e.reason or e}") from None
        except ssl.CertificateError as e:
            raise StreamClosed(f"TLS handshake failed: certificate: {e}") from None
        except (OSError, ValueError) as e:
            raise StreamClosed(f"cannot connect: {e}") from None
        except asyncio.TimeoutError:
            raise StreamClosed(f"cannot connect: no TLS connection within {timeout:g}s") from None
        set_keepalive(writer.get_extra_info("socket"), keepalive_s)
        stream = FrameStream(reader, writer, outbound=True, max_frame=max_frame)
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if chosen != ALPN:
            await stream.close()
            raise StreamClosed(f"the peer does not speak control protocol 3 (TLS ALPN {chosen!r}): a hactl "
                               "older than this one, or not hactl; upgrade it")
        self._stream = stream
        return stream

    async def _ready(self) -> FrameStream:
        if self._stream is not None:
            return self._stream
        return await asyncio.shield(self._connecting)

    @property
    def connected(self) -> FrameStream:
        """The stream itself, once connected (a connection's reader and writer use it without this wrapper)."""
        if self._stream is None:
            raise StreamClosed("not connected yet")
        return self._stream

    async def read(self) -> bytes | None:
        return await (await self._ready()).read()

    async def write(self, data: bytes) -> None:
        await (await self._ready()).write(data)

    async def abort(self, code: str, reason: str) -> None:
        await (await self._ready()).abort(code, reason)

    async def close(self) -> None:
        if self._stream is None:
            self._connecting.cancel()
            try:
                stream = await self._connecting
            except (asyncio.CancelledError, StreamClosed):
                return
        else:
            stream = self._stream
        await stream.close()


_contexts: dict[tuple[bytes, bool], ssl.SSLContext] = {}


def cached_tls_context(identity: Identity, *, server: bool) -> ssl.SSLContext:
    """One SSLContext per identity and side: building one parses the key and the CA again."""
    key = (identity.cert_pem + identity.key_pem, server)
    ctx = _contexts.get(key)
    if ctx is None:
        if len(_contexts) > 64:
            _contexts.clear()
        ctx = _contexts[key] = tls_context(identity, server=server)
    return ctx


def open_stream(addr: str, identity: Identity, *, server_name: str | None = "localhost",
                max_frame: int = DEFAULT_MAX_FRAME, keepalive_s: float = 10.0, timeout: float = 10.0) -> DialedStream:
    """Start connecting to ``addr`` (host:port) over mutual TLS; reads and writes wait for the connection.

    ``server_name`` is the TLS name checked: with the default ``localhost`` any controller certificate issued with
    the default SANs verifies at TLS level whatever address it is reached at, and the peer's real identity is then
    checked from its signed hello (handshake.py). None verifies the dialed host name instead.
    """
    return DialedStream(addr, cached_tls_context(identity, server=False), server_name, max_frame, keepalive_s,
                        timeout)


# ---------------------------------------------------------------------------------------------- connection

class Connection:
    """One authenticated connection (controller or router) with its reader and writer tasks."""

    def __init__(self, stream: FrameStream, *, kind: str, peer_id: str, addr: str,
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
            if self._notify is not None and self._reader is not None and not self._reader.done():
                # Give the peer a moment to read our close frame and end its side: closing with its frames still
                # unread here would reset the connection, and a reset may discard the close frame over there.
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
            # the peer would close the connection over it; refuse this one frame instead.
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
                    self.close("stream ended by the peer",
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
        except ProtocolViolation as e:
            log.warning("%s: closing the connection: %s", self.label, e)
            self.close(str(e), error=True)
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
