"""A synchronous harness for unit tests of the pure core: nodes, a message queue, filters, explicit ticks."""
from __future__ import annotations

import random
from typing import Callable, Iterable

from hactl.raft.confchange import bootstrap_state
from hactl.raft.core import Config, Raft
from hactl.raft.types import ConfState, Entry, HardState, Message, MsgType, ReadState, Role


class Net:
    def __init__(self, ids: Iterable[str], *, seed: int = 1, logs: dict[str, list[int]] | None = None,
                 terms: dict[str, int] | None = None, **cfg: object):
        """Nodes with the given voters. `logs` gives a node's log as a list of terms (index 1..n) after the
        bootstrap entries are left out: for paper scenarios the membership is fixed through `conf` instead."""
        self.ids = sorted(ids)
        self.nodes: dict[str, Raft] = {}
        self.queue: list[Message] = []
        self.drop: Callable[[Message], bool] = lambda m: False
        self.applied: dict[str, list[Entry]] = {i: [] for i in self.ids}
        self.reads: dict[str, list[ReadState]] = {i: [] for i in self.ids}
        self.sent: list[Message] = []
        conf = ConfState(tuple(self.ids))
        for n, i in enumerate(self.ids):
            config = Config(i, **cfg)  # type: ignore[arg-type]
            if logs is not None:
                ents = [Entry(k + 1, t) for k, t in enumerate(logs.get(i, []))]
                hs = HardState(term=(terms or {}).get(i, ents[-1].term if ents else 0))
                self.nodes[i] = Raft(config, random.Random(seed * 100 + n), hard_state=hs, conf=conf, entries=ents)
            else:
                hs, ents = bootstrap_state(self.ids)
                r = Raft(config, random.Random(seed * 100 + n), hard_state=hs, entries=ents)
                self.nodes[i] = r
        self.settle()

    def __getitem__(self, i: str) -> Raft:
        return self.nodes[i]

    def settle(self, rounds: int = 1000) -> None:
        """Process Readys and deliver messages until nothing moves."""
        for _ in range(rounds):
            moved = False
            for i in self.ids:
                r = self.nodes[i]
                if r.has_ready():
                    rd = r.ready()
                    self.queue.extend(rd.early_messages + rd.messages)
                    self.sent.extend(rd.early_messages + rd.messages)
                    self.applied[i].extend(rd.committed)
                    self.reads[i].extend(rd.read_states)
                    r.advance(rd)
                    moved = True
            if self.queue:
                q, self.queue = self.queue, []
                for m in q:
                    if m.to in self.nodes and not self.drop(m):
                        self.nodes[m.to].step(m)
                moved = True
            if not moved:
                return
        raise AssertionError("harness did not settle")

    def add(self, r: Raft) -> Raft:
        self.nodes[r.id] = r
        self.ids = sorted(set(self.ids) | {r.id})
        self.applied.setdefault(r.id, [])
        self.reads.setdefault(r.id, [])
        return r

    def tick(self, n: int = 1, only: Iterable[str] | None = None) -> None:
        for _ in range(n):
            for i in (only or self.ids):
                self.nodes[i].tick()
            self.settle()

    def isolate(self, *cut: str) -> None:
        s = set(cut)
        self.drop = lambda m: (m.frm in s) != (m.to in s)

    def heal(self) -> None:
        self.drop = lambda m: False

    def campaign(self, i: str) -> None:
        """Make i campaign now (as if its election timer fired)."""
        r = self.nodes[i]
        r.election_elapsed = r.randomized_timeout
        r.tick()
        self.settle()

    def leaders(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].role == Role.LEADER]

    def leader(self) -> Raft:
        ls = self.leaders()
        assert len(ls) == 1, f"expected one leader, got {ls}"
        return self.nodes[ls[0]]

    def elect(self, i: str) -> Raft:
        self.campaign(i)
        assert self.nodes[i].role == Role.LEADER, f"{i} is {self.nodes[i].role.name}"
        return self.nodes[i]

    def count(self, typ: MsgType, since: int = 0) -> int:
        return sum(1 for m in self.sent[since:] if m.type == typ)
