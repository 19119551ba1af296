"""entityChange events: what each applied entry did to networks and members, emitted from the changes ctrl.db keeps.

Apply records every entity change in ctrl.db's changes table, in the entry's own transaction (so a change and its
record exist together). This module turns them into events after each applied batch, on the event loop:

    {"namespace": "entityChange", "eventType": "created" | "updated" | "deleted" | "restored",
     "entityType": "network" | "member" | "model", "entityId": "<nwid>" | "<nwid>/<address>",
     "initialState": {...} | null, "finalState": {...} | null,
     "metadata": {"raft_index": 42, "change": 0, "author": {"kind": "api", ...}, "time": <proposer ms>,
                  "leader": true}, "id": "ec-42-0", ...}

Every node emits every change as it applies it; the leader's are the primary ones, a follower's are marked
propagated (only subscriptions with propagate_always take them). So a default consumer gets each change once, from
the leader, and a propagate_always consumer gets each node's apply (lag tracking).

At-least-once: a cursor file (<data>/events.cursor) records the index through which this node's events were
written by its configured sinks (and whether it was leader then). At start-up the changes after it are emitted
again; a new leader also emits again, as primary, the changes it applied in the REPLAY_S before it took over
(its predecessor may have crashed between apply and emit). Repeats carry the same id (``ec-<index>-<n>``), so a
consumer drops them by id."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from hactl._fs import atomic_write
from hactl.events.bus import EventBus
from hactl.fsm.machine import EntityChange, StateMachine

log = logging.getLogger("hactl.events")

REPLAY_S = 10.0  # a new leader re-emits, as primary, the changes it applied this long before it took over
NAMESPACE = "entityChange"
CHUNK = 500  # entries whose changes are emitted per turn of the event loop
MAX_PENDING = 10_000  # delivery checkpoints kept for the cursor


def change_fields(c: EntityChange, leader: bool) -> dict[str, Any]:
    """The event's fields but the states (change_states): those are decoded only if the event is written."""
    return {"entityType": c.entity, "entityId": c.id,
            "metadata": {"raft_index": c.index, "change": c.n, "author": c.by, "time": c.time, "leader": leader}}


def change_states(c: EntityChange) -> Callable[[], dict[str, Any]]:
    return lambda: {"initialState": c.before, "finalState": c.after}


class EntityChangeEmitter:
    def __init__(self, bus: EventBus, machine: StateMachine, cursor_path: Path, is_leader: Callable[[], bool]):
        self.bus, self.machine, self.path, self.is_leader = bus, machine, Path(cursor_path), is_leader
        self.through = 0  # every change up to here has been queued for the bus
        self._durable = 0  # ... and up to here written by every sink (what the cursor file says)
        self._saved: tuple[int, bool] | None = None
        self._pending: collections.deque[tuple[int, int]] = collections.deque()  # (bus seq, index) not yet written
        self._recent: collections.deque[tuple[float, int, int]] = collections.deque()  # (when, first, last)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._todo: collections.deque[tuple[int, int, bool]] = collections.deque()  # (after, upto, primary) ranges
        self._draining = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Emit what the last run applied but may not have delivered (the changes after the cursor)."""
        self._loop = loop
        applied = self.machine.applied()[0]
        cursor, was_leader = self._load()
        if cursor is None:  # first start (or the file was lost): nothing is owed; do not replay all history
            self.through = self._durable = applied
        else:
            self.through = self._durable = min(cursor, applied)
            if applied > self.through:
                log.info("entityChange: emitting the changes of entries %d..%d again (applied, maybe not "
                         "delivered before this node stopped)", self.through + 1, applied)
                self._emit_range(self.through, applied, primary=was_leader)
        self.save()

    def _load(self) -> tuple[int | None, bool]:
        try:
            obj = json.loads(self.path.read_text())
            return int(obj["index"]), bool(obj.get("leader"))
        except FileNotFoundError:
            return None, False
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("entityChange: %s is unreadable (%s); events from before this start are not replayed",
                        self.path, e)
            return None, False

    def applied(self, last: int) -> None:
        """On the loop, after a batch up to ``last`` was applied (the controller hops from the Raft thread)."""
        if last <= self.through:
            return
        first = self.through
        self._emit_range(first, last, primary=self.is_leader())
        self._recent.append((time.monotonic(), first, last))
        while self._recent and time.monotonic() - self._recent[0][0] > REPLAY_S:
            self._recent.popleft()

    def _emit_range(self, after: int, upto: int, *, primary: bool) -> None:
        """Queue the changes of entries after..upto for emission, in order, CHUNK entries per loop turn (a new
        leader's replay of thousands of changes must not hold the loop while heartbeats are due)."""
        self._todo.append((after, upto, primary))
        self.through = max(self.through, upto)
        if not self._draining:
            self._drain()

    def _drain(self) -> None:
        budget = CHUNK
        while self._todo and budget > 0:
            after, upto, primary = self._todo[0]
            hi = min(upto, after + budget)
            for c in self.machine.changes(after, hi):
                self.bus.emit(NAMESPACE, c.action, key=f"ec-{c.index}-{c.n}", propagated=not primary,
                              lazy=change_states(c), **change_fields(c, primary))
            budget -= hi - after
            if hi >= upto:
                self._todo.popleft()
            else:
                self._todo[0] = (hi, upto, primary)
            self._pending.append((self.bus.last_seq, hi))
        if len(self._pending) > MAX_PENDING:  # a sink stuck for long: fewer checkpoints, the newest kept
            self._pending = collections.deque(list(self._pending)[::-2][::-1])
        self._draining = bool(self._todo)
        if self._draining and self._loop is not None:
            self._loop.call_soon(self._drain)

    def leadership_gained(self) -> None:
        """Emit again, as primary, what this node applied as a follower just before: the old leader may have
        committed and applied it without emitting (a crash)."""
        now = time.monotonic()
        recent = [(a, b) for t, a, b in self._recent if now - t <= REPLAY_S]
        if recent:
            self._emit_range(recent[0][0], recent[-1][1], primary=True)

    def save(self) -> None:
        """Persist how far this node's events are delivered (called every second); cheap when unchanged."""
        delivered = self.bus.delivered_seq()
        index = self._durable
        while self._pending and self._pending[0][0] <= delivered:
            index = max(index, self._pending.popleft()[1])
        if not self._pending and not self._todo:
            index = max(index, self.through)
        self._durable = index
        state = (index, self.is_leader())
        if state == self._saved:
            return
        try:
            atomic_write(self.path, json.dumps({"index": state[0], "leader": state[1]}) + "\n", 0o600)
            self._saved = state
        except OSError as e:
            log.warning("entityChange: cannot record delivered events in %s: %s", self.path, e)
