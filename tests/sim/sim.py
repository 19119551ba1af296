"""Deterministic simulation of a hactl Raft cluster: the network, the disks, the state machines and the faults.

Everything is driven by one ``random.Random(seed)``: no clock, no threads, no iteration over hashed sets, so a seed
replays exactly (``python -m tests.sim --seed N -v``).

Time: one *step* is one nominal tick; it is split into ``ROUNDS`` network rounds. A message takes 1..ROUNDS rounds
(or up to 12 steps when reordered), so several round trips fit in one heartbeat interval. Each node ticks at its
own rate (0.98..1.02 ticks per step) plus a per-step jitter of +-0.25 tick, so clocks drift and wobble.

Each node runs the shipped ``hactl.raft.driver.Driver`` (and core) over a simulated disk (``Disk``, the driver's
LogStore with RaftStorage's semantics) and state machine (``SimFSM``, the driver's FSM: a running hash plus the
membership). The simulator plays the threads: a Ready's persist+apply completes after a random delay (the I/O
thread) while the core keeps being stepped and ticked and its early messages go out; its finish may come later
still (so the state machine runs ahead of the core); a snapshot is read at one moment and handed to the driver at
another. A crash loses the Ready in flight and all volatile state; the node restarts through ``open_core`` from its
disk, its state machine rebuilt from the newest stored snapshot. Every message is checked when it leaves a node:
it may vouch only for durable state (the early-message invariant of driver.py).

Phases: *chaos* (drops 0-30%, duplicates, reordering, partitions, crashes, transfers, membership changes) alternates
with *heal* (every member up, no partitions, no loss). Within 20 election timeouts of a heal a proposal made after
it must be applied on a majority of voters, and within 30 every member must have applied everything applied
anywhere (so no acknowledged proposal is missing on any member). The last chaos phase ends FINAL_HEAL steps before
``steps``; a run goes past ``steps`` only to finish its last heal, so every run ends with a liveness verdict.

Scenarios: ``default`` (everything, moderately), ``figure8`` (new leaders cut off or killed at once, leaders crashing
right after they advance their commit index, one entry per append: what exposes commit-by-counting), ``churn``
(membership changes, snapshots, transfers and reads at high rates, one node with a slow disk) and ``skew`` (clocks
at very different rates, leaders cut off with a minority while reads keep coming).
"""
from __future__ import annotations

import heapq
import random
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

from hactl.raft.confchange import conf_after
from hactl.raft.core import Config, NotLeader, ProposalRefused, Raft
from hactl.raft.driver import Driver, DriverOptions, open_core
from hactl.raft.storage import RaftState
from hactl.raft.types import (ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MsgType,
                              ReadState, Ready, Role, SnapshotMeta)

from .checker import BASE, Checker, InvariantViolation, chain, short

ROUNDS = 4  # network rounds per step (one step = one nominal tick)
SCENARIOS = ("default", "figure8", "churn", "skew")
FINAL_HEAL = 100  # the last chaos phase ends at least this many steps before the end: every run ends healed
LEADER = Role.LEADER
SNAPSHOT = MsgType.SNAPSHOT

SnapData = tuple  # (index, term, state hash): the simulated state machine content a snapshot carries


@dataclass
class Profile:
    """Fault and workload intensities of one chaos phase (probabilities per step unless noted)."""
    drop: float = 0.0  # per message
    dup: float = 0.0  # per message
    reorder: float = 0.0  # per message: overtaken (delivered 1..12 steps late); otherwise links are FIFO
    crash: float = 0.0
    crash_leader: float = 0.5  # chance a crash hits a leader
    max_down: int = 60
    part: float = 0.0
    part_heal: float = 0.05
    transfer: float = 0.0
    member: float = 0.0
    prop: float = 0.5
    burst: float = 0.05
    read: float = 0.1
    snap: float = 0.01
    persist_slow: float = 0.0  # chance a Ready's persist takes 1..2*ROUNDS rounds instead of none
    kill_new_leader: float = 0.0  # chance a newly elected leader crashes 0..4 steps later
    isolate_new_leader: float = 0.0  # chance a newly elected leader is cut off with a minority right away
    part_kinds: tuple[str, ...] = ("split", "isolate", "isolate-leader", "oneway", "leader-deaf", "leader-mute")
    skew: float = 0.02  # clock rates are drawn from 1 +- skew (per node, at every chaos phase and restart)
    crash_on_commit: float = 0.0  # chance a leader crashes right after advancing its commit index (before its
    #                               next Ready, so followers never hear of it)


# ---------------------------------------------------------------------------------------------------------- network

class Network:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.heap: list[tuple[int, int, Message, SnapData | None, int]] = []
        self.seq = 0
        self.blocked: set[tuple[str, str]] = set()  # (from, to) links that lose everything; membership tests only
        self.fifo: dict[tuple[str, str], int] = {}  # (from, to) -> delivery time of the newest in-order message
        self.drop = self.dup = self.reorder = 0.0
        self.sent = self.lost = self.duplicated = 0

    def send(self, now: int, m: Message, data: SnapData | None, inc: int) -> bool:
        self.sent += 1
        if (m.frm, m.to) in self.blocked or (self.drop and self.rng.random() < self.drop):
            self.lost += 1
            return False
        rng = self.rng
        if self.reorder and rng.random() < self.reorder:
            at = now + rng.randint(ROUNDS, 12 * ROUNDS)  # overtaken by later traffic on the same link
        else:
            # Links are FIFO like the TCP streams the real transport uses: variable latency, no overtaking.
            link = (m.frm, m.to)
            at = max(now + rng.randint(1, ROUNDS), self.fifo.get(link, 0))
            self.fifo[link] = at
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, m, data, inc))
        if self.dup and rng.random() < self.dup:
            self.duplicated += 1
            self.seq += 1
            heapq.heappush(self.heap, (now + rng.randint(1, 12 * ROUNDS), self.seq, m, data, inc))
        return True


# ---------------------------------------------------------------------------------------------------------- disk

