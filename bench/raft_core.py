"""Raft core throughput and commit latency: three in-process nodes, in-memory transport, real raft.db on disk.

Prints `BENCH <name> <value> <unit>` lines. A commit is timed from propose() on the leader until the entry is
applied on the leader (which implies durable on a majority: the leader's own raft.db and one follower's).

    python bench/raft_core.py [--seconds 5] [--size 100] [--clients 1,64]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.raft.core import Config  # noqa: E402
from hactl.raft.inmem import InmemNetwork, KVStateMachine  # noqa: E402
from hactl.raft.node import NodeOptions, RaftNode  # noqa: E402
from hactl.raft.storage import RaftStorage  # noqa: E402
from hactl.raft.types import ConfState, Entry  # noqa: E402


class CountingFSM(KVStateMachine):
    """Applies opaque payloads: the bench measures consensus, not a model."""

    def apply(self, e: Entry) -> int:
        self.index, self.term = e.index, e.term
        return e.index


async def run_one(tmp: Path, *, sync: bool, clients: int, seconds: float, size: int) -> dict[str, float]:
    ids = ["n1", "n2", "n3"]
    net = InmemNetwork()
    nodes = []
    for i, nid in enumerate(ids):
        storage = RaftStorage(tmp / f"{nid}.raft.db", sync=sync)
        node = RaftNode(Config(nid, max_msg_entries=512, max_inflight=256), storage, CountingFSM(),
                        net.transport(nid), options=NodeOptions(tick_interval=0.05, snapshot_every=0), seed=i,
                        bootstrap=ConfState(tuple(ids)))
        net.attach(nid, node.receive)
        await node.start()
        nodes.append(node)
    try:
        while not any(n.is_leader for n in nodes):
            await asyncio.sleep(0.01)
        leader = next(n for n in nodes if n.is_leader)
        payload = os.urandom(size)
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                await leader.propose(payload)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(min(clients, 4))))  # warm-up pass on the same leader
        latencies.clear()
        stop_at = time.perf_counter() + seconds
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        latencies.sort()
        return {"ops": len(latencies) / elapsed,
                "p50": statistics.median(latencies) * 1000,
                "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000}
    finally:
        for n in nodes:
            await n.stop()
            n.storage.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--clients", default="1,64")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    for sync in (True, False):
        mode = "durable" if sync else "nofsync"
        for c in clients:
            with tempfile.TemporaryDirectory(prefix="hactl-bench-", dir=os.environ.get("BENCH_DIR")) as d:
                r = asyncio.run(run_one(Path(d), sync=sync, clients=c, seconds=args.seconds, size=args.size))
            print(f"BENCH raft_{mode}_c{c}_commits_per_s {r['ops']:.0f} entries/s", flush=True)
            print(f"BENCH raft_{mode}_c{c}_p50 {r['p50']:.3f} ms", flush=True)
            print(f"BENCH raft_{mode}_c{c}_p99 {r['p99']:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
