"""Membership changes: their encoding, the rules a change must follow, and the membership after one.

Single-server changes only (one node added as a learner, promoted, or removed per entry), which keeps every
two consecutive memberships' majorities overlapping; an UPDATE changes only a member's context (its address). A
change takes effect when its entry is applied; the core refuses a second change while one is pending (see
core.Raft.propose_conf_change).

Membership lives in the log from index 1 (``bootstrap_state``), so a node added later that replays the log learns
the whole history, and so does every state machine that applies the log.
"""
from __future__ import annotations

from typing import Sequence

import msgpack

from .types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, MalformedError, NodeId


def encode_conf_change(cc: ConfChange) -> bytes:
    return msgpack.packb(cc.to_wire(), use_bin_type=True)


def decode_conf_change(data: bytes) -> ConfChange:
    """MalformedError for bytes that are not a membership change."""
    try:
        wire = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types for bad bytes
        raise MalformedError(f"conf change entry: {e}") from e
    return ConfChange.from_wire(wire)


def refusal(conf: ConfState, cc: ConfChange) -> str | None:
    """Why ``cc`` may not be proposed against ``conf`` (None: it may). The rules that need the leader's view
    (a change already pending, a learner's lag) are the core's."""
    if cc.type == ConfChangeType.ADD_LEARNER and cc.node in conf.voters:
        return f"{cc.node} is already a voter"
    if cc.type == ConfChangeType.PROMOTE and cc.node not in conf.learners:
        return f"{cc.node} is not a learner"
    if cc.type == ConfChangeType.UPDATE and cc.node not in conf.members():
        return f"{cc.node} is not a member"
    if cc.type == ConfChangeType.REMOVE:
        if cc.node not in conf.members():
            return f"{cc.node} is not a member"
        if conf.voters == (cc.node,):
            return "cannot remove the last voter"
    return None


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState | None:
    """The membership after ``cc``; None if it would leave no voter. A change that does not apply (promoting a
    non-learner...) leaves the membership as it is: every node treats the entry the same way."""
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.type == ConfChangeType.ADD_LEARNER:
        if cc.node not in voters:
            learners.add(cc.node)
    elif cc.type == ConfChangeType.PROMOTE:
        if cc.node in learners:
            learners.discard(cc.node)
            voters.add(cc.node)
    elif cc.type == ConfChangeType.UPDATE:
        pass  # only the context (the address book) changes
    else:
        voters.discard(cc.node)
        learners.discard(cc.node)
    if conf.voters and not voters:
        return None
    return ConfState(tuple(voters), tuple(learners))


def conf_after(conf: ConfState, entry_data: bytes) -> ConfState | None:
    """The membership after applying one CONF_CHANGE entry's data; None if the entry is invalid or would leave
    no voter (the entry is then applied as a no-op)."""
    try:
        cc = decode_conf_change(entry_data)
    except MalformedError:
        return None
    return apply_change(conf, cc)


def bootstrap_state(voters: Sequence[NodeId],
                    contexts: dict[NodeId, bytes] | None = None) -> tuple[HardState, list[Entry]]:
    """The identical, already-committed start of every initial member's log: one ADD_LEARNER + PROMOTE per voter.

    Membership lives in the log from index 1, so a node added later that replays the log from the start learns
    the whole membership history (a node that only saw its own addition could otherwise think it is alone).
    """
    entries: list[Entry] = []
    for v in sorted(set(voters)):
        for t in (ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE):
            cc = ConfChange(t, v, (contexts or {}).get(v, b""))  # e.g. its address, for nodes that join later
            entries.append(Entry(len(entries) + 1, 1, EntryType.CONF_CHANGE, encode_conf_change(cc)))
    return HardState(1, None, len(entries)), entries
