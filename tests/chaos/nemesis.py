"""Faults for the chaos suite, and the nemesis that picks, injects and heals them.

Each fault is a small object with inject(), heal() and a one-line describe(); `nodes` are the nodes it involves (no
other fault may involve them meanwhile) and `down` those it takes away from the cluster (killed, frozen, cut off):
with keep_majority the nemesis never takes a majority away at once.

    nem = Nemesis(cluster, net, random.Random(seed), max_concurrent=1)
    stop = threading.Event()
    t = threading.Thread(target=nem.run, args=(stop,)); t.start()    # faults until stop is set
    ...; stop.set(); t.join(); nem.heal_all()
    report = [e.to_dict() for e in nem.events]                        # kind, nodes, times, details, error
"""
from __future__ import annotations

import logging
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar

from tests.chaos.cluster import ChaosCluster
from tests.chaos.net import ChaosNet

log = logging.getLogger("chaos.nemesis")


@dataclass
class Ctx:
    cluster: ChaosCluster
    net: ChaosNet


@dataclass
class Fault:
    """Base: `nodes` involved, `down` made unavailable; tag names its nft rules."""
    kind: ClassVar[str] = "fault"
    ctx: Ctx = field(repr=False)
    tag: str = ""

    @property
    def nodes(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def down(self) -> tuple[str, ...]:
        return ()

    def details(self) -> dict[str, Any]:
        # (not asdict: it would deep-copy ctx, the cluster included)
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ctx", "tag")}

    def inject(self) -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} {' '.join(f'{k}={v}' for k, v in self.details().items())}"


@dataclass
class Kill(Fault):
    """kill -9; heal starts it again (the delay is the fault's duration)."""
    kind: ClassVar[str] = "kill"
    node: str = ""

    nodes = property(lambda self: (self.node,))
    down = property(lambda self: (self.node,))

    def inject(self) -> None:
        self.ctx.cluster.kill(self.node)

    def heal(self) -> None:
        if self.node not in self.ctx.cluster.procs:
            self.ctx.cluster.start(self.node)


@dataclass
class Pause(Fault):
    """SIGSTOP; heal SIGCONT."""
    kind: ClassVar[str] = "pause"
    node: str = ""

    nodes = property(lambda self: (self.node,))
    down = property(lambda self: (self.node,))

    def inject(self) -> None:
        self.ctx.cluster.signal(self.node, signal.SIGSTOP)

    def heal(self) -> None:
        if self.node in self.ctx.cluster.procs:
            self.ctx.cluster.signal(self.node, signal.SIGCONT)


@dataclass
class Partition(Fault):
    """Controller-to-controller traffic between `group` and `rest` dropped both ways."""
    kind: ClassVar[str] = "partition"
    group: tuple[str, ...] = ()
    rest: tuple[str, ...] = ()

    nodes = property(lambda self: (*self.group, *self.rest))
    down = property(lambda self: self.group)

    def inject(self) -> None:
        self.ctx.net.isolate(self.tag, list(self.group), list(self.rest))

    def heal(self) -> None:
        self.ctx.net.uncut(self.tag)


@dataclass
class PartitionLeaderMinority(Partition):
    """The leader (with a minority: alone with 3 nodes) cut off from the majority."""
    kind: ClassVar[str] = "partition_leader_minority"


@dataclass
class PartitionFollower(Partition):
    """One follower cut off; the majority keeps the leader."""
    kind: ClassVar[str] = "partition_follower"


@dataclass
class OneWay(Fault):
    """`receiver` stops receiving from `sender` (sender still receives receiver)."""
    kind: ClassVar[str] = "one_way"
    receiver: str = ""
    sender: str = ""

    nodes = property(lambda self: (self.receiver, self.sender))
    down = property(lambda self: (self.receiver,))

    def inject(self) -> None:
        self.ctx.net.one_way(self.tag, self.receiver, self.sender)

    def heal(self) -> None:
        self.ctx.net.uncut(self.tag)


