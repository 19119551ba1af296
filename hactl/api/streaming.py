"""Streaming large JSON answers (member lists) without holding the whole list in memory.

The items come from an fsm iterator (one LMDB read transaction); they are encoded in batches of about
BATCH_BYTES, and between batches the event loop runs (Raft heartbeats and other requests share the loop), so a
million-member network is served in bounded memory without stalling the node.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Iterator

from aiohttp import web

from hactl.api.errors import JSON

log = logging.getLogger("hactl.api")

BATCH_BYTES = 64 << 10


async def stream_json(request: web.Request, head: str, items: Iterable[Any], encode: Callable[[Any], str],
                      tail: Callable[[], str], *, separator: str = ",") -> web.StreamResponse:
    """Answer 200 with ``head`` + encode(item) joined by ``separator`` + tail().

    The status is sent before the items are read, so every check that could fail (404, 400) must come first.
    A failure part-way aborts the connection: the client sees a truncated transfer, never a wrong document.
    """
    resp = web.StreamResponse(status=200)
    resp.content_type = JSON
    it: Iterator[Any] = iter(items)
    await resp.prepare(request)
    try:
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
        await resp.write("".join(parts).encode())
    except ConnectionError:
        pass  # the client went away: nothing to tell it
    except Exception:
        log.exception("API: streaming %s %s failed part-way; aborting the response", request.method, request.path)
        if request.transport is not None:
            request.transport.abort()  # aiohttp's closing write_eof then sees the closed connection: no 500 sent
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # ends the fsm's read transaction now, not when the generator is collected
    return resp
