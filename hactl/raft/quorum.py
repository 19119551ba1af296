"""Majority rules over a set of voters (etcd-io/raft's quorum package, for the single-membership case).

Every decision that needs "more than half of the voters" goes through here: committing (the highest index held
by a majority), elections (won, lost or pending), check-quorum (recently heard from) and ReadIndex rounds.
Learners never count.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from .types import NodeId


def majority(voters: int) -> int:
    """How many of ``voters`` make a quorum (1 of 1, 2 of 3, 3 of 5)."""
    return voters // 2 + 1


def committed_index(voters: Iterable[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest index that a majority of ``voters`` hold (``match``: voter -> highest index it holds);
    voters missing from ``match`` hold nothing."""
    vs = list(voters)
    if not vs:
        return 0
    held = sorted((match.get(v, 0) for v in vs), reverse=True)
    return held[majority(len(vs)) - 1]


def vote_result(voters: Iterable[NodeId], votes: Mapping[NodeId, bool]) -> str:
    """"won" once a majority granted, "lost" once a majority refused, else "pending"."""
    vs = list(voters)
    q = majority(len(vs))
    granted = sum(1 for v in vs if votes.get(v) is True)
    refused = sum(1 for v in vs if votes.get(v) is False)
    if granted >= q:
        return "won"
    if refused >= q:
        return "lost"
    return "pending"


def has_quorum(voters: Iterable[NodeId], ok: Callable[[NodeId], bool]) -> bool:
    """True when ``ok`` holds for a majority of ``voters``."""
    vs = list(voters)
    return sum(1 for v in vs if ok(v)) >= majority(len(vs))