@dataclass
class Flap(Fault):
    """The node's link down and up every `period` seconds (its clients lose it too) until healed."""
    kind: ClassVar[str] = "flap"
    node: str = ""
    period: tuple[float, float] = (0.3, 1.0)
    seed: int = 0
    flips: int = 0

    nodes = property(lambda self: (self.node,))
    down = property(lambda self: (self.node,))

    def inject(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flap, name=f"flap-{self.node}", daemon=True)
        self._thread.start()

    def _flap(self) -> None:
        rng = random.Random(self.seed)  # its own: the nemesis's sequence does not depend on thread timing
        up = True
        while not self._stop.wait(rng.uniform(*self.period)):
            up = not up
            self.ctx.net.link(self.node, up)
            self.flips += 1

    def heal(self) -> None:
        self._stop.set()
        self._thread.join()
        self.ctx.net.link(self.node, True)


@dataclass
class Netem(Fault):
    """Loss, delay with jitter and reordering on the node's link, both directions."""
    kind: ClassVar[str] = "netem"
    node: str = ""
    delay_ms: float = 0
    jitter_ms: float = 0
    loss_pct: float = 0
    reorder_pct: float = 0
    seed: int = 0
    backend: str = ""  # what did it: "tc" (netem qdiscs) or "nfqueue" (tests/chaos/delayer.py)

    nodes = property(lambda self: (self.node,))

    def inject(self) -> None:
        self.backend = self.ctx.net.netem(self.node, delay_ms=self.delay_ms, jitter_ms=self.jitter_ms,
                                          loss_pct=self.loss_pct, reorder_pct=self.reorder_pct, seed=self.seed)

    def heal(self) -> None:
        self.ctx.net.clear_netem(self.node)


@dataclass
class Move(Fault):
    """The node restarted on another address (a spare; possibly its earlier one). Heal: nothing (it stays)."""
    kind: ClassVar[str] = "move"
    node: str = ""
    old: str = ""
    new: str = ""

    nodes = property(lambda self: (self.node,))
    down = property(lambda self: (self.node,))

    def inject(self) -> None:
        self.old = self.ctx.net.addr(self.node)
        self.ctx.cluster.move(self.node, self.new or None)
        self.new = self.ctx.net.addr(self.node)

    def heal(self) -> None:
        pass


@dataclass
class SlowDiskFault(Fault):
    """The node's fsyncs take `ms` longer."""
    kind: ClassVar[str] = "slow_disk"
    node: str = ""
    ms: int = 0

    nodes = property(lambda self: (self.node,))

    def inject(self) -> None:
        self.ctx.cluster.set_slow_disk(self.node, self.ms)

    def heal(self) -> None:
        self.ctx.cluster.set_slow_disk(self.node, 0)


KINDS = ("kill", "pause", "partition_leader_minority", "partition_follower", "one_way", "flap", "netem", "move",
         "slow_disk")


@dataclass
class FaultEvent:
    """One fault as it happened (monotonic times; heal_end None while it lasts; error: what failed, if any)."""
    id: int
    kind: str
    nodes: tuple[str, ...]
    description: str
    start: float
    injected: float | None = None
    heal_start: float | None = None
    end: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class State:
    """What the nemesis decides from: the nodes running and not involved in a fault, and the leader (None if
    no single one answered)."""
    free: list[str]
    leader: str | None
    down: set[str]


