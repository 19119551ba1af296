"""entityChange and cluster membership events from three real controllers, read from their event files.

Each node has two file subscriptions for entityChange: the default one (the leader's events only) and one with
propagate_always (every node's own apply). Across the three default files each API change appears exactly once;
in each propagate_always file it appears exactly once, named by that node; both carry the Raft index, the states
before and after, and who asked. A node that stops after applying but before delivering emits the changes again
when it starts (at-least-once), with the same ids."""
from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.proc_cluster import ProcCluster


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def three(cluster, tmp_path: Path):
    """Three controllers, each with a default and a propagate_always entityChange file, and a cluster one."""
    return lambda: cluster(node_config={nid: {"events": [
        {"type": "file", "namespaces": ["entityChange"], "path": str(tmp_path / f"{nid}-leader.jsonl")},
        {"type": "file", "namespaces": ["entityChange"], "propagate_always": True,
         "path": str(tmp_path / f"{nid}-all.jsonl")},
        {"type": "file", "namespaces": ["cluster"], "propagate_always": True,
         "path": str(tmp_path / f"{nid}-cluster.jsonl")},
    ]} for nid in ("ctrl1", "ctrl2", "ctrl3")})


def api_changes(c: ProcCluster, leader: str) -> tuple[str, str]:
    """Network created, updated; member created, updated, deleted; network deleted: six changes."""
    code, net = c.write(leader, "POST", "/controller/network", {"name": "ev"})
    assert code == 200, net
    nwid = net["id"]
    assert c.write(leader, "POST", f"/controller/network/{nwid}", {"name": "ev2"})[0] == 200
    follower = next(n for n in c.ids if n != leader)  # a write through a follower is the leader's change too
    assert c.write(follower, "POST", f"/controller/network/{nwid}/member/0123456789",
                   {"authorized": True})[0] == 200
    assert c.write(leader, "POST", f"/controller/network/{nwid}/member/0123456789", {"name": "m"})[0] == 200
    assert c.write(leader, "DELETE", f"/controller/network/{nwid}/member/0123456789", None)[0] == 200
    assert c.write(leader, "DELETE", f"/controller/network/{nwid}", None)[0] == 200
    return nwid, follower


EXPECTED = [("network", "created"), ("network", "updated"), ("member", "created"), ("member", "updated"),
            ("member", "deleted"), ("network", "deleted")]


def test_each_api_change_once_per_mode_with_index_states_and_author(three, tmp_path: Path) -> None:
    c = three()
    c.wait_ready()
    leader = c.leader()
    nwid, follower = api_changes(c, leader)
    c.wait_caught_up()

    def ours(evs: list[dict]) -> list[dict]:
        return [e for e in evs if e["entityId"].startswith(nwid)]

    def settled() -> bool:
        return all(len(ours(read(tmp_path / f"{n}-all.jsonl"))) >= 6 for n in c.ids) and \
            sum(len(ours(read(tmp_path / f"{n}-leader.jsonl"))) for n in c.ids) >= 6
    c.wait(settled, 15, "every node's events of the six changes")
    time.sleep(1.0)  # anything more (a repeat) would arrive now

    primary = [e for n in c.ids for e in ours(read(tmp_path / f"{n}-leader.jsonl"))]
    assert [(e["entityType"], e["eventType"]) for e in primary] == EXPECTED
    assert {e["event_src_id"] for e in primary} == {leader}
    assert all(e["metadata"]["leader"] is True for e in primary)
    indexes = [e["metadata"]["raft_index"] for e in primary]
    assert indexes == sorted(indexes) and len(set(indexes)) == 6
    assert [e["id"] for e in primary] == [f"ec-{i}-0" for i in indexes]

    created, updated, m_created, m_updated, m_deleted, deleted = primary
    assert created["initialState"] is None and created["finalState"]["name"] == "ev"
    assert updated["initialState"]["name"] == "ev" and updated["finalState"]["name"] == "ev2"
    assert updated["finalState"]["revision"] == updated["initialState"]["revision"] + 1
    assert m_created["entityId"] == f"{nwid}/0123456789" and m_created["finalState"]["authorized"] is True
    assert m_updated["initialState"]["name"] == "" and m_updated["finalState"]["name"] == "m"
    assert m_deleted["finalState"] is None and m_deleted["initialState"]["name"] == "m"
    assert deleted["finalState"] is None and deleted["initialState"]["name"] == "ev2"
    author = m_created["metadata"]["author"]
    assert author["kind"] == "api" and author["node"] == follower and len(author["token"]) == 12
    assert created["metadata"]["author"]["node"] == leader

    for nid in c.ids:  # propagate_always: each node's own apply, once each, same ids and indexes
        mine = ours(read(tmp_path / f"{nid}-all.jsonl"))
        assert [(e["entityType"], e["eventType"]) for e in mine] == EXPECTED, nid
        assert {e["event_src_id"] for e in mine} == {nid}
        assert [e["id"] for e in mine] == [e["id"] for e in primary]
        assert all(e["metadata"]["leader"] is (nid == leader) for e in mine)
        assert [e["finalState"] for e in mine] == [e["finalState"] for e in primary]


