"""Streaming large JSON answers (member lists) without holding the whole list in memory, within limits.

The items come from an fsm iterator (one LMDB read transaction); they are encoded in batches of about
BATCH_BYTES, and between batches the event loop runs (Raft heartbeats and other requests share the loop), so a
million-member network is served in bounded memory without stalling the node.

A streamed answer holds its read transaction (one of ctrl.db's LMDB reader slots) until the client has taken the
last byte, so a client that stops reading would hold it forever. Hence two limits (context.StreamLimits): at most
``limit`` streams at once per application (``stream_slot``: 429 TOO_MANY_STREAMS, taken before any transaction is
opened), and a ``deadline`` for each whole response, past which the connection is aborted and its reader freed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable, Iterable, Iterator

from aiohttp import web

from hactl.api.context import context
from hactl.api.errors import JSON, ApiError, retry_after

log = logging.getLogger("hactl.api")

BATCH_BYTES = 64 << 10
TOO_MANY_STREAMS = "TOO_MANY_STREAMS"


@contextlib.contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """One of the application's streamed-response slots for the block, or 429 (nothing read yet: a plain retry
    is safe) when all are taken."""
    limits = context(request).streams
    if limits.active >= limits.limit:
        raise ApiError(429, TOO_MANY_STREAMS,
                       f"{limits.active} streamed listings are being served (the limit is {limits.limit}); retry "
                       "later", headers=retry_after(1.0))
    limits.active += 1
    try:
        yield
    finally:
        limits.active -= 1


async def stream_json(request: web.Request, head: str, items: Iterable[Any], encode: Callable[[Any], str],
                      tail: Callable[[], str], *, separator: str = ",") -> web.StreamResponse:
    """Answer 200 with ``head`` + encode(item) joined by ``separator`` + tail(); call it inside stream_slot.

    The status is sent before the items are read, so every check that could fail (404, 400) must come first.
    A failure part-way, or the application's stream deadline passing, aborts the connection: the client sees a
    truncated transfer, never a wrong document.
    """
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON
    it: Iterator[Any] = iter(items)
    deadline = context(request).streams.deadline
    try:
        # The deadline covers the last write too (write_eof here, not aiohttp's after the handler returns): a
        # response is only done once its last byte is handed to the kernel.
        async with asyncio.timeout(deadline):
            await resp.prepare(request)
            parts = [head]
            size = len(head)
            first = True
            for item in it:
                piece = encode(item) if first else separator + encode(item)
                first = False
                parts.append(piece)
                size += len(piece)
                if size >= BATCH_BYTES:
                    await resp.write("".join(parts).encode())
                    parts, size = [], 0
                    await asyncio.sleep(0)  # let the loop breathe between batches
            parts.append(tail())
            await resp.write_eof("".join(parts).encode())
    except ConnectionError:
        pass  # the client went away: nothing to tell it
    except TimeoutError:
        log.warning("API: %s %s not delivered within %gs (a client that stopped reading?); cutting it off",
                    request.method, request.path, deadline)
        _abort(request)
    except Exception:
        log.exception("API: streaming %s %s failed part-way; aborting the response", request.method, request.path)
        _abort(request)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # ends the fsm's read transaction now, not when the generator is collected
    return resp


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()  # aiohttp's closing write_eof then sees the closed connection: no 500 sent
