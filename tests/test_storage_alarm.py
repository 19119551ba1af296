"""Storage alarms (NOSPACE): measured on real LMDB files, raised and cleared through the state machine, and, end to
end, three real controller processes refusing writes with 507 before a map is full, and accepting them again once
deletes freed the space."""
from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from hactl.api.cluster import ClusterUnavailable
from hactl.config import StorageConfig
from hactl.fsm import commands as C
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import Result
from hactl.raft.storage import RaftStorage
from hactl.raft.types import ConfState, Entry, EntryType, SnapshotMeta
from hactl.server.alarms import NOSPACE, StorageMonitor
from tests.identities import bound_key
from tests.proc_cluster import ProcCluster

NWID = "a1b2c3d4e5000001"
MIB = 1 << 20


def member_body(i: int) -> dict[str, Any]:
    """~60 KB of ctrl.db per member: a long name and 1000 addresses, each also a row of the address index."""
    return {"name": "x" * 1000, "ipAssignments": [f"10.{i % 256}.{j >> 8}.{j & 255}" for j in range(1, 1001)]}


# ------------------------------------------------------------------------------------------------- measuring

def test_raft_db_usage_counts_live_entries_and_drops_after_compaction(tmp_path: Path) -> None:
    with RaftStorage(tmp_path / "raft.db", map_size=64 * MIB) as s:
        empty, map_size = s.usage()
        assert map_size == 64 * MIB and 0 < empty < 64 << 10
        s.save(None, [Entry(i, 1, EntryType.NORMAL, bytes(3000)) for i in range(1, 501)])
        full, _ = s.usage()
        assert full > empty + 500 * 3000
        s.set_snapshot(SnapshotMeta(500, 1, ConfState(("a",))))
        s.compact(450)
        assert s.usage()[0] < full - 400 * 3000  # unlike the file, live data shrinks when entries go


# -------------------------------------------------------------------------------------- the monitor, one node

class OneNode:
    """A real ctrl.db and raft.db, and the write path of a one-node cluster: submit applies at the next index."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.storage = RaftStorage(tmp_path / "raft.db")
        self.machine = StateMachine(tmp_path / "ctrl.db", map_size=8 * MIB)
        self.index = 0
        self.leaderless = False

    async def submit(self, command: bytes, request_id: str) -> Result:
        if self.leaderless:
            raise ClusterUnavailable("no leader is known")
        self.index += 1
        result = self.machine.apply(self.index, 1, command)
        assert result is not None
        return result

    def fill(self, members: int) -> int:
        """Add members; ctrl.db's live data afterwards."""
        for command in (C.build_cluster_init("init", 1, cluster_id="c", timeline_id="t", address=NWID[:10],
                                             signing_key=bound_key(NWID[:10]), token_hash="h"),
                        C.build_network_update("net", 1, NWID, {})):
            assert asyncio.run(self.submit(command, "setup")).ok
        for i in range(members):
            r = asyncio.run(self.submit(C.build_member_update(f"m{i}", 1, NWID, f"{i + 1:010x}", member_body(i)),
                                        f"m{i}"))
            assert r.ok, r
        return self.machine.usage()[0]

    def monitor(self, limits: StorageConfig) -> StorageMonitor:
        return StorageMonitor("n1", self.dir, limits, raft_usage=self.storage.usage, ctrl_usage=self.machine.usage,
                              alarms=self.machine.alarms, submit=self.submit, now_ms=lambda: 1_700_000_000_000)

    def close(self) -> None:
        self.machine.close()
        self.storage.close()


@pytest.fixture
def one(tmp_path: Path) -> Any:
    n = OneNode(tmp_path)
    yield n
    n.close()


def limits_at(threshold: float, **kw: Any) -> StorageConfig:
    """Limits whose ctrl.db alarm level is ``threshold`` bytes of the 8 MiB map."""
    return StorageConfig(ctrl_db_max_bytes=8 * MIB, alarm_used_ratio=threshold / (8 * MIB),
                         alarm_min_free_bytes=kw.get("min_free", MIB))


