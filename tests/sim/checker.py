"""Global safety invariants of the simulated cluster, checked incrementally.

Every check here is O(1) or O(new entries) per event, except the leader-completeness sweep that runs once per
election (O(committed entries)); that keeps 2,000-step runs cheap while still checking after every step.

Hashes: ``chain(prev, entry)`` is a running BLAKE2b over (index, term, type, data). The same function gives
  * the prefix hash of a persisted log at each index (log matching: one (index, term) -> one prefix hash), and
  * the state machine's running hash after applying an index (state-machine safety: one index -> one hash),
so a snapshot's data (the state machine hash at its index) can be compared with the log prefix hash it claims.
"""
from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from typing import TYPE_CHECKING

from hactl.raft.confchange import conf_after
from hactl.raft import quorum
from hactl.raft.types import ConfState, Entry, EntryType, HardState, Message, MsgType, Role, SnapshotMeta

if TYPE_CHECKING:  # pragma: no cover
    from .sim import Sim, SimNode

BASE = b"\0" * 16
_pack = struct.Struct(">QQB").pack


def chain(prev: bytes, e: Entry) -> bytes:
    return hashlib.blake2b(prev + _pack(e.index, e.term, e.type) + e.data, digest_size=16).digest()


def short(e: Entry | None) -> str:
    if e is None:
        return "<none>"
    kind = "conf" if e.type == EntryType.CONF_CHANGE else ("noop" if not e.data else e.data.decode("ascii", "replace"))
    return f"({e.index},t{e.term},{kind})"


class InvariantViolation(AssertionError):
    """A safety or liveness property of Raft does not hold in a simulated run."""

    def __init__(self, kind: str, detail: str, *, seed: int | None = None, step: int | None = None,
                 replay: str = "", trace: str = ""):
        self.kind, self.detail, self.seed, self.step, self.replay, self.trace = kind, detail, seed, step, replay, trace
        msg = f"[seed {seed} step {step}] {kind}: {detail}"
        if replay:
            msg += f"\n  replay: {replay}"
        if trace:
            msg += f"\n  last events:\n{trace}"
        super().__init__(msg)