class Disk:
    """A node's raft.db and snapshot store (hactl.raft.driver.LogStore): exactly what completed writes left.

    Same semantics as RaftStorage: a save is atomic; a snapshot marker at an index whose stored entry has the
    snapshot's term compacts the log through it (keeping later entries), otherwise drops the whole log. Snapshot
    data (what the FSM's snapshot store holds) is kept for the newest five, so a leader may find its data gone.
    Every write is checked: committed entries are never lost, a hard state never regresses."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.path = f"<disk of {node.id}>"
        self.hard = HardState()
        self.start = 0  # compaction point: entries are start+1 ..
        self.start_term = 0
        self.start_ph = BASE  # log prefix hash at `start`
        self.ents: list[Entry] = []
        self.phs: list[bytes] = []  # prefix hash at each entry
        self.marker = SnapshotMeta()  # the snapshot marker (raft.db's)
        self.snaps: dict[tuple[int, int], tuple[SnapshotMeta, SnapData]] = {}  # the snapshot store, newest few

    # ---- LogStore

    def load(self) -> RaftState:
        return RaftState(self.hard, self.marker.conf, self.marker, self.start + 1, self.last_index(), self.start_term)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.ents[lo - self.start - 1: hi - self.start - 1]

    def save(self, hard: HardState | None, entries: list[Entry], snapshot: SnapshotMeta | None = None) -> None:
        ck = self.node.sim.checker
        if snapshot is not None:
            ck.snapshot_marker(self.node, snapshot)
            if snapshot.index < self.marker.index:
                ck.fail("driver", f"{self.node.id} records snapshot {snapshot.index} below its marker "
                                  f"{self.marker.index}")
            data = self.snaps.get((snapshot.index, snapshot.term))
            if data is None:
                ck.fail("snapshot-data", f"{self.node.id} records snapshot ({snapshot.index}, t{snapshot.term}) "
                                         f"whose data is not in its store")
            self.marker = snapshot
            if self.term(snapshot.index) == snapshot.term:
                self.compact(snapshot.index)
            else:
                self.start, self.start_term, self.start_ph = snapshot.index, snapshot.term, data[1][2]
                self.ents, self.phs = [], []
        if entries:
            self._persist_entries(entries)
        if hard is not None:
            ck.hard_state(self.node, self.hard, hard)
            self.hard = hard
        if self.hard.commit > max(self.last_index(), self.marker.index):
            ck.fail("commit-beyond-log", f"{self.node.id} persisted commit {self.hard.commit} beyond its persisted "
                                         f"log ({self.last_index()}): it could not restart")

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        self.node.sim.checker.snapshot_marker(self.node, meta)
        if not (self.marker.index <= meta.index <= self.last_index()) or self.term(meta.index) != meta.term:
            self.node.sim.checker.fail("driver", f"{self.node.id} records marker ({meta.index}, t{meta.term}) "
                                                 f"outside its log ({self.start}, {self.last_index()}]")
        self.marker = meta

    def compact(self, index: int) -> None:
        if index <= self.start:
            return
        if index > self.marker.index:
            self.node.sim.checker.fail("driver", f"{self.node.id} compacts to {index} past its marker "
                                                 f"{self.marker.index}")
        k = index - self.start
        self.start_term, self.start_ph = self.ents[k - 1].term, self.phs[k - 1]
        del self.ents[:k]
        del self.phs[:k]
        self.start = index

    # ---- helpers

    def last_index(self) -> int:
        return self.start + len(self.ents)

    def term(self, index: int) -> int | None:
        if index == self.start:
            return self.start_term
        if self.start < index <= self.last_index():
            return self.ents[index - self.start - 1].term
        return None

    def add_snapshot(self, meta: SnapshotMeta, data: SnapData) -> None:
        self.snaps[(meta.index, meta.term)] = (meta, data)
        while len(self.snaps) > 5:
            del self.snaps[min(self.snaps)]

    def newest_snapshot(self) -> tuple[SnapshotMeta, SnapData] | None:
        return self.snaps[max(self.snaps)] if self.snaps else None

    def _persist_entries(self, ents: list[Entry]) -> None:
        node, ck = self.node, self.node.sim.checker
        first = ents[0].index
        if first <= self.start or first > self.last_index() + 1:
            ck.fail("persist-gap", f"{node.id}: Ready entries start at {first}; persisted log is "
                                   f"({self.start}, {self.last_index()}]")
        k = first - self.start - 1
        removed = self.ents[k:]
        del self.ents[k:]
        del self.phs[k:]
        prev = self.phs[-1] if self.phs else self.start_ph
        prev_term = self.ents[-1].term if self.ents else self.start_term
        want = first
        for e in ents:
            if e.index != want or e.term < prev_term:
                ck.fail("bad-entries", f"{node.id}: Ready entries not consecutive or terms decrease at {short(e)}")
            prev = chain(prev, e)
            ck.register_prefix(node, e, prev)
            self.ents.append(e)
            self.phs.append(prev)
            want += 1
            prev_term = e.term
        for e in removed:  # a committed entry once durable here may be replaced only by itself
            if e.index <= ck.known_commit and ck.c_term[e.index] == e.term and self.term(e.index) != e.term:
                ck.fail("lost-committed", f"{node.id} truncated committed entry {short(e)} from its durable log")


# ---------------------------------------------------------------------------------------------------------- state machine

class SimFSM:
    """The state machine (hactl.raft.driver.FSM): a running hash over every applied entry plus the membership,
    both in one state, so a snapshot's (index, term, membership) come from one consistent read."""

    def __init__(self, node: "SimNode", base: tuple[SnapshotMeta, SnapData] | None) -> None:
        self.node = node
        meta, data = base if base is not None else (SnapshotMeta(), (0, 0, BASE))
        self.index, self.term, self.hash = data
        self.conf = meta.conf

    def apply_batch(self, entries: list[Entry]) -> list[None]:
        node, ck = self.node, self.node.sim.checker
        for e in entries:
            if e.index != self.index + 1:
                ck.fail("apply-order", f"{node.id} applies {short(e)} after {self.index}")
            self.hash = chain(self.hash, e)
            self.index, self.term = e.index, e.term
            if e.type == EntryType.CONF_CHANGE:
                self.conf = conf_after(self.conf, e.data) or self.conf
            ck.applied(node, e, self.hash)
            node.applied(e)
        return [None] * len(entries)

    def snapshot(self) -> SnapshotMeta | None:
        if self.index == 0:
            return None
        meta, data = SnapshotMeta(self.index, self.term, self.conf), (self.index, self.term, self.hash)
        self.node.sim.checker.snapshot_data(self.node, meta, data[2], "took")
        self.node.disk.add_snapshot(meta, data)
        return meta

    def snapshot_payload(self, meta: SnapshotMeta) -> SnapData | None:
        got = self.node.disk.snaps.get((meta.index, meta.term))
        return None if got is None else got[1]

    def restore(self, meta: SnapshotMeta, payload: SnapData) -> None:
        node, ck = self.node, self.node.sim.checker
        if payload is None or payload[:2] != (meta.index, meta.term):
            ck.fail("snapshot-data", f"{node.id}: snapshot ({meta.index}, t{meta.term}) installed with data "
                                     f"{payload!r}")
        if meta.index < self.index:
            ck.fail("snapshot-regress", f"{node.id} installs snapshot {meta.index} over applied {self.index}")
        ck.snapshot_data(node, meta, payload[2], "installed")
        node.disk.add_snapshot(meta, payload)
        self.index, self.term, self.hash = payload
        self.conf = meta.conf
        node.sim.event(f"{node.id} installed snapshot {meta.index} t{meta.term}")
        node.sim.counts["snapshots_installed"] += 1
        node.sim.resolve_pending(node)