def test_ctrl_db_alarm_is_raised_kept_between_the_levels_and_cleared_below(
        one: OneNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hactl.server")
    used = one.fill(10)
    monitor = one.monitor(limits_at(0.9 * used))
    # No leader at first: the raise is proposed again every second, but the condition is logged once.
    one.leaderless = True
    for _ in range(3):
        asyncio.run(monitor.check())
    assert one.machine.alarms() == []
    assert caplog.text.count("n1: NOSPACE alarm raised: ctrl.db holds") == 1
    assert caplog.text.count("retrying every second") == 1
    one.leaderless = False
    asyncio.run(monitor.check())
    [alarm] = one.machine.alarms()
    assert (alarm["node"], alarm["name"], alarm["time"]) == ("n1", NOSPACE, 1_700_000_000_000)
    assert "ctrl.db holds" in alarm["message"] and "storage.ctrl_db_max_bytes" in alarm["message"]
    assert "delete networks or members" in alarm["message"]
    # Below the alarm level but above 80% of it: the alarm stays (no flapping at the boundary).
    monitor.limits = limits_at(1.1 * used)
    asyncio.run(monitor.check())
    assert one.machine.alarms() == [alarm]
    # Below 80% of the level: cleared, and said so once.
    monitor.limits = limits_at(1.3 * used)
    asyncio.run(monitor.check())
    asyncio.run(monitor.check())
    assert one.machine.alarms() == []
    assert caplog.text.count("n1: NOSPACE alarm cleared") == 1
    assert "cluster alarm on: n1 NOSPACE" in caplog.text and "cluster alarm off: n1 NOSPACE" in caplog.text


def test_too_little_free_disk_raises_the_alarm_naming_the_key(one: OneNode) -> None:
    monitor = one.monitor(limits_at(7 * MIB, min_free=1 << 60))  # more than any disk has free
    asyncio.run(monitor.check())
    [alarm] = one.machine.alarms()
    assert f"the file system of {one.dir}" in alarm["message"] and "storage.alarm_min_free_bytes" in alarm["message"]
    assert "ctrl.db" not in alarm["message"]  # only the conditions that are over are named
    monitor.limits = limits_at(7 * MIB, min_free=MIB)
    asyncio.run(monitor.check())
    assert one.machine.alarms() == []


def test_every_condition_at_once_is_one_alarm_whose_message_fits(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-directory-name-" * 8) / "data\n"  # long, and not printable as it stands
    deep.mkdir(parents=True)
    n = OneNode(deep)
    try:
        monitor = n.monitor(StorageConfig(alarm_used_ratio=1e-9, alarm_min_free_bytes=1 << 60))
        asyncio.run(monitor.check())
        [alarm] = n.machine.alarms()
        assert alarm["message"].startswith("raft.db holds") and "ctrl.db holds" in alarm["message"]
        assert len(alarm["message"]) <= C.ALARM_MESSAGE_MAX and alarm["message"].isprintable()
    finally:
        n.close()


# ------------------------------------------------------------------------------------- end to end, 3 processes

def alarms_of(c: ProcCluster, nid: str) -> list[tuple[str, str]] | None:
    st = c.status(nid)
    return None if st is None else [(a["node"], a["name"]) for a in st["cluster"]["alarms"]]


def test_a_node_short_of_space_makes_every_node_refuse_writes_until_deletes_free_it(tmp_path: Path) -> None:
    # Every node has a 32 MiB ctrl.db map; only ctrl3's alarm level is low (20%, 6.4 MiB), so the alarm is raised
    # by one node and must still refuse writes on the others. Sizes: the client below writes ~4 MiB a second (more
    # on a fast machine) and the alarm is checked once a second, so ctrl.db may hold twice the alarm level before
    # writes stop: still far from the map's end. About a fifth of it stays after the deletes (each write's result
    # is remembered for exactly-once retries), under the 5.1 MiB at which the alarm clears. The disk floor is low
    # so that a nearly full test machine cannot raise an alarm of its own.
    c = ProcCluster(tmp_path / "c", 3, config={"storage": {"ctrl_db_max_bytes": 32 * MIB,
                                                           "alarm_min_free_bytes": MIB},
                                               "events": [{"type": "file", "namespaces": ["cluster"]}]})
    short, entry, other = "ctrl3", "ctrl1", "ctrl2"
    doc = yaml.safe_load(c.specs[short].config.read_text())
    doc["storage"]["alarm_used_ratio"] = 0.2
    c.specs[short].config.write_text(yaml.safe_dump(doc))
    try:
        c.start_all()
        address = c.wait_ready()
        code, net = c.write(entry, "POST", f"/controller/network/{address}______", {"name": "fill"})
        assert code == 200, net
        nwid = net["id"]
        member = f"/controller/network/{nwid}/member/{{:010x}}"
        for i in range(1, 600):  # ~125 members cross ctrl3's level; the map would hold ~600
            code, body = c.write(entry, "POST", member.format(i), member_body(i))
            if code == 507:
                break
            assert code == 200, body
        else:
            raise AssertionError(f"no 507 after {i} members\n{c.log(short)[-3000:]}")
        assert body["error"] == "NOSPACE" and body["field"] is None, body
        assert short in body["message"] and "ctrl.db holds" in body["message"], body
        assert "storage.ctrl_db_max_bytes" in body["message"] and "deletes still work" in body["message"], body
        refused = i

        # Every node shows ctrl3's alarm, and refuses writes itself; nothing of a refused write was applied.
        for nid in c.ids:
            c.wait(lambda: alarms_of(c, nid) == [(short, NOSPACE)], 30, f"{nid} to show {short}'s alarm")
        code, body, _ = c.request(other, "POST", member.format(refused + 1), member_body(refused + 1))
        assert code == 507 and body["error"] == "NOSPACE", body
        code, body, _ = c.request(other, "POST", f"/controller/network/{address}______", {"name": "more"})
        assert code == 507, body
        for i in (refused, refused + 1):
            assert c.request(short, "GET", member.format(i))[0] == 404
        code, nets, _ = c.request(short, "GET", "/controller/network")
        assert code == 200 and nets == [nwid]
        # The node is healthy (the cluster is full, not the node), and says why writes fail.
        code, health, _ = c.request(other, "GET", "/health", auth=False)
        assert code == 200 and health["alarms"] == [{"node": short, "name": NOSPACE}], health
        assert f"{short}: NOSPACE alarm raised: ctrl.db holds" in c.log(short)
        # No fail-stop: the alarm came well before the map was full.
        assert all(p.poll() is None for p in c.procs.values())

        # Deletes still work, on any node; deleting the network frees its members' pages and the alarm clears.
        code, body = c.write(other, "DELETE", member.format(1), None)
        assert code == 200 and body["id"] == f"{1:010x}", body
        code, body = c.write(short, "DELETE", f"/controller/network/{nwid}", None)
        assert code == 200, body
        for nid in c.ids:
            c.wait(lambda: alarms_of(c, nid) == [], 30, f"{nid} to see the alarm cleared")
        code, body = c.write(other, "POST", f"/controller/network/{address}______", {"name": "after"})
        assert code == 200, body
        assert all(p.poll() is None for p in c.procs.values()) and all(n == 0 for n in c.restarts.values())

        # Every node told its event subscribers: read-only while the alarm was on, writable again after.
        for nid in c.ids:
            path = c.specs[nid].data_dir / "events.jsonl"
            c.wait(lambda: '"state.rw"' in path.read_text(), 10, f"{nid}'s state.rw event")
            evs = [json.loads(x) for x in path.read_text().splitlines()]
            ro_rw = [e for e in evs if e["eventType"] in ("state.ro", "state.rw")]
            assert [e["eventType"] for e in ro_rw] == ["state.ro", "state.rw"], ro_rw
            assert f"{NOSPACE} on {short}" in ro_rw[0]["reason"] and ro_rw[0]["event_src_id"] == nid
    finally:
        c.close()