def test_changes_applied_but_not_delivered_are_emitted_again_at_start(three, tmp_path: Path) -> None:
    """The cursor file says how far a node's events were delivered. A node stopped with its cursor behind what
    it applied (what a crash between apply and emit leaves) emits those changes again at start, same ids."""
    c = three()
    c.wait_ready()
    leader = c.leader()
    nwid, _ = api_changes(c, leader)
    c.wait_caught_up()
    victim = next(n for n in c.ids if n != leader)
    path = tmp_path / f"{victim}-all.jsonl"
    c.wait(lambda: len([e for e in read(path) if e["entityId"].startswith(nwid)]) == 6, 15, "the six changes")
    first = [e for e in read(path) if e["entityId"].startswith(nwid)]
    cursor = c.specs[victim].data_dir / "events.cursor"
    c.wait(lambda: json.loads(cursor.read_text())["index"] >= first[-1]["metadata"]["raft_index"], 10,
           "the cursor to pass the changes")
    assert c.stop(victim) == 0
    assert oct(cursor.stat().st_mode & 0o777) == "0o600"
    # What a crash right after applying the third change would leave: the cursor before it.
    behind = first[2]["metadata"]["raft_index"] - 1
    cursor.write_text(json.dumps({"index": behind, "leader": False}))
    c.start(victim)
    c.wait(lambda: len([e for e in read(path) if e["entityId"].startswith(nwid)]) >= 10, 30,
           "the last four changes again")
    again = [e for e in read(path) if e["entityId"].startswith(nwid)][6:]
    assert [e["id"] for e in again] == [e["id"] for e in first[2:]]
    assert [e["finalState"] for e in again] == [e["finalState"] for e in first[2:]]
    counts = Counter(e["id"] for e in read(path) if e["entityId"].startswith(nwid))
    assert set(counts) == {e["id"] for e in first}  # nothing new, nothing lost: a consumer drops by id


def test_a_killed_node_loses_no_change_and_repeats_carry_the_same_id(three, tmp_path: Path) -> None:
    """kill -9 of a follower while writes go on: when it is back, its propagate_always file holds every change
    of the cluster at least once (at-least-once across the crash), and ids identify repeats."""
    c = three()
    c.wait_ready()
    leader = c.leader()
    code, net = c.write(leader, "POST", "/controller/network", {"name": "k"})
    nwid = net["id"]
    victim = next(n for n in c.ids if n != leader)
    for i in range(40):
        c.write(leader, "POST", f"/controller/network/{nwid}/member/{i + 1:010x}", {"authorized": True})
        if i == 20:
            c.signal(victim, signal.SIGKILL)
    c.wait(lambda: c.role(victim) is None, 10, f"{victim} down")
    c.start(victim)
    c.wait_caught_up()
    want = {e["id"] for e in read(tmp_path / f"{leader}-leader.jsonl") if e["entityId"].startswith(nwid)}
    assert len(want) == 41

    def got() -> set[str]:
        return {e["id"] for e in read(tmp_path / f"{victim}-all.jsonl") if e["entityId"].startswith(nwid)}
    c.wait(lambda: got() >= want, 30, f"every change in {victim}'s events after its crash")


def test_membership_changes_are_cluster_events_with_their_index(three, tmp_path: Path) -> None:
    c = three()
    c.wait_ready()

    def changes(nid: str) -> list[dict]:
        return [e for e in read(tmp_path / f"{nid}-cluster.jsonl") if e["eventType"] == "members.changed"]
    # The bootstrap configuration is applied as membership entries: every node reports them, the leader's
    # (not propagated) ones once.
    c.wait(lambda: all(any(sorted(e["voters"]) == c.ids for e in changes(n)) for n in c.ids), 20,
           "members.changed naming the three voters on every node")
    for nid in c.ids:
        e = next(e for e in changes(nid) if sorted(e["voters"]) == c.ids)
        assert e["id"] == f"mc-{e['index']}" and sorted(e["peers"]) == c.ids and e["event_src_id"] == nid


def test_across_a_leader_kill_default_subscribers_miss_no_change(three, tmp_path: Path) -> None:
    """kill -9 of the leader in the middle of writes: the default (leader's) streams of all nodes together still
    hold every committed change, the new leader's repeats of its predecessor's last changes carry the same ids,
    and each node's stream is in Raft index order apart from those repeats."""
    c = three()
    c.wait_ready()
    old = c.leader()
    entry = next(n for n in c.ids if n != old)
    code, net = c.write(entry, "POST", "/controller/network", {"name": "lk"})
    nwid = net["id"]
    for i in range(60):
        assert c.write(entry, "POST", f"/controller/network/{nwid}/member/{i + 1:010x}", {"authorized": True},
                       timeout=60)[0] == 200
        if i == 30:
            c.signal(old, signal.SIGKILL)
    new = c.wait_new_leader(old)
    survivors = [n for n in c.ids if n != old]
    c.wait_caught_up(survivors)
    code, members, _ = c.request(new, "GET", f"/controller/network/{nwid}/member")
    assert code == 200 and len(members) == 60

    def primary() -> list[dict]:
        return [e for n in c.ids for e in read(tmp_path / f"{n}-leader.jsonl") if e["entityId"].startswith(nwid)]
    want = {f"{nwid}/{i + 1:010x}" for i in range(60)}
    c.wait(lambda: {e["entityId"] for e in primary() if e["eventType"] == "created"} >= want, 20,
           "every member's creation in some node's default stream")
    by_id: dict[str, dict] = {}
    for e in primary():
        if e["id"] in by_id:  # a repeat: the same change
            assert e["finalState"] == by_id[e["id"]]["finalState"], (e, by_id[e["id"]])
        by_id[e["id"]] = e
    assert {e["event_src_id"] for e in primary()} <= {old, new}
    for nid in (old, new):
        idx = [e["metadata"]["raft_index"] for e in read(tmp_path / f"{nid}-leader.jsonl")]
        firsts = [i for k, i in enumerate(idx) if i not in idx[:k]]
        assert firsts == sorted(firsts), (nid, idx)
