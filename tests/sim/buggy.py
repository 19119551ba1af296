"""Test-only variants of the shipped core and driver with one known safety bug each: the simulator must catch them.

Each names the check that must catch it (tests/test_sim.py hunts for it over a range of seeds)."""
from __future__ import annotations

from hactl.raft.core import Raft
from hactl.raft.driver import Driver
from hactl.raft.types import Message, MsgType, Ready, SnapshotMeta


class DoubleVoteRaft(Raft):
    """Grants a vote to any candidate with an up-to-date log, even after voting for another in the same term."""

    def _vote_allowed(self, m: Message) -> bool:
        return True


class PrevTermCommitRaft(Raft):
    """Commits by counting replicas even for entries of previous terms (Figure 8 of the Raft paper)."""

    def _maybe_commit(self) -> bool:
        q = self._quorum_index()
        if q > self.log.committed:
            return self._commit_advanced(q)
        return False


class ReadWithoutQuorumRaft(Raft):
    """Answers a ReadIndex round without waiting for a quorum of heartbeat acknowledgements."""

    def _release_reads(self) -> None:
        self._read_acks = {v: self._read_round for v in self.conf.voters}
        super()._release_reads()


class TruncatingRaft(Raft):
    """Truncates the log after an append's entries even when every stored entry matches (a reordered old append
    then erases entries this follower already acknowledged)."""

    def _handle_append(self, m: Message) -> None:
        if m.entries and m.index >= self.log.committed and self.log.match_term(m.index, m.log_term):
            self.log.append(list(m.entries))
            self.log.commit_to(min(m.commit, m.index + len(m.entries)))
            self._send(MsgType.APPEND_RESP, m.frm, index=m.index + len(m.entries))
            return
        super()._handle_append(m)


class CountsUnpersistedRaft(Raft):
    """The leader counts its own entries toward a majority before its write of them is durable."""

    def _maybe_commit(self) -> bool:
        if self.id in self.prs:
            self.prs[self.id].match = self.log.last_index()
        return super()._maybe_commit()


class VoteBeforeDurableDriver(Driver):
    """Sends every message before the Ready's write, votes and append acknowledgements included."""

    def next_ready(self) -> Ready:
        rd = super().next_ready()
        rd.early_messages, rd.messages = rd.early_messages + rd.messages, []
        return rd


class StaleMembershipSnapshotDriver(Driver):
    """Pins a snapshot with the core's membership instead of the one the state machine read with it: while an
    applied batch is not yet finished, the core's is that of an earlier index (hactl's defect before issue 9)."""

    def take_snapshot(self) -> SnapshotMeta | None:
        meta = super().take_snapshot()
        return None if meta is None else SnapshotMeta(meta.index, meta.term, self.core.conf)


BUGS: dict[str, type[Raft] | type[Driver]] = {
    "double-vote": DoubleVoteRaft, "prev-term-commit": PrevTermCommitRaft,
    "read-without-quorum": ReadWithoutQuorumRaft, "truncate-matching": TruncatingRaft,
    "counts-unpersisted": CountsUnpersistedRaft, "vote-before-durable": VoteBeforeDurableDriver,
    "stale-snapshot-membership": StaleMembershipSnapshotDriver,
}


def bug_kwargs(bug: str | None) -> dict:
    """Sim(...) keyword arguments that run ``bug``'s variant."""
    if bug is None:
        return {}
    cls = BUGS[bug]
    return {"driver_factory" if issubclass(cls, Driver) else "factory": cls, "bug": bug}
