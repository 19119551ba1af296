"""What the API needs from the controller it is served by: one small interface, implemented by controller.py.

The API never talks to Raft or the mesh directly: writes go through ``submit`` (which forwards to the leader when
needed and returns once this node has applied the result), linearizable reads call ``read_barrier`` first.
"""
from __future__ import annotations

from typing import Any, Protocol

from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result


class ClusterUnavailable(Exception):
    """No leader (or this node is restarting): HTTP 503 CLUSTER_NO_LEADER with Retry-After."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(Exception):
    """The leader's proposal queue is full: HTTP 429, answered at once."""


class NoSpace(Overloaded):
    """A storage alarm is on (some node's raft.db, ctrl.db or disk is nearly full) and the write would add data:
    refused before anything was proposed, so nothing was applied. HTTP 507 NOSPACE.

    A kind of Overloaded (a refusal for lack of capacity that leaves nothing behind), so callers that treat
    Overloaded as "certainly not applied" (the agent's restore, which then aborts) are right about it too."""


class OutcomeUnknown(Exception):
    """The write was proposed but not seen applied in time; it may still commit: HTTP 504."""


class Cluster(Protocol):
    node_id: str

    def machine(self) -> StateMachine:
        """The local model to read from (ctrl.db). Raises ClusterUnavailable while it cannot be served."""

    async def submit(self, command: bytes, request_id: str) -> Result:
        """Replicate one encoded fsm command; returns its Result once applied on THIS node (read-your-writes).
        Raises ClusterUnavailable, Overloaded (NoSpace while a storage alarm is on) or OutcomeUnknown."""

    async def read_barrier(self) -> None:
        """Wait until this node has applied everything committed before the call (ReadIndex).
        Raises ClusterUnavailable."""

    def status(self) -> dict[str, Any]:
        """The `cluster` object of GET /status: id, role, term, leader, commit, applied, alarms."""

    def zerotier_status(self) -> dict[str, Any] | None:
        """The `zerotier` object of GET /status: the controller address this node answers for, its UDP endpoint,
        whether it is online with its roots; None when this node has no ZeroTier endpoint."""

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): healthy when a leader is known and this node has applied up to the leader's
        commit index as of the last contact."""

    def event_bus(self) -> Any:
        """This node's hactl.events.bus.EventBus (GET /events subscribes to it), or None."""

    def metrics_collector(self) -> Any:
        """A prometheus_client Collector of this node's state, read at each scrape of GET /metrics."""

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """(live, details): the process and its Raft loop respond; no leader needed (etcd's /livez)."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details with reasons): a leader known, caught up, no alarm (etcd's /readyz)."""

    def check_token(self, token: str) -> bool:
        """Constant-time comparison against the cluster's API token (its hash is in ctrl.db). Raises
        ClusterUnavailable while the cluster is not initialised (there is no token to compare with yet)."""

    def now_ms(self) -> int:
        """Wall clock for commands (the proposer chooses times; apply never reads a clock)."""
