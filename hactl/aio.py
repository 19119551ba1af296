"""Small asyncio helpers shared by every layer (a leaf module: it imports nothing of hactl)."""
from __future__ import annotations

import asyncio
from typing import Iterable, TypeVar


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel tasks and wait until each has finished; their exceptions are of no interest at shutdown."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass


T = TypeVar("T")


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


async def wait_owned(fut: "asyncio.Future[T]", timeout: float | None) -> T:
    """Await a future that only its owner resolves (and checks ``done()`` before resolving), failing it with
    asyncio.TimeoutError after ``timeout`` seconds: asyncio.wait_for's outcome without its second future, done
    callbacks and cancellation bookkeeping. Every write waits on a few of these; wait_for was ~7% of a leader's
    CPU under write load (bench/profile_load.py)."""
    if timeout is None:
        return await fut
    handle = asyncio.get_running_loop().call_later(max(0.0, timeout), _expire, fut)
    try:
        return await fut
    finally:
        handle.cancel()
