"""The event bus: emit() builds the event and offers it to every subscription whose filters match, without ever
waiting (it is called on the event loop's thread, from the Raft loop's callbacks and the API). Each subscription has
a bounded queue; when it is full the event is dropped and counted, and the next event that gets through is preceded
by a `gap` event saying how many were lost. Events of one namespace from one node reach a sink in the order they
were emitted.

Two kinds of subscription:

* with a sink (file, stdout, webhook: the `events:` configuration): a task of the bus drains the queue into the
  sink on a thread of the subscription's own, so a sink that blocks for minutes (a dead webhook retrying) delays
  only its own queue, never the loop, the Raft loop, other sinks or the loop's default executor;
* without a sink (GET /events): whoever subscribed pulls from ``queue`` when ``wake`` is set.

The bus also keeps the last ``history`` events (a ring) so a client that lost its connection can resume after the
last event it saw (``history_after``)."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
from typing import Any, Callable

from hactl.events.model import Event
from hactl.events.sinks import Sink

log = logging.getLogger("hactl.events")

QUEUE_EVENTS = 10_000
HISTORY_EVENTS = 10_000
BATCH = 256


class SinkFailed(Exception):
    """A sink's write raised OSError: the events of the batch it was given (and any before it gave up on) are
    lost."""

    def __init__(self, cause: OSError, lost: int) -> None:
        super().__init__(str(cause))
        self.cause, self.lost = cause, lost


class Subscription:
    """``namespaces`` / ``event_types``: None for all. ``sink`` None: the subscriber pulls (see the module doc)."""

    def __init__(self, name: str, namespaces: set[str] | None, sink: Sink | None, limit: int = QUEUE_EVENTS, *,
                 propagate_always: bool = False, event_types: set[str] | None = None) -> None:
        self.name = name
        self.propagate_always = propagate_always
        self.namespaces = namespaces
        self.event_types = event_types
        self.sink = sink
        self.limit = limit
        self.queue: collections.deque[Event] = collections.deque()
        self.dropped = 0  # since the last gap event
        self.dropped_total = 0  # queue overflows plus what the sink itself gave up on (a webhook's retries)
        self.wake = asyncio.Event()
        self.lock = threading.Lock()  # one writer at a time (the drain thread, or stop's final flush)
        self.closed = False  # unsubscribed, or the bus stopped: a puller stops waiting
        self.busy = False  # a flush holds popped events not yet handed to the sink
        self.done_seq = 0  # the newest seq the sink has taken (written, or given up on)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def wants(self, event: Event) -> bool:
        if event.propagated and not self.propagate_always:
            return False
        if self.event_types is not None and event.event_type not in self.event_types:
            return False
        return self.namespaces is None or event.namespace in self.namespaces


class EventBus:
    def __init__(self, source: str, clock: Callable[[], int] | None = None, *, history: int = HISTORY_EVENTS) -> None:
        self.source = source
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.incarnation = os.urandom(3).hex()  # ids stay unique across restarts of this node
        self._seq = 0
        self.subscriptions: list[Subscription] = []
        self._tasks: dict[Subscription, asyncio.Task] = {}
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self._evicted_seq = 0  # the newest seq that fell out of the history ring
        self._started = False
        self.closed = False

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, sub: Subscription) -> None:
        """Before or after start(); a sink subscription's drain starts with the bus (or now, if it runs)."""
        self.subscriptions.append(sub)
        if self._started and sub.sink is not None:
            self._start_drain(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stops offering it events. Its drain task (if any) is cancelled: what it still queued is not written;
        the sink is the caller's to close (after the thread's write in flight, see stop())."""
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)
        sub.closed = True
        sub.wake.set()
        task = self._tasks.pop(sub, None)
        if task is not None:
            task.cancel()
        if sub._executor is not None:
            sub._executor.shutdown(wait=False)

    def start(self) -> None:
        self._started = True
        for sub in self.subscriptions:
            if sub.sink is not None:
                self._start_drain(sub)

    def _start_drain(self, sub: Subscription) -> None:
        sub._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"events-{sub.name}")
        self._tasks[sub] = asyncio.get_running_loop().create_task(self._drain(sub), name=f"events-{sub.name}")

    async def stop(self) -> None:
        """Bounded even with a dead webhook: sinks are told to stop retrying first (``interrupt``), then what is
        still queued gets one last flush."""
        self.closed = True
        for sub in self.subscriptions:
            sub.closed = True
            sub.wake.set()
            interrupt = getattr(sub.sink, "interrupt", None)
            if interrupt is not None:
                interrupt()
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        loop = asyncio.get_running_loop()
        for sub in list(self.subscriptions):
            if sub.sink is None:
                continue
            try:
                await loop.run_in_executor(sub._executor, self._flush, sub)
            except SinkFailed as e:
                sub.dropped_total += e.lost + len(sub.queue)
                sub.queue.clear()
                log.warning("events: sink %s failed at shutdown: %s (%d events lost)", sub.name, e.cause, e.lost)
            try:
                sub.sink.close()
            except OSError as e:
                log.warning("events: closing sink %s: %s", sub.name, e)
            if sub._executor is not None:
                sub._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ emitting

    @property
    def last_seq(self) -> int:
        """The seq of the newest event emitted (0: none yet)."""
        return self._seq

    def delivered_seq(self) -> int:
        """A seq through which every sink subscription has taken every event it wanted (written, or dropped and
        counted): the at-least-once cursor of entity changes (hactl/server/entity_events.py). Loop thread."""
        seq = self._seq
        for sub in self.subscriptions:
            if sub.sink is not None and (sub.queue or sub.busy):  # this order: see _flush
                seq = min(seq, sub.done_seq)
        return seq

    def emit(self, namespace: str, event_type: str, *, key: str | None = None, propagated: bool = False,
             lazy: Callable[[], dict[str, Any]] | None = None, **fields: Any) -> Event:
        """``key``: a stable id (events from the Raft log); ``propagated``: another node reports it too; ``lazy``:
        more fields, computed only if the event is written out (Event.lazy). On the loop's thread only."""
        self._seq += 1
        event = Event(namespace, event_type, self.source, self.clock(), self._seq, self.incarnation, fields,
                      key=key, propagated=propagated, lazy=lazy)
        if len(self.history) == self.history.maxlen and self.history:
            self._evicted_seq = self.history[0].seq
        self.history.append(event)
        for sub in self.subscriptions:
            if not sub.wants(event):
                continue
            if len(sub.queue) >= sub.limit:
                sub.dropped += 1
                sub.dropped_total += 1
                continue
            if sub.dropped:
                sub.queue.append(self.gap_event(dropped=sub.dropped, subscription=sub.name))
                sub.dropped = 0
            sub.queue.append(event)
            sub.wake.set()
        return event

    def gap_event(self, **fields: Any) -> Event:
        """A `gap` event (not kept in the history: it is about one subscriber)."""
        self._seq += 1
        return Event("cluster", "gap", self.source, self.clock(), self._seq, self.incarnation, fields)

    def history_after(self, incarnation: str, seq: int) -> list[Event] | None:
        """The kept events emitted after (incarnation, seq), oldest first; None when the history cannot say
        (another incarnation of this node, or events after ``seq`` already fell out of the ring)."""
        if incarnation != self.incarnation or seq < self._evicted_seq:
            return None
        return [e for e in self.history if e.seq > seq]

    # ------------------------------------------------------------------ draining sink subscriptions

    @staticmethod
    def _flush(sub: Subscription) -> int:
        """Write everything queued; how many events the sink gave up on (a webhook out of retries)."""
        assert sub.sink is not None
        lost = 0
        with sub.lock:
            sub.busy = True
            try:
                while sub.queue:
                    events = [sub.queue.popleft() for _ in range(min(BATCH, len(sub.queue)))]
                    try:
                        lost += sub.sink.write([e.to_json() for e in events]) or 0
                    except OSError as e:
                        raise SinkFailed(e, lost + len(events)) from e  # this batch is lost too
                    finally:
                        if events[-1].event_type != "gap":  # a gap event precedes the (older) event it reports
                            sub.done_seq = events[-1].seq
            finally:
                sub.busy = False
        return lost

    async def _drain(self, sub: Subscription) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await sub.wake.wait()
            sub.wake.clear()
            try:
                lost = await loop.run_in_executor(sub._executor, self._flush, sub)
            except SinkFailed as e:  # a full disk, a closed pipe: said, and the events are lost, not the node
                log.error("events: sink %s failed: %s (its queued events are dropped)", sub.name, e.cause)
                lost = e.lost + len(sub.queue)
                sub.queue.clear()
            if lost:  # back on the loop's thread: the next event that gets through is preceded by a gap event
                sub.dropped += lost
                sub.dropped_total += lost
