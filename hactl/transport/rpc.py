"""Request/response over controller connections (follower -> leader forwarding).

``["call", rid, method, body]`` is answered by ``["reply", rid, body]`` or ``["error", rid, code, message]``.
Request ids are per process and only meaningful on the connection that carried the call: when a connection
closes, its outstanding calls fail with :class:`ConnectionLost` (the request may or may not have run; forwarded
Raft proposals carry their own request id so a retry applies once).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Awaitable, Callable, Protocol

from hactl.aio import wait_owned

from .errors import ConnectionLost, PeerUnavailable, RemoteError
from .frames import Call, ErrorReply, Frame, Reply, encode

log = logging.getLogger("hactl.transport.rpc")

Handler = Callable[[str, Any], Awaitable[Any]]

# Error codes the transport itself produces; handlers may raise RemoteError with their own codes.
UNKNOWN_METHOD = "unknown_method"
INTERNAL = "internal"
BUSY = "busy"
BAD_REPLY = "bad_reply"


class _Conn(Protocol):
    peer_id: str
    max_frame: int

    def send(self, data: bytes, *, bulk: bool = False) -> bool: ...

    @property
    def closing(self) -> bool: ...


class RpcEndpoint:
    def __init__(self, *, max_concurrent_per_conn: int = 256):
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[int, tuple[_Conn, asyncio.Future]] = {}
        self._serving: dict[_Conn, set[asyncio.Task]] = {}
        self._rid = itertools.count(1)
        self.max_concurrent = max_concurrent_per_conn

    def register(self, method: str, handler: Handler) -> None:
        if not isinstance(method, str) or not method or len(method) > 256:
            raise ValueError(f"invalid method name {method!r}")
        self._handlers[method] = handler

    async def call(self, conn: _Conn, method: str, body: Any, timeout: float) -> Any:
        rid = next(self._rid)
        data = encode(Call(rid, method, body))  # TypeError here: body is not msgpack-able
        if len(data) > conn.max_frame:
            raise ValueError(f"call {method!r}: request of {len(data)} bytes exceeds the frame limit "
                             f"of {conn.max_frame} bytes")
        fut = asyncio.get_running_loop().create_future()
        if not conn.send(data):
            raise PeerUnavailable(conn.peer_id, "send queue full or connection closing")
        self._pending[rid] = (conn, fut)
        try:
            return await wait_owned(fut, timeout)
        finally:
            self._pending.pop(rid, None)

    # ------------------------------------------------------------------ incoming

    def on_frame(self, conn: _Conn, frame: Frame) -> None:
        if isinstance(frame, Call):
            self._serve(conn, frame)
            return
        entry = self._pending.get(frame.rid)  # type: ignore[union-attr]
        if entry is None or entry[0] is not conn:
            return  # timed out already, or a forged rid from another connection: ignore
        fut = entry[1]
        if fut.done():
            return
        if isinstance(frame, Reply):
            fut.set_result(frame.body)
        elif isinstance(frame, ErrorReply):
            fut.set_exception(RemoteError(frame.code, frame.message))

    def _serve(self, conn: _Conn, call: Call) -> None:
        tasks = self._serving.setdefault(conn, set())
        if len(tasks) >= self.max_concurrent:
            self._answer(conn, call, ErrorReply(call.rid, BUSY, f"more than {self.max_concurrent} calls in "
                                                                "progress on this connection; retry later"))
            return
        handler = self._handlers.get(call.method)
        if handler is None:
            self._answer(conn, call, ErrorReply(call.rid, UNKNOWN_METHOD, f"no handler for method {call.method!r}"))
            return
        task = asyncio.create_task(self._run(conn, call, handler), name=f"rpc-{call.method}-{conn.peer_id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, conn: _Conn, call: Call, handler: Handler) -> None:
        try:
            result = await handler(conn.peer_id, call.body)
            reply: Reply | ErrorReply = Reply(call.rid, result)
        except asyncio.CancelledError:
            raise
        except RemoteError as e:
            reply = ErrorReply(call.rid, e.code, e.message)
        except Exception as e:  # a handler bug must not take the connection down; the caller learns of it
            log.exception("rpc %s from %s: handler failed", call.method, conn.peer_id)
            reply = ErrorReply(call.rid, INTERNAL, f"{type(e).__name__}: {e}")
        self._answer(conn, call, reply)

    def _answer(self, conn: _Conn, call: Call, reply: Reply | ErrorReply) -> None:
        try:
            data = encode(reply)
        except (TypeError, ValueError, OverflowError) as e:
            log.error("rpc %s from %s: reply is not msgpack-able: %s", call.method, conn.peer_id, e)
            data = encode(ErrorReply(call.rid, BAD_REPLY, f"reply is not msgpack-able: {e}"))
        if len(data) > conn.max_frame:
            log.error("rpc %s from %s: reply of %d bytes exceeds the frame limit", call.method, conn.peer_id,
                      len(data))
            data = encode(ErrorReply(call.rid, BAD_REPLY, f"reply of {len(data)} bytes exceeds the frame limit"))
        if not conn.closing and not conn.send(data):
            log.warning("rpc %s from %s: reply dropped, send queue full", call.method, conn.peer_id)

    def on_closed(self, conn: _Conn) -> None:
        for rid, (c, fut) in list(self._pending.items()):
            if c is conn and not fut.done():
                fut.set_exception(ConnectionLost(conn.peer_id, "connection closed before the reply arrived"))
        for task in self._serving.pop(conn, set()):
            task.cancel()
