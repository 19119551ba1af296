"""Crash-test writer for tests/test_storage.py, run as a subprocess: ``python helpers_storage_crash.py DB SEED``.

Opens raft.db (continuing whatever is there), then saves batches forever, printing ``next LAST TERM COMMIT`` before
each save() and ``ack LAST TERM COMMIT`` after it returns (a save may truncate, so after a crash the journal holds
the last acknowledged state or, if the kill came after the commit but before the ack, the announced next one). The test SIGKILLs it at some point and checks that every acknowledged write
survived. Entry data is ``b"<index>:<term>"`` so the reader can tell a torn or misplaced entry.
"""
from __future__ import annotations

import random
import sys

from hactl.raft.storage import RaftStorage
from hactl.raft.types import Entry, EntryType, HardState, SnapshotMeta


def main() -> None:
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    st = RaftStorage(path)
    state = st.load()
    term = max(state.hard_state.term, 1)
    commit = state.hard_state.commit
    while True:
        last = st.last_index()
        lo = last + 1
        if rng.random() < 0.1 and last > commit:
            # A new leader overrides an uncommitted suffix.
            term += 1
            lo = rng.randint(commit + 1, last + 1)
        n = rng.randint(1, 64)
        entries = [Entry(i, term, EntryType.NORMAL, f"{i}:{term}".encode()) for i in range(lo, lo + n)]
        commit = lo - 1  # everything before this batch counts as committed (never truncated later)
        last = lo + n - 1
        print(f"next {last} {term} {commit}", flush=True)
        st.save(HardState(term, "n1", commit), entries)
        if rng.random() < 0.05 and commit > 0:
            # A local snapshot at the commit point, then compaction behind it.
            t = st.term(commit)
            assert t is not None
            st.set_snapshot(SnapshotMeta(commit, t))
            st.compact(max(0, commit - rng.randint(0, 50)))
        print(f"ack {last} {term} {commit}", flush=True)


if __name__ == "__main__":
    main()
