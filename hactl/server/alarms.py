"""Storage alarms (etcd's NOSPACE): see a full map or disk coming, and refuse writes before it arrives.

When raft.db or ctrl.db outgrows its LMDB map (MDB_MAP_FULL), or the disk fills up, a write fails and the node stops
on purpose (fail-stop, exit 1). That is the last line of defence, and a poor one: every node holds the same data,
so they would all fill up together and restart into the same wall. Instead each node measures its own files and
disk every second (StorageMonitor.tick, from the controller's housekeeping) and, well before a limit:

* proposes ``alarm.raise {node, NOSPACE, message}`` through the ordinary write path (forwarded to the leader). The
  alarm is replicated state, so EVERY node refuses writes that add data while ANY node is short of space (the
  write path answers 507 NOSPACE before proposing; deletes still work, so an operator can free space);
* proposes ``alarm.clear`` once the condition is well gone (hysteresis: live data below CLEAR_FRACTION of the
  threshold, free space above CLEAR_FREE_FACTOR times the minimum), so an alarm does not flap at the boundary.

Live data (the pages the tables use, see StateMachine.usage / RaftStorage.usage), not the file size, is compared
with the map: LMDB files never shrink, but freed pages are reused before a file grows, so live data is what tells
how close the next write is to MDB_MAP_FULL, and it goes down when data is deleted. The alarm decisions compare
this node's measurements with the replicated record, not with what it proposed: a raise or clear that failed (no
leader) is simply proposed again a second later, and a restarted node picks up its alarm where it was.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from hactl.aio import cancel_and_wait
from hactl.config import StorageConfig
from hactl.fsm.commands import ALARM_MESSAGE_MAX, build_alarm_clear, build_alarm_raise
from hactl.fsm.result import Result

log = logging.getLogger("hactl.server")

NOSPACE = "NOSPACE"
CLEAR_FRACTION = 0.8  # a map alarm clears once live data is below 80% of the level that raised it
CLEAR_FREE_FACTOR = 1.5  # a disk alarm clears once more than 1.5 times the minimum is free

Usage = Callable[[], tuple[int, int]]  # () -> (bytes of live data, map size)
Submit = Callable[[bytes, str], Awaitable[Result]]


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes in log lines and alarm messages, for people."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


@dataclass(frozen=True, slots=True)
class Reading:
    """One resource as measured. ``over``: past the level that raises the alarm; ``clear``: back past the level
    that clears it. Between the two an alarm that is on stays on and one that is off stays off."""
    over: bool
    clear: bool
    text: str  # what is wrong, which key sets the limit, and what to do


def map_reading(file: str, used: int, map_size: int, ratio: float, key: str, remedy: str) -> Reading:
    """An LMDB file holding ``used`` bytes of live data in a map of ``map_size`` (the limit set by ``key``)."""
    threshold = ratio * map_size
    clear_below = CLEAR_FRACTION * threshold
    return Reading(used > threshold, used < clear_below,
                   f"{file} holds {format_bytes(used)} of its {format_bytes(map_size)} map ({key}; the alarm is at "
                   f"{ratio:.0%}, storage.alarm_used_ratio); writes that add data are refused cluster-wide until it "
                   f"is below {format_bytes(clear_below)} — {remedy}")


def disk_reading(data_dir: Path, free: int, min_free: int) -> Reading:
    clear_above = CLEAR_FREE_FACTOR * min_free
    return Reading(free < min_free, free > clear_above,
                   f"the file system of {data_dir} has {format_bytes(free)} free, less than "
                   f"{format_bytes(min_free)} (storage.alarm_min_free_bytes); writes that add data are refused "
                   f"cluster-wide until more than {format_bytes(clear_above)} is free — free space on that file "
                   f"system (deleting networks or members does not shrink the LMDB files)")


def alarm_message(readings: list[Reading]) -> str:
    """The replicated message: every condition that is over, made to fit what alarm.raise accepts (printable, at
    most ALARM_MESSAGE_MAX characters; a data directory's name may hold anything), so the raise is never refused."""
    text = "".join(ch if ch.isprintable() else "?" for ch in "; ".join(r.text for r in readings))
    return text if len(text) <= ALARM_MESSAGE_MAX else text[:ALARM_MESSAGE_MAX - 3] + "..."


def refusal_message(alarms: list[dict[str, Any]]) -> str:
    """The 507 answer's message: which node, what is short, what to do (the raising node wrote the details)."""
    causes = "; ".join(f"{a['node']} {a['name']} (raised at index {a['index']}): {a['message']}" for a in alarms)
    return (f"the cluster refuses writes that add data while a storage alarm is on (nothing was applied; deletes "
            f"still work): {causes}")


class StorageMonitor:
    """This node's NOSPACE alarm (see the module docstring). tick() once a second; stop() at shutdown."""

    def __init__(self, node_id: str, data_dir: Path, limits: StorageConfig, *, raft_usage: Usage,
                 ctrl_usage: Usage, alarms: Callable[[], list[dict[str, Any]]], submit: Submit,
                 now_ms: Callable[[], int]) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.limits = limits
        self._raft_usage, self._ctrl_usage = raft_usage, ctrl_usage
        self._alarms, self._submit, self._now_ms = alarms, submit, now_ms
        self._task: asyncio.Task[None] | None = None
        self._condition: bool | None = None  # this node's condition as last logged (None: not yet checked)
        self._seen: set[tuple[str, str, int]] | None = None  # the cluster's alarms as last logged
        self._failing: str | None = None  # the last check's failure, logged once until a check succeeds

    def tick(self) -> None:
        """Start one check, unless the previous one is still running (a proposal may wait up to the apply
        timeout for a leader; the next tick then simply tries again)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.check(), name="storage-alarms")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    def measure(self) -> list[Reading]:
        """raft.db, ctrl.db and the data directory's file system, now. Blocking (LMDB, statvfs): run it in a
        thread. The free space counted is what an unprivileged process may use (f_bavail)."""
        lim = self.limits
        raft_used, raft_map = self._raft_usage()
        ctrl_used, ctrl_map = self._ctrl_usage()
        st = os.statvfs(self.data_dir)
        return [
            map_reading("raft.db", raft_used, raft_map, lim.alarm_used_ratio, "storage.raft_db_max_bytes",
                        f"the journal shrinks when a snapshot compacts it (snapshots.every_entries, "
                        f"snapshots.trailing_entries), or raise storage.raft_db_max_bytes and restart {self.node_id}"),
            map_reading("ctrl.db", ctrl_used, ctrl_map, lim.alarm_used_ratio, "storage.ctrl_db_max_bytes",
                        f"delete networks or members, or raise storage.ctrl_db_max_bytes and restart {self.node_id}"),
            disk_reading(self.data_dir, st.f_bavail * st.f_frsize, lim.alarm_min_free_bytes),
        ]

    async def check(self) -> None:
        """One measurement and, if the condition changed, one proposal (tick() runs this in the background)."""
        try:
            readings = await asyncio.to_thread(self.measure)
            active = self._alarms()
        except Exception as e:  # e.g. raft.db failed: the node is stopping; say so once, not every second
            self._failed(f"cannot measure storage: {type(e).__name__}: {e}")
            return
        self._log_cluster_alarms(active)
        mine = any(a["node"] == self.node_id and a["name"] == NOSPACE for a in active)
        over = [r for r in readings if r.over]
        if over and not mine:
            message = alarm_message(over)
            self._log_condition(True, f"{self.node_id}: {NOSPACE} alarm raised: {message}")
            rid = f"alarm-raise-{self.node_id}-{uuid.uuid4().hex}"
            await self._propose(build_alarm_raise(rid, self._now_ms(), self.node_id, NOSPACE, message), rid)
        elif mine and all(r.clear for r in readings):
            self._log_condition(False, f"{self.node_id}: {NOSPACE} alarm cleared: raft.db, ctrl.db and the disk "
                                       f"are back below their alarm levels")
            rid = f"alarm-clear-{self.node_id}-{uuid.uuid4().hex}"
            await self._propose(build_alarm_clear(rid, self._now_ms(), self.node_id, NOSPACE), rid)
        else:  # steady, or between the two levels: nothing to propose
            if self._condition and not mine:
                log.info("%s: %s condition gone before its alarm was applied", self.node_id, NOSPACE)
            self._condition = mine
            self._failing = None

    async def _propose(self, command: bytes, request_id: str) -> None:
        try:
            result = await self._submit(command, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # no leader, timeout...: the next tick proposes again
            self._failed(f"proposing {request_id} failed ({type(e).__name__}: {e}); retrying every second")
            return
        if not result.ok:
            self._failed(f"{request_id} was refused: {result.error}: {result.message}")
            return
        if self._failing is not None:
            log.info("%s: storage alarm: %s applied", self.node_id, request_id)
        self._failing = None

    def _failed(self, problem: str) -> None:
        """Log the first failure of a streak as a warning, its repetitions (every second) at debug level."""
        (log.warning if self._failing is None else log.debug)("%s: storage alarm: %s", self.node_id, problem)
        self._failing = problem

    def _log_condition(self, on: bool, line: str) -> None:
        """Once per transition of this node's condition (a proposal retried every second logs nothing new)."""
        if self._condition != on:
            (log.warning if on else log.info)("%s", line)
        self._condition = on

    def _log_cluster_alarms(self, active: list[dict[str, Any]]) -> None:
        """Every node says when the cluster starts and stops refusing writes, and why."""
        now = {(a["node"], a["name"], a["index"]) for a in active}
        before = self._seen if self._seen is not None else set()
        for a in active:
            if (a["node"], a["name"], a["index"]) not in before:
                log.warning("cluster alarm on: %s %s (raised at index %d): this node refuses writes that add "
                            "data: %s", a["node"], a["name"], a["index"], a["message"])
        for node, name, index in sorted(before - now):
            log.info("cluster alarm off: %s %s (raised at index %d)%s", node, name, index,
                     "" if now else "; writes are accepted again")
        self._seen = now
