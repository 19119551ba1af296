"""The controller's one listener and its mesh of connections to the other controllers.

* One TLS listener (mutual TLS against the cluster CA, channel.py) serves peers and routers alike; the first
  frame says which (see :meth:`Mesh._serve`).
* One connection per peer. Each peer has a dialer task that dials only while there is no connection, with
  jittered exponential backoff between ``backoff_min`` and ``backoff_max``.
* When both ends dial at once, each end sees two authenticated connections to the same peer and applies the
  same rule, so both keep the same one: the connection dialed by the lower node id wins (see
  :meth:`Mesh._prefer_new`); a peer that restarted (new incarnation) or a silent old connection always yields
  to the new one, so a restarted peer is never locked out by a half-open leftover.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from cryptography import x509

from .channel import (Connection, FrameStream, ProtocolViolation, StreamClosed, cached_tls_context,
                      open_stream, remote_label, set_keepalive)
from .errors import DuplicateConnection, HandshakeError, PeerUnavailable, RemoteError
from .frames import (DEFAULT_MAX_FRAME, PROTOCOL_VERSION, Call, Close, ErrorReply, Frame, FrameError, Hello, Ping,
                     Pong, Reply, UnknownFrame, decode, encode)
from .handshake import check_controller_hello, check_server_hello, hello_transcript, sign
from .pki import Identity, cert_serial, spiffe_id
from .rpc import Handler, RpcEndpoint

log = logging.getLogger("hactl.transport")

FrameHandler = Callable[[Connection, Any], None]
_NOTHING = object()


@dataclass(frozen=True)
class Refusal:
    reason: str
    vouchable: bool  # True: refused only because this node does not know the peer (another member may)


class PeerAuthorizer(Protocol):
    """Who may use the control channel: decided by the controller from the replicated membership and deny-list."""

    def check(self, peer: str, serial: str | None, *, established: bool = False) -> Refusal | None:
        """None if controller ``peer``, presenting certificate ``serial``, may connect (or, ``established``, keep
        its connection and call) now."""

    def is_member(self, peer: str, serial: str | None) -> bool:
        """Is ``peer`` a current member in this node's own view, with a certificate not denied (to vouch)?"""

    def vouchers(self) -> list[str]:
        """Members whose word counts for a peer this node does not know yet."""

    def vouched(self, peer: str, by: str) -> None:
        """A voucher confirmed ``peer`` is a member: accept it until the membership changes here."""


VOUCH_METHOD = "mesh.vouch"
SEEN_METHOD = "mesh.seen"  # "which IP do you see me at?"


@dataclass
class MeshOptions:
    max_frame: int = DEFAULT_MAX_FRAME
    queue_frames: int = 4096  # control-lane frames queued per connection before raft messages are dropped
    queue_bytes: int = 64 * 1024 * 1024
    bulk_frames: int = 16  # bulk lane (snapshot chunks): must exceed the snapshot window + 2
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    hello_timeout: float = 5.0  # dial handshake limit; also how long a silent new connection may stay typeless
    ping_interval: float = 2.0
    dead_after: float = 15.0  # a controller connection silent this long is closed (and redialed)
    tls_server_name: str | None = "localhost"  # see channel.open_stream
    keepalive: float = 10.0  # TCP keepalive: idle seconds before the kernel probes a silent connection
    software: str = "hactl/0.1.0"
    max_calls_per_conn: int = 256

    def check(self) -> None:
        if not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError(f"need 0 < backoff_min <= backoff_max, got {self.backoff_min}, {self.backoff_max}")
        if self.max_frame < 1024:
            raise ValueError(f"max_frame must be at least 1024 bytes, got {self.max_frame}")
        if self.bulk_frames < 3 or self.queue_frames < 1 or self.queue_bytes < self.max_frame:
            raise ValueError("bulk_frames must be >= 3, queue_frames >= 1 and queue_bytes >= max_frame")
        if min(self.hello_timeout, self.ping_interval, self.dead_after, self.keepalive) <= 0:
            raise ValueError("timeouts and intervals must be positive")


@dataclass(frozen=True)
class PeerInfo:
    id: str
    addr: str
    version: int | None
    software: str
    last_contact: float  # unix time of the last frame received
    connected_since: float
    outbound: bool
    queued: int
    dropped: int
    rtt: float | None = None  # seconds, the last ping's round trip (None until one came back)


