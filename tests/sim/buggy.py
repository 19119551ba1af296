"""Test-only Raft variants with one known safety bug each: the simulator must catch them."""
from __future__ import annotations

from hactl.raft.core import Raft
from hactl.raft.types import Message


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


BUGS: dict[str, type[Raft]] = {"double-vote": DoubleVoteRaft, "prev-term-commit": PrevTermCommitRaft}
