"""Helpers for the API tests: a REAL single-node cluster (RaftNode on raft.db + StateMachine on ctrl.db, in-memory
transport) implementing hactl.api.cluster.Cluster, the real HTTP server in front of it, and a small client.

(A module of its own rather than conftest.py: test modules import from it, and several test folders have a
conftest.py, so ``import conftest`` would be ambiguous.)
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp

from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown
from hactl.api.server import ApiServer, serve
from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft.core import Config, NotLeader, ProposalRefused
from hactl.raft.inmem import InmemNetwork
from hactl.raft.node import NodeOptions, NoLeader, ProposalDropped, RaftNode, ResultUnknown
from hactl.raft.storage import RaftStorage
from hactl.raft.types import ConfState
from hactl.server.fsm_adapter import ControllerFSM
from hactl.snapshots.store import SnapshotStore

TOKEN = "test-token-0123456789abcdef"
CONTROLLER = "c0ffee1234"
SIGNING_KEY = bytes(range(1, 33))
TICK = 0.01
VERSION = "1.2.3"


def token_hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------- the cluster

class RaftCluster:
    """A `hactl.api.cluster.Cluster` made of one real RaftNode and a real StateMachine (no forwarding: with one
    voter this node is the leader; with a missing second voter it never elects and everything is 503)."""

    def __init__(self, tmp: Path, *, voters: tuple[str, ...] = ("n1",), token: str = TOKEN,
                 apply_timeout: float = 10.0) -> None:
        self.tmp = tmp
        self.node_id = voters[0]
        self.voters = voters
        self.token_hash = token_hash(token)
        self.apply_timeout = apply_timeout
        self.net = InmemNetwork()
        self._machine: StateMachine | None = None
        self.node: RaftNode | None = None

    async def start(self, *, init: bool = True) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._machine = StateMachine(self.tmp / "ctrl.db")
        storage = RaftStorage(self.tmp / "raft.db", sync=False)
        fsm = ControllerFSM(self._machine, SnapshotStore(self.tmp / "snapshots"),
                            on_restart_needed=lambda why: None)  # the real adapter; snapshots are off here
        self.node = RaftNode(Config(self.node_id), storage, fsm,
                             self.net.transport(self.node_id),
                             options=NodeOptions(tick_interval=TICK, snapshot_every=0), seed=7,
                             bootstrap=ConfState(self.voters))
        self.net.attach(self.node_id, self.node.receive)
        await self.node.start()
        if init:
            await self.wait_leader()
            r = await self.submit(C.build_cluster_init(
                "init", self.now_ms(), cluster_id="api-test", timeline_id="t1", address=CONTROLLER,
                signing_key=SIGNING_KEY, token_hash=self.token_hash), "init")
            assert r.ok, r

    async def wait_leader(self, timeout: float = 10.0) -> None:
        assert self.node is not None
        deadline = time.monotonic() + timeout
        while not self.node.is_leader:
            assert time.monotonic() < deadline, "the single-voter node did not elect itself"
            await asyncio.sleep(TICK)

    async def stop(self) -> None:
        if self.node is not None:
            self.net.detach(self.node_id)
            await self.node.stop()
            self.node.storage.close()
        if self._machine is not None:
            self._machine.close()

    # --- the Cluster protocol

    def machine(self) -> StateMachine:
        assert self._machine is not None
        return self._machine

    async def submit(self, command: bytes, request_id: str) -> Result:
        assert self.node is not None
        try:
            _, result = await self.node.propose(command, timeout=self.apply_timeout)
        except (NoLeader, NotLeader, ProposalRefused, ProposalDropped) as e:
            raise ClusterUnavailable(str(e), retry_after=0.5) from None  # it did not commit: safe to retry
        except ResultUnknown as e:
            raise OutcomeUnknown(str(e)) from None
        if result is None:
            raise OutcomeUnknown("the entry was applied without a result")
        return result

    async def read_barrier(self) -> None:
        assert self.node is not None
        try:
            await self.node.read_barrier(timeout=self.apply_timeout)
        except (NoLeader, NotLeader, asyncio.TimeoutError) as e:
            raise ClusterUnavailable(str(e) or "no leader", retry_after=0.5) from None

    def status(self) -> dict[str, Any]:
        assert self.node is not None
        st = self.node.status()
        return {"id": st.id, "role": st.role.name.lower(), "term": st.term, "leader": st.leader,
                "commit": st.commit, "applied": st.applied}

    def health(self) -> tuple[bool, dict[str, Any]]:
        st = self.status()
        return st["leader"] is not None and st["applied"] >= st["commit"], st

    def check_token(self, token: str) -> bool:
        return hmac.compare_digest(token_hash(token).encode(), self.token_hash.encode())

    def now_ms(self) -> int:
        return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------- client

@dataclass
class Reply:
    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.raw[:300]!r})"


class AsyncResource:
    """A fixture value entered by the test's own event loop (see pytest_pyfunc_call)."""

    async def __aenter__(self) -> Any:
        raise NotImplementedError

    async def __aexit__(self, *exc: object) -> None:
        pass


class ApiEnv(AsyncResource):
    """A started cluster + API server + client session. Every reply is checked to be application/json."""

    def __init__(self, tmp: Path, *, voters: tuple[str, ...] = ("n1",), init: bool = True,
                 max_body_bytes: int = 1 << 20, wrap: Callable[[RaftCluster], Any] | None = None) -> None:
        self.tmp = tmp
        self.cluster = RaftCluster(tmp, voters=voters)
        self.init = init
        self.max_body_bytes = max_body_bytes
        self.wrap = wrap
        self.server: ApiServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.controller = CONTROLLER

    async def __aenter__(self) -> "ApiEnv":
        await self.cluster.start(init=self.init)
        api_cluster = self.wrap(self.cluster) if self.wrap else self.cluster
        self.server = await serve(api_cluster, "127.0.0.1", 0, max_body_bytes=self.max_body_bytes,
                                  version=VERSION, shutdown_timeout=1.0)
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{self.server.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.stop()
        await self.cluster.stop()

    async def request(self, method: str, path: str, *, body: Any = None, data: bytes | str | None = None,
                      headers: dict[str, str] | None = None, auth: bool = True,
                      params: dict[str, str] | None = None) -> Reply:
        assert self.session is not None
        h = {"X-ZT1-Auth": TOKEN} if auth else {}
        h.update(headers or {})
        if body is not None:
            data = json.dumps(body)
        async with self.session.request(method, path, data=data, headers=h, params=params) as resp:
            raw = await resp.read()
            reply = Reply(resp.status, resp.headers, raw)
        assert reply.headers.get("Content-Type", "").startswith("application/json"), reply
        if method != "HEAD":
            json.loads(raw)  # every body is JSON, errors included
        return reply

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, body={} if body is None and "data" not in kw else body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        r = await self.request(method, path, body=body, **kw)
        assert r.status == 200, r
        return r.json

    async def new_network(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.ok("POST", f"/controller/network/{CONTROLLER}______", body or {})
