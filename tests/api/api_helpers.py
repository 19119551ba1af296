"""Helpers for the API tests: REAL controllers (hactl.server.controller.Controller, what `hactl controller run`
runs: raft.db, ctrl.db, the mTLS control channel, the write path, health and token check, and its own API server),
started in-process in the test's event loop, and a small client.

(A module of its own rather than conftest.py: test modules import from it, and several test folders have a
conftest.py, so ``import conftest`` would be ambiguous.)
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import aiohttp

from hactl import __version__
from hactl.api.server import ApiServer, serve
from hactl.config import ApiConfig, ClusterConfig, Config, ControlConfig, PkiConfig, RaftConfig, SnapshotConfig, ZeroTierConfig
from hactl.server.controller import Controller
from hactl.server.tokens import read_or_create_token
from hactl.transport import pki

TRUST_DOMAIN = "api.test"
VERSION = __version__  # what a controller reports in /status and /openapi.json
WAIT = 20.0  # seconds any polled condition may take on a loaded machine


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_configs(root: Path, ids: Sequence[str], *, tick_ms: int = 20, election_ticks: int = 5,
                 apply_timeout_s: float = 10.0) -> list[Config]:
    """Configs of a new cluster whose initial members are ``ids``, as `hactl dev init` would lay it out: one CA
    (root/ca), a controller certificate per node (root/pki/<id>), data in root/<id>, one shared token file
    (root/api-token, created by the first leader), free control and API ports on 127.0.0.1.

    Fast raft ticks keep a start well under a second: the first election takes one randomised election timeout,
    (1..2) x election_ticks x tick_ms. Not shorter than 5 x 20 ms, though: a ReadIndex round is abandoned (the
    read answers 503) after two election timeouts, and a loaded machine running a test's burst of writes, each
    fsynced, can stall one for longer than 80 ms. Snapshots are off."""
    pki.init_ca(root / "ca", TRUST_DOMAIN)
    ctrl = {i: f"127.0.0.1:{free_port()}" for i in ids}
    out = []
    for i in ids:
        cert, key = pki.issue(root / "ca", root / "pki" / i, kind="controller", node_id=i, trust_domain=TRUST_DOMAIN)
        out.append(Config(
            id=i, data_dir=str(root / i),
            cluster=ClusterConfig(trust_domain=TRUST_DOMAIN, initial_cluster=dict(ctrl)),
            control=ControlConfig(listen=ctrl[i], advertise=ctrl[i]),
            api=ApiConfig(listen=f"127.0.0.1:{free_port()}", token_file=str(root / "api-token")),
            raft=RaftConfig(tick_ms=tick_ms, election_ticks=election_ticks, apply_timeout_s=apply_timeout_s),
            snapshots=SnapshotConfig(every_entries=0, interval_s=0),
            pki=PkiConfig(ca=str(root / "ca" / "ca.crt"), cert=str(cert), key=str(key)),
            zerotier=ZeroTierConfig(bind=""),  # no UDP endpoint: tests that want one set it
            workers=0))  # the API in this process alone (tests/test_workers.py runs API worker processes)
    return out


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)
    return value


def initialised(c: Controller) -> dict[str, Any] | None:
    """The cluster identity in this controller's ctrl.db (address, cluster id, token hash...), once it applied
    the first leader's cluster.init entry."""
    assert c.model is not None
    return c.model.machine.cluster_info()


async def start_initialised(cfg: Config) -> Controller:
    """Start a single-voter controller and wait until it leads and has initialised the cluster."""
    c = Controller(cfg)
    try:
        await c.start()
        await until(lambda: c.node is not None and c.node.is_leader and initialised(c), "the node leads and the "
                    "cluster is initialised")
    except BaseException:
        await c.stop()
        raise
    return c


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


State = Literal["leader", "never_elected", "quorum_lost"]


