"""The control channel admits members only: a revoked certificate and a removed member's still-valid certificate
are refused by real controllers, over real mutual TLS; a member issued a new certificate comes back."""
from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from hactl.dev.cluster import TRUST_DOMAIN
from hactl.transport.errors import HandshakeError
from hactl.transport.mesh import Mesh
from hactl.transport.pki import cert_serial, issue, load_identity
from tests.proc_cluster import ProcCluster
from tests.test_agent_processes import agent


def dial_as(c: ProcCluster, nid: str, pki_dir: Path, target: str) -> str:
    """Open a controller connection to `target` with `nid`'s certificate from `pki_dir`; the id it proves, or
    the refusal (HandshakeError text)."""
    identity = load_identity(pki_dir / "node.crt", pki_dir / "node.key", pki_dir / "ca.crt")
    mesh_id = hashlib.sha256((pki_dir / "ca.crt").read_bytes()).hexdigest()[:16]
    mesh = Mesh(nid, mesh_id, TRUST_DOMAIN, identity, "127.0.0.1:0")

    async def go() -> str:
        try:
            return await asyncio.wait_for(mesh.probe(c.specs[target].ctrl_addr), 15)
        except HandshakeError as e:
            return f"refused: {e}"
    return asyncio.run(go())


def certificates(c: ProcCluster, nid: str) -> list[str]:
    """The certificate serials the cluster recorded for member `nid` (from `hactl agent cluster list`)."""
    code, rows, err = agent(c, "ctrl1", "cluster", "list")
    assert code == 0, err
    return next((r.get("certificates", []) for r in rows if r["id"] == nid), [])


def test_a_revoked_certificate_then_a_removed_member_are_refused(cluster) -> None:
    c: ProcCluster = cluster(events=[{"type": "file", "namespaces": ["cluster"], "propagate_always": True}])
    ctrl = c.wait_ready()
    victim = "ctrl3"
    pki_dir = c.root / "pki" / victim
    old_serial = cert_serial((pki_dir / "node.crt").read_bytes())
    assert dial_as(c, victim, pki_dir, "ctrl1") == "ctrl1"  # a member's certificate is accepted
    # The leader records every member's certificate serial (so that it can be denied later).
    c.wait(lambda: old_serial in certificates(c, victim), 20, "the leader to record ctrl3's certificate")
    code, out, err = agent(c, "ctrl1", "cluster", "revoke", victim)
    assert code == 0 and out == {"node": victim, "revoked": [old_serial]}, (out, err)
    refused = dial_as(c, victim, pki_dir, "ctrl1")
    assert refused.startswith("refused") and f"certificate {old_serial} of {victim} was revoked" in refused, refused
    c.wait(lambda: victim not in c.status("ctrl1")["cluster"]["peers_connected"], 20, "ctrl3 disconnected")
    # The other two still form a quorum and take writes.
    code, _ = c.write("ctrl2", "POST", f"/controller/network/{ctrl}______", {"name": "after-revoke"})
    assert code == 200
    assert "was revoked" in c.log("ctrl1") or "was revoked" in c.log("ctrl2")

    # A new certificate for the same member (a new serial) is accepted again, and it catches up.
    c.kill(victim)
    issue(c.root / "pki" / "ca", pki_dir, kind="controller", node_id=victim, trust_domain=TRUST_DOMAIN,
          overwrite=True)
    assert cert_serial((pki_dir / "node.crt").read_bytes()) != old_serial
    new_serial = cert_serial((pki_dir / "node.crt").read_bytes())
    c.start(victim)
    c.wait(lambda: (c.status(victim) or {}).get("cluster", {}).get("applied", 0)
           >= c.status("ctrl1")["cluster"]["commit"], 30, "the re-issued member to catch up")
    c.wait(lambda: new_serial in certificates(c, victim), 20, "the new certificate to be recorded")

    # Removal denies every certificate recorded for the member, so its still-valid one is refused.
    code, _, err = agent(c, "ctrl1", "cluster", "remove", victim)
    assert code == 0, err
    refused = dial_as(c, victim, pki_dir, "ctrl2")
    assert refused.startswith("refused") and "was removed" in refused, refused
    code, _ = c.write("ctrl1", "POST", f"/controller/network/{ctrl}______", {"name": "after-remove"})
    assert code == 200

    # The refusals and the removal were told to event subscribers: peer.not_member with the reason (once a
    # minute per peer and reason, however often it dials), members.changed without ctrl3 on both others.
    def events(nid: str) -> list[dict]:
        return [json.loads(x) for x in (c.specs[nid].data_dir / "events.jsonl").read_text().splitlines()]
    c.wait(lambda: any(e["eventType"] == "peer.not_member" and "was removed" in e["reason"]
                       for e in events("ctrl2")), 10, "ctrl2's peer.not_member event")
    revoked = [e for e in events("ctrl1") if e["eventType"] == "peer.not_member" and "was revoked" in e["reason"]]
    assert len(revoked) == 1 and revoked[0]["peer"] == victim, revoked
    for nid in ("ctrl1", "ctrl2"):
        last = [e for e in events(nid) if e["eventType"] == "members.changed"][-1]
        assert sorted(last["voters"]) == ["ctrl1", "ctrl2"] and victim not in last["peers"], last


def test_removing_the_leader_hands_leadership_over_and_answers(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    leader = c.leader()
    other = next(n for n in c.ids if n != leader)
    code, out, err = agent(c, other, "cluster", "remove", leader)  # asked on a follower: forwarded to the leader
    assert code == 0 and out == {"id": leader, "removed": True}, (out, err)
    rest = [n for n in c.ids if n != leader]
    new = c.leader(among=rest)
    assert new != leader and leader not in c.status(new)["cluster"]["voters"]
    code, _ = c.write(new, "POST", f"/controller/network/{ctrl}______", {"name": "after-leader-removed"})
    assert code == 200
