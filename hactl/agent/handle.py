"""What the agent server needs from its controller: the operator commands, implemented by controller.py.

Every method returns plain msgpack-able data (dicts, lists, str, int, float, bool, None) and raises AgentError
with a code and a message an operator can act on.
"""
from __future__ import annotations

import contextvars
from typing import Any, Protocol

# Who sent the request being handled ({"kind": "agent", "uid": ..., "pid": ...}), set by the agent server for
# the connection's task: commands that change the model say so (entityChange events name the operator).
CALLER: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("hactl_agent_caller", default=None)


class AgentError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class AgentHandle(Protocol):
    node_id: str

    async def cluster_list(self) -> list[dict[str, Any]]:
        """One row per member: id, address, role ("voter"|"learner"), leader (bool), connected (bool),
        last_contact (seconds ago or None), match (int or None: known on the leader only), version (str|None)."""

    async def cluster_add(self, address: str, learner: bool, timeout: float) -> dict[str, Any]:
        """Dial `address`, learn the node id from its certificate, add it as a learner and (unless `learner`)
        promote it once caught up. Forwarded to the leader when run on a follower. Returns {"id", "role"}."""

    async def cluster_remove(self, node_id: str, timeout: float) -> dict[str, Any]:
        """Remove a member; every certificate recorded for it is denied from then on. Returns {"id", "removed"}."""

    async def cluster_revoke(self, node_id: str, serial: str | None, timeout: float) -> dict[str, Any]:
        """Deny controller certificate `serial` of `node_id` on the control channel for good (None: every one
        recorded for it); its connections are closed. Returns {"node", "revoked": [serials]}."""

    async def transfer_leadership(self, target: str | None, timeout: float) -> dict[str, Any]:
        """Returns {"leader": new leader id}."""

    async def snapshot_db(self, path: str | None) -> dict[str, Any]:
        """A consistent hot copy of ctrl.db plus `<path>.sha256`; default name ctrl-<date>-<time>-<index>.db in
        the data dir. Returns {"path", "sha256", "index", "size"}."""

    async def restore_from_db(self, path: str, timeout: float) -> dict[str, Any]:
        """Validate the file, then replace the model through Raft under a new timeline id; every controller
        restarts (exit code 3) with it. Returns {"index", "timeline_id", "networks", "members"}."""

    def status(self) -> dict[str, Any]:
        """id, role, term, leader, commit, applied, version (for `hactl agent` discovery and `status`)."""
