"""The event bus: emit() builds the event and offers it to every subscription whose namespaces match, without ever
waiting (it is called from the Raft loop's callbacks and the API). Each subscription has a bounded queue drained by
a task of its own into its sink (on a thread: files block); when a queue is full the event is dropped and
counted, and the next event that gets through is preceded by a `gap` event saying how many were lost. Events of
one namespace from one node reach a sink in the order they were emitted."""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from typing import Any, Callable

from hactl.events.model import Event
from hactl.events.sinks import Sink

log = logging.getLogger("hactl.events")

QUEUE_EVENTS = 10_000
BATCH = 256


class Subscription:
    def __init__(self, name: str, namespaces: set[str] | None, sink: Sink, limit: int = QUEUE_EVENTS, *,
                 propagate_always: bool = False) -> None:
        self.name = name
        self.propagate_always = propagate_always
        self.namespaces = namespaces  # None: all
        self.sink = sink
        self.limit = limit
        self.queue: collections.deque[Event] = collections.deque()
        self.dropped = 0  # since the last gap event
        self.dropped_total = 0
        self.wake = asyncio.Event()
        self.lock = threading.Lock()  # one writer at a time (the drain task's thread, or stop's final flush)

    def wants(self, event: Event) -> bool:
        if event.propagated and not self.propagate_always:
            return False
        return self.namespaces is None or event.namespace in self.namespaces


class EventBus:
    def __init__(self, source: str, clock: Callable[[], int] | None = None) -> None:
        self.source = source
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.incarnation = os.urandom(3).hex()  # ids stay unique across restarts of this node
        self._seq = 0
        self.subscriptions: list[Subscription] = []
        self._tasks: list[asyncio.Task] = []

    def subscribe(self, sub: Subscription) -> None:
        """Before start()."""
        self.subscriptions.append(sub)

    def start(self) -> None:
        for sub in self.subscriptions:
            self._tasks.append(asyncio.get_running_loop().create_task(self._drain(sub), name=f"events-{sub.name}"))

    async def stop(self) -> None:
        for sub in self.subscriptions:
            sub.wake.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self.subscriptions:
            try:
                await asyncio.to_thread(self._flush, sub)
                sub.sink.close()
            except OSError as e:
                log.warning("events: closing sink %s: %s", sub.name, e)

    def emit(self, namespace: str, event_type: str, *, key: str | None = None, propagated: bool = False,
             **fields: Any) -> Event:
        """``key``: a stable id (events from the Raft log); ``propagated``: another node reports it too."""
        self._seq += 1
        event = Event(namespace, event_type, self.source, self.clock(), self._seq, self.incarnation, fields,
                      key=key, propagated=propagated)
        for sub in self.subscriptions:
            if not sub.wants(event):
                continue
            if len(sub.queue) >= sub.limit:
                sub.dropped += 1
                sub.dropped_total += 1
                continue
            if sub.dropped:
                self._seq += 1
                sub.queue.append(Event("cluster", "gap", self.source, event.timestamp_ms, self._seq,
                                       self.incarnation, {"dropped": sub.dropped, "subscription": sub.name}))
                sub.dropped = 0
            sub.queue.append(event)
            sub.wake.set()
        return event

    @staticmethod
    def _flush(sub: Subscription) -> None:
        with sub.lock:
            while sub.queue:
                batch = [sub.queue.popleft().to_json() for _ in range(min(BATCH, len(sub.queue)))]
                sub.sink.write(batch)

    async def _drain(self, sub: Subscription) -> None:
        while True:
            await sub.wake.wait()
            sub.wake.clear()
            try:
                await asyncio.to_thread(self._flush, sub)
            except OSError as e:  # a full disk, a closed pipe: said, and the events are lost, not the node
                log.error("events: sink %s failed: %s (its queued events are dropped)", sub.name, e)
                sub.dropped_total += len(sub.queue)
                sub.queue.clear()
