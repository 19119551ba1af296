"""A small in-memory AgentHandle with real files behind snapshot_db/restore, and an AgentServer run on a thread.

The handle stands in for the controller (whose own implementation is tested with real processes elsewhere): it
keeps a member table that cluster add/remove/transfer change, writes real ctrl.db copies with .sha256 files,
and refuses to restore from anything that is not one of its copies, changing nothing.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hactl.agent.handle import AgentError
from hactl.agent.server import AgentServer

DB_MAGIC = b"FAKE-CTRL-DB\n"  # what this handle accepts as a ctrl.db


@dataclass
class Member:
    id: str
    address: str
    role: str = "voter"
    connected: bool = True
    last_contact: float | None = 0.1
    match: int | None = 0
    version: str | None = "0.1.0"


@dataclass
class FakeHandle:
    data_dir: Path
    node_id: str = "ctrl1"
    leader: str = "ctrl1"
    index: int = 42
    networks: int = 2
    members_count: int = 5
    members: dict[str, Member] = field(default_factory=dict)
    # The "certificates" of controllers that can be dialled: address -> node id.
    reachable: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    delay: float = 0.0  # every async call sleeps this long first (for timeout tests)
    fail_with: Exception | None = None  # raised by every call when set
    restarted: bool = False

    def __post_init__(self) -> None:
        if not self.members:
            for i in (1, 2, 3):
                self.members[f"ctrl{i}"] = Member(f"ctrl{i}", f"127.0.0.1:{6261 + i}", match=self.index)
            self.members["ctrl1"].last_contact = None  # itself
        self.members["ctrl3"].connected = False
        self.members["ctrl3"].last_contact = 12.5
        self.members["ctrl3"].match = 40

    async def _enter(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise self.fail_with

    async def cluster_list(self) -> list[dict[str, Any]]:
        await self._enter("cluster_list")
        return [{"id": m.id, "address": m.address, "role": m.role, "leader": m.id == self.leader,
                 "connected": m.connected, "last_contact": m.last_contact, "match": m.match, "version": m.version}
                for m in sorted(self.members.values(), key=lambda m: m.id)]

    async def cluster_add(self, address: str, learner: bool, timeout: float) -> dict[str, Any]:
        await self._enter("cluster_add", address, learner, timeout)
        node = self.reachable.get(address)
        if node is None:
            raise AgentError("unreachable", f"cannot dial {address}: connection refused")
        if node in self.members:
            raise AgentError("exists", f"{node} is already a member")
        role = "learner" if learner else "voter"
        self.members[node] = Member(node, address, role=role, match=self.index)
        return {"id": node, "role": role}

    async def cluster_remove(self, node_id: str, timeout: float) -> dict[str, Any]:
        await self._enter("cluster_remove", node_id, timeout)
        if node_id not in self.members:
            raise AgentError("not_found", f"{node_id} is not a member")
        del self.members[node_id]
        return {"id": node_id}

    async def transfer_leadership(self, target: str | None, timeout: float) -> dict[str, Any]:
        await self._enter("transfer_leadership", target, timeout)
        if target is None:
            target = next(m.id for m in sorted(self.members.values(), key=lambda m: m.id)
                          if m.id != self.leader and m.role == "voter" and m.connected)
        if target not in self.members:
            raise AgentError("not_found", f"{target} is not a member")
        self.leader = target
        return {"leader": target}

    async def snapshot_db(self, path: str | None) -> dict[str, Any]:
        await self._enter("snapshot_db", path)
        body = DB_MAGIC + f"index={self.index} networks={self.networks} members={self.members_count}\n".encode()
        if path is None:
            path = str(self.data_dir / time.strftime(f"ctrl-%Y%m%d-%H%M%S-{self.index}.db"))
        digest = hashlib.sha256(body).hexdigest()
        Path(path).write_bytes(body)
        Path(path + ".sha256").write_text(f"{digest}  {os.path.basename(path)}\n")
        return {"path": path, "sha256": digest, "index": self.index, "size": len(body)}

    async def restore_from_db(self, path: str, timeout: float) -> dict[str, Any]:
        await self._enter("restore_from_db", path, timeout)
        try:
            body = Path(path).read_bytes()
        except OSError as e:
            raise AgentError("invalid_db", f"{path}: cannot read: {e.strerror}") from None
        if not body.startswith(DB_MAGIC):
            raise AgentError("invalid_db", f"{path}: not a ctrl.db file")
        fields = dict(kv.split("=") for kv in body[len(DB_MAGIC):].decode().split())
        self.index += 1
        self.networks, self.members_count = int(fields["networks"]), int(fields["members"])
        self.restarted = True
        return {"index": self.index, "timeline_id": "tl-2", "networks": self.networks,
                "members": self.members_count}

    def status(self) -> dict[str, Any]:
        self.calls.append(("status", ()))
        if self.fail_with is not None:
            raise self.fail_with
        return {"id": self.node_id, "role": "leader" if self.leader == self.node_id else "follower", "term": 7,
                "leader": self.leader, "commit": self.index, "applied": self.index, "version": "0.1.0"}


class ServerThread:
    """An AgentServer on its own event loop thread, so synchronous code (the CLI's asyncio.run) can call it."""

    def __init__(self, handle: Any, path: str | Path, **kw: Any):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agent-server", daemon=True)
        self.thread.start()
        self.server = AgentServer(handle, str(path), **kw)
        self.run(self.server.start())

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[[], Any]) -> Any:
        async def wrap() -> Any:
            return fn()
        return self.run(wrap())

    def close(self) -> None:
        try:
            self.run(self.server.stop(grace=2.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