class Checker:
    def __init__(self, sim: "Sim", bootstrap: ConfState):
        self.sim = sim
        self.disabled: frozenset[str] = frozenset(sim.disabled_checks)
        # at most one leader per term
        self.leaders: dict[int, str] = {}
        # log matching: (index, term) -> (prefix hash, node that persisted it first)
        self.lm: dict[tuple[int, int], tuple[bytes, str]] = {(0, 0): (BASE, "-")}
        # state-machine safety: the first applied entry and state hash at each index (contiguous from 0)
        self.g_entries: list[Entry | None] = [None]
        self.g_hash: list[bytes] = [BASE]
        self.data_at: dict[bytes, int] = {}  # payload -> the one index it was applied at
        # commit knowledge: c_term[i] = term of the committed entry at i, c_bound[i] = a term by which it was
        # committed (the term of the node that first showed commit >= i: an upper bound of the real commit term)
        self.known_commit = 0
        self.c_term: list[int | None] = [0]
        self.c_bound: list[int] = [0]
        # membership history, from applied CONF_CHANGE entries in index order
        self.gconf = bootstrap
        self.conf_idx: list[int] = [0]
        self.conf_val: list[ConfState] = [bootstrap]
        self.stats = {"elections": 0, "applied": 0}

    # ------------------------------------------------------------------ helpers

    def fail(self, kind: str, detail: str) -> None:
        if kind in self.disabled:
            return
        raise self.sim.violation(kind, detail)

    @property
    def max_applied(self) -> int:
        return len(self.g_entries) - 1

    def conf_at(self, index: int) -> ConfState:
        return self.conf_val[bisect_right(self.conf_idx, index) - 1]

    # ------------------------------------------------------------------ leaders and commit knowledge

    def new_leader(self, node: "SimNode") -> None:
        r = node.raft
        term = r.term
        self.stats["elections"] += 1
        prev = self.leaders.setdefault(term, node.id)
        if prev != node.id:
            self.fail("two-leaders", f"{prev} and {node.id} were both leader in term {term}")
        # Leader completeness: every entry committed by a term < this one is in the new leader's log.
        log = r.log
        c_term, c_bound = self.c_term, self.c_bound
        for i in range(max(log.offset + 1, 1), self.known_commit + 1):
            if c_bound[i] < term:
                t = c_term[i]
                if t is not None and log.term(i) != t:
                    self.fail("leader-completeness",
                              f"{node.id} became leader of term {term} without committed entry {i} (term {t}, "
                              f"committed by term {c_bound[i]}); its log has term {log.term(i)} there "
                              f"(offset {log.offset}, last {log.last_index()})")

    def commit_advanced(self, node: "SimNode", commit: int) -> None:
        r = node.raft
        bound = r.term
        lo = self.known_commit + 1
        for i in range(lo, commit + 1):
            self.c_term.append(r.log.term(i))
            self.c_bound.append(bound)
            if i <= self.max_applied:  # already applied somewhere: must be the same entry
                t = self.c_term[i]
                ge = self.g_entries[i]
                if t is not None and ge is not None and ge.term != t:
                    self.fail("state-machine-safety", f"{node.id} commits index {i} with term {t} but "
                                                      f"{short(ge)} was applied there")
        self.known_commit = commit
        # Leaders of later terms that already exist must hold the newly committed entries.
        for other in self.sim.up_nodes:
            ro = other.raft
            if ro.role == Role.LEADER and ro.term > bound:
                for i in range(max(lo, ro.log.offset + 1), commit + 1):
                    t = self.c_term[i]
                    if t is not None and ro.log.term(i) != t:
                        self.fail("leader-completeness",
                                  f"entry {i} (term {t}) committed by term {bound} (seen at {node.id}) is missing "
                                  f"from {other.id}, leader of term {ro.term} (it has term {ro.log.term(i)})")

    # ------------------------------------------------------------------ persistence

    def hard_state(self, node: "SimNode", old: HardState, new: HardState) -> None:
        if new.term < old.term:
            self.fail("term-regressed", f"{node.id} persisted term {new.term} after {old.term}")
        elif new.term == old.term and old.vote is not None and new.vote != old.vote:
            self.fail("double-vote", f"{node.id} voted for {old.vote} and then {new.vote} in term {new.term}")
        if new.commit < old.commit:
            self.fail("commit-regressed", f"{node.id} persisted commit {new.commit} after {old.commit}")

    def register_prefix(self, node: "SimNode", e: Entry, ph: bytes) -> None:
        key = (e.index, e.term)
        got = self.lm.get(key)
        if got is None:
            self.lm[key] = (ph, node.id)
        elif got[0] != ph:
            self.fail("log-matching", f"{node.id} and {got[1]} both persisted an entry at index {e.index} term "
                                      f"{e.term} but their logs differ before it ({node.id}'s: {short(e)})")

    def prefix_of(self, index: int, term: int) -> bytes | None:
        got = self.lm.get((index, term))
        return None if got is None else got[0]

    # ------------------------------------------------------------------ state machine

    def applied(self, node: "SimNode", e: Entry, h: bytes) -> None:
        i = e.index
        n = len(self.g_entries)
        if i < n:
            if self.g_hash[i] != h:
                ge = self.g_entries[i]
                what = (f"{node.id} applied {short(e)} but {short(ge)} was applied there first"
                        if ge != e else f"{node.id} applied {short(e)} on top of a different history")
                self.fail("state-machine-safety", what)
            return
        if i != n:
            self.fail("apply-gap", f"{node.id} applied index {i} but nothing was ever applied at {n}")
        self.g_entries.append(e)
        self.g_hash.append(h)
        self.stats["applied"] += 1
        if i > self.known_commit:
            self.fail("applied-uncommitted", f"{node.id} applied {short(e)} beyond every commit index seen "
                                             f"({self.known_commit})")
        else:
            t = self.c_term[i]
            if t is None:
                self.c_term[i] = e.term
            elif t != e.term:
                self.fail("state-machine-safety", f"{node.id} applied {short(e)} but index {i} was committed "
                                                  f"with term {t}")
        if e.type == EntryType.CONF_CHANGE:
            new = conf_after(self.gconf, e.data)
            if new is not None and new != self.gconf:
                self.gconf = new
                self.conf_idx.append(i)
                self.conf_val.append(new)
                self.sim.conf_changed(i, new)
        elif e.data:
            prev = self.data_at.setdefault(e.data, i)
            if prev != i:
                self.fail("duplicate-apply", f"proposal {e.data!r} applied at index {prev} and again at {i}")

    def snapshot_marker(self, node: "SimNode", meta: SnapshotMeta) -> None:
        """raft.db records a snapshot: its membership must be the one in force at its index (it is what a restart
        and a lagging follower will use)."""
        if meta.index < len(self.g_hash) and meta.conf != self.conf_at(meta.index):
            self.fail("snapshot-membership", f"{node.id} records snapshot marker {meta.index} with membership "
                                             f"{meta.conf}; the membership in force there is "
                                             f"{self.conf_at(meta.index)}")

    def snapshot_data(self, node: "SimNode", meta: SnapshotMeta, h: bytes, what: str) -> None:
        """A snapshot (taken locally or installed) holds state hash h and membership meta.conf at (index, term):
        both must be what was applied at exactly that index."""
        index, term = meta.index, meta.term
        if index < len(self.g_hash) and meta.conf != self.conf_at(index):
            self.fail("snapshot-membership", f"{node.id} {what} a snapshot at {index} with membership "
                                             f"{meta.conf}; the membership in force there is {self.conf_at(index)}")
        if index >= len(self.g_hash):
            self.fail("snapshot-ahead", f"{node.id} {what} a snapshot at {index}, beyond anything applied "
                                        f"({self.max_applied})")
        elif self.g_hash[index] != h:
            self.fail("state-machine-safety", f"{node.id} {what} a snapshot at {index} whose state differs from "
                                              f"what was applied there ({short(self.g_entries[index])})")
        ph = self.prefix_of(index, term)
        if ph is None:
            self.fail("snapshot-unknown", f"{node.id} {what} a snapshot at ({index}, t{term}): no log ever held "
                                          f"that entry")
        elif ph != h:
            self.fail("log-matching", f"{node.id} {what} a snapshot at ({index}, t{term}) whose state does not "
                                      f"match the log prefix ending there")

    # ------------------------------------------------------------------ durability of what leaves a node

    def message_sent(self, node: "SimNode", m: Message) -> None:
        """The early-message invariant (hactl/raft/driver.py): a message may leave a node only if everything it
        vouches for is durable there. Its term is durable (pre-votes carry the next term, which is never stored);
        a granted vote is durable; an append acknowledgement covers only entries durable with the same terms."""
        disk = node.disk
        if m.type not in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP) and m.term > disk.hard.term:
            self.fail("not-durable", f"{node.id} sent {m.type.name} of term {m.term} while term {disk.hard.term} "
                                     f"is durable")
        # A granted vote: durable, or superseded by a durable later term (which forbids voting in this one again).
        if (m.type == MsgType.VOTE_RESP and not m.reject and disk.hard.term == m.term
                and disk.hard.vote != m.to):
            self.fail("not-durable", f"{node.id} granted its term-{m.term} vote to {m.to} before the vote was "
                                     f"durable (durable: term {disk.hard.term}, vote {disk.hard.vote})")
        if m.type == MsgType.APPEND_RESP and not m.reject and m.index > disk.marker.index:
            leader = self.sim.nodes.get(m.to)
            want = None  # the term the leader has there, while it still leads the term of the reply
            if leader is not None and leader.raft is not None and leader.raft.term == m.term:
                want = leader.raft.log.term(m.index)
            if m.index > disk.last_index() or (want is not None and disk.term(m.index) != want):
                self.fail("not-durable", f"{node.id} acknowledged entries up to {m.index} before they were durable "
                                         f"(durable log ({disk.start}, {disk.last_index()}], term there "
                                         f"{disk.term(m.index)}, the leader's {want})")

    def leader_commit(self, node: "SimNode", commit: int) -> None:
        """A leader's commit index covers only an entry durable on a majority of voters (its own disk included)."""
        r = node.raft
        term = r.log.term(commit)
        if term is None:
            return
        nodes = self.sim.nodes

        def holds(v: str) -> bool:
            n = nodes.get(v)
            if n is None:
                return False
            d = n.disk
            return d.term(commit) == term or commit <= d.marker.index  # or inside a (committed) snapshot
        if not quorum.has_quorum(r.conf.voters, holds):
            self.fail("commit-not-durable", f"{node.id} (leader of term {r.term}) committed index {commit} "
                                            f"(term {term}) while a majority of {list(r.conf.voters)} had not "
                                            f"persisted it")
