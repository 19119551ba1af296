"""Small asyncio helpers shared by every layer (a leaf module: it imports nothing of hactl)."""
from __future__ import annotations

import asyncio
from typing import Iterable


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