@dataclass(frozen=True)
class RouterInfo:
    id: str
    addr: str
    hello: bool
    version: int | None
    software: str
    connected_since: float
    last_contact: float
    last_pong: float | None


class Mesh:
    def __init__(self, node_id: str, cluster_id: str, trust_domain: str, identity: Identity, listen_addr: str,
                 peers: dict[str, str] | None = None, *, options: MeshOptions | None = None,
                 authorizer: PeerAuthorizer | None = None):
        if identity.kind != "controller" or identity.node_id != node_id or identity.trust_domain != trust_domain:
            raise ValueError(f"the certificate is for {identity.uri}, but this node is "
                             f"spiffe://{trust_domain}/controller/{node_id}: issue a certificate for it with "
                             f"`hactl pki issue --kind controller --id {node_id} --trust-domain {trust_domain}`")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.trust_domain = trust_domain
        self.identity = identity
        self.listen_addr = listen_addr
        self.opts = options or MeshOptions()
        self.opts.check()
        self.incarnation = os.urandom(8).hex()
        self._key = identity.private_key()
        self._ca = identity.ca_cert()
        self._peers: dict[str, str] = {k: v for k, v in (peers or {}).items() if k != node_id}
        self._conns: dict[str, Connection] = {}
        self._routers: set[Connection] = set()
        self._pending_closes: set[Connection] = set()
        self._dialers: dict[str, asyncio.Task] = {}
        self._handlers: dict[str, FrameHandler] = {}
        self._disconnect_listeners: list[Callable[[Connection], None]] = []
        self._connect_listeners: list[Callable[[Connection], None]] = []
        self._refuse_listeners: list[Callable[[str, str], None]] = []
        self.rpc = RpcEndpoint(max_concurrent_per_conn=self.opts.max_calls_per_conn)
        self.authorizer = authorizer
        if authorizer is not None:
            self.rpc.register(VOUCH_METHOD, self._serve_vouch)
        self.rpc.register(SEEN_METHOD, self._serve_seen)
        self._server: asyncio.Server | None = None
        self._tls_failures: dict[str, float] = {}  # remote IP -> when its last failed TLS handshake was logged
        self._pinger: asyncio.Task | None = None
        # Round-trip times from the keepalive pings, without changing the wire: a round sends Ping(n) to every
        # connection at one instant, and a Pong(n) echoing the current round's n measures its connection.
        self._ping_round: tuple[int, float] = (0, 0.0)  # (n, monotonic time it was sent)
        self._rtt: dict[Connection, float] = {}
        self._running = False
        self._changed = asyncio.Event()
        self.port = 0
        self.stats: dict[str, int] = {"refused": 0, "bad_frames": 0, "dial_failures": 0, "duplicates_closed": 0,
                                      "duplicates_refused": 0, "calls_refused": 0}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        host, _, port_text = self.listen_addr.rpartition(":")
        try:
            port = int(port_text)
            # No SO_REUSEPORT: a second process on our port must fail to bind, not share the connections.
            server = await asyncio.start_server(self._accept, host.strip("[]") or None, port, reuse_address=True,
                                                limit=1 << 20)
        except (OSError, ValueError) as e:
            raise OSError(f"cannot listen on {self.listen_addr}: {e} (address in use?)") from None
        self._server_tls = cached_tls_context(self.identity, server=True)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._running = True
        self._pinger = asyncio.create_task(self._ping_loop(), name=f"mesh-ping-{self.node_id}")
        for pid in self._peers:
            self._start_dialer(pid)
        log.info("control channel of %s listening on %s (port %d), %d peers", self.node_id, self.listen_addr,
                 self.port, len(self._peers))

    async def stop(self) -> None:
        self._running = False
        tasks = [*self._dialers.values()] + ([self._pinger] if self._pinger else [])
        self._dialers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = [*self._conns.values(), *self._routers, *self._pending_closes]
        for c in conns:
            c.close("node shutting down")
        if conns:
            await asyncio.wait([asyncio.create_task(c.wait_closed()) for c in conns], timeout=2.0)
        if self._server is not None:
            self._server.close()
            self._server = None

    # ------------------------------------------------------------------ public API

    @property
    def max_frame(self) -> int:
        return self.opts.max_frame

    @property
    def peers(self) -> dict[str, str]:
        return dict(self._peers)

    def update_peers(self, peers: dict[str, str]) -> None:
        """Replace the peer map (membership change): new peers are dialed, removed ones disconnected."""
        new = {k: v for k, v in peers.items() if k != self.node_id}
        old = self._peers
        self._peers = new
        for pid in set(old) - set(new):
            t = self._dialers.pop(pid, None)
            if t is not None:
                t.cancel()
            conn = self._conns.get(pid)
            if conn is not None:
                conn.close("peer removed from the membership")
            log.info("peer %s removed", pid)
        for pid, addr in new.items():
            if old.get(pid) != addr or pid not in self._dialers:
                if pid in old:
                    log.info("peer %s address changed: %s -> %s", pid, old[pid], addr)
                t = self._dialers.pop(pid, None)
                if t is not None:
                    t.cancel()
                if self._running:
                    self._start_dialer(pid)

    def connected(self) -> dict[str, PeerInfo]:
        return {pid: PeerInfo(pid, self._peers.get(pid, c.addr), c.version, c.software, c.last_contact,
                              c.connected_at, c.outbound, c.queued(), c.dropped, self._rtt.get(c))
                for pid, c in self._conns.items() if not c.closing}

    def routers(self) -> list[RouterInfo]:
        return [RouterInfo(c.peer_id, c.addr, c.hello is not None, c.version, c.software, c.connected_at,
                           c.last_contact, c.last_pong) for c in self._routers if not c.closing]

    def connection(self, peer: str) -> Connection | None:
        c = self._conns.get(peer)
        return None if c is None or c.closing else c

    def send(self, peer: str, frame: Frame | bytes, *, bulk: bool = False) -> bool:
        """Queue a frame for a peer; False if not connected or its queue is full (never blocks)."""
        conn = self.connection(peer)
        if conn is None:
            return False
        return conn.send(frame if isinstance(frame, bytes) else encode(frame), bulk=bulk)

    def on_frame(self, tag: str, handler: FrameHandler) -> None:
        """Route frames with this tag arriving on controller connections to ``handler(conn, frame)``."""
        self._handlers[tag] = handler

    def on_disconnect(self, listener: Callable[[Connection], None]) -> None:
        """Called (on the loop) for every controller connection that closes, installed or not."""
        self._disconnect_listeners.append(listener)

    def on_connect(self, listener: Callable[[Connection], None]) -> None:
        self._connect_listeners.append(listener)

    def on_refuse(self, listener: Callable[[str, str], None]) -> None:
        """Called (on the loop) with (peer id, reason) when the authorizer refuses a controller's connection."""
        self._refuse_listeners.append(listener)

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` for calls from peers: ``async handler(peer_id, body) -> reply``; raise
        RemoteError(code, message) to return a typed error."""
        self.rpc.register(method, handler)

    async def call(self, peer: str, method: str, body: Any, timeout: float) -> Any:
        """Request/response with a peer. Raises PeerUnavailable (no connection), RemoteError (the handler
        failed), asyncio.TimeoutError, ConnectionLost (closed while waiting: outcome unknown)."""
        conn = self.connection(peer)
        if conn is None:
            known = "" if peer in self._peers else " (not a configured peer)"
            raise PeerUnavailable(peer, f"not connected{known}")
        return await self.rpc.call(conn, method, body, timeout)

    async def wait_connected(self, peers: list[str] | set[str], timeout: float) -> None:
        """Wait until a connection to every listed peer is up (start-up and tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self.connection(p) is not None for p in peers):
            remaining = deadline - loop.time()
            if remaining <= 0:
                missing = sorted(p for p in peers if self.connection(p) is None)
                raise asyncio.TimeoutError(f"{self.node_id}: no connection to {', '.join(missing)} "
                                           f"after {timeout}s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ connections

    def _new_conn(self, stream: FrameStream, *, kind: str, peer_id: str, addr: str,
                  initiator: str, hello: Hello | None) -> Connection:
        o = self.opts
        return Connection(stream, kind=kind, peer_id=peer_id, addr=addr, initiator=initiator, hello=hello,
                          max_frame=o.max_frame, queue_frames=o.queue_frames, queue_bytes=o.queue_bytes,
                          bulk_frames=o.bulk_frames, on_frame=self._on_frame, on_closed=self._on_closed)

    def _prefer_new(self, existing: Connection, initiator: str, incarnation: str) -> tuple[bool, str]:
        """Both ends run this on the same facts, so both keep the same connection."""
        if existing.incarnation != incarnation:
            return True, "the peer restarted"
        if time.monotonic() - existing.last_contact_mono > 3 * self.opts.ping_interval:
            return True, "the existing connection went silent"
        if existing.initiator == initiator:
            return True, f"{initiator} reconnected"
        lower = min(self.node_id, existing.peer_id)
        return initiator == lower, f"keeping the connection dialed by {lower}"

    def _install(self, conn: Connection) -> bool:
        pid = conn.peer_id
        existing = self.connection(pid)
        if existing is not None:
            keep_new, why = self._prefer_new(existing, conn.initiator, conn.incarnation)
            self.stats["duplicates_closed"] += 1
            if not keep_new:
                log.info("duplicate connection with %s closed: %s", pid, why)
                conn.close(f"duplicate connection: {why}")
                return False
            log.info("connection with %s replaced: %s", pid, why)
            existing.close(f"replaced by a newer connection: {why}")
        self._conns[pid] = conn
        log.info("peer %s connected (%s, %s, protocol %s, %s)", pid, "dialed" if conn.outbound else "accepted",
                 conn.addr, conn.version, conn.software or "unknown software")
        self._changed.set()
        for listener in self._connect_listeners:
            try:
                listener(conn)
            except Exception:
                log.exception("connect listener failed")
        return True

    def _on_closed(self, conn: Connection) -> None:
        self._rtt.pop(conn, None)
        if conn.kind == "router":
            if conn in self._routers:
                self._routers.discard(conn)
                log.info("router %s (%s) disconnected: %s", conn.peer_id, conn.addr, conn.close_reason)
        else:
            if self._conns.get(conn.peer_id) is conn:
                del self._conns[conn.peer_id]
                level = logging.WARNING if conn.close_error and self._running else logging.INFO
                log.log(level, "connection with peer %s closed: %s", conn.peer_id, conn.close_reason)
                self._changed.set()
            self.rpc.on_closed(conn)
            for listener in self._disconnect_listeners:
                try:
                    listener(conn)
                except Exception:
                    log.exception("disconnect listener failed")
        self._pending_closes.add(conn)
        asyncio.get_running_loop().create_task(self._forget(conn))

    async def _forget(self, conn: Connection) -> None:
        await conn.wait_closed()
        self._pending_closes.discard(conn)

    def _on_frame(self, conn: Connection, frame: Frame) -> None:
        if isinstance(frame, Ping):
            conn.send_frame(Pong(frame.n))
        elif isinstance(frame, Pong):
            conn.last_pong = time.time()
            n, sent = self._ping_round
            if frame.n == n and conn.kind == "controller":  # a late answer to an older round is not measured
                self._rtt[conn] = time.monotonic() - sent
        elif isinstance(frame, Close):
            conn.close(f"closed by the peer: {frame.reason}", notify=False)
        elif isinstance(frame, Hello):
            if conn.kind == "router" and conn.hello is None and frame.type == "router":
                conn.hello, conn.version, conn.software = frame, frame.version, frame.software  # late hello
            else:
                conn.close("a second hello on an established connection", error=True)
        elif isinstance(frame, UnknownFrame):
            log.debug("%s: ignoring unknown frame kind %r", conn.label, frame.tag)
        elif conn.kind != "controller":
            log.warning("%s sent a %s frame, which routers may not use; ignored", conn.label, type(frame).__name__)
        elif isinstance(frame, Call) and (refusal := self._refusal(conn)) is not None:
            self.stats["calls_refused"] += 1
            log.warning("call %s from %s refused: %s", frame.method, conn.peer_id, refusal)
            conn.send_frame(ErrorReply(frame.rid, "forbidden", refusal))
        elif isinstance(frame, (Call, Reply, ErrorReply)):
            self.rpc.on_frame(conn, frame)
        else:
            handler = self._handlers.get(getattr(frame, "TAG", ""))
            if handler is not None:
                handler(conn, frame)
            else:
                log.debug("%s: no handler for %s frames; dropped", conn.label, type(frame).__name__)

    async def _ping_loop(self) -> None:
        n = 0
        while self._running:
            await asyncio.sleep(self.opts.ping_interval)
            n += 1
            now = time.monotonic()
            self._ping_round = (n, now)
            for conn in list(self._conns.values()):
                if now - conn.last_contact_mono > self.opts.dead_after:
                    conn.close(f"no frames from the peer for {self.opts.dead_after:g}s", error=True)
                else:
                    conn.send_frame(Ping(n))
            for conn in list(self._routers):
                conn.send_frame(Ping(n))

    # ------------------------------------------------------------------ authorization

    def _refusal(self, conn: Connection) -> str | None:
        if self.authorizer is None or conn.kind != "controller":
            return None
        r = self.authorizer.check(conn.peer_id, conn.serial, established=True)
        return None if r is None else r.reason

    async def _authorize(self, pid: str, serial: str | None) -> str | None:
        """None if controller ``pid`` may connect; else why not. A peer this node does not know (it may have
        missed the peer's addition while it was down) is accepted if a connected member vouches for it."""
        if self.authorizer is None:
            return None
        refusal = self.authorizer.check(pid, serial)
        if refusal is None:
            return None
        if not refusal.vouchable:
            return refusal.reason
        for voucher in self.authorizer.vouchers():
            conn = self.connection(voucher)
            if voucher == pid or conn is None:
                continue
            try:
                reply = await self.rpc.call(conn, VOUCH_METHOD, {"id": pid, "serial": serial},
                                            timeout=self.opts.hello_timeout / 3)
            except Exception as e:  # a voucher that cannot answer says nothing
                log.debug("vouch for %s by %s failed: %s", pid, voucher, e)
                continue
            if isinstance(reply, dict) and reply.get("member") is True:
                log.info("peer %s accepted: not a member in this node's view, but member %s vouches for it "
                         "(this node is probably behind)", pid, voucher)
                self.authorizer.vouched(pid, voucher)
                return None
        return refusal.reason

    async def _serve_seen(self, peer: str, body: Any) -> dict[str, Any]:
        """The IP the asking peer's connection comes from (it dialed us), or the one we reach it at (we dialed):
        where it is seen from here, for a node that learns its own public address from its peers."""
        conn = self.connection(peer)
        return {"ip": ip_of(conn.addr) if conn is not None else None}

    async def seen_as(self, peers: list[str], timeout: float = 1.0) -> list[str]:
        """The IPs the given connected peers see us at (those that answer in time)."""
        async def ask(peer: str) -> str | None:
            try:
                reply = await self.call(peer, SEEN_METHOD, {}, timeout=timeout)
            except (PeerUnavailable, RemoteError, asyncio.TimeoutError):
                return None
            ip = reply.get("ip") if isinstance(reply, dict) else None
            return ip if isinstance(ip, str) else None
        answers = await asyncio.gather(*(ask(p) for p in peers if self.connection(p) is not None))
        return [ip for ip in answers if ip]

    async def _serve_vouch(self, peer: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise RemoteError("bad_request", "expected {id, serial}")
        serial = body.get("serial") if isinstance(body.get("serial"), str) else None
        assert self.authorizer is not None
        return {"member": self.authorizer.is_member(body["id"], serial)}

    def enforce(self) -> None:
        """Close every controller connection that is no longer authorized (after a removal or a revocation)."""
        for conn in list(self._conns.values()):
            reason = self._refusal(conn)
            if reason is not None:
                log.warning("peer %s disconnected: %s", conn.peer_id, reason)
                conn.close(f"no longer authorized: {reason}", error=True)

    # ------------------------------------------------------------------ accepting

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A new TCP connection: the TLS handshake (the client's certificate must come from our CA), then _serve."""
        remote = remote_label(writer)
        set_keepalive(writer.get_extra_info("socket"), self.opts.keepalive)
        try:
            await writer.start_tls(self._server_tls, ssl_handshake_timeout=self.opts.hello_timeout)
        except (OSError, asyncio.TimeoutError, ssl.CertificateError) as e:
            self._tls_failed(remote, e)
            writer.transport.abort()
            return
        stream = FrameStream(reader, writer, outbound=False, max_frame=self.opts.max_frame)
        try:
            await self._serve(stream, remote)
        except asyncio.CancelledError:
            # This task is asyncio's (start_server's client_connected_cb) and nothing awaits it; Python 3.11's
            # done callback calls exception() on it, which re-raises a cancellation into the loop's error log at
            # every shutdown. Ending normally is all a cancelled connection handler needs to do.
            pass
        finally:
            await stream.close()

    def _tls_failed(self, remote: str, e: BaseException) -> None:
        """Log a refused TLS handshake, once a minute per source IP (a scanner must not flood the log)."""
        ip, now = ip_of(remote) or remote, time.monotonic()
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        hint = " (a certificate from another CA?)" if "CERTIFICATE" in str(reason).upper() or "CA" in str(reason) \
            else ""
        if now - self._tls_failures.get(ip, -1e9) >= 60:
            if len(self._tls_failures) > 1024:
                self._tls_failures.clear()
            self._tls_failures[ip] = now
            log.warning("connection from %s refused: TLS handshake failed: %s%s", remote, reason, hint)
        else:
            log.debug("connection from %s refused: TLS handshake failed: %s", remote, reason)

    async def _serve(self, stream: FrameStream, remote: str) -> None:
        """One accepted stream. The first frame decides what the connection is:

        * a controller hello -> authenticated as that controller (or refused with the reason);
        * a router hello -> a router;
        * any other valid frame -> a router that skipped the hello; that frame is then handled as the router
          connection's first ordinary frame (nothing is lost);
        * nothing within ``hello_timeout`` -> a router that skipped the hello;
        * bytes that are not a valid frame -> closed, like any bad frame later on.
        """
        der = stream.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        cert_id = spiffe_id(cert) if cert is not None else None
        who = f"spiffe://{'/'.join(cert_id)}" if cert_id else "a certificate without a SPIFFE id"
        # Never cancel a pending read (a frame could be cut in half): if no frame comes in time the read stays
        # pending and the router connection's reader takes it over.
        first_read = asyncio.ensure_future(stream.read())
        await asyncio.wait({first_read}, timeout=self.opts.hello_timeout)
        pending: asyncio.Future | None = None
        if not first_read.done():
            raw: Any = _NOTHING
            pending = first_read
        else:
            try:
                raw = first_read.result()
            except ProtocolViolation as e:
                self.stats["bad_frames"] += 1
                log.warning("connection from %s (%s) refused: %s", remote, who, e)
                await stream.abort(e.code or "INVALID_ARGUMENT", str(e))
                return
            except StreamClosed:
                return
            if raw is None:
                return
        hello: Hello | None = None
        first: list[Frame] = []
        if raw is not _NOTHING:
            try:
                frame = decode(raw, max_frame=self.opts.max_frame)
            except FrameError as e:
                self.stats["bad_frames"] += 1
                log.warning("connection from %s (%s) closed: bad first frame: %s", remote, who, e)
                await stream.abort("INVALID_ARGUMENT", f"bad frame: {e}")
                return
            if isinstance(frame, Hello):
                hello = frame
            else:
                first.append(frame)
        if hello is not None and hello.type == "controller":
            await self._serve_controller(stream, hello, cert_id, remote, cert_serial(cert) if cert else None)
        else:
            await self._serve_router(stream, hello, first, cert_id, remote, pending)

    async def _serve_controller(self, stream: FrameStream, hello: Hello,
                                cert_id: tuple[str, str, str] | None, remote: str, serial: str | None) -> None:
        try:
            pid = check_controller_hello(hello, cert_id, my_id=self.node_id, cluster_id=self.cluster_id,
                                         trust_domain=self.trust_domain)
            reason = await self._authorize(pid, serial)
            if reason is not None:
                for listener in self._refuse_listeners:
                    listener(pid, reason)
                raise HandshakeError(reason)
        except HandshakeError as e:
            self.stats["refused"] += 1
            log.warning("peer %s refused (from %s): %s", hello.id or "?", remote, e)
            await stream.abort("PERMISSION_DENIED", f"refused by {self.node_id}: {e}")
            return
        existing = self.connection(pid)
        if existing is not None:
            keep_new, why = self._prefer_new(existing, pid, hello.incarnation)
            if not keep_new:
                self.stats["duplicates_refused"] += 1
                log.debug("duplicate connection from %s refused: %s", pid, why)
                await stream.abort("ALREADY_EXISTS", f"duplicate connection: {why}")
                return
        assert hello.nonce is not None
        reply = Hello("controller", self.node_id, self.cluster_id, PROTOCOL_VERSION, self.opts.software,
                      self.incarnation, cert=self.identity.cert_pem,
                      sig=sign(self._key, hello_transcript(self.cluster_id, self.node_id, self.incarnation, pid,
                                                           hello.nonce)))
        try:
            await stream.write(encode(reply))
        except StreamClosed:
            return
        conn = self._new_conn(stream, kind="controller", peer_id=pid, addr=remote, initiator=pid, hello=hello)
        conn.serial = serial
        if self._install(conn):
            conn.start()
        await conn.wait_closed()

    async def _serve_router(self, stream: FrameStream, hello: Hello | None,
                            first: list[Frame], cert_id: tuple[str, str, str] | None, remote: str,
                            pending: asyncio.Future | None = None) -> None:
        reason = None
        if cert_id is not None and cert_id[0] != self.trust_domain:
            reason = f"certificate is for trust domain {cert_id[0]!r}, this cluster uses {self.trust_domain!r}"
        elif hello is not None and hello.cluster_id is not None and hello.cluster_id != self.cluster_id:
            reason = f"router belongs to cluster {hello.cluster_id!r}, this is cluster {self.cluster_id!r}"
        elif hello is not None and hello.id and cert_id is not None and hello.id != cert_id[2]:
            reason = f"hello says router {hello.id} but certificate is for {cert_id[2]}"
        if reason is not None:
            self.stats["refused"] += 1
            log.warning("router connection from %s refused: %s", remote, reason)
            if pending is not None:
                pending.cancel()
            await stream.abort("PERMISSION_DENIED", f"refused by {self.node_id}: {reason}")
            return
        router_id = cert_id[2] if cert_id else (hello.id if hello and hello.id else remote)
        reply = Hello("controller", self.node_id, self.cluster_id, PROTOCOL_VERSION, self.opts.software,
                      self.incarnation, cert=self.identity.cert_pem)
        if hello is not None and hello.nonce:
            reply.sig = sign(self._key, hello_transcript(self.cluster_id, self.node_id, self.incarnation,
                                                         router_id, hello.nonce))
        try:
            await stream.write(encode(reply))
        except StreamClosed:
            if pending is not None:
                pending.cancel()
            return
        conn = self._new_conn(stream, kind="router", peer_id=router_id, addr=remote, initiator=router_id,
                              hello=hello)
        self._routers.add(conn)
        log.info("router %s connected from %s (%s)", router_id, remote,
                 "hello" if hello is not None else "no hello: treated as a router")
        conn.start(first, pending)
        await conn.wait_closed()

    # ------------------------------------------------------------------ dialing

    def _start_dialer(self, pid: str) -> None:
        self._dialers[pid] = asyncio.create_task(self._dialer(pid), name=f"dial-{self.node_id}-{pid}")

    async def _dialer(self, pid: str) -> None:
        o = self.opts
        delay = o.backoff_min
        failures = 0
        last_error = ""
        if self.node_id > pid:
            # The lower id's connection wins a simultaneous dial: give it a head start instead of building a
            # connection that the tie-break would close again.
            await asyncio.sleep(random.uniform(0.2, 0.6) * o.backoff_min)
        while self._running:
            addr = self._peers.get(pid)
            if addr is None:
                return
            conn = self.connection(pid)
            if conn is not None:
                await conn.wait_closed()
                delay = o.backoff_min
                # A random pause so the two ends of a broken connection do not redial in lockstep.
                await asyncio.sleep(random.uniform(0, o.backoff_min))
                continue
            try:
                conn = await self._dial(pid, addr)
            except DuplicateConnection:
                # The peer keeps the connection it dialed to us; it will show up here shortly.
                await asyncio.sleep(_jitter(delay))
                continue
            except Exception as e:  # anything: a dialer that dies would never reconnect this peer
                failures += 1
                self.stats["dial_failures"] += 1
                msg = str(e) if isinstance(e, (HandshakeError, StreamClosed, FrameError)) \
                    else f"{type(e).__name__}: {e}"
                # Log a new reason at once; a repeated one only every 10th attempt, so a peer that is down for
                # an hour does not flood the log.
                if msg != last_error or failures % 10 == 0:
                    log.warning("cannot connect to peer %s at %s (attempt %d, retry in ~%.1fs): %s", pid, addr,
                                failures, delay, msg)
                else:
                    log.debug("cannot connect to peer %s at %s (attempt %d): %s", pid, addr, failures, msg)
                last_error = msg
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, o.backoff_max)
                continue
            failures, last_error, delay = 0, "", o.backoff_min
            if self._install(conn):
                conn.start()

    async def probe(self, addr: str) -> str:
        """Dial `addr` once and return the controller id its certificate proves (for `cluster add ADDR`)."""
        stream, hello = await self._handshake(None, addr)
        await stream.close()
        return hello.id

    async def _dial(self, pid: str, addr: str) -> Connection:
        stream, frame = await self._handshake(pid, addr)
        serial = cert_serial(frame.cert) if frame.cert else None
        refusal = self.authorizer.check(pid, serial) if self.authorizer is not None else None
        if refusal is not None and not refusal.vouchable:  # a peer we dial is in our address book: only a
            await stream.close()                            # denied certificate stops us
            raise HandshakeError(f"refused to connect: {refusal.reason}")
        conn = self._new_conn(stream.connected, kind="controller", peer_id=pid, addr=addr, initiator=self.node_id,
                              hello=frame)
        conn.serial = serial
        return conn

    async def _handshake(self, pid: str | None, addr: str) -> tuple[Any, Hello]:
        """Open a stream and exchange hellos; the server must prove it is controller `pid` (or, with None, any
        controller of this cluster: its certificate names it)."""
        o = self.opts
        stream = open_stream(addr, self.identity, server_name=o.tls_server_name, max_frame=o.max_frame,
                             keepalive_s=o.keepalive, timeout=o.hello_timeout)
        nonce = os.urandom(32)
        try:
            try:
                await asyncio.wait_for(stream.write(encode(Hello(
                    "controller", self.node_id, self.cluster_id, PROTOCOL_VERSION, o.software, self.incarnation,
                    nonce=nonce))), o.hello_timeout)
                raw = await asyncio.wait_for(stream.read(), o.hello_timeout)
            except asyncio.TimeoutError:
                raise HandshakeError(f"no hello from the peer within {o.hello_timeout:g}s") from None
            except StreamClosed as e:
                raise _dial_error(e) from None
            if raw is None:
                raise HandshakeError("the peer closed the connection during the hello")
            frame = decode(raw, max_frame=o.max_frame)
            if not isinstance(frame, Hello):
                raise HandshakeError(f"the peer answered with a {type(frame).__name__} frame instead of a hello")
            check_server_hello(frame, expected_id=frame.id if pid is None else pid, my_id=self.node_id,
                               cluster_id=self.cluster_id, trust_domain=self.trust_domain, nonce=nonce,
                               ca_cert=self._ca)
        except BaseException:
            await stream.close()
            raise
        return stream, frame


def _jitter(delay: float) -> float:
    # "Equal jitter": at least half the delay, so retries spread out without collapsing to zero.
    return delay / 2 + random.uniform(0, delay / 2)


def _dial_error(e: StreamClosed) -> HandshakeError:
    text = str(e)
    if e.code == "ALREADY_EXISTS":
        return DuplicateConnection(text)
    if e.code == "PERMISSION_DENIED":
        return HandshakeError(f"the peer refused us: {e.details.partition(': ')[2]}")
    low = text.lower()
    if "handshake" in low or "certificate" in low or "ssl" in low or "tls" in low:
        return HandshakeError(f"TLS handshake failed ({text}): is the peer's certificate issued by this cluster's "
                              "CA (and ours by its CA), and does it carry the expected SAN?")
    return HandshakeError(text)


def ip_of(addr: str) -> str | None:
    """The IP in a connection's peer address: "ipv4:1.2.3.4:5" or "ipv6:[::1]:5" (maybe %-encoded), or a
    dialed "host:port"; None for a name."""
    addr = urllib.parse.unquote(addr)
    for prefix in ("ipv4:", "ipv6:"):
        addr = addr.removeprefix(prefix)
    host = addr.rpartition(":")[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