# ---------------------------------------------------------------------------------------------------------- node

class SimNode:
    """One node: the shipped Driver (and core) over a simulated disk and state machine. The simulator plays the
    threads: a Ready's persist+apply completes some rounds after it was taken (the I/O thread), its finish may
    come later still (the event loop), and a snapshot is read at one moment and handed over at another."""

    def __init__(self, sim: "Sim", nid: str, created: int, initial: bool):
        self.sim = sim
        self.id = nid
        self.disk = Disk(self)
        self.driver: Driver | None = None
        self.fsm: SimFSM | None = None
        self.inc = 0  # incarnation: bumped at every start, so replies to an old incarnation are recognised
        self.inflight: Ready | None = None
        self.io_done = False  # the in-flight Ready was persisted and applied, finish() pending
        self.due = 0
        self.snap_due: tuple[int, SnapshotMeta | None] | None = None  # (round, meta) of a snapshot being taken
        self.lead_term = -1
        self.rate = 1.0
        self.acc = 0.0
        self.restart_at: int | None = None
        self.retired = False
        self.created = created
        self.was_member = initial
        self.left_at: int | None = None
        self.last_commit = 0
        self.doomed = False  # crash at the next safe point (set by fault injection inside the hot path)
        self.seen: tuple | None = None  # (role, term, leader) for the verbose trace

    @property
    def raft(self) -> Raft | None:
        return None if self.driver is None else self.driver.core

    @property
    def sm_index(self) -> int:
        return 0 if self.fsm is None else self.fsm.index

    # ---- lifecycle

    def start(self, bootstrap: ConfState | None = None) -> None:
        sim = self.sim
        base = self.disk.newest_snapshot()  # what rebuild_ctrl_db restores, like a real start
        self.fsm = fsm = SimFSM(self, base)
        cfg = Config(id=self.id, **sim.cfg)
        self.inc += 1
        core = open_core(cfg, random.Random(sim.rng.getrandbits(64)), self.disk, bootstrap=bootstrap,
                         restored=base[0] if base is not None else None, core_class=sim.factory)
        self.driver = sim.driver_factory(core, self.disk, fsm, DriverOptions(snapshot_every=0,
                                                                             snapshot_trailing=sim.trailing))
        if core.applied != fsm.index:
            sim.checker.fail("driver", f"{self.id} restarted with applied {core.applied}, snapshot at {fsm.index}")
        self.inflight = None
        self.io_done = False
        self.snap_due = None
        self.lead_term = -1
        self.last_commit = core.log.committed
        self.rate = sim.rng.uniform(1 - sim.prof.skew, 1 + sim.prof.skew)
        self.acc = sim.rng.random()
        self.restart_at = None
        self.seen = None
        sim.resolve_pending(self)
        self.observe()

    def crash(self) -> None:
        self.driver = None  # a persist that had not completed never happened; volatile state is gone
        self.fsm = None
        self.inflight = None
        self.snap_due = None

    # ---- the hot path

    def observe(self) -> None:
        r = self.raft
        ck = self.sim.checker
        if r.role == LEADER and self.lead_term != r.term:
            self.lead_term = r.term
            ck.new_leader(self)
            self.sim.event(f"{self.id} leader of term {r.term} (last {r.log.last_index()}, commit {r.log.committed})")
            self.sim.leader_elected(self)
        c = r.log.committed
        if c != self.last_commit:
            if c < self.last_commit:
                ck.fail("commit-regressed", f"{self.id} commit index went from {self.last_commit} to {c}")
            self.last_commit = c
            if r.role == LEADER:
                ck.leader_commit(self, c)
                if self.sim.prof.crash_on_commit and self.sim.phase == "chaos":
                    self.doomed = self.sim.rng.random() < self.sim.prof.crash_on_commit
        if c > ck.known_commit:
            ck.commit_advanced(self, c)
        if self.sim.verbose:
            seen = (r.role, r.term, r.leader)
            if seen != self.seen:
                self.seen = seen
                self.sim.trace(f"{self.id} {r.role.name} term {r.term} leader {r.leader}")

    def take_ready(self, now: int) -> None:
        d = self.driver
        self.inflight = rd = d.next_ready()
        self.io_done = False
        self.send(rd.early_messages)  # step 0: a leader's replication goes out before its own write

    def do_io(self) -> None:
        """The I/O thread's part: install, persist (its messages may leave), apply."""
        rd, d = self.inflight, self.driver
        self.send(d.persist(rd))
        d.apply(rd)
        self.io_done = True

    def finish(self) -> None:
        """The loop's part: advance the core."""
        rd, d = self.inflight, self.driver
        self.inflight = None
        self.io_done = False
        for rs in rd.read_states:
            self.sim.read_done(self, rs)
        d.finish(rd)
        r = d.core
        if r.applied != self.fsm.index and r.pending_snapshot is None and not self.sim.driver_bug:
            self.sim.checker.fail("driver", f"{self.id}: core applied {r.applied} after finish, state machine at "
                                            f"{self.fsm.index}")
        self.observe()

    def early(self) -> None:
        if self.inflight is not None and not self.io_done:
            self.send(self.driver.early())

    def send(self, msgs: list[Message]) -> None:
        for m, payload in self.driver.outgoing(msgs):
            self.sim.send(self, m, payload)

    def applied(self, e: Entry) -> None:
        pend = self.sim.pending.get(self.id)
        if pend:
            p = pend.pop(e.index, None)
            if p is not None:
                self.sim.resolve(self, e, p)

    def begin_snapshot(self, now: int, trailing: int) -> None:
        """The FSM reads its state at once (maybe ahead of the core), and the driver hears of it later."""
        d = self.driver
        if d.snapshotting:
            return
        self.sim.trailing = trailing
        d.opts.snapshot_trailing = trailing
        d.begin_snapshot()
        meta = d.take_snapshot()
        self.snap_due = (now + self.sim.rng.randint(0, 2 * ROUNDS), meta)
        if meta is not None:
            self.sim.counts["snapshots_taken"] += 1

    def snapshot_done(self) -> None:
        _, meta = self.snap_due
        self.snap_due = None
        before = self.raft.log.offset
        self.driver.snapshot_taken(meta)
        if self.raft.log.offset > before:
            self.sim.counts["compactions"] += 1
            self.sim.trace(f"{self.id} snapshot {self.raft.snapshot.index}, compacted to {self.raft.log.offset}")


