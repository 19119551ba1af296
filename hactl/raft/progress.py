"""What a leader knows about each follower's log, and the flow control it applies to it."""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.IntEnum):
    PROBE = 0  # next is a guess: one append at a time until a reply tells where the logs agree
    REPLICATE = 1  # logs agree up to match: stream appends optimistically, bounded by the in-flight window
    SNAPSHOT = 2  # follower needs a snapshot; appends wait until it is installed or fails


@dataclass(slots=True)
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    learner: bool = False
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_elapsed: int = 0
    last_heard: int = 0  # leader tick at which this peer last answered (check-quorum)
    inflight: deque[int] = field(default_factory=deque)  # last index of each unacknowledged append

    def become_probe(self) -> None:
        # After a snapshot, the follower's log ends at the snapshot index at best.
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.inflight.clear()

    def paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def maybe_update(self, index: int) -> bool:
        """A successful append reply up to index; returns True if match moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejected append for prev index `rejected`; returns False for a stale rejection."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def free_to(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
