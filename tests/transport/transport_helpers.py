"""Shared helpers for the control-channel tests: a throw-away PKI fixture and fast mesh options.

Not a conftest.py: test modules import what they use (and the `test_pki` fixture) by this unique name, so
nothing clashes with other test folders that have no __init__.py either.

Everything is real: certificates from hactl.transport.pki, TLS and gRPC on 127.0.0.1, no mocks.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, TypeVar

import pytest

from hactl.transport import pki
from hactl.transport.mesh import Mesh, MeshOptions

T = TypeVar("T")
TD = "test.hactl"
CLUSTER = "cluster-a"


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run one test coroutine on a fresh loop, with a hard limit so a hang fails instead of stalling CI."""
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


def fast_options(**kw: Any) -> MeshOptions:
    base = dict(backoff_min=0.05, backoff_max=0.5, hello_timeout=2.0, ping_interval=0.2, dead_after=5.0,
                keepalive=5.0)
    base.update(kw)
    return MeshOptions(**base)  # type: ignore[arg-type]


@dataclass
class PkiFixture:
    root: Path
    ids: dict[str, pki.Identity] = field(default_factory=dict)

    def identity(self, node_id: str, kind: str = "controller", *, ca: str = "ca") -> pki.Identity:
        key = f"{ca}/{kind}/{node_id}"
        if key not in self.ids:
            out = self.root / ca / kind / node_id
            pki.issue(self.root / ca, out, kind=kind, node_id=node_id,  # type: ignore[arg-type]
                      trust_domain=TD)
            self.ids[key] = pki.load_identity_dir(out)
        return self.ids[key]

    def mesh(self, node_id: str, *, peers: dict[str, str] | None = None, cluster: str = CLUSTER,
             addr: str = "127.0.0.1:0", ca: str = "ca", authorizer: Any = None, **opts: Any) -> Mesh:
        return Mesh(node_id, cluster, TD, self.identity(node_id, ca=ca), addr, peers or {},
                    options=fast_options(**opts), authorizer=authorizer)


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFixture:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", TD)
    pki.init_ca(root / "other-ca", TD)  # same trust domain, different CA: TLS itself must refuse it
    return PkiFixture(root)


async def start_cluster(p: PkiFixture, ids: list[str], **opts: Any) -> dict[str, Mesh]:
    """Start meshes on free ports, then tell each about the others (ports are only known once bound)."""
    meshes = {i: p.mesh(i, **opts) for i in ids}
    for m in meshes.values():
        await m.start()
    addrs = {i: f"127.0.0.1:{m.port}" for i, m in meshes.items()}
    for m in meshes.values():
        m.update_peers(addrs)
    for i, m in meshes.items():
        await m.wait_connected([j for j in ids if j != i], timeout=10)
    await settled(list(meshes.values()))
    return meshes


def agree(meshes: list[Mesh]) -> bool:
    """Every pair holds exactly one live connection, the same one at both ends, and nothing is closing."""
    for a in meshes:
        if a._pending_closes:
            return False
        for b in meshes:
            if a is b:
                continue
            ca, cb = a.connection(b.node_id), b.connection(a.node_id)
            if ca is None or cb is None or ca.initiator != cb.initiator or ca.outbound == cb.outbound:
                return False
    return True


async def settled(meshes: list[Mesh], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not agree(meshes):
        if loop.time() > deadline:
            raise AssertionError("the mesh did not settle on one connection per pair")
        await asyncio.sleep(0.02)


async def stop_all(*meshes: Mesh) -> None:
    await asyncio.gather(*(m.stop() for m in meshes), return_exceptions=True)


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Poll `cond()` on the running loop until it is true; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