class Nemesis:
    """Picks the next fault from `rng` given the cluster's state, runs it for a duration drawn from `duration`
    (seconds), heals it, and records it in `events`. `kinds` restricts the faults; `max_concurrent` (1 or 2)
    allows a second fault on other nodes; `keep_majority`: never more than a minority of nodes down at once;
    `max_moved`: at most that many nodes away from their first address at once (a move back is always allowed)."""

    def __init__(self, cluster: ChaosCluster, net: ChaosNet, rng: random.Random, *,
                 kinds: tuple[str, ...] = KINDS, duration: tuple[float, float] = (1.0, 5.0),
                 max_concurrent: int = 1, keep_majority: bool = True, max_moved: int | None = None) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.ctx = Ctx(cluster, net)
        self.cluster = cluster
        self.net = net
        self.rng = rng
        self.kinds = tuple(kinds)
        self.duration = duration
        self.max_concurrent = max_concurrent
        self.keep_majority = keep_majority
        self.max_moved = len(cluster.ids) if max_moved is None else max_moved
        self.events: list[FaultEvent] = []
        self.active: dict[int, Fault] = {}
        self._lock = threading.Lock()  # active, events, rng (two workers with max_concurrent 2)
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ state

    def busy(self) -> set[str]:
        with self._lock:
            return {n for f in self.active.values() for n in f.nodes}

    def state(self) -> State:
        busy = self.busy()
        with self._lock:
            down = {n for f in self.active.values() for n in f.down}
        running = self.cluster.running()
        free = [n for n in self.cluster.ids if n in running and n not in busy]
        return State(free, self.find_leader([n for n in running if n not in down]), down)

    def find_leader(self, among: list[str]) -> str | None:
        """The node of the highest term that says it leads, asking only nodes that can answer (none frozen)."""
        claims = []
        for nid in among:
            st = self.cluster.status(nid)
            if st and st["cluster"]["role"] == "leader":
                claims.append((st["cluster"]["term"], nid))
        return max(claims)[1] if claims else None

    # ------------------------------------------------------------------ choosing

    def candidates(self, st: State) -> list[Callable[[], Fault]]:
        """Every fault possible now, as makers (randomness drawn only for the one chosen)."""
        n = len(self.cluster.ids)
        room = (n - 1) // 2 - len(st.down) if self.keep_majority else n
        free, leader, rng, ctx = st.free, st.leader, self.rng, self.ctx
        out: list[Callable[[], Fault]] = []
        followers = [f for f in free if f != leader]
        away = {x for x in self.cluster.ids if self.net.addr(x) != self.net.node_addrs[x][0]}
        for kind in self.kinds:
            if kind in ("kill", "pause", "flap", "move") and room >= 1:
                for node in free:
                    if kind == "kill":
                        out.append(lambda node=node: Kill(ctx, node=node))
                    elif kind == "pause":
                        out.append(lambda node=node: Pause(ctx, node=node))
                    elif kind == "flap":
                        out.append(lambda node=node: Flap(ctx, node=node, seed=rng.randrange(2 ** 32)))
                    elif self.net.spares(node) and (node in away or len(away) < self.max_moved):
                        out.append(lambda node=node: Move(ctx, node=node, new=rng.choice(self.net.spares(node))))
            elif kind == "netem":
                out += [lambda node=node: Netem(ctx, node=node, delay_ms=rng.randint(5, 100),
                                                jitter_ms=rng.randint(0, 20), loss_pct=rng.randint(5, 30),
                                                reorder_pct=rng.choice([0, 10, 25]), seed=rng.randrange(2 ** 32))
                        for node in free]
            elif kind == "slow_disk":
                out += [lambda node=node: SlowDiskFault(ctx, node=node, ms=rng.randint(20, 200)) for node in free]
            elif kind == "partition_leader_minority" and leader is not None and len(free) == n and room >= 1:
                def plm() -> Fault:
                    others = [x for x in free if x != leader]
                    minority = [leader, *rng.sample(others, (n - 1) // 2 - 1)]
                    return PartitionLeaderMinority(ctx, group=tuple(sorted(minority)),
                                                   rest=tuple(x for x in free if x not in minority))
                out.append(plm)
            elif kind == "partition_follower" and leader is not None and len(free) == n and room >= 1:
                out += [lambda f=f: PartitionFollower(ctx, group=(f,), rest=tuple(x for x in free if x != f))
                        for f in followers]
            elif kind == "one_way" and room >= 1:
                out += [lambda a=a, b=b: OneWay(ctx, receiver=a, sender=b) for a in free for b in free if a != b]
        return out

    def next_fault(self, st: State | None = None) -> Fault | None:
        """A fault possible in state st (default: asked now), chosen by the rng; None if none is."""
        st = st or self.state()
        with self._lock:
            return self._choose(st)

    def _choose(self, st: State) -> Fault | None:
        # Against the faults active now (the state may be a moment old: another worker may have begun one).
        busy = {n for f in self.active.values() for n in f.nodes}
        down = st.down | {n for f in self.active.values() for n in f.down}
        st = State([n for n in st.free if n not in busy], st.leader, down)
        if len(self.active) >= self.max_concurrent:
            return None
        options = self.candidates(st)
        return self.rng.choice(options)() if options else None

    def _register(self, fault: Fault) -> FaultEvent:
        fid = len(self.events) + 1
        fault.tag = f"f{fid}-{fault.kind}"
        ev = FaultEvent(fid, fault.kind, tuple(fault.nodes), fault.describe(), time.monotonic())
        self.events.append(ev)
        self.active[fid] = fault
        return ev

    def begin(self, fault: Fault) -> FaultEvent:
        """Inject `fault` (e.g. one a test built) and record it; a failed inject is healed at once, recorded with
        its error, and raised."""
        with self._lock:
            ev = self._register(fault)
        self._inject(ev, fault)
        return ev

    def _inject(self, ev: FaultEvent, fault: Fault) -> None:
        try:
            fault.inject()
            ev.injected = time.monotonic()
        except Exception as e:
            ev.error = f"inject: {e!r}"
            log.exception("fault %s: inject failed", fault.tag)
            self.end(ev)
            raise
        finally:
            ev.description = fault.describe()
        log.info("fault %d injected: %s", ev.id, ev.description)

    def end(self, ev: FaultEvent) -> None:
        with self._lock:
            fault = self.active.get(ev.id)
        if fault is None:
            return
        ev.heal_start = time.monotonic()
        try:
            fault.heal()
        except Exception as e:
            ev.error = (ev.error + "; " if ev.error else "") + f"heal: {e!r}"
            log.exception("fault %s: heal failed", fault.tag)
        finally:
            ev.end = time.monotonic()
            ev.details = fault.details()
            ev.description = fault.describe()
            with self._lock:
                self.active.pop(ev.id, None)
        log.info("fault %d healed after %.1fs", ev.id, ev.end - ev.start)

    def step(self, duration: float | None = None, stop: threading.Event | None = None) -> FaultEvent | None:
        """One fault: chosen, injected, held for `duration` (drawn if None; cut short by stop), healed. None if
        no fault is possible now."""
        st = self.state()
        with self._lock:
            fault = self._choose(st)
            if fault is None:
                return None
            hold = duration if duration is not None else self.rng.uniform(*self.duration)
            ev = self._register(fault)
        try:
            self._inject(ev, fault)
        except Exception:
            return ev  # (healed and recorded with its error)
        (stop or threading.Event()).wait(hold)
        self.end(ev)
        return ev

    def run(self, stop: threading.Event, gap: tuple[float, float] = (0.5, 2.0)) -> None:
        """Faults one after the other (max_concurrent workers) until stop is set; every fault healed on return."""
        def worker() -> None:
            while not stop.is_set():
                if self.step(stop=stop) is None:
                    stop.wait(0.2)  # nothing possible now (e.g. no leader): look again soon
                    continue
                with self._lock:
                    pause = self.rng.uniform(*gap)
                stop.wait(pause)
        workers = [threading.Thread(target=worker, name=f"nemesis-{i}", daemon=True)
                   for i in range(self.max_concurrent)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def heal_all(self, timeout: float = 60) -> None:
        """Every fault healed: active ones ended, then whatever is left anyway removed (cuts, qdiscs, links,
        slow disks, SIGSTOPs) and every stopped node started again."""
        with self._lock:
            active = [e for e in self.events if e.id in self.active]
        for ev in active:
            self.end(ev)
        self.net.heal_all()
        c = self.cluster
        for nid in c.ids:
            c.set_slow_disk(nid, 0)
            if nid in c.procs:
                c.signal(nid, signal.SIGCONT)
            else:
                c.start(nid)

    def report(self) -> list[dict[str, Any]]:
        """The event log with times relative to this nemesis's creation."""
        out = []
        for e in self.events:
            d = e.to_dict()
            for k in ("start", "injected", "heal_start", "end"):
                if d[k] is not None:
                    d[k] = round(d[k] - self._t0, 3)
            out.append(d)
        return out
