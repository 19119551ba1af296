"""The asyncio UDP shell around a sans-IO Node (or a Switch, switch.py): one socket, a timer, a thread pool for identity validation.

It reads what the socket holds (up to DATAGRAMS_PER_WAKE at a time), feeds each datagram to the node, sends
what the node queued (flush) and hands the burst's config requests to the glue together; it ticks the node every
tick_ms, runs the memory-hard identity checks off the event loop (at most validation_workers at a time; the node
bounds how many are queued) and hands config requests to the glue's on_request. The glue answers through
node.answer_* / node.push_* and then calls flush(). A failing on_request is logged, never fatal.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol

from hactl.zt.address import address_to_str
from hactl.zt.identity import Identity
from hactl.zt.node import ConfigRequest

log = logging.getLogger(__name__)
SOCKET_BUFFER_BYTES = 4 << 20
VALIDATIONS_QUEUED_PER_WORKER = 4
DATAGRAMS_PER_WAKE = 256  # read until the socket is empty, up to this many, then answer them together


class Driven(Protocol):
    """What the endpoint drives: a controller Node, or a Switch (controller and root on one socket)."""
    address: int
    families: set[int]

    def receive(self, datagram: bytes, src: tuple[str, int], now: int) -> None: ...
    def tick(self, now: int) -> None: ...
    def take_datagrams(self) -> list[tuple[bytes, tuple[str, int]]]: ...
    def take_requests(self) -> list[ConfigRequest]: ...
    def take_validations(self) -> list[Identity]: ...
    def validated(self, identity: Identity, ok: bool, now: int) -> None: ...


class Endpoint:
    def __init__(self, node: Driven, bind: tuple[str, int], *, on_request: Callable[[ConfigRequest], None],
                 validation_workers: int = 1, tick_ms: int = 1000) -> None:
        self.node = node
        self.bind = bind
        self.on_request = on_request
        self.validation_workers = max(1, validation_workers)
        self.tick_ms = tick_ms
        self.local_address: tuple[str, int] = ("", 0)
        self.send_errors = 0
        self._sock: socket.socket | None = None
        self._v6 = False
        self._tick_task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._validating = 0
        self._pending: list[Identity] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> int:
        return time.monotonic_ns() // 1_000_000

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        host, port = self.bind
        sock = None
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                # The default ~200 KB holds a few hundred datagrams: a burst of requests would be dropped by the
                # kernel, where no counter of ours sees it. (The kernel caps this at net.core.*mem_max.)
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
            sock.bind(addr)
            sock.setblocking(False)
            # A reader of our own rather than a DatagramProtocol: asyncio delivers one datagram per wake-up, and
            # a burst read at once is answered as one batch (one read barrier for all of them).
            loop.add_reader(sock.fileno(), self._readable)
        except OSError as e:
            if sock is not None:
                sock.close()
            raise OSError(e.errno, f"zt endpoint: cannot bind UDP {host}:{port}: {e.strerror or e}") from e
        self._sock = sock
        self._v6 = sock.family == socket.AF_INET6
        if self._v6:
            # A dual-stack socket reaches IPv4 through mapped addresses; a v6-only one does not.
            v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            self.node.families = {6} if v6only else {4, 6}
        else:
            self.node.families = {4}
        name = sock.getsockname()
        self.local_address = (name[0], name[1])
        self._pool = ThreadPoolExecutor(self.validation_workers, thread_name_prefix="zt-validate")
        self._tick_task = asyncio.create_task(self._ticker())
        log.info("zt endpoint %s listening on udp %s:%d", address_to_str(self.node.address), *self.local_address)
        self._step()  # the first tick: HELLO the roots now

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            try:
                await self._tick_task
            except asyncio.CancelledError:
                pass
            self._tick_task = None
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._pool is not None:
            # Queued validations are cancelled; one in flight finishes (~0.15 s) so that no thread outlives us.
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    # --- the loop's side ----------------------------------------------------------------------------------------
    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(DATAGRAMS_PER_WAKE):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # ICMP errors for earlier sends (unreachable peers) surface here; normal on the Internet.
                self.send_errors += 1
                continue
            self._datagram(data, addr)
        self.flush()
        self._dispatch()

    def _datagram(self, data: bytes, addr: tuple) -> None:
        host = addr[0]
        if self._v6 and host.startswith("::ffff:") and "." in host:
            host = host[7:]  # IPv4 through a dual-stack socket: the node sees plain IPv4
        self.node.receive(data, (host, addr[1]), self.now())

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_ms / 1000)
            self._step()

    def _step(self) -> None:
        self.node.tick(self.now())
        self.flush()
        self._dispatch()

    def flush(self) -> None:
        """Send what the node queued (call it on the event loop, after node.answer_* / push_*)."""
        out = self.node.take_datagrams()
        sock = self._sock
        if sock is None:
            return
        for data, (host, port) in out:
            if self._v6 and ":" not in host:
                host = f"::ffff:{host}"
            try:
                sock.sendto(data, (host, port))
            except OSError:  # incl. a full send buffer: UDP may drop, and the peer retries
                self.send_errors += 1

    def _dispatch(self) -> None:
        self._pending.extend(self.node.take_validations())
        self._run_validations()
        for req in self.node.take_requests():
            try:
                self.on_request(req)
            except Exception:
                log.exception("zt endpoint: on_request failed for member %s network %016x",
                              address_to_str(req.source), req.request.network_id)
        self.flush()  # on_request may have answered at once

    def _run_validations(self) -> None:
        loop, pool = self._loop, self._pool
        if loop is None or pool is None:
            return
        # A few per worker are queued in the pool, so a worker never waits for the loop to hand it the next one.
        while self._pending and self._validating < self.validation_workers * VALIDATIONS_QUEUED_PER_WORKER:
            ident = self._pending.pop(0)
            self._validating += 1
            fut = loop.run_in_executor(pool, ident.locally_validate)
            fut.add_done_callback(lambda f, ident=ident: self._validation_done(ident, f))

    def _validation_done(self, ident: Identity, fut: asyncio.Future) -> None:
        self._validating -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("zt endpoint: validating identity %s raised %r", address_to_str(ident.address), exc)
        ok = exc is None and bool(fut.result())
        self.node.validated(ident, ok, self.now())
        self.flush()
        self._dispatch()


__all__ = ["Endpoint"]
