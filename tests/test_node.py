"""The asyncio driver with real raft.db files (LMDB, fsync on) and the in-process transport."""
from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import pytest

from hactl.raft.core import Config, NotLeader
from hactl.raft.inmem import InmemNetwork, KVStateMachine, kv
from hactl.raft.node import NodeFailed, NodeOptions, NoLeader, RaftNode
from hactl.raft.storage import RaftStorage, StorageError
from hactl.raft.types import ConfChange, ConfChangeType, ConfState, Message, MsgType, Role, SnapshotMeta

TICK = 0.01


class Cluster:
    def __init__(self, tmp: Path, ids: list[str], *, snapshot_every: int = 0, trailing: int = 10):
        self.tmp = tmp
        self.net = InmemNetwork()
        self.ids = list(ids)
        self.nodes: dict[str, RaftNode] = {}
        self.fsms: dict[str, KVStateMachine] = {}
        self.opts = NodeOptions(tick_interval=TICK, snapshot_every=snapshot_every, snapshot_trailing=trailing)

    async def start(self, nid: str, bootstrap: ConfState | None, fsm: KVStateMachine | None = None) -> RaftNode:
        storage = RaftStorage(self.tmp / f"{nid}.raft.db")
        fsm = fsm or KVStateMachine()
        node = RaftNode(Config(nid), storage, fsm, self.net.transport(nid), options=self.opts,
                        seed=zlib.crc32(nid.encode()), bootstrap=bootstrap)
        self.net.attach(nid, node.receive)
        await node.start()
        self.nodes[nid], self.fsms[nid] = node, fsm
        return node

    async def start_all(self) -> None:
        for nid in self.ids:
            await self.start(nid, ConfState(tuple(self.ids)))

    async def stop(self, nid: str) -> KVStateMachine:
        self.net.detach(nid)
        node = self.nodes.pop(nid)
        await node.stop()
        node.storage.close()
        return self.fsms.pop(nid)

    async def stop_all(self) -> None:
        for nid in list(self.nodes):
            await self.stop(nid)

    async def leader(self, timeout: float = 5.0, exclude: str | None = None) -> RaftNode:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            leaders = [n for k, n in self.nodes.items() if n.is_leader and k != exclude]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(TICK)
        raise AssertionError(f"no single leader within {timeout}s: "
                             f"{[(k, n.core.role.name, n.core.term) for k, n in self.nodes.items()]}")

    async def converge(self, index: int, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(n.wait_applied(index) for n in self.nodes.values())), timeout)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_elects_replicates_and_reads_linearizably(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start_all()
        lead = await c.leader()
        results = await asyncio.gather(*(lead.propose(kv(f"k{i}", i)) for i in range(50)))
        indexes = [i for i, _ in results]
        assert [r for _, r in results] == indexes  # the FSM's result travels back to the proposer
        await c.converge(max(indexes))
        digests = {k: f.digest() for k, f in c.fsms.items()}
        assert len(set(digests.values())) == 1, digests
        follower = next(n for k, n in c.nodes.items() if n is not lead)
        with pytest.raises(NotLeader):
            await follower.propose(kv("x", 1))
        # A follower's read barrier covers every write acknowledged before it.
        _, _ = await lead.propose(kv("fresh", 1))
        await follower.read_barrier(timeout=5)
        assert c.fsms[follower.id].data["fresh"] == 1
        await c.stop_all()
    run(main())


def test_leader_isolation_elects_another_and_keeps_acknowledged_writes(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start_all()
        old = await c.leader()
        acked = [i for i, _ in await asyncio.gather(*(old.propose(kv(f"a{i}", i)) for i in range(20)))]
        c.net.isolate(old.id)
        new = await c.leader(exclude=old.id)
        assert new.core.term > old.core.term or old.core.role != Role.LEADER
        await new.propose(kv("after", 1))
        # check-quorum: the cut-off leader steps down by itself
        for _ in range(300):
            if not old.is_leader:
                break
            await asyncio.sleep(TICK)
        assert not old.is_leader
        c.net.heal()
        idx, _ = await new.propose(kv("healed", 1))
        await c.converge(idx)
        for f in c.fsms.values():
            assert all(f.data[f"a{i}"] == i for i in range(20)) and f.data["after"] == 1
        assert max(acked) < idx
        await c.stop_all()
    run(main())


def test_restart_from_raft_db_replays_and_catches_up(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start_all()
        lead = await c.leader()
        victim = next(k for k in c.ids if k != lead.id)
        await asyncio.gather(*(lead.propose(kv(f"b{i}", i)) for i in range(30)))
        await c.stop(victim)
        idx = 0
        for i in range(30):
            idx, _ = await lead.propose(kv(f"c{i}", i))
        node = await c.start(victim, None)  # no bootstrap: everything comes from raft.db
        assert node.core.log.last_index() >= 31 and node.core.term >= 1
        await c.converge(idx)
        assert c.fsms[victim].digest() == c.fsms[lead.id].digest()
        await c.stop_all()
    run(main())


async def leave_one_behind(c: Cluster) -> tuple[RaftNode, str, int]:
    """Stop a follower, then write 200 entries (the leader snapshots every 50): (leader, the stopped id, last index)."""
    lead = await c.leader()
    victim = next(k for k in c.ids if k != lead.id)
    await c.stop(victim)
    idx = 0
    for i in range(200):
        idx, _ = await lead.propose(kv(f"d{i}", i))
    return lead, victim, idx


def test_far_behind_follower_gets_a_snapshot_and_log_is_compacted(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"], snapshot_every=50, trailing=10)
        await c.start_all()
        lead, victim, idx = await leave_one_behind(c)
        for _ in range(200):
            if lead.core.log.offset > 0:
                break
            await asyncio.sleep(TICK)
        assert lead.core.log.offset > 0, "leader never compacted its log"
        assert lead.storage.first_index() == lead.core.log.offset + 1
        fsm = KVStateMachine()
        node = await c.start(victim, None, fsm=fsm)
        await c.converge(idx)
        assert fsm.digest() == c.fsms[lead.id].digest()
        assert any(data == b"<snapshot>" for _, data in fsm.applied_log), "follower caught up without a snapshot"
        assert node.storage.load().snapshot.index > 0
        await c.stop_all()
    run(main())


def test_add_voter_then_remove_and_transfer_leadership(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start_all()
        lead = await c.leader()
        for i in range(20):
            await lead.propose(kv(f"e{i}", i))
        await c.start("n4", None)  # empty data, no bootstrap: waits to be added
        await lead.add_voter("n4", timeout=10)
        assert "n4" in lead.core.conf.voters
        gone = next(k for k in c.ids if k != lead.id)
        await lead.change_membership(ConfChange(ConfChangeType.REMOVE, gone), timeout=10)
        assert gone not in lead.core.conf.members()
        await c.stop(gone)
        new_leader = await lead.transfer_leadership("n4")
        assert new_leader == "n4"
        n4 = c.nodes["n4"]
        idx, _ = await n4.propose(kv("on-n4", 1))
        await c.converge(idx)
        assert c.fsms["n4"].digest() == c.fsms[lead.id].digest()
        await c.stop_all()
    run(main())


def test_no_leader_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start("n1", ConfState(("n1", "n2", "n3")))
        await asyncio.sleep(TICK * 40)  # alone: it can never win an election
        assert not c.nodes["n1"].is_leader
        with pytest.raises(NoLeader):
            await c.nodes["n1"].read_barrier(timeout=1)
        with pytest.raises(NoLeader):
            await c.nodes["n1"].propose(kv("x", 1))
        await c.stop_all()
    run(main())


class SlowCountingStorage(RaftStorage):
    """Real raft.db; counts transactions and can make them slow (a disk stalling under load)."""
    delay = 0.0

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.saves = 0

    def save(self, *a, **kw):
        import time
        self.saves += 1
        if self.delay:
            time.sleep(self.delay)
        return super().save(*a, **kw)


def test_group_commit_and_slow_fsync_does_not_stall_heartbeats(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        ids = c.ids
        for nid in ids:  # same as Cluster.start, with the counting storage
            storage = SlowCountingStorage(tmp_path / f"{nid}.raft.db")
            fsm = KVStateMachine()
            node = RaftNode(Config(nid), storage, fsm, c.net.transport(nid), options=c.opts,
                            seed=zlib.crc32(nid.encode()), bootstrap=ConfState(tuple(ids)))
            c.net.attach(nid, node.receive)
            await node.start()
            c.nodes[nid], c.fsms[nid] = node, fsm
        lead = await c.leader()
        term = lead.core.term
        before = lead.storage.saves
        await asyncio.gather(*(lead.propose(kv(f"g{i}", i)) for i in range(200)))
        assert lead.storage.saves - before < 100, "proposals were not grouped into shared transactions"
        # Every leader write now takes 5 election timeouts; heartbeats must keep flowing meanwhile.
        lead.storage.delay = 5 * TICK * lead.cfg.election_tick
        idx, _ = await lead.propose(kv("slow", 1), timeout=10)
        await lead.propose(kv("slow2", 1), timeout=10)
        lead.storage.delay = 0
        assert lead.is_leader and lead.core.term == term
        assert all(n.core.term == term for n in c.nodes.values())
        await c.converge(idx)
        await c.stop_all()
    run(main())


# ---------------------------------------------------------------------------------------------------------------
# Snapshots travel only with their data; a node whose storage fails stops (fail-stop) instead of lingering.

def _snapshot_msg(index: int, term: int, *, frm: str = "n1", to: str = "n2", msg_term: int = 5) -> Message:
    return Message(MsgType.SNAPSHOT, frm, to, msg_term,
                   snapshot=SnapshotMeta(index, term, ConfState(("n1", "n2", "n3"))))


def test_a_snapshot_without_data_is_dropped_and_the_node_lives_on(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        node = await c.start("n2", ConfState(("n1", "n2", "n3")))
        node.receive(_snapshot_msg(100, 4), None)  # what a pruned leader's fallback used to send
        for _ in range(20):
            await asyncio.sleep(TICK)
        assert node.running and node.core.pending_snapshot is None and node.applied < 100
        assert node.dropped()["snapshot_without_data"] == 1
        await c.stop_all()
    run(main())


def test_an_older_snapshot_does_not_evict_the_data_of_an_accepted_one(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        fsm = KVStateMachine()
        node = await c.start("n2", ConfState(("n1", "n2", "n3")), fsm=fsm)
        node.receive(_snapshot_msg(100, 4), {"k": "new"})
        node.receive(_snapshot_msg(50, 3), {"k": "old"})  # before the first is installed
        for _ in range(200):
            if fsm.index == 100:
                break
            await asyncio.sleep(TICK)
        assert node.running, "the node stopped"
        assert fsm.index == 100 and fsm.data == {"k": "new"}
        assert node.storage.load().snapshot.index == 100
        assert node.dropped()["snapshot_not_accepted"] == 1
        await c.stop_all()
    run(main())


class ForgetfulKV(KVStateMachine):
    """A leader's state machine whose stored snapshots were pruned until `keep` is set."""
    keep = False

    def snapshot_payload(self, meta: SnapshotMeta) -> Any:
        return super().snapshot_payload(meta) if self.keep else None


def test_a_leader_whose_snapshot_data_is_gone_sends_nothing_then_catches_the_follower_up(tmp_path: Path) -> None:
    async def main() -> None:
        c = Cluster(tmp_path, ["n1", "n2", "n3"], snapshot_every=50, trailing=10)
        fsms = {nid: ForgetfulKV() for nid in c.ids}
        for nid in c.ids:
            await c.start(nid, ConfState(tuple(c.ids)), fsm=fsms[nid])
        lead, victim, idx = await leave_one_behind(c)
        while lead.core.log.offset == 0:
            await asyncio.sleep(TICK)
        fresh = KVStateMachine()
        node = await c.start(victim, None, fsm=fresh)
        while lead.driver.dropped["snapshot_data_gone"] == 0:
            await asyncio.sleep(TICK)
        # Nothing without data was sent, so nothing was installed (it replayed only its own journal).
        assert node.running and not any(d == b"<snapshot>" for _, d in fresh.applied_log)
        assert fresh.index < lead.snapshot_index
        fsms[lead.id].keep = True  # the data is back (a newer snapshot was taken)
        await c.converge(idx, timeout=20)
        assert fresh.digest() == fsms[lead.id].digest() and node.running
        assert any(d == b"<snapshot>" for _, d in fresh.applied_log)
        await c.stop_all()
    run(main())


class FailingStorage(RaftStorage):
    """Real raft.db whose writes start failing (a full or broken disk) when `fail` is set."""
    fail = False

    def save(self, *a: Any, **kw: Any) -> None:
        if self.fail:
            raise StorageError(f"raft.db at {self.path}: commit failed: [Errno 28] No space left on device")
        return super().save(*a, **kw)


def test_a_storage_failure_stops_the_node_and_fails_every_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        storage = FailingStorage(tmp_path / "n1.raft.db")
        node = RaftNode(Config("n1"), storage, KVStateMachine(), InmemNetwork().transport("n1"),
                        options=NodeOptions(tick_interval=TICK, snapshot_every=0), seed=1,
                        bootstrap=ConfState(("n1",)))
        await node.start()
        while not node.is_leader:
            await asyncio.sleep(TICK)
        await node.propose(kv("a", 1))
        storage.fail = True
        with pytest.raises(NodeFailed):
            await node.propose(kv("b", 2), timeout=5)
        cause = await asyncio.wait_for(node.wait_failed(), 5)
        assert isinstance(cause, StorageError) and "No space left" in str(cause)
        assert not node.running
        with pytest.raises(NodeFailed):
            await node.propose(kv("c", 3))
        with pytest.raises(NodeFailed):
            await node.read_barrier(timeout=1)
        await node.stop()
        storage.close()
    run(main())


def test_a_read_whose_caller_left_and_a_stop_leave_no_unretrieved_errors(tmp_path: Path) -> None:
    """A linearizable read cancelled by its caller (a client that went away) whose round then fails, and a
    proposal pending when the node stops: neither leaves an exception nobody retrieves (asyncio logs each one as
    an error, noise an operator would chase), and the proposer learns NodeFailed (its write may still commit)."""
    import gc

    async def main() -> None:
        unretrieved: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unretrieved.append(ctx))
        c = Cluster(tmp_path, ["n1", "n2", "n3"])
        await c.start_all()
        lead = await c.leader()
        follower = next(n for n in c.nodes.values() if n is not lead)
        reader = asyncio.create_task(follower.read_barrier(timeout=5))
        await asyncio.sleep(0)  # the read joins a round
        reader.cancel()
        follower._fail_reads()  # the round fails (as on a leadership change) after its caller left
        proposal = asyncio.create_task(lead.propose(kv("late", 1), timeout=5))
        await asyncio.sleep(0)
        await c.stop(lead.id)
        with pytest.raises(NodeFailed):
            await proposal
        with pytest.raises(asyncio.CancelledError):
            await reader
        await c.stop_all()
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == [], unretrieved
    run(main())
