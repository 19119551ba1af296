"""A pure Raft state machine in the style of etcd-io/raft.

No I/O, no clock, no threads: time is ``tick()``, input is ``step(msg)`` and ``propose(data)``, output is
``ready()`` (what to persist, then send, then apply) acknowledged with ``advance()``. The only randomness is the
injected RNG that spreads election timeouts.

Features: pre-vote, check-quorum with follower leases, batched and windowed replication, conflict-term
backtracking, leadership transfer, single-server membership changes with learners, ReadIndex, snapshot hand-off.

Membership changes take effect when their entry is applied (on ``advance``); a new leader may not propose one until
everything up to its term-start entry is applied, and only one may be pending at a time. That is the same
discipline etcd uses and it avoids the known single-server-change bug with leader changes. A leader that applies
its own removal hands leadership to a remaining voter before it steps down (``_hand_off``).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from . import confchange, quorum
from .confchange import conf_after
from .log import RaftLog
from .progress import Progress, ProgressState
from .types import (ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message,
                    MsgType, NodeId, Ready, ReadState, Role, SnapshotMeta, SoftState)

TRANSFER_CONTEXT = b"transfer"  # marks votes started by TimeoutNow: they bypass follower leases

_VOTE_RESP = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}
_FROM_LEADER = (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT)
_MEMBERS_ONLY = frozenset({MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP,
                           MsgType.TIMEOUT_NOW})
# Messages that depend on nothing unpersisted but their term (sent early only once that term is durable): the
# leader's replication traffic (it counts itself only after its own write), heartbeats and their replies, reads.
_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT, MsgType.TIMEOUT_NOW,
                    MsgType.READ_INDEX_RESP, MsgType.HEARTBEAT_RESP, MsgType.READ_INDEX})


class NotLeader(Exception):
    def __init__(self, leader: NodeId | None):
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalRefused(Exception):
    """The leader will not take this proposal now (transfer under way, change pending, target lagging...)."""


@dataclass
class Config:
    id: NodeId
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_msg_entries: int = 64
    max_msg_bytes: int = 1 << 20
    max_inflight: int = 64
    pre_vote: bool = True
    check_quorum: bool = True
    max_committed_per_ready: int = 4096
    promote_max_lag: int = 100  # a learner within this many entries of the leader may be promoted
    snapshot_timeout_ticks: int = 0  # 0: 3 * election_tick; a silent snapshot transfer is retried after this

    def validate(self) -> None:
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick >= 1")
        if self.max_msg_entries < 1 or self.max_inflight < 1 or self.max_msg_bytes < 1:
            raise ValueError("max_msg_entries, max_msg_bytes and max_inflight must be >= 1")


@dataclass
class Status:
    id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    progress: dict[NodeId, tuple[int, int, str]] = field(default_factory=dict)  # id -> (match, next, state)
    transferee: NodeId | None = None


class Raft:
    def __init__(self, config: Config, rng: random.Random, *, hard_state: HardState = HardState(),
                 conf: ConfState = ConfState(), snapshot: SnapshotMeta = SnapshotMeta(),
                 log_start: tuple[int, int] | None = None, entries: Sequence[Entry] = ()):
        config.validate()
        self.cfg = config
        self.id = config.id
        self.rng = rng
        start = log_start if log_start is not None else (snapshot.index, snapshot.term)
        self.log = RaftLog(start[0], start[1], entries, committed=max(hard_state.commit, snapshot.index))
        if self.log.committed > self.log.last_index():
            raise ValueError(f"hard state commit {hard_state.commit} is beyond the last log index "
                             f"{self.log.last_index()}")
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.conf = conf
        self.snapshot = snapshot  # newest local snapshot: what we send to followers that fell behind
        self.applied = snapshot.index  # the driver rebuilds its state machine from that snapshot
        self.applying = self.applied  # highest index handed out in a Ready, not yet advanced
        self.dropped: Counter[str] = Counter()
        self.role = Role.FOLLOWER
        self.leader: NodeId | None = None
        self.prs: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.pending_snapshot: SnapshotMeta | None = None  # received, to be installed by the driver
        self.pending_conf_index = 0
        self.transferee: NodeId | None = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._ticks = 0  # logical clock: ticks since this core was created
        self.randomized_timeout = config.election_tick
        self._bcast_pending = False
        self._commit_bcast = False
        # ReadIndex: requests wait for a heartbeat round that began after they arrived
        self._reads_waiting: list[tuple[bytes, NodeId]] = []
        self._read_rounds: list[tuple[int, int, list[tuple[bytes, NodeId]]]] = []  # (round, index, requests)
        self._read_round = 0
        self._read_acks: dict[NodeId, int] = {}
        self._prev_hard = HardState(self.term, self.vote, self.log.committed)
        self._durable_term = self.term
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._reset_timeout()

    # ------------------------------------------------------------------ public surface

    def tick(self) -> None:
        self._ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self._promotable() and self.election_elapsed >= self.randomized_timeout:
                self.election_elapsed = 0
                self._campaign(pre=self.cfg.pre_vote)

    def step(self, m: Message) -> None:
        """Feed one message from a peer. Bad input is dropped and counted in ``dropped``: ``_check`` validates
        everything ``_step`` relies on, so an exception from ``_step`` is a bug and propagates (the node must stop
        rather than go on with a half-updated state)."""
        reason = self._check(m)
        if reason:
            self.dropped[reason] += 1
            return
        self._step(m)

    def propose(self, data: bytes) -> int:
        self._check_can_propose()
        return self._append_new(EntryType.NORMAL, bytes(data))

    def propose_conf_change(self, cc: ConfChange) -> int:
        self._check_can_propose()
        if self.pending_conf_index > self.applied:
            raise ProposalRefused("another membership change is still pending")
        why = confchange.refusal(self.conf, cc)
        if why is not None:
            raise ProposalRefused(why)
        if cc.type == ConfChangeType.PROMOTE and self.prs[cc.node].match + self.cfg.promote_max_lag < \
                self.log.last_index():
            raise ProposalRefused(f"learner {cc.node} is not caught up (match {self.prs[cc.node].match}, "
                                  f"leader at {self.log.last_index()})")
        index = self._append_new(EntryType.CONF_CHANGE, confchange.encode_conf_change(cc))
        self.pending_conf_index = index
        return index

    def transfer_leadership(self, target: NodeId | None = None) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if target is None:
            others = [v for v in self.conf.voters if v != self.id]
            if not others:
                raise ProposalRefused("no other voter to transfer leadership to")
            target = max(others, key=lambda v: (self.prs[v].match, v))
        if target == self.id:
            return
        if target not in self.conf.voters:
            raise ProposalRefused(f"{target} is not a voter")
        self.transferee = target
        self._transfer_elapsed = 0
        if self.prs[target].match == self.log.last_index():
            self._send(MsgType.TIMEOUT_NOW, target)
        else:
            self._send_append(target)  # TimeoutNow follows once it has caught up

    def read_index(self, ctx: bytes) -> None:
        if self.role == Role.LEADER:
            self._reads_waiting.append((ctx, self.id))
        elif self.leader is not None and self.role == Role.FOLLOWER:
            self._send(MsgType.READ_INDEX, self.leader, context=ctx)
        else:
            raise NotLeader(self.leader)

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.index > self.snapshot.index and meta.index <= self.applied:
            self.snapshot = meta

    def compact(self, index: int) -> None:
        if index > self.snapshot.index or index > self.applied:
            raise ValueError(f"cannot compact to {index}: newest snapshot {self.snapshot.index}, "
                             f"applied {self.applied}")
        self.log.compact(index)

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        pr = self.prs.get(to)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = ok  # on success wait for the follower's reply before probing again

    def leader_lost(self) -> None:
        """The connection to the leader closed (its process died, most often): end the lease and campaign within
        a few ticks instead of waiting out the election timeout. Only a hint: a pre-vote still needs a quorum
        that no longer hears the leader, so a connection that merely blipped disturbs nothing."""
        if self.role != Role.FOLLOWER or self.leader is None:
            return
        self.election_elapsed = max(self.election_elapsed, self.cfg.election_tick)
        # 1-3 ticks of jitter: followers that both lost the leader rarely campaign in the same tick.
        self.randomized_timeout = min(self.randomized_timeout, self.election_elapsed + self.rng.randrange(1, 4))

    def report_unreachable(self, to: NodeId) -> None:
        pr = self.prs.get(to)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def has_ready(self) -> bool:
        return bool(self._soft() != self._prev_soft or self._hard() != self._prev_hard or self.msgs
                    or self.log.unstable_from <= self.log.last_index() or self.pending_snapshot
                    or self.read_states or self._bcast_pending or self._reads_ready()
                    or (self.log.committed > self.applying and self.pending_snapshot is None))

    def ready(self) -> Ready:
        if self.role == Role.LEADER:
            self._flush_leader()
        rd = Ready()
        soft = self._soft()
        if soft != self._prev_soft:
            rd.soft_state = self._prev_soft = soft
        hard = self._hard()
        if hard != self._prev_hard:
            rd.hard_state = self._prev_hard = hard
        rd.entries = self.log.unstable()
        if self.pending_snapshot is not None:
            rd.snapshot = self.pending_snapshot
            self.pending_snapshot = None
            self.applying = rd.snapshot.index
        hi = min(self.log.committed, self.applying + self.cfg.max_committed_per_ready)
        if hi > self.applying:
            rd.committed = self.log.entries[self.applying - self.log.offset: hi - self.log.offset]
            self.applying = hi
        rd.early_messages = self._split_early()
        rd.messages, self.msgs = self.msgs, []
        rd.read_states, self.read_states = self.read_states, []
        return rd

    def take_early_messages(self) -> list[Message]:
        """While a Ready is being persisted: the messages that may leave now (heartbeats, a leader's appends)."""
        if self.role == Role.LEADER:
            self._flush_leader()
        return self._split_early()

    def _split_early(self) -> list[Message]:
        early = [m for m in self.msgs if m.type in _EARLY and m.term <= self._durable_term]
        if early:
            self.msgs = [m for m in self.msgs if not (m.type in _EARLY and m.term <= self._durable_term)]
        return early

    def advance(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._durable_term = rd.hard_state.term
        if rd.snapshot is not None:
            self.applied = max(self.applied, rd.snapshot.index)
            if rd.snapshot.index > self.snapshot.index:
                self.snapshot = rd.snapshot
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for e in rd.committed:
            # An entry at or below the offset was superseded by a snapshot restored while this Ready was being
            # persisted; the snapshot's membership already includes it (found by the simulator, churn seed 49).
            if e.type == EntryType.CONF_CHANGE and e.index > self.log.offset:
                self._apply_conf_change(e)
            self.applied = max(self.applied, e.index)
        if self.role == Role.LEADER:
            if self.id in self.prs:
                self.prs[self.id].match = self.log.stable_index()
            self._maybe_commit()

    def status(self) -> Status:
        prog = {}
        if self.role == Role.LEADER:
            prog = {k: (p.match, p.next, p.state.name) for k, p in sorted(self.prs.items())}
        return Status(self.id, self.role, self.term, self.leader, self.log.committed, self.applied,
                      self.log.last_index(), self.conf, prog, self.transferee)

    # ------------------------------------------------------------------ hooks (overridden by tests' buggy variants)

    def _vote_allowed(self, m: Message) -> bool:
        """May we vote for m.frm, ignoring the log check? (one vote per term; pre-votes are not binding)"""
        return (self.vote == m.frm or (self.vote is None and self.leader is None)
                or (m.type == MsgType.PRE_VOTE and m.term > self.term))

    def _maybe_commit(self) -> bool:
        """Leader: commit the quorum-replicated index, but only by counting replicas of a current-term entry."""
        q = self._quorum_index()
        if q > self.log.committed and self.log.term(q) == self.term:
            return self._commit_advanced(q)
        return False

    def _commit_advanced(self, index: int) -> bool:
        if self.log.commit_to(index):
            self._bcast_pending = True  # followers learn the new commit index at the next batch point
            self._commit_bcast = True
            return True
        return False

    def _quorum_index(self) -> int:
        return quorum.committed_index(self.conf.voters, {v: pr.match for v, pr in self.prs.items()})

    # ------------------------------------------------------------------ message validation and dispatch

    def _check(self, m: object) -> str | None:
        if not isinstance(m, Message) or not isinstance(m.type, MsgType) or not isinstance(m.term, int):
            return "malformed"
        if m.to != self.id:
            return "wrong_recipient"
        if m.frm == self.id:
            return "from_self"
        members = self.conf.members()
        if members and m.frm not in members and m.type in _MEMBERS_ONLY and not (
                m.type == MsgType.TIMEOUT_NOW and m.frm == self.leader and m.term == self.term):
            # Only what could disrupt: a removed node's campaign. A leader's traffic is accepted whatever our
            # (possibly stale) membership says: it is how a lagging node learns the current membership. So is
            # the TimeoutNow of the leader we follow in this term: a removed leader handing over (_hand_off).
            return "unknown_sender"
        if (m.snapshot is None) == (m.type == MsgType.SNAPSHOT):
            return "malformed"
        if m.entries and (m.type != MsgType.APPEND or m.entries[0].index != m.index + 1
                          or any(b.index != a.index + 1 for a, b in zip(m.entries, m.entries[1:]))
                          or any(e.term > m.term for e in m.entries)):
            return "malformed"
        return None

    def _step(self, m: Message) -> None:
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                forced = m.context == TRANSFER_CONTEXT
                in_lease = (self.cfg.check_quorum and self.leader is not None
                            and self.election_elapsed < self.cfg.election_tick)
                if in_lease and not forced:
                    self.dropped["vote_in_lease"] += 1  # a leader is alive: ignore a disruptive candidate
                    return
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never move terms: a granted pre-vote carries the future term
            elif m.type in _FROM_LEADER:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.APPEND, MsgType.HEARTBEAT):
                # A stale leader (e.g. back from a partition) learns our term and steps down; without this a
                # pre-vote cluster could leave it stuck.
                self._send(MsgType.APPEND_RESP, m.frm)
            elif m.type == MsgType.PRE_VOTE:
                self._send(MsgType.PRE_VOTE_RESP, m.frm, reject=True)
            else:
                self.dropped["stale_term"] += 1
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _handle_vote_request(self, m: Message) -> None:
        resp = _VOTE_RESP[m.type]
        if self._vote_allowed(m) and self.log.is_up_to_date(m.index, m.log_term):
            # Answer with the request's term: a granted pre-vote is for the future term.
            self.msgs.append(Message(resp, self.id, m.frm, m.term))
            if m.type == MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(resp, m.frm, reject=True)

    # ------------------------------------------------------------------ roles

    def _promotable(self) -> bool:
        return self.id in self.conf.voters

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = None
            # Queued messages of the old term may vouch for a log this term is about to change: an append
            # acknowledgement for entries a new leader truncates before the next Ready is even taken would leave
            # after a write that no longer holds them (found by the simulator's durability check). Drop them;
            # Raft retransmits whatever still matters.
            self.msgs = [m for m in self.msgs if m.term >= term]
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.votes = {}
        self.transferee = None
        self._reads_waiting.clear()
        self._read_rounds.clear()
        self._read_acks.clear()
        self._bcast_pending = False
        self._commit_bcast = False

    def _reset_timeout(self) -> None:
        self.randomized_timeout = self.rng.randrange(self.cfg.election_tick, 2 * self.cfg.election_tick)

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        self.prs = {}

    def _campaign(self, pre: bool, forced: bool = False) -> None:
        if pre:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            vote_type, term = MsgType.VOTE, self.term
        self.prs = {}
        self.votes = {self.id: True}
        if self._tally() == "won":
            self._won(pre)
            return
        ctx = TRANSFER_CONTEXT if forced else b""
        for v in self.conf.voters:
            if v != self.id:
                self.msgs.append(Message(vote_type, self.id, v, term, log_term=self.log.last_term(),
                                         index=self.log.last_index(), context=ctx))

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _tally(self) -> str:
        return quorum.vote_result(self.conf.voters, self.votes)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        last = self.log.last_index()
        self.prs = {}
        for n in set(self.conf.members()) | {self.id}:
            self.prs[n] = Progress(match=0, next=last + 1, learner=n in self.conf.learners, last_heard=self._ticks)
        self.prs[self.id].match = self.log.stable_index()
        # The term-start no-op commits everything before it; membership changes wait until it is applied.
        self.pending_conf_index = self._append_new(EntryType.NORMAL, b"")

    def _step_candidate(self, m: Message) -> None:
        want = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if m.type in _FROM_LEADER:
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif m.type == want:
            self.votes.setdefault(m.frm, not m.reject)
            result = self._tally()
            if result == "won":
                self._won(self.role == Role.PRE_CANDIDATE)
            elif result == "lost":
                self._become_follower(self.term, None)
        else:
            self.dropped["ignored:" + m.type.name] += 1

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        if m.type in _FROM_LEADER:
            self.election_elapsed = 0
            self.leader = m.frm
        if m.type == MsgType.APPEND:
            self._handle_append(m)
        elif m.type == MsgType.HEARTBEAT:
            self.log.commit_to(m.commit)
            self._send(MsgType.HEARTBEAT_RESP, m.frm, context=m.context)
        elif m.type == MsgType.SNAPSHOT:
            self._handle_snapshot(m)
        elif m.type == MsgType.TIMEOUT_NOW:
            if self._promotable():
                self._campaign(pre=False, forced=True)
        elif m.type == MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))
        else:
            self.dropped["ignored:" + m.type.name] += 1

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(MsgType.APPEND_RESP, m.frm, index=log.committed)
            return
        if log.match_term(m.index, m.log_term):
            last_new = m.index + len(m.entries)
            conflict = log.find_conflict(m.entries)
            if conflict:
                if conflict <= log.committed:
                    self.dropped["conflict_with_committed"] += 1  # impossible in a correct cluster
                    return
                log.append(m.entries[conflict - m.index - 1:])
            log.commit_to(min(m.commit, last_new))
            self._send(MsgType.APPEND_RESP, m.frm, index=last_new)
            return
        hint = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
        self._send(MsgType.APPEND_RESP, m.frm, index=m.index, reject=True, reject_hint=hint,
                   log_term=log.term(hint) or 0)

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        assert s is not None
        if s.index <= self.log.committed:
            self._send(MsgType.APPEND_RESP, m.frm, index=self.log.committed)
            return
        if self.log.match_term(s.index, s.term):
            self.log.commit_to(s.index)  # we already hold that prefix: just move forward
        else:
            self.log.restore(s)
            self.conf = s.conf
            self.pending_snapshot = s
        self._send(MsgType.APPEND_RESP, m.frm, index=s.index)

    # ------------------------------------------------------------------ leader

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.election_tick:
                self.transferee = None  # the target did not take over in time: keep leading...
                if self.id not in self.conf.voters:
                    # ...unless we were removed (see _apply_conf_change): a leader outside its configuration
                    # only hands over, and after an election timeout of heartbeats the voters know the change
                    # committed, so they elect one of their own.
                    self._become_follower(self.term, None)
                    return
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0  # the leader's own lease window (see in_lease in _step)
        if self.cfg.check_quorum and not self._quorum_active():
            self._become_follower(self.term, None)
            return
        timeout = self.cfg.snapshot_timeout_ticks or 3 * self.cfg.election_tick
        for pr in self.prs.values():
            if pr.state == ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= timeout:
                    pr.pending_snapshot = 0
                    pr.become_probe()
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        """Has a quorum of voters (us included) been heard from within the last election timeout?"""
        horizon = self._ticks - self.cfg.election_tick
        return quorum.has_quorum(self.conf.voters, lambda v: v == self.id or (
            v in self.prs and self.prs[v].last_heard > horizon))

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        if m.type == MsgType.READ_INDEX:
            self._reads_waiting.append((m.context, m.frm))
            return
        if pr is None:
            self.dropped["no_progress"] += 1
            return
        if m.type == MsgType.APPEND_RESP:
            pr.last_heard = self._ticks
            self._handle_append_resp(m, pr)
        elif m.type == MsgType.HEARTBEAT_RESP:
            pr.last_heard = self._ticks
            pr.probe_sent = False  # the follower is alive: a lost probe is sent again
            if pr.state == ProgressState.REPLICATE and len(pr.inflight) >= self.cfg.max_inflight:
                pr.inflight.popleft()  # likewise let one more append through a full window
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if len(m.context) == 8:
                self._read_acks[m.frm] = max(self._read_acks.get(m.frm, 0), int.from_bytes(m.context, "big"))
                self._release_reads()
        else:
            self.dropped["ignored:" + m.type.name] += 1

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.paused(self.cfg.max_inflight)
        if not pr.maybe_update(m.index):
            if was_paused and pr.state == ProgressState.PROBE:
                self._send_append(m.frm)
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.free_to(m.index)
        self._maybe_commit()
        while self._send_append(m.frm, allow_empty=False):
            pass
        if m.frm == self.transferee and pr.match == self.log.last_index():
            self._send(MsgType.TIMEOUT_NOW, m.frm)

    def _flush_leader(self) -> None:
        """Batch point: replicate what was proposed since the last Ready and start a read round."""
        if self._bcast_pending:
            commit_changed, self._bcast_pending, self._commit_bcast = self._commit_bcast, False, False
            for peer in sorted(self.prs):
                if peer != self.id:
                    sent = False
                    while self._send_append(peer, allow_empty=False):
                        sent = True
                    if not sent and commit_changed:
                        self._send_append(peer)  # an empty append carries the new commit index
        if self._reads_ready():
            reqs, self._reads_waiting = self._reads_waiting, []
            self._read_round += 1
            self._read_rounds.append((self._read_round, self.log.committed, reqs))
            self._bcast_heartbeat()
            self._release_reads()

    def _reads_ready(self) -> bool:
        # A new leader learns the commit index only once an entry of its own term commits.
        return (self.role == Role.LEADER and bool(self._reads_waiting)
                and self.log.term(self.log.committed) == self.term)

    def _release_reads(self) -> None:
        while self._read_rounds:
            rnd, index, reqs = self._read_rounds[0]
            if not quorum.has_quorum(self.conf.voters, lambda v: v == self.id or self._read_acks.get(v, 0) >= rnd):
                return
            self._read_rounds.pop(0)
            for ctx, origin in reqs:
                if origin == self.id:
                    self.read_states.append(ReadState(index, ctx))
                elif origin in self.prs:
                    self._send(MsgType.READ_INDEX_RESP, origin, index=index, context=ctx)

    def _bcast_heartbeat(self) -> None:
        ctx = self._read_round.to_bytes(8, "big") if self._read_round else b""
        for peer in sorted(self.prs):
            if peer != self.id:
                pr = self.prs[peer]
                self._send(MsgType.HEARTBEAT, peer, commit=min(pr.match, self.log.committed), context=ctx)

    def _send_append(self, to: NodeId, allow_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.paused(self.cfg.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None and prev < self.log.offset:
            return self._send_snapshot(to, pr)
        if prev_term is None:  # next beyond our log (stale guess): probe from our end
            pr.next = self.log.last_index() + 1
            prev, prev_term = self.log.last_index(), self.log.last_term()
        ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_msg_entries, self.cfg.max_msg_bytes)
        if not ents and not allow_empty:
            return False
        self.msgs.append(Message(MsgType.APPEND, self.id, to, self.term, log_term=prev_term, index=prev,
                                 entries=tuple(ents), commit=self.log.committed))
        if pr.state == ProgressState.REPLICATE and ents:
            pr.next = ents[-1].index + 1
            pr.inflight.append(ents[-1].index)
        elif pr.state == ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if self.snapshot.index < self.log.offset:
            self.dropped["no_snapshot_to_send"] += 1  # compacted without a snapshot: driver bug
            return False
        pr.become_snapshot(self.snapshot.index)
        self.msgs.append(Message(MsgType.SNAPSHOT, self.id, to, self.term, snapshot=self.snapshot))
        return False

    # ------------------------------------------------------------------ shared helpers

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self.transferee is not None:
            raise ProposalRefused(f"leadership is being transferred to {self.transferee}")

    def _append_new(self, typ: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(index, self.term, typ, data)])
        self._bcast_pending = True  # sent at the next Ready, so proposals between Readys share messages
        return index

    def _send(self, typ: MsgType, to: NodeId, **kw: object) -> None:
        self.msgs.append(Message(typ, self.id, to, self.term, **kw))  # type: ignore[arg-type]

    def _soft(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def _hard(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _apply_conf_change(self, e: Entry) -> None:
        new = conf_after(self.conf, e.data)
        if new is None:
            self.dropped["bad_conf_change"] += 1
            return
        self.conf = new
        if self.role != Role.LEADER:
            return
        for n in self.conf.members():
            if n not in self.prs:
                self.prs[n] = Progress(match=0, next=self.log.last_index() + 1, last_heard=self._ticks)
            self.prs[n].learner = n in self.conf.learners
        for n in list(self.prs):
            if n not in self.conf.members():
                del self.prs[n]
                self._read_acks.pop(n, None)
        if self.transferee is not None and self.transferee not in self.conf.voters:
            self.transferee = None
        self._bcast_pending = True
        self._maybe_commit()  # a smaller quorum may already cover more
        self._release_reads()
        if self.id not in self.conf.voters:
            self._hand_off()

    def _hand_off(self) -> None:
        """We lead and have just applied our own removal: hand leadership to a remaining voter, then step down.

        The Raft thesis (section 4.2.2) has a removed leader step down once C_new is committed, which is safe to do
        at once there because every server uses the newest configuration in its log, committed or not. Here (as in
        etcd) a membership takes effect when its entry is applied, so when we apply our removal the other voters
        may not know yet that it committed: only a leader's appends and heartbeats tell them. Going quiet now would
        leave the voters that missed it on the old configuration, whose quorum counts us (gone for good) and, with
        pre-vote off, their campaigns keep disrupting the one voter that could win (simulator seed 525). So we stay
        leader for at most one election timeout, as the thesis's leader does while C_new commits: not counting
        ourselves in any majority, taking no proposals, still replicating the commit index; and we transfer
        leadership (thesis section 3.10; etcd-io/raft leaves the same as a TODO in switchToConfig: TimeoutNow to the
        follower with the largest match) to the most up-to-date remaining voter. We step down when its higher term
        reaches us, or by ourselves when the transfer times out (_tick_leader)."""
        self.transfer_leadership(None)  # the voter with the largest match; TimeoutNow once it has caught up
