"""Key-less writers under leader faults: every answer tells the truth about its write.

ZeroTier tools send no Idempotency-Key and retry a 503, so the write path promises (hactl/server/writes.py):
503 and 429 only when the write was certainly not applied, 504 when it may have been, 200 when it was. Here
several client threads create networks and members through random nodes, each request sent once, while the
leader is frozen (SIGSTOP) or killed (kill -9) and restarted. Afterwards the model must agree with every answer:
each 200 exists exactly once, no 503/429 (or refused connection) exists, a 504 or a lost answer exists at most
once, and nothing exists that was never sent.
"""
from __future__ import annotations

import itertools
import random
import signal
import threading
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from tests.proc_cluster import REFUSED, UNKNOWN, ProcCluster

CERTAINLY_NOT_APPLIED = {503, 429, REFUSED}
MAYBE_APPLIED = {504, UNKNOWN}
ANSWERS = {200} | CERTAINLY_NOT_APPLIED | MAYBE_APPLIED
# Longer than a freeze plus the apply timeout: a request held by a frozen node gets its real answer after
# SIGCONT instead of counting as unknown. Only a "give up" bound.
CLIENT_TIMEOUT = 30.0
BASE = "base"  # the network the member writes go to (created with an Idempotency-Key before the faults)


@dataclass
class Sent:
    seq: int
    name: str
    node: str
    answer: int | str


class Writers:
    """Threads that each send key-less creates ONCE through seeded-random nodes and record every answer.

    ``targets`` is the list of nodes they choose from (the test drops a killed node from it, so the load keeps
    going to the live ones; a frozen node stays in it, as real clients would keep calling it)."""

    def __init__(self, c: ProcCluster, ctrl: str, nwid: str, seed: str, threads: int = 8):
        self.c, self.ctrl, self.nwid, self.seed = c, ctrl, nwid, seed
        self.targets = list(c.ids)
        self.sent: list[Sent] = []
        self.inflight: dict[int, str] = {}  # seq -> node, for requests not answered yet
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(CLIENT_TIMEOUT + 10)
            assert not t.is_alive(), "a writer thread is stuck"

    def _run(self, k: int) -> None:
        # Per-thread RNG from a stable hash: the same sequence of node and kind choices on every run.
        rng = random.Random(zlib.crc32(f"{self.seed}/{k}".encode()))
        for i in itertools.count(1):
            if self._stop.is_set():
                return
            node = rng.choice(self.targets)
            if rng.random() < 0.5:
                name, path = f"n{k}-{i}", f"/controller/network/{self.ctrl}______"
            else:  # one address per request, so a member exists only if this very request was applied
                address = f"{0x2000000000 + (k << 24) + i:010x}"
                name, path = f"m{k}-{i}", f"/controller/network/{self.nwid}/member/{address}"
            with self._lock:
                seq = next(self._seq)
                self.inflight[seq] = node
            answer = self.c.send_once(node, "POST", path, {"name": name}, timeout=CLIENT_TIMEOUT)
            with self._lock:
                del self.inflight[seq]
                self.sent.append(Sent(seq, name, node, answer))

    # ------------------------------------------------------------------ conditions the fault schedule waits on

    def mark(self) -> int:
        """A point in the request sequence: requests numbered from here on were sent after this call."""
        with self._lock:
            return next(self._seq)

    def acked_since(self, mark: int) -> int:
        with self._lock:
            return sum(1 for s in self.sent if s.seq >= mark and s.answer == 200)

    def settled(self, before: int, skip: str | None = None) -> bool:
        """Every request sent before ``before`` (to a node other than ``skip``) has its answer."""
        with self._lock:
            return not any(seq < before and node != skip for seq, node in self.inflight.items())