class ApiEnv(AsyncResource):
    """A started real controller, the API server in front of it and a client session. Every reply is checked to
    be application/json.

    ``state``:
      * "leader": one voter; it elects itself and initialises the cluster (creating the token file).
      * "never_elected": initial_cluster names a second voter that never runs (its address: a free port nobody
        listens on), so no leader is ever elected and the cluster is never initialised. The token file is
        provisioned up front, as `hactl dev init` does, so requests can present the token the cluster will use.
      * "quorum_lost": two voters run until the cluster is initialised and this node has applied that, then the
        other one stops: an initialised node without a leader (writes wait ``apply_timeout_s`` for one to
        appear, so it is short here).

    ``wrap``: the API is served from a second server in front of ``wrap(controller)`` (fault injection below the
    HTTP layer); the controller's own API server keeps running on its own port.
    """

    def __init__(self, tmp: Path, *, state: State = "leader", max_body_bytes: int = 1 << 20,
                 wrap: Callable[[Controller], Any] | None = None) -> None:
        self.tmp = tmp
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.wrap = wrap
        self.controller: Controller | None = None  # the node the API is served by
        self.peer: Controller | None = None  # "quorum_lost": the second voter, stopped once initialised
        self.cluster: Any = None  # what the API calls: the controller, or wrap(controller)
        self.server: ApiServer | None = None
        self.own_server: ApiServer | None = None  # the wrapped env's extra server (stopped by us)
        self.session: aiohttp.ClientSession | None = None
        self.token: str = ""
        self.address: str | None = None  # the controller address, random per cluster (None until initialised)

    async def __aenter__(self) -> "ApiEnv":
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        if self.state == "leader":
            cfg = make_configs(self.tmp, ("n1",))[0]
            cfg.api.max_body_bytes = self.max_body_bytes
            self.controller = await start_initialised(cfg)
        elif self.state == "never_elected":
            cfg = make_configs(self.tmp, ("n1", "n2"))[0]  # n2 is never started
            cfg.api.max_body_bytes = self.max_body_bytes
            read_or_create_token(cfg.api.token_file)
            self.controller = Controller(cfg)
            await self.controller.start()
        else:
            cfg, peer_cfg = make_configs(self.tmp, ("n1", "n2"), apply_timeout_s=0.5)
            cfg.api.max_body_bytes = self.max_body_bytes
            self.controller, self.peer = Controller(cfg), Controller(peer_cfg)
            await self.controller.start()
            await self.peer.start()
            c = self.controller
            await until(lambda: initialised(c), "n1 applied the cluster initialisation")
            await self.peer.stop()
            self.peer = None
            # n1 loses its leader: as leader it steps down (check-quorum), as follower it campaigns (pre-vote)
            await until(lambda: c.node is not None and c.node.leader is None, "n1 has no leader")
        c = self.controller
        self.token = Path(cfg.api.token_file).read_text(encoding="utf-8").strip()
        info = initialised(c)
        if info is not None:
            self.address = info["address"]
        if self.wrap is None:
            self.cluster = c
            self.server = c._api  # the controller's own API server (Controller.start creates it)
        else:
            self.cluster = self.wrap(c)
            self.server = self.own_server = await serve(self.cluster, "127.0.0.1", 0,
                                                        max_body_bytes=self.max_body_bytes, version=VERSION,
                                                        shutdown_timeout=1.0)
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{self.server.port}")

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.own_server is not None:
            await self.own_server.stop()
        for c in (self.peer, self.controller):
            if c is not None:
                await c.stop()

    async def request(self, method: str, path: str, *, body: Any = None, data: bytes | str | None = None,
                      headers: dict[str, str] | None = None, auth: bool = True,
                      params: dict[str, str] | None = None) -> Reply:
        assert self.session is not None
        h = {"X-ZT1-Auth": self.token} if auth else {}
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

    # --- ids under this cluster's controller address

    @property
    def create_path(self) -> str:
        """POST here: a new network with a random id under this controller."""
        assert self.address is not None, "the cluster is not initialised: it has no controller address yet"
        return f"/controller/network/{self.address}______"

    def nwid(self, n: int) -> str:
        """The network id of number ``n`` under this controller."""
        assert self.address is not None, "the cluster is not initialised: it has no controller address yet"
        return f"{self.address}{n:06x}"

    async def new_network(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.ok("POST", self.create_path, body or {})
