"""`hactl cluster recover --data DIR` (the command is in hactl/cli.py): after a permanent loss of quorum, shrink the membership to this node.

Offline (the controller must be stopped). Like etcd's --force-new-cluster it is a deliberate, unsafe-by-nature
step: entries the lost majority may have committed but this node never heard of are gone for good. What it does:
drop this node's uncommitted entries (they can never commit now), then append committed membership changes that
remove every other member (promoting this node first if it was a learner). On its next start the node replays
them, is the only voter, elects itself, and can take new members with `hactl agent cluster add`.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from hactl.raft.confchange import conf_after, encode_conf_change
from hactl.raft.storage import RaftStorage
from hactl.raft.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState


class RecoverError(Exception):
    pass


def recover(data_dir: str | os.PathLike[str], applied: int = 0) -> dict[str, Any]:
    """``applied``: the index the state machine (ctrl.db) has applied, known committed too: raft.db's commit index
    is written only with the writes that must be durable anyway (driver.py), so it may lag what was applied."""
    data = Path(data_dir)
    try:
        node_id = (data / "node-id").read_text().strip()
    except FileNotFoundError:
        raise RecoverError(f"{data}: no node-id file: not a controller data directory (or never started)") from None
    fd = os.open(data / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecoverError(f"{data}: a controller is running on this data directory; stop it first") from None
        with RaftStorage(data / "raft.db") as storage:
            return _rewrite(storage, node_id, applied)
    finally:
        os.close(fd)


def _rewrite(storage: RaftStorage, node_id: str, applied: int = 0) -> dict[str, Any]:
    st = storage.load()
    # Known committed: what the hard state says, what a snapshot covers, what the state machine applied.
    commit = max(st.hard_state.commit, st.snapshot.index, min(applied, st.last_index))
    conf = st.snapshot.conf if st.snapshot.index else st.conf
    lo = max(st.first_index, st.snapshot.index + 1)
    for e in storage.entries(lo, commit + 1) if commit >= lo else []:
        if e.type == EntryType.CONF_CHANGE:
            conf = conf_after(conf, e.data) or conf
    if node_id not in conf.members():
        raise RecoverError(f"{node_id} is not a member of its own last known membership "
                           f"(voters {list(conf.voters)}, learners {list(conf.learners)}); nothing to recover")
    changes = []
    if node_id in conf.learners:
        changes.append(ConfChange(ConfChangeType.PROMOTE, node_id))
    changes += [ConfChange(ConfChangeType.REMOVE, m) for m in conf.members() if m != node_id]
    term = max(st.hard_state.term, 1)
    entries = [Entry(commit + 1 + i, term, EntryType.CONF_CHANGE, encode_conf_change(cc))
               for i, cc in enumerate(changes)]
    dropped = max(0, st.last_index - commit)
    if entries:
        storage.save(HardState(term, st.hard_state.vote, entries[-1].index), entries)
    elif dropped:
        raise RecoverError("this node is already the only member; start it normally")
    return {"id": node_id, "removed": [cc.node for cc in changes if cc.type == ConfChangeType.REMOVE],
            "dropped_uncommitted": dropped, "membership": ConfState((node_id,)).voters}
