"""What /status's `cluster` object and /health report about this controller."""
from __future__ import annotations

from typing import Any, Callable

LIVE_IO_STALL_S = 30.0  # an fsync/apply running longer than this: the node is not live (its disk hangs)

from hactl.raft.node import RaftNode
from hactl.raft.types import Role
from hactl.transport.mesh import Mesh


class Health:
    def __init__(self, node: RaftNode, mesh: Mesh, alarms: Callable[[], list[dict[str, Any]]]):
        self.node = node
        self.mesh = mesh
        self.leader_commit_seen = 0  # the leader's commit index as of our last contact (followers)
        self.restart_reason: str | None = None
        # The replicated alarms as this node applied them (StateMachine.alarms): while any is on, writes that add
        # data are refused on every node (see alarms.py). Read at each call, so /status is never staler than ctrl.db.
        self.alarms = alarms

    def observe(self) -> None:
        """Called periodically: remember how far the leader had committed."""
        if self.node.role == Role.FOLLOWER and self.node.leader is not None:
            self.leader_commit_seen = self.node.commit_index

    def status(self) -> dict[str, Any]:
        st = self.node.status()
        running = self.node.running
        # A stopped node (fail-stop, the process is about to exit) must not point anyone at itself as leader.
        return {"id": self.node.id, "role": st.role.name.lower() if running else "stopped", "term": st.term,
                "leader": st.leader if running else None,
                "commit": st.commit, "applied": st.applied, "voters": list(st.conf.voters),
                "learners": list(st.conf.learners), "peers_connected": sorted(self.mesh.connected()),
                "routers": [{"id": r.id, "addr": r.addr, "hello": r.hello} for r in self.mesh.routers()],
                "alarms": self.alarms()}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy: running, a leader is known, caught up with what the leader had committed, no restart pending.

        An alarm does not make a node unhealthy: the node works and serves reads and deletes; it is the cluster
        that is short of space. Answering 503 would make load balancers and supervisors drop or restart every
        node at once, which frees nothing. The alarms are listed (node and name only: /health needs no token,
        the messages name paths and sizes; /status has them)."""
        st = self.node.status()
        target = st.commit if st.role == Role.LEADER else self.leader_commit_seen
        ok = (self.node.running and st.leader is not None and st.applied >= min(target, st.commit)
              and self.restart_reason is None)
        return ok, {"leader": st.leader, "applied": st.applied, "commit": st.commit, "role": st.role.name.lower(),
                    "alarms": [{"node": a["node"], "name": a["name"]} for a in self.alarms()]}

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Live: the process answers (this call ran on its event loop), Raft is running (not failed and on its way
        out), and the I/O thread is not stuck in one fsync or apply. Needs no leader: a supervisor restarts a node
        that is not live, and restarting nodes that only lost their quorum would not bring it back."""
        stalled = self.node.io_stalled_s
        ok = self.node.running and stalled < LIVE_IO_STALL_S
        return ok, {"live": ok, "raft_running": self.node.running, "io_stalled_s": round(stalled, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready to serve writes and linearizable reads: healthy (a leader known, caught up, no restart pending)
        and no alarm (while one is on, writes that add data are refused). Each reason not to be is listed."""
        healthy, details = self.health()
        reasons = []
        if not self.node.running:
            reasons.append("raft is not running")
        elif details["leader"] is None:
            reasons.append("no leader known (quorum lost or an election under way)")
        elif not healthy:
            reasons.append("restart pending" if self.restart_reason else "not caught up with the leader's commit")
        reasons += [f"alarm {a['name']} on {a['node']}" for a in details["alarms"]]
        return not reasons, {**details, "ready": not reasons, "reasons": reasons}
