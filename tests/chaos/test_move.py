"""Controllers that change address (separate hosts in network namespaces): the membership learns each new address,
so two moved nodes find each other and still form a majority once the third is gone.

Before the membership UPDATE, peers dialed the address recorded when a node joined, forever: one moved node still
worked (it dials out), two never connected to each other, and killing the third left no quorum.
Needs root (network namespaces).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from hactl.dev.cluster import node_ids
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import Ctx, Move, Nemesis
from tests.chaos.net import ChaosNet


def cluster_list(c: ChaosCluster, nid: str) -> list[dict]:
    """`hactl agent cluster list --json` on node nid (its agent socket)."""
    p = subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--json", "--socket",
                        str(c.specs[nid].agent_socket), "cluster", "list"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_two_moved_nodes_are_recorded_at_their_new_addresses_and_keep_a_quorum(tmp_path: Path) -> None:
    with ChaosNet(node_ids(3)) as net, ChaosCluster(tmp_path / "c", net) as c:
        c.start_all()
        c.wait_ready(timeout=60)
        nem = Nemesis(c, net, random.Random(0))
        leader = c.leader()
        follower = next(n for n in c.ids if n != leader)
        stay = next(n for n in c.ids if n not in (leader, follower))
        for nid in (follower, leader):
            nem.end(nem.begin(Move(Ctx(c, net), node=nid)))
            c.wait(lambda nid=nid: c.status(nid), 60, f"{nid} answering at its new address")
        ctrl = c.wait_ready(timeout=60)
        moved = {nid: f"{net.addr(nid)}:{c.ctrl_port(nid)}" for nid in (follower, leader)}

        def recorded() -> bool:
            rows = {r["id"]: r for r in cluster_list(c, stay)}
            return all(rows[n]["address"] == a for n, a in moved.items())
        c.wait(recorded, 30, f"the membership on {stay} listing {moved}")
        c.wait(lambda: all(r["connected"] for n in moved for r in cluster_list(c, n)), 30,
               "the two moved nodes connected to each other")
        assert "asking the leader" in c.log(follower) and "recorded in the membership" in c.log(follower)
        c.kill(stay)  # the two moved nodes are a majority: they elect a leader and take writes
        c.leader(among=list(moved), timeout=30)
        for nid in moved:
            code, body = c.write(nid, "POST", f"/controller/network/{ctrl}______", {"name": nid}, timeout=30)
            assert code == 200, body


def test_crossed_moves_with_the_leader_are_recorded_through_a_member_that_stayed(tmp_path: Path) -> None:
    """The leader moves away and is recorded there; then it moves back while a follower moves away, and leads
    again before the follower restarts. Each of the two dials the other's old address, so the follower cannot
    reach the leader to be recorded: it asks the member that stayed put, which passes the request on."""
    with ChaosNet(node_ids(3)) as net, ChaosCluster(tmp_path / "c", net) as c:
        c.start_all()
        c.wait_ready(timeout=60)
        lead = c.leader()
        follower, stay = [n for n in c.ids if n != lead]
        first = net.addr(lead)
        away = c.move(lead)

        def recorded(want: dict[str, str]) -> bool:
            rows = {r["id"]: r["address"] for r in cluster_list(c, stay)}
            return all(rows[n] == f"{a}:{c.ctrl_port(n)}" for n, a in want.items())
        c.wait(lambda: recorded({lead: away}), 30, f"{lead} recorded at {away}")
        c.wait_ready(timeout=60)
        moved = c.move_together({lead: first, follower: None}, start=False)
        c.start(lead)  # the moved-back node leads before the follower is back: the case that needs the relay

        def lead_leads() -> bool:
            """Asks for the transfer (10 s a try: the target may still be catching up) until lead leads."""
            if c.leader(among=[lead, stay], timeout=30) == lead:
                return True
            subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--timeout", "10", "--socket",
                            str(c.specs[stay].agent_socket), "cluster", "transfer-leadership", lead],
                           capture_output=True, timeout=30)
            return False
        c.wait(lead_leads, 90, f"{lead} leading")
        c.wait(lambda: recorded({lead: first}), 30, f"{lead} recorded back at {first}")
        c.start(follower)
        c.wait(lambda: recorded(moved), 40, f"{moved} recorded in the membership")
        c.wait(lambda: all(r["connected"] for n in moved for r in cluster_list(c, n)), 30,
               "the two moved nodes connected to each other")
        ctrl = c.wait_ready(timeout=30)
        for nid in moved:
            code, body = c.write(nid, "POST", f"/controller/network/{ctrl}______", {"name": nid}, timeout=30)
            assert code == 200, body
