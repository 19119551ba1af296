"""In-process Transport and FSM for tests and benchmarks (the network transport lives in hactl/transport/).

All nodes of an InmemNetwork share one asyncio loop; links can be cut one way or both ways.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any, Callable, Sequence

import msgpack

from .confchange import conf_after
from .types import ConfState, Entry, EntryType, Message, SnapshotMeta


class InmemNetwork:
    def __init__(self) -> None:
        self.receivers: dict[str, Callable[[Message, Any], None]] = {}
        self.cut: set[tuple[str, str]] = set()  # (from, to) links that drop everything
        self.sent = 0

    def transport(self, node_id: str) -> "InmemTransport":
        return InmemTransport(self, node_id)

    def attach(self, node_id: str, receive: Callable[[Message, Any], None]) -> None:
        self.receivers[node_id] = receive

    def detach(self, node_id: str) -> None:
        self.receivers.pop(node_id, None)

    def isolate(self, node_id: str) -> None:
        for other in self.receivers:
            if other != node_id:
                self.cut.update({(node_id, other), (other, node_id)})

    def heal(self) -> None:
        self.cut.clear()


class InmemTransport:
    def __init__(self, net: InmemNetwork, node_id: str):
        self.net = net
        self.id = node_id

    def send(self, msg: Message, payload: Any = None) -> None:
        if (msg.frm, msg.to) in self.net.cut:
            return
        recv = self.net.receivers.get(msg.to)
        if recv is not None:
            self.net.sent += 1
            asyncio.get_running_loop().call_soon(recv, msg, payload)


class KVStateMachine:
    """A tiny deterministic key/value FSM: entries are msgpack [key, value]; apply returns the entry's index.

    It applies membership changes too, so a snapshot's (index, term, membership) come from one consistent state,
    as the FSM protocol asks. Snapshots are kept in memory (a dict copy), which is all the in-process tests need.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.index = 0
        self.term = 0
        self.conf = ConfState()
        self.applied_log: list[tuple[int, bytes]] = []  # (index, data) of every applied entry, for checks
        self.snapshots: dict[tuple[int, int], tuple[SnapshotMeta, dict, int]] = {}
        self._lock = threading.Lock()

    def apply_batch(self, entries: Sequence[Entry]) -> list[Any]:
        return [self.apply(e) for e in entries]

    def apply(self, e: Entry) -> Any:
        with self._lock:
            if e.index <= self.index:
                return None
            self.index, self.term = e.index, e.term
            if e.type == EntryType.CONF_CHANGE:
                self.conf = conf_after(self.conf, e.data) or self.conf
                return None
            if not e.data:
                return None
            self.applied_log.append((e.index, e.data))
            try:
                key, value = msgpack.unpackb(e.data, raw=False)
            except Exception:
                return None  # not a KV entry: still applied, no effect
            self.data[str(key)] = value
            return e.index

    def snapshot(self) -> SnapshotMeta | None:
        with self._lock:
            if self.index == 0:
                return None
            meta = SnapshotMeta(self.index, self.term, self.conf)
            self.snapshots[(meta.index, meta.term)] = (meta, dict(self.data), len(self.applied_log))
            return meta

    def snapshot_payload(self, meta: SnapshotMeta) -> Any:
        got = self.snapshots.get((meta.index, meta.term))
        return None if got is None else dict(got[1])

    def restore(self, meta: SnapshotMeta, payload: Any) -> None:
        if payload is None:
            raise RuntimeError(f"snapshot {meta.index}-{meta.term} arrived without its data")
        with self._lock:
            self.data = dict(payload)
            self.index, self.term, self.conf = meta.index, meta.term, meta.conf
            self.applied_log.append((meta.index, b"<snapshot>"))
            self.snapshots[(meta.index, meta.term)] = (meta, dict(payload), len(self.applied_log))

    def digest(self) -> str:
        with self._lock:
            return hashlib.sha256(msgpack.packb(sorted(self.data.items()), use_bin_type=True)).hexdigest()


def kv(key: str, value: Any) -> bytes:
    return msgpack.packb([key, value], use_bin_type=True)
