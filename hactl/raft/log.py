"""The Raft log as the core sees it: entries after a compaction point, plus commit and persistence marks.

Pure data structure. Entries ``<= unstable_from - 1`` are known to be durable in raft.db; the rest still have to
be handed to the driver in a Ready. The core never reads storage: the driver loads the persisted suffix at start.
"""
from __future__ import annotations

from typing import Sequence

from .types import Entry, SnapshotMeta


class RaftLog:
    def __init__(self, offset: int = 0, offset_term: int = 0, entries: Sequence[Entry] = (), committed: int = 0):
        self.offset = offset  # index of the last compacted entry (or snapshot index); entries start after it
        self.offset_term = offset_term
        self.entries: list[Entry] = list(entries)
        self.committed = max(committed, offset)
        self.unstable_from = self.last_index() + 1  # what the driver loaded is durable by definition

    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def stable_index(self) -> int:
        return self.unstable_from - 1

    def term(self, index: int) -> int | None:
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.offset + len(self.entries):
            return self.entries[index - self.offset - 1].term
        return None

    def entry(self, index: int) -> Entry | None:
        if self.offset < index <= self.offset + len(self.entries):
            return self.entries[index - self.offset - 1]
        return None

    def match_term(self, index: int, term: int) -> bool:
        t = self.term(index)
        return t is not None and t == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """Election restriction: is a log ending at (index, term) at least as up to date as ours?"""
        lt = self.last_term()
        return term > lt or (term == lt and index >= self.last_index())

    def slice(self, lo: int, hi: int, max_entries: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) capped by count and bytes; always at least one entry when the range is non-empty."""
        start = lo - self.offset - 1
        end = min(hi - self.offset - 1, start + max_entries)
        out: list[Entry] = []
        size = 0
        for e in self.entries[start:end]:
            size += e.size()
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """Index of the first entry that is missing here or has another term; 0 if all already present."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest i <= index whose term is <= term: a leader can skip a whole term per round trip."""
        i = min(index, self.last_index())
        while i > self.offset:
            t = self.term(i)
            if t is not None and t <= term:
                break
            i -= 1
        return i

    def append(self, ents: Sequence[Entry]) -> None:
        """Add ents, truncating any conflicting suffix first (ents[0].index must be in (offset, last+1])."""
        if not ents:
            return
        first = ents[0].index
        keep = first - self.offset - 1
        if keep < len(self.entries):
            del self.entries[keep:]
        self.entries.extend(ents)
        if first < self.unstable_from:
            self.unstable_from = first

    def unstable(self) -> list[Entry]:
        return self.entries[self.unstable_from - self.offset - 1:]

    def stable_to(self, index: int, term: int) -> None:
        # A persisted batch may have been overwritten while it was being written; only mark it durable if the
        # entry we wrote is still the one in the log (same index and term imply the same prefix).
        if index >= self.unstable_from and self.match_term(index, term):
            self.unstable_from = index + 1

    def commit_to(self, index: int) -> bool:
        index = min(index, self.last_index())
        if index > self.committed:
            self.committed = index
            return True
        return False

    def compact(self, index: int) -> None:
        if index <= self.offset:
            return
        term = self.term(index)
        if term is None:
            raise ValueError(f"compact({index}) beyond last index {self.last_index()}")
        del self.entries[: index - self.offset]
        self.offset, self.offset_term = index, term

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot's position; the data arrives through the driver."""
        self.entries = []
        self.offset, self.offset_term = snap.index, snap.term
        self.committed = snap.index
        self.unstable_from = snap.index + 1