def check_model(c: ProcCluster, w: Writers, leaders: list[str]) -> Counter:
    """Wait until every node has applied everything, then compare the model with the answers."""
    answers = Counter(s.answer for s in w.sent)
    odd = [s for s in w.sent if s.answer not in ANSWERS]
    assert not odd, f"answers outside 200/503/429/504/no answer: {odd[:10]}"
    c.wait_caught_up(timeout=60)
    reader = c.leader()
    code, nets, _ = c.request(reader, "GET", "/unstable/controller/network")
    assert code == 200
    code, members, _ = c.request(reader, "GET", f"/unstable/controller/network/{w.nwid}/member")
    assert code == 200
    held = Counter(n["name"] for n in nets["data"]) + Counter(m["name"] for m in members["data"])
    held.pop(BASE)
    for nid in c.ids:  # every node holds the same model (local reads, after catching up)
        code, ids, _ = c.request(nid, "GET", "/controller/network?consistency=local")
        assert code == 200 and sorted(ids) == sorted(n["id"] for n in nets["data"]), nid
        code, addrs, _ = c.request(nid, "GET", f"/controller/network/{w.nwid}/member?consistency=local")
        assert code == 200 and sorted(addrs) == sorted(m["address"] for m in members["data"]), nid

    summary = f"answers {dict(answers)}, held {sum(held.values())}, leaders {leaders}"
    print(summary)
    doubled = {name: n for name, n in held.items() if n > 1}
    assert not doubled, f"applied twice: {doubled}; {summary}"
    assert set(held) <= {s.name for s in w.sent}, f"never sent: {set(held) - {s.name for s in w.sent}}"
    lost = [s for s in w.sent if s.answer == 200 and held[s.name] != 1]
    assert not lost, f"answered 200 but not applied: {lost[:10]}; {summary}"
    false_refusals = [s for s in w.sent if s.answer in CERTAINLY_NOT_APPLIED and held[s.name]]
    assert not false_refusals, f"answered 503/429/refused but applied: {false_refusals[:10]}; {summary}"
    # Not vacuous: the writes went through, the faults bit (some answer was 503 or 504, or a request died with
    # the node it was on) and leadership moved.
    assert answers[200] >= 50, summary
    assert answers[503] + answers[504] + answers[UNKNOWN] >= 1, summary
    assert len(set(leaders)) >= 2, summary
    return answers


def run_with_faults(cluster: Callable[..., ProcCluster], seed: str, apply_timeout: float,
                    faults: Callable[[ProcCluster, Writers, list[str]], None]) -> Counter:
    c = cluster(raft={"apply_timeout_s": apply_timeout})
    ctrl = c.wait_ready()
    code, base = c.write(c.ids[0], "POST", f"/controller/network/{ctrl}______", {"name": BASE})
    assert code == 200
    w = Writers(c, ctrl, base["id"], seed)
    leaders = [c.leader()]
    w.start()
    try:
        faults(c, w, leaders)
    finally:
        w.stop()
    return check_model(c, w, leaders)


def wait_acked(c: ProcCluster, w: Writers, n: int, what: str) -> None:
    mark = w.mark()
    c.wait(lambda: w.acked_since(mark) >= n, 30, f"{n} writes acknowledged {what}")


def freeze_leader_three_times(c: ProcCluster, w: Writers, leaders: list[str]) -> None:
    for _ in range(3):
        leader = leaders[-1]
        wait_acked(c, w, 30, "before the freeze")  # requests are in flight on every node when it comes
        frozen_at = w.mark()
        c.signal(leader, signal.SIGSTOP)
        leaders.append(c.wait_new_leader(leader))
        # Stay frozen until every request the other nodes had taken before the freeze was answered: those
        # forwarded to the frozen leader wait out apply_timeout_s, so the freeze outlasts both the election
        # timeout (a new leader is in office) and the apply timeout (the frozen node's own proposals expire).
        c.wait(lambda: w.settled(frozen_at, skip=leader), 30, "the requests taken before the freeze to be answered")
        resumed_at = w.mark()
        c.signal(leader, signal.SIGCONT)
        c.wait(lambda: c.role(leader) == "follower", 20, f"{leader} to step down after SIGCONT")
        # What the frozen node held is answered now (its kernel queued requests while it was stopped).
        c.wait(lambda: w.settled(resumed_at), CLIENT_TIMEOUT + 10, "every request sent while frozen to be answered")
        leaders.append(c.leader())


def kill_and_restart_leader_twice(c: ProcCluster, w: Writers, leaders: list[str]) -> None:
    for _ in range(2):
        leader = leaders[-1]
        wait_acked(c, w, 30, "before the kill")  # forwarded calls are outstanding on the leader when it dies
        w.targets = [n for n in c.ids if n != leader]
        c.kill(leader)
        leaders.append(c.wait_new_leader(leader))
        wait_acked(c, w, 50, f"while {leader} is down")  # the cluster carries on without it for a while
        c.start(leader)
        w.targets = list(c.ids)  # it takes requests while it starts: refused, then 503 until it knows a leader
        c.wait_caught_up(timeout=60)
        leaders.append(c.leader())


def test_keyless_writes_while_the_leader_is_frozen_answer_truthfully(cluster, request) -> None:
    run_with_faults(cluster, request.node.name, 3.0, freeze_leader_three_times)


def test_keyless_writes_while_the_leader_is_killed_and_restarted_answer_truthfully(cluster, request) -> None:
    # An apply timeout shorter than an election: a follower whose forwarded call died with the leader runs out of
    # time before a new leader is known. Its write may still commit (the new leader may hold the entry), so the
    # only honest answer then is 504; a 503 would make a key-less client create it twice. (A killed leader's
    # closed connections start the election at once, ~0.1-0.4 s: hence the short timeout, and a run may see no
    # 504 at all when every forwarded call was answered in time.)
    run_with_faults(cluster, request.node.name, 0.25, kill_and_restart_leader_twice)
