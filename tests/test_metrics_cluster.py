"""GET /metrics on real controllers: three processes (Raft messages by type, proposals and forwarded writes,
fsync/apply histograms, peers' round trip), and one in-process controller with its ZeroTier endpoint, members
speaking the protocol over UDP, an event sink and a snapshot (packets by verb, config requests and replies, event
queues, snapshot duration and size). The Grafana dashboard in contrib/ is checked against what a real scrape
exposes."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from hactl.config import EventSinkConfig
from hactl.zt.identity import Identity
from hactl.zt.packet import ErrorCode
from tests.api.api_helpers import make_configs, start_initialised, until
from tests.proc_cluster import ProcCluster
from tests.zt import vectors as v
from tests.zt.test_zt_controller_role import LOCAL, POOL_NET, Api, free_udp_port, local_planet, open_member

DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana-hactl.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, set[str]]:
    """Samples by (name, sorted labels), and every metric name a PromQL query can use (a counter's _total, a
    histogram's _bucket/_count/_sum), families without samples included."""
    samples: Samples = {}
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update({"counter": [f"{fam.name}_total"],
                      "histogram": [f"{fam.name}_bucket", f"{fam.name}_count", f"{fam.name}_sum"]}.get(fam.type, []))
        for s in fam.samples:
            names.add(s.name)
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(c: ProcCluster, nid: str) -> Samples:
    code, body, headers = c.request(nid, "GET", "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain"), code
    return parse(body.decode() if isinstance(body, bytes) else str(body))[0]


def test_cluster_metrics_move_with_writes(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    leader = c.leader()
    follower = next(n for n in c.ids if n != leader)
    c.wait_caught_up()
    before = {n: scrape(c, n) for n in c.ids}
    n = 4
    for i in range(n):
        assert c.write(follower, "POST", f"/controller/network/{ctrl}______", {"name": f"f{i}"})[0] == 200
        assert c.write(leader, "POST", f"/controller/network/{ctrl}______", {"name": f"l{i}"})[0] == 200
    c.wait_caught_up()
    after = {nid: scrape(c, nid) for nid in c.ids}

    def moved(nid: str, name: str, **labels: str) -> float:
        return value(after[nid], name, **labels) - value(before[nid], name, **labels)

    # Every write is proposed on the leader (the follower's are forwarded to it) and applied there.
    assert moved(leader, "hactl_raft_proposals_applied_total") == 2 * n
    assert moved(leader, "hactl_writes_forwarded_total") == n
    assert moved(follower, "hactl_writes_total", outcome="applied") == n
    assert moved(follower, "hactl_raft_proposals_applied_total") == 0
    assert moved(follower, "hactl_api_requests_total", route="createNetworkUnder", method="POST", status="200") == n
    for nid in c.ids:
        assert moved(nid, "hactl_apply_duration_seconds_count") >= 1, nid
        assert moved(nid, "hactl_raft_fsync_duration_seconds_count") >= 1, nid
        assert value(after[nid], "hactl_raft_leader_changes_total") >= 1, nid
        assert value(after[nid], "hactl_raft_proposals_pending") == 0, nid
    # Raft messages by type: the leader's appends reach the followers, whose answers come back.
    assert moved(leader, "hactl_raft_messages_sent_total", type="APPEND") >= n
    assert moved(leader, "hactl_raft_messages_received_total", type="APPEND_RESP") >= n
    assert moved(follower, "hactl_raft_messages_received_total", type="APPEND") >= 1
    assert moved(follower, "hactl_raft_messages_sent_total", type="APPEND_RESP") >= 1
    assert value(after[leader], "hactl_raft_messages_sent_total", type="HEARTBEAT") > 0
    # Peers: both connected, recently heard, and a keepalive round trip measured (pings every 2 s).
    others = [x for x in c.ids if x != leader]

    def rtts() -> Samples | None:
        s = scrape(c, leader)
        return s if all(("hactl_peer_rtt_seconds", (("peer", p),)) in s for p in others) else None
    s = c.wait(rtts, 15, "a keepalive round trip to every peer")
    assert value(s, "hactl_peers_connected") == 2
    for p in others:
        assert 0 < value(s, "hactl_peer_rtt_seconds", peer=p) < 1
        assert value(s, "hactl_peer_last_contact_seconds", peer=p) < 5


def test_zerotier_verbs_events_snapshot_and_the_dashboard(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_zerotier_scenario(tmp_path), 120))


async def _zerotier_scenario(tmp_path: Path) -> None:
    cfg = make_configs(tmp_path, ("n1",))[0]
    cfg.zerotier.bind = f"{LOCAL}:{free_udp_port()}"
    cfg.zerotier.planet = str(local_planet(tmp_path / "planet"))
    cfg.events = [EventSinkConfig(type="file")]
    c = await start_initialised(cfg)
    api = Api(c)

    async def metrics() -> tuple[Samples, set[str]]:
        async with api.session.get("/metrics") as r:
            assert r.status == 200
            return parse(await r.text())
    try:
        await until(lambda: c.zerotier.endpoint is not None, "the zerotier endpoint is up")
        before, _ = await metrics()
        ctl = c.model.machine.controller_identity()
        net = await api.call("POST", f"/controller/network/{ctl.address:010x}______", POOL_NET)
        m = await open_member(Identity.from_string(v.KNOWN_GOOD_IDENTITY), ctl, c.zerotier.endpoint.local_address)
        assert await m.request(int(net["id"], 16)) == ("error", ErrorCode.NETWORK_ACCESS_DENIED)
        assert m.transport is not None
        m.transport.close()
        # A snapshot (off in these tests' configs): its duration and size.
        await c.node.request_snapshot()
        await until(lambda: c.node.snapshot_index > 0, "the snapshot is recorded")
        after, names = await metrics()

        def moved(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        ctl_ = {"identity": "controller"}
        assert moved("hactl_zerotier_packets_received_total", verb="hello", **ctl_) >= 1
        assert moved("hactl_zerotier_packets_received_total", verb="network_config_request", **ctl_) == 1
        assert moved("hactl_zerotier_packets_sent_total", verb="ok", **ctl_) >= 1  # OK(HELLO)
        assert moved("hactl_zerotier_packets_sent_total", verb="error", **ctl_) == 1  # ACCESS_DENIED
        assert moved("hactl_zerotier_config_requests_total", **ctl_) == 1
        assert moved("hactl_zerotier_config_replies_total", kind="error", **ctl_) == 1
        assert value(after, "hactl_zerotier_members_online") == 1
        assert value(after, "hactl_raft_snapshot_duration_seconds_count") == 1
        assert value(after, "hactl_raft_snapshot_size_bytes") > 0
        assert ("hactl_event_queue_events", (("subscription", "file-0"),)) in after
        assert value(after, "hactl_event_dropped_total", subscription="file-0") == 0
        check_dashboard(names)
    finally:
        await api.session.close()
        await c.stop()


def check_dashboard(exposed: set[str]) -> None:
    """contrib/grafana-hactl.json: what Grafana imports (a datasource variable, panels with Prometheus targets),
    and every metric its queries name is one /metrics exposes."""
    d: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert d["schemaVersion"] >= 36 and d["title"] and d["uid"]
    variables = {x["name"]: x for x in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used: set[str] = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys(), p["title"]
        for t in p["targets"]:
            assert t["expr"] and t["refId"], p["title"]
            used.update(re.findall(r"\bhactl_[a-z0-9_]+", t["expr"]))
    assert used and not used - exposed, f"queried but not exposed: {sorted(used - exposed)}"
    # The dashboard covers what issue 12 asks operators to see.
    for want in ("hactl_raft_term", "hactl_raft_commit_index", "hactl_raft_applied_index",
                 "hactl_raft_proposals_applied_total", "hactl_raft_proposals_failed_total",
                 "hactl_raft_fsync_duration_seconds_bucket", "hactl_apply_duration_seconds_bucket",
                 "hactl_peers_connected", "hactl_peer_last_contact_seconds", "hactl_peer_rtt_seconds",
                 "hactl_api_requests_total", "hactl_api_request_duration_seconds_bucket",
                 "hactl_zerotier_packets_received_total", "hactl_zerotier_dropped_total",
                 "hactl_zerotier_members_online", "hactl_event_queue_events", "hactl_event_dropped_total"):
        assert want in used, want