# ---------------------------------------------------------------------------------------------------------- the sim

class Sim:
    def __init__(self, seed: int, nodes: int = 3, steps: int = 2000, *, factory: type[Raft] = Raft,
                 driver_factory: type[Driver] = Driver, bug: str | None = None, scenario: str = "default",
                 verbose: int = 0, out: Callable[[str], None] = print, disabled_checks: tuple[str, ...] = ()):
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.seed, self.n, self.steps = seed, nodes, steps
        self.factory, self.driver_factory, self.bug, self.scenario = factory, driver_factory, bug, scenario
        self.driver_bug = driver_factory is not Driver
        self.trailing = 0
        self.verbose, self.out = verbose, out
        self.disabled_checks = disabled_checks
        self.rng = random.Random(f"hactl-sim-{seed}")
        self.step = 0
        self.now = 0
        self.events: deque[tuple[int, str]] = deque(maxlen=40)
        self.counts: Counter[str] = Counter()
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.next_id = nodes + 1
        self.checker = Checker(self, ConfState())
        self.net = Network(self.rng)
        self.cfg = self._draw_config()
        self.base = self._draw_base()
        self.prof = Profile()
        self.nodes: dict[str, SimNode] = {}
        self.node_list: list[SimNode] = []
        self.up_nodes: list[SimNode] = []
        self.pending: dict[str, dict[int, tuple[bytes, int]]] = {}  # proposer -> index -> (payload, term)
        self.pending_reads: dict[bytes, tuple[str, int]] = {}
        self.props = self.acked = self.max_acked = self.reads = self.crashes = self.heals = 0
        self.phase = "chaos"
        self.phase_end = 0
        self.heal_start = 0
        self.heal_props: list[tuple[int, bytes]] = []
        self.live_ok = self.prop_ok = False
        self.heal_target = 0
        self.heal_end = 0
        self.slow_node: str | None = None
        self.scheduled: list[tuple] = []  # (step, "crash", node, incarnation) | (step, "unblock", links, 0)
        for nid in ids:  # first start: the bootstrap entries, persisted and committed (open_core, as node.py)
            n = self._add_node(nid, initial=True)
            n.start(bootstrap=ConfState(tuple(ids)))
        self._refresh_up()
        self._start_chaos()

    # ---- configuration drawn from the seed

    def _draw_config(self) -> dict:
        rng = self.rng
        cfg = dict(election_tick=10, heartbeat_tick=1,
                   max_msg_entries=rng.choice([4, 8, 64]), max_inflight=rng.choice([2, 8, 64]),
                   max_committed_per_ready=rng.choice([16, 4096]), pre_vote=rng.random() < 0.85,
                   check_quorum=True, promote_max_lag=rng.choice([5, 100]))
        if self.scenario == "figure8":
            cfg.update(max_msg_entries=1, max_inflight=1)
        if self.scenario == "skew":
            cfg.update(pre_vote=True)  # without it a fast clock with a stale log disrupts every election forever
        return cfg

    def _draw_base(self) -> dict:
        rng = self.rng
        return dict(drop=rng.uniform(0.0, 0.3), dup=rng.choice([0.0, 0.02, 0.1]),
                    reorder=rng.choice([0.0, 0.05, 0.2]), crash=rng.choice([0.0, 0.003, 0.01, 0.03]),
                    part=rng.choice([0.0, 0.005, 0.02]), transfer=rng.choice([0.0, 0.005, 0.02]),
                    member=rng.choice([0.0, 0.005, 0.02]), snap=rng.choice([0.0, 0.01, 0.05]),
                    persist_slow=rng.choice([0.0, 0.1, 0.4]))

    def _draw_profile(self) -> Profile:
        rng, b = self.rng, self.base
        p = Profile(drop=min(0.3, b["drop"] * rng.uniform(0.5, 1.5)), dup=b["dup"], reorder=b["reorder"],
                    crash=b["crash"] * rng.choice([0.5, 1, 2]), part=b["part"], part_heal=rng.choice([0.02, 0.05, 0.1]),
                    transfer=b["transfer"], member=b["member"], prop=rng.uniform(0.2, 1.0),
                    read=rng.choice([0.0, 0.05, 0.2]), snap=b["snap"], persist_slow=b["persist_slow"],
                    max_down=rng.choice([10, 60, 200]))
        if self.scenario == "figure8":
            # Figure 8 of the Raft paper: leaders that replicate to a minority and crash, again and again.
            p.crash, p.crash_leader, p.max_down = rng.uniform(0.03, 0.1), 0.9, rng.choice([5, 15, 30])
            p.member = p.transfer = p.snap = 0.0
            p.drop = rng.uniform(0.0, 0.2)
            p.prop = rng.uniform(0.2, 0.5)
            p.kill_new_leader, p.isolate_new_leader = rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.7)
            p.crash_on_commit = rng.uniform(0.3, 0.7)
        elif self.scenario == "churn":
            # Everything that moves the log's base or the membership, on slow disks: snapshots sent and installed
            # while Readys are in flight, learners added/promoted/removed, transfers, reads, crashes at commit.
            p.member, p.transfer, p.snap = rng.uniform(0.02, 0.08), rng.uniform(0.01, 0.04), rng.uniform(0.05, 0.2)
            p.persist_slow, p.read, p.crash = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.005, 0.03)
            p.crash_on_commit, p.kill_new_leader = rng.uniform(0.0, 0.05), rng.uniform(0.0, 0.1)
            members = [n.id for n in self.node_list if not n.retired]
            # one node with a slow disk falls behind and is sent snapshots while its own writes are in flight
            self.slow_node = rng.choice(members) if members and rng.random() < 0.7 else None
        elif self.scenario == "skew":
            # Clocks that run at very different rates (a paused VM, a throttled host): leases and timeouts stop
            # meaning the same thing on every node, so only a real quorum round makes a read linearizable. A
            # leader is often cut off with a minority while reads keep coming on every node.
            p.skew = rng.uniform(0.5, 0.8)
            p.read, p.prop = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8)
            p.part, p.part_heal, p.part_kinds = rng.uniform(0.01, 0.03), rng.uniform(0.02, 0.05), ("isolate-leader",)
            p.drop, p.crash = rng.uniform(0.0, 0.05), 0.0
            p.member = p.snap = 0.0
        return p

    # ---- bookkeeping

    def _add_node(self, nid: str, initial: bool) -> SimNode:
        n = SimNode(self, nid, self.step, initial)
        self.nodes[nid] = n
        self.node_list.append(n)
        return n

    def _refresh_up(self) -> None:
        self.up_nodes = [n for n in self.node_list if n.raft is not None]

    def replay_cmd(self) -> str:
        cmd = f"python -m tests.sim --seed {self.seed} --nodes {self.n} --steps {self.steps}"
        if self.bug:
            cmd += f" --bug {self.bug}"
        if self.scenario != "default":
            cmd += f" --scenario {self.scenario}"
        for k in self.disabled_checks:
            cmd += f" --skip {k}"
        return cmd + " -v"

    def violation(self, kind: str, detail: str) -> InvariantViolation:
        trace = "\n".join(f"    {s:5d} {t}" for s, t in self.events)
        return InvariantViolation(kind, detail, seed=self.seed, step=self.step, replay=self.replay_cmd(),
                                  trace=trace)

    def event(self, text: str) -> None:
        self.events.append((self.step, text))
        if self.verbose:
            self.out(f"{self.step:5d} {text}")

    def trace(self, text: str) -> None:
        if self.verbose:
            self.out(f"{self.step:5d}   {text}")

    def leaders(self) -> list[SimNode]:
        return [n for n in self.up_nodes if n.raft.role == LEADER]

    # ---- run

    def run(self) -> dict:
        try:
            while self.step < self.steps or self.phase == "heal":
                self._one_step()
                self.step += 1
        except InvariantViolation:
            raise
        except Exception:
            raise self.violation("exception", traceback.format_exc()) from None
        return self.result()

    def result(self) -> dict:
        ck = self.checker
        return dict(seed=self.seed, nodes=self.n, steps=self.step, elections=ck.stats["elections"],
                    terms=max(ck.leaders, default=0), applied=ck.max_applied, commit=ck.known_commit,
                    proposals=self.props, acked=self.acked, reads=self.reads, crashes=self.crashes,
                    heals=self.heals, sent=self.net.sent, lost=self.net.lost, members=len(ck.gconf.members()),
                    conf_changes=len(ck.conf_idx) - 1 - 2 * self.n, **dict(sorted(self.counts.items())),
                    digest=ck.g_hash[-1].hex())

    def _one_step(self) -> None:
        step = self.step
        self._housekeeping()
        if self.phase == "chaos":
            if step >= self.phase_end or step >= self.steps - FINAL_HEAL:
                self._start_heal()
            else:
                self._faults()
        elif self.phase == "heal":
            self._heal_check()
        self._workload()
        rng = self.rng
        for rnd in range(ROUNDS):
            now = self.now = step * ROUNDS + rnd
            if rnd == 0:
                for n in self.up_nodes:
                    n.acc += n.rate + rng.uniform(-0.25, 0.25)
                    while n.acc >= 1.0:
                        n.acc -= 1.0
                        n.raft.tick()
                        n.observe()
            self._deliver(now)
            order = self.up_nodes[:]
            rng.shuffle(order)
            slow, slow_node = self.prof.persist_slow, self.slow_node
            for n in order:
                if n.snap_due is not None and n.snap_due[0] <= now:
                    n.snapshot_done()
                if n.inflight is not None:
                    if n.due > now:
                        n.early()  # what the loop sends while the I/O thread persists
                        continue
                    if not n.io_done:
                        n.do_io()
                        if slow and rng.random() < slow:
                            n.due = now + rng.randint(1, ROUNDS)  # the loop gets to finish() a little later
                            continue
                    n.finish()
                    if n.doomed:
                        self._crash(n, rng.randint(1, self.prof.max_down), "right after committing")
                        continue
                if n.driver.has_work():
                    n.take_ready(now)
                    if n.id == slow_node:  # a node with a slow disk: every write takes 1..3 ticks
                        n.due = now + rng.randint(ROUNDS, 3 * ROUNDS)
                    elif slow and rng.random() < slow:
                        n.due = now + rng.randint(1, 2 * ROUNDS)
                    else:
                        n.do_io()
                        n.finish()
                        if n.doomed:
                            self._crash(n, rng.randint(1, self.prof.max_down), "right after committing")

    def _deliver(self, now: int) -> None:
        heap, nodes, blocked, rng = self.net.heap, self.nodes, self.net.blocked, self.rng
        verbose = self.verbose > 1
        while heap and heap[0][0] <= now:
            _, _, m, data, inc = heapq.heappop(heap)
            dst = nodes.get(m.to)
            ok = dst is not None and dst.driver is not None and (m.frm, m.to) not in blocked
            if m.type == SNAPSHOT or (not ok and m.type == MsgType.APPEND):
                src = nodes.get(m.frm)
                if src is not None and src.driver is not None and src.inc == inc:
                    if m.type == SNAPSHOT:
                        src.raft.report_snapshot(m.to, ok)
                    elif rng.random() < 0.2:
                        src.raft.report_unreachable(m.to)
            if verbose:
                self.trace(f"{'deliver' if ok else 'LOST'} {_fmt(m)}")
            if not ok:
                continue
            dst.driver.step(m, data)
            dst.observe()
            if dst.doomed:
                self._crash(dst, rng.randint(1, self.prof.max_down), "right after committing")

    def send(self, src: SimNode, m: Message, payload: SnapData | None) -> None:
        self.checker.message_sent(src, m)
        if not self.net.send(self.now, m, payload, src.inc) and m.type == SNAPSHOT:
            src.raft.report_snapshot(m.to, False)

    # ---- proposals and reads

    def resolve(self, node: SimNode, e: Entry, p: tuple[bytes, int]) -> None:
        """The proposer applied the index its proposal got: acknowledged if it is that proposal."""
        if e.data == p[0] and e.term == p[1]:
            self.acked += 1
            if e.index > self.max_acked:
                self.max_acked = e.index

    def resolve_pending(self, node: SimNode) -> None:
        """The node's state jumped (restart or snapshot): proposals it covers are decided by what was applied."""
        pend = self.pending.get(node.id)
        if pend:
            for i in sorted(pend):
                if i > node.sm_index:
                    break
                self.resolve(node, self.checker.g_entries[i], pend.pop(i))

    def read_done(self, node: SimNode, rs: ReadState) -> None:
        rec = self.pending_reads.pop(rs.context, None)
        if rec is None:
            return
        origin, bound = rec
        if origin != node.id:
            self.checker.fail("read-index", f"read {rs.context!r} issued on {origin} answered on {node.id}")
        if rs.index < bound:
            self.checker.fail("read-index", f"read {rs.context!r} on {node.id} got index {rs.index}, but {bound} "
                                            f"was already committed when it was issued (stale read)")
        self.reads += 1

    def _propose(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        n = self.rng.choice(leaders)
        payload = f"s{self.seed}-{self.props}".encode()
        try:
            idx = n.raft.propose(payload)
        except (NotLeader, ProposalRefused):
            return
        self.props += 1
        self.pending.setdefault(n.id, {})[idx] = (payload, n.raft.term)
        if self.phase == "heal":
            self.heal_props.append((idx, payload))
        self.trace(f"propose {payload.decode()} at {n.id} -> index {idx} term {n.raft.term}")

    def _read(self) -> None:
        if not self.up_nodes:
            return
        n = self.rng.choice(self.up_nodes)
        ctx = f"r{self.step}-{self.rng.getrandbits(32)}".encode()
        try:
            n.raft.read_index(ctx)
        except NotLeader:
            return
        self.pending_reads[ctx] = (n.id, self.checker.known_commit)
        self.trace(f"read {ctx.decode()} at {n.id} (committed so far {self.checker.known_commit})")

    def _workload(self) -> None:
        rng, p = self.rng, self.prof
        if self.phase == "chaos":
            if rng.random() < p.prop:
                for _ in range(rng.randint(2, 8) if rng.random() < p.burst else 1):
                    self._propose()
        elif rng.random() < 0.2:  # healed: a light load, so members that fell behind can catch up
            self._propose()
        if p.read and rng.random() < p.read:
            self._read()
        if p.snap and self.up_nodes and rng.random() < p.snap:
            n = rng.choice(self.up_nodes)
            n.begin_snapshot(self.now, rng.choice([0, 0, 1, 2, 5, 10, 20]))

    # ---- faults

    def leader_elected(self, n: SimNode) -> None:
        """Figure-8 style faults: a new leader has replicated its old entries to few nodes yet."""
        p, rng = self.prof, self.rng
        if self.phase != "chaos" or not (p.kill_new_leader or p.isolate_new_leader):
            return
        if rng.random() < p.isolate_new_leader:
            others = [v for v in n.raft.conf.voters if v != n.id]
            group = [n.id] + rng.sample(others, rng.randint(0, max(0, (len(others) + 1) // 2 - 1)))
            rest = [x.id for x in self.node_list if x.id not in group and not x.retired]
            cut = tuple(sorted({(a, b) for a in group for b in rest} | {(b, a) for a in group for b in rest}))
            self.net.blocked.update(cut)
            self.event(f"new leader {n.id} cut off with {group[1:]}")
            self.scheduled.append((self.step + rng.randint(5, 40), "unblock", cut, 0))
        if rng.random() < p.kill_new_leader:
            self.scheduled.append((self.step + rng.randint(0, 4), "crash", n.id, n.inc))

    def _run_scheduled(self) -> None:
        due = [a for a in self.scheduled if a[0] <= self.step]
        if not due:
            return
        self.scheduled = [a for a in self.scheduled if a[0] > self.step]
        for _, kind, arg, inc in due:
            if kind == "unblock":
                self.net.blocked.difference_update(arg)
                self.event(f"healed the cut of {arg[0][0]}")
                continue
            n = self.nodes.get(arg)
            if n is not None and n.raft is not None and n.inc == inc:
                self._crash(n, self.rng.randint(1, self.prof.max_down))

    def _faults(self) -> None:
        rng, p = self.rng, self.prof
        if self.scheduled:
            self._run_scheduled()
        if p.crash and rng.random() < p.crash and self.up_nodes:
            leaders = self.leaders()
            victim = rng.choice(leaders) if leaders and rng.random() < p.crash_leader else rng.choice(self.up_nodes)
            self._crash(victim, rng.randint(1, p.max_down))
        if p.part and rng.random() < p.part:
            self._partition()
        if self.net.blocked and rng.random() < p.part_heal:
            self.net.blocked.clear()
            self.event("partitions healed")
        if p.transfer and rng.random() < p.transfer:
            self._transfer()
        if p.member and rng.random() < p.member:
            self._membership()

    def _crash(self, n: SimNode, down: int | None, why: str = "") -> None:
        lost = "" if n.inflight is None else " (Ready in flight lost)"
        lost += f" {why}" if why else ""
        n.doomed = False
        n.crash()
        self.crashes += 1
        n.restart_at = None if down is None else self.step + down
        self._refresh_up()
        self.event(f"{n.id} crashed{lost}" + ("" if down is None else f", restarts in {down}"))

    def _restart(self, n: SimNode) -> None:
        n.retired = False
        n.start()
        self._refresh_up()
        self.event(f"{n.id} restarted (term {n.raft.term}, log ({n.raft.log.offset}, {n.raft.log.last_index()}], "
                   f"commit {n.raft.log.committed}, snapshot {n.raft.snapshot.index})")

    def _partition(self) -> None:
        rng = self.rng
        ids = [n.id for n in self.node_list if not n.retired]
        if len(ids) < 2:
            return
        blocked = self.net.blocked
        kind = rng.choice(list(self.prof.part_kinds))
        leaders = [n.id for n in self.leaders()]
        target = rng.choice(leaders) if leaders else rng.choice(ids)
        if kind == "split":
            rng.shuffle(ids)
            k = rng.randint(1, len(ids) // 2)
            a, b = ids[:k], ids[k:]
            for x in a:
                for y in b:
                    blocked.add((x, y))
                    blocked.add((y, x))
            self.event(f"partition {sorted(a)} | {sorted(b)}")
            self.counts["partitions"] += 1
            return
        if kind == "oneway":
            pairs = [tuple(rng.sample(ids, 2)) for _ in range(rng.randint(1, 3))]
            blocked.update(pairs)
            self.event(f"one-way cuts {pairs}")
            self.counts["partitions"] += 1
            return
        if kind == "isolate":
            target = rng.choice(ids)
        for y in ids:
            if y != target:
                if kind != "leader-deaf":
                    blocked.add((target, y))
                if kind != "leader-mute":
                    blocked.add((y, target))
        self.event(f"{kind} {target}")
        self.counts["partitions"] += 1

    def _transfer(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        n = self.rng.choice(leaders)
        others = [v for v in n.raft.conf.voters if v != n.id]
        target = self.rng.choice(others + [None]) if others else None
        try:
            n.raft.transfer_leadership(target)
        except (NotLeader, ProposalRefused) as e:
            self.trace(f"transfer from {n.id} to {target} refused: {e}")
            return
        self.event(f"transfer leadership {n.id} -> {target or 'auto'}")
        self.counts["transfers"] += 1

    def _membership(self) -> None:
        rng = self.rng
        leaders = self.leaders()
        if not leaders:
            return
        n = rng.choice(leaders)
        conf, gconf = n.raft.conf, self.checker.gconf
        joining = [x for x in self.node_list if not x.was_member and not x.retired]
        kind = rng.choice(["add", "add", "promote", "remove"])
        if kind == "add" and len(gconf.members()) + len(joining) >= 6:
            kind = "remove"
        if kind == "promote" and not conf.learners:
            kind = "add" if len(gconf.members()) + len(joining) < 6 else "remove"
        if kind == "add":
            nid = f"n{self.next_id}"
            self.next_id += 1
            new = self._add_node(nid, initial=False)
            new.start()
            self._refresh_up()
            cc = ConfChange(ConfChangeType.ADD_LEARNER, nid)
        elif kind == "promote":
            cc = ConfChange(ConfChangeType.PROMOTE, rng.choice(conf.learners))
        else:
            cands = list(conf.learners)
            if len(conf.voters) > 3 and len(gconf.voters) > 3:
                cands += conf.voters
            if not cands:
                return
            cc = ConfChange(ConfChangeType.REMOVE, rng.choice(cands))
        try:
            idx = n.raft.propose_conf_change(cc)
        except (NotLeader, ProposalRefused) as e:
            self.trace(f"{cc.type.name} {cc.node} refused by {n.id}: {e}")
            if kind == "add":  # it never joined anything: forget it
                x = self.nodes.pop(cc.node)
                self.node_list.remove(x)
                self._refresh_up()
            return
        self.event(f"{n.id} proposes {cc.type.name} {cc.node} at {idx}")
        self.counts["conf_proposals"] += 1

    def conf_changed(self, index: int, conf: ConfState) -> None:
        """Called by the checker when a membership change is applied for the first time anywhere."""
        self.event(f"membership at {index}: voters {list(conf.voters)} learners {list(conf.learners)}")
        members = conf.members()
        for x in self.node_list:
            if x.id in members:
                x.was_member = True
                x.left_at = None
            elif x.was_member and x.left_at is None:
                x.left_at = self.step

    def _housekeeping(self) -> None:
        step = self.step
        members = self.checker.gconf.members()
        for n in self.node_list:
            if n.raft is None:
                if n.retired:
                    if n.id in members:  # an old ADD committed after all: it is a member, bring it back
                        self._restart(n)
                elif n.restart_at is not None and n.restart_at <= step:
                    self._restart(n)
            elif n.id not in members and ((n.was_member and n.left_at is not None and step - n.left_at > 100)
                                          or (not n.was_member and step - n.created > 300)):
                # removed (and given time to notice), or its ADD never committed: shut it down for good
                n.retired = True
                self._crash(n, None)

    # ---- phases and liveness

    def _start_chaos(self) -> None:
        self.phase = "chaos"
        self.prof = p = self._draw_profile()
        self.net.drop, self.net.dup, self.net.reorder = p.drop, p.dup, p.reorder
        if p.skew > 0.02:
            for n in self.up_nodes:
                n.rate = self.rng.uniform(1 - p.skew, 1 + p.skew)
        self.phase_end = self.step + self.rng.randint(100, 400)
        self.event(f"chaos until {self.phase_end}: drop {p.drop:.2f} dup {p.dup:.2f} reorder {p.reorder:.2f} "
                   f"crash {p.crash:.3f} partition {p.part:.3f} transfer {p.transfer:.3f} member {p.member:.3f}")

    def _start_heal(self) -> None:
        self.phase = "heal"
        self.heals += 1
        self.heal_start = self.step
        self.net.drop = self.net.dup = self.net.reorder = 0.0
        self.net.blocked.clear()
        self.scheduled = []
        self.prof.persist_slow = min(self.prof.persist_slow, 0.1)
        self.prof.skew = min(self.prof.skew, 0.02)
        for n in self.up_nodes:  # clocks back in step: liveness is promised for sane clocks only
            n.rate = self.rng.uniform(1 - self.prof.skew, 1 + self.prof.skew)
        members = self.checker.gconf.members()
        for n in self.node_list:
            if n.raft is None and (not n.retired or n.id in members):
                self._restart(n)
        self.heal_props = []
        self.live_ok = self.prop_ok = False
        self.event("heal: all members up, no loss, no partitions")

    def _heal_check(self) -> None:
        ck, step = self.checker, self.step
        et = self.cfg["election_tick"]
        elapsed = step - self.heal_start
        if not self.live_ok:
            voters = ck.gconf.voters
            for idx, payload in self.heal_props:
                if idx <= ck.max_applied and ck.g_entries[idx].data == payload:
                    have = sum(1 for v in voters if v in self.nodes and self.nodes[v].sm_index >= idx)
                    if have > len(voters) // 2:
                        self.live_ok = True
                        self.heal_target = ck.max_applied
                        self.trace(f"liveness: {payload.decode()} at {idx} applied on a majority after {elapsed} "
                                   f"steps")
                        break
            if not self.live_ok and elapsed > 20 * et:
                ck.fail("liveness", f"{elapsed} steps after healing, no proposal made since was applied on a "
                                    f"majority of {list(ck.gconf.voters)}; {self._describe()}")
                self.live_ok, self.heal_target = True, ck.max_applied  # only reached with --skip liveness
        elif not self.prop_ok:
            lagging = [m for m in ck.gconf.members()
                       if m not in self.nodes or self.nodes[m].raft is None or self.nodes[m].sm_index < self.heal_target]
            if not lagging:
                self.prop_ok = True
                self.heal_end = step + self.rng.randint(0, 30)
            elif elapsed > 30 * et:
                ck.fail("liveness", f"{elapsed} steps after healing, members {lagging} have not applied up to "
                                    f"{self.heal_target} (acknowledged up to {self.max_acked}); {self._describe()}")
                self.prop_ok, self.heal_end = True, step  # only reached with --skip liveness
        elif step >= self.heal_end:
            if self.steps - step < FINAL_HEAL + 100:
                self.phase = "calm"
            else:
                self._start_chaos()

    def _describe(self) -> str:
        parts = []
        for n in self.node_list:
            if n.raft is None:
                parts.append(f"{n.id}:down" + (" (retired)" if n.retired else ""))
            else:
                r = n.raft
                parts.append(f"{n.id}:{r.role.name}/t{r.term}/lead {r.leader}/last {r.log.last_index()}/"
                             f"commit {r.log.committed}/applied {n.sm_index}/conf {list(r.conf.voters)}+"
                             f"{list(r.conf.learners)}")
        return "nodes: " + "; ".join(parts)


def _fmt(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MsgType.APPEND, MsgType.APPEND_RESP, MsgType.VOTE, MsgType.PRE_VOTE):
        s += f" idx {m.index} lt {m.log_term}"
    if m.entries:
        s += f" ents {m.entries[0].index}..{m.entries[-1].index}"
    if m.commit:
        s += f" commit {m.commit}"
    if m.reject:
        s += f" REJECT hint {m.reject_hint}"
    if m.snapshot is not None:
        s += f" snap {m.snapshot.index}/t{m.snapshot.term}"
    return s


def default_nodes(seed: int) -> int:
    """CI and --seeds alternate cluster sizes: 3 nodes for even seeds, 5 for odd ones."""
    return 3 if seed % 2 == 0 else 5


def run_seed(seed: int, nodes: int | None = None, steps: int = 2000, **kw) -> dict:
    """Run one seed (raises InvariantViolation); nodes=None alternates 3 and 5 nodes by seed parity."""
    return Sim(seed, nodes or default_nodes(seed), steps, **kw).run()


def run_case(case: tuple) -> tuple[int, dict | None, str | None, str | None]:
    """Process-pool entry point: (seed, nodes|None, steps, bug|None, scenario, skipped checks) ->
    (seed, result or None, violation kind or None, violation message or None)."""
    from .buggy import bug_kwargs
    seed, nodes, steps, bug, scenario, skip = case
    kw = bug_kwargs(bug)
    try:
        return seed, run_seed(seed, nodes, steps, scenario=scenario, disabled_checks=tuple(skip), **kw), None, None
    except InvariantViolation as e:
        return seed, None, e.kind, str(e)
