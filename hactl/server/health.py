"""What /status's `cluster` object and /health report about this controller."""
from __future__ import annotations

from typing import Any

from hactl.raft.node import RaftNode
from hactl.raft.types import Role
from hactl.transport.mesh import Mesh


class Health:
    def __init__(self, node: RaftNode, mesh: Mesh):
        self.node = node
        self.mesh = mesh
        self.leader_commit_seen = 0  # the leader's commit index as of our last contact (followers)
        self.restart_reason: str | None = None
        self.alarms: dict[str, str] = {}  # name -> message: conditions that refuse writes (see storage alarms)

    def observe(self) -> None:
        """Called periodically: remember how far the leader had committed."""
        if self.node.role == Role.FOLLOWER and self.node.leader is not None:
            self.leader_commit_seen = self.node.commit_index

    def status(self) -> dict[str, Any]:
        st = self.node.status()
        return {"id": self.node.id, "role": st.role.name.lower(), "term": st.term, "leader": st.leader,
                "commit": st.commit, "applied": st.applied, "voters": list(st.conf.voters),
                "learners": list(st.conf.learners), "peers_connected": sorted(self.mesh.connected()),
                "routers": [{"id": r.id, "addr": r.addr, "hello": r.hello} for r in self.mesh.routers()],
                "alarms": [{"name": k, "message": v} for k, v in sorted(self.alarms.items())]}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: running, a leader is known, caught up with what the leader had committed, no restart pending."""
        st = self.node.status()
        target = st.commit if st.role == Role.LEADER else self.leader_commit_seen
        ok = (self.node.running and st.leader is not None and st.applied >= min(target, st.commit)
              and self.restart_reason is None)
        return ok, {"leader": st.leader, "applied": st.applied, "commit": st.commit, "role": st.role.name.lower(),
                    "alarms": sorted(self.alarms)}
