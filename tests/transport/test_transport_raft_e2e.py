"""Raft nodes (real raft.db, real driver) talking over real meshes: election, replication, a snapshot install."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest

pytest.importorskip("lmdb")

from hactl.raft.core import Config  # noqa: E402
from hactl.raft.inmem import KVStateMachine, kv  # noqa: E402
from hactl.raft.node import NodeOptions, RaftNode  # noqa: E402
from hactl.raft.storage import RaftStorage  # noqa: E402
from hactl.raft.types import ConfState, SnapshotMeta  # noqa: E402
from hactl.transport.mesh import Mesh  # noqa: E402
from hactl.transport.raft_transport import RaftTransport  # noqa: E402
from hactl.transport.snapshot_stream import BytesSource  # noqa: E402

from transport_helpers import PkiFixture, run, settled, stop_all, test_pki  # noqa: E402, F401 (fixture)


class StreamingKV(KVStateMachine):
    """The in-memory KV machine, with its snapshot payload as msgpack bytes so it can cross the network."""

    def snapshot_payload(self, meta: SnapshotMeta) -> Any:
        return BytesSource(msgpack.packb(super().snapshot_payload(meta), use_bin_type=True),
                           extra={"index": meta.index, "term": meta.term})


class DictSink:
    def __init__(self, meta: dict):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def finish(self) -> Any:
        return msgpack.unpackb(b"".join(self.parts), raw=False)

    def abort(self) -> None:
        self.parts.clear()


def test_raft_cluster_over_the_mesh(test_pki: PkiFixture, tmp_path: Path) -> None:
    ids = ["n1", "n2", "n3"]

    async def main() -> None:
        meshes: dict[str, Mesh] = {i: test_pki.mesh(i) for i in ids}
        for m in meshes.values():
            await m.start()
        addrs = {i: f"127.0.0.1:{m.port}" for i, m in meshes.items()}
        nodes: dict[str, RaftNode] = {}
        transports: dict[str, RaftTransport] = {}
        fsms: dict[str, StreamingKV] = {}
        opts = NodeOptions(tick_interval=0.02, snapshot_every=50, snapshot_trailing=5)

        def status_cb(i: str) -> Callable[[str, bool], None]:
            def cb(to: str, ok: bool) -> None:
                nodes[i].report_snapshot(to, ok)
            return cb

        async def start_node(i: str) -> None:
            t = RaftTransport(meshes[i], snapshot_sink=DictSink, on_snapshot_status=status_cb(i))
            fsms[i] = StreamingKV()
            node = RaftNode(Config(i), RaftStorage(tmp_path / f"{i}.raft.db"), fsms[i], t, options=opts,
                            seed=ids.index(i) + 1, bootstrap=ConfState(tuple(ids)))
            t.set_receiver(node.receive)
            nodes[i], transports[i] = node, t
            await node.start()

        try:
            # n3 stays down at first: the other two elect a leader and commit enough to compact past n3.
            for i in ("n1", "n2"):
                meshes[i].update_peers(addrs)
                await start_node(i)
            leader = await _leader(nodes)
            for k in range(120):
                await leader.propose(kv(f"k{k}", k), timeout=5)
            await _until(lambda: all(n.core.log.offset > 0 for n in nodes.values()))  # compacted
            meshes["n3"].update_peers(addrs)
            await start_node("n3")
            await settled(list(meshes.values()))
            await _until(lambda: fsms["n3"].data.get("k119") == 119, timeout=15)
            assert fsms["n3"].data == fsms["n1"].data == fsms["n2"].data
            assert transports[leader.id].sender.sent_ok >= 1  # n3 caught up through a streamed snapshot
            assert transports["n3"].receiver.received >= 1
            index, _ = await leader.propose(kv("after", 1), timeout=5)
            await _until(lambda: all(f.data.get("after") == 1 for f in fsms.values()))
        finally:
            for n in nodes.values():
                await n.stop()
                n.storage.close()
            for t in transports.values():
                await t.close()
            await stop_all(*meshes.values())
    run(main(), timeout=60)


async def _leader(nodes: dict[str, RaftNode], timeout: float = 10.0) -> RaftNode:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        leaders = [n for n in nodes.values() if n.is_leader]
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no leader")


async def _until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
