"""The controller's Prometheus metrics, read when scraped (nothing on the hot paths): Raft state, peers, alarms,
the Raft transport's counters, and the ZeroTier endpoint's counters and member counts (GET /metrics)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hactl.server.controller import Controller


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ControllerCollector(Collector):
    def __init__(self, ctl: "Controller") -> None:
        self.ctl = ctl

    def collect(self) -> Iterator[Metric]:
        ctl = self.ctl
        node = ctl.node
        if node is not None:
            st = node.status()
            yield _gauge("hactl_raft_term", "Current Raft term", st.term)
            yield _gauge("hactl_raft_commit_index", "Highest log index known committed", st.commit)
            yield _gauge("hactl_raft_applied_index", "Highest log index applied to ctrl.db", st.applied)
            yield _gauge("hactl_raft_is_leader", "1 if this node is the Raft leader", int(node.is_leader))
            yield _gauge("hactl_raft_has_leader", "1 if a leader is known", int(st.leader is not None))
            yield _gauge("hactl_raft_voters", "Voters in the configuration", len(st.conf.voters))
            yield _gauge("hactl_raft_io_stalled_seconds", "Age of the fsync/apply in progress (0: none)",
                         node.io_stalled_s)
        if ctl.mesh is not None:
            conns = ctl.mesh.connected()
            yield _gauge("hactl_peers_connected", "Controllers connected on the control channel", len(conns))
            contact = GaugeMetricFamily("hactl_peer_last_contact_seconds", "Seconds since the last frame from a peer",
                                        labels=["peer"])
            now = time.time()
            for pid, info in sorted(conns.items()):
                contact.add_metric([pid], max(0.0, now - info.last_contact))
            yield contact
        transport = getattr(ctl, "raft_transport", None)
        if transport is not None:
            msgs = CounterMetricFamily("hactl_raft_transport_events", "Raft transport counters (sent, drops by reason)",
                                       labels=["event"])
            for event, n in sorted(transport.stats.items()):
                msgs.add_metric([event], n)
            yield msgs
        alarms = GaugeMetricFamily("hactl_alarm_active", "1 for each alarm on, by node and name", labels=["node", "name"])
        try:
            for a in ctl.health_.alarms():
                alarms.add_metric([a["node"], a["name"]], 1)
        except Exception:  # ctrl.db not readable right now: no alarm samples this scrape
            pass
        yield alarms
        zt = ctl.zerotier
        if zt is not None and zt.endpoint is not None:
            yield from _zerotier(zt)


def _zerotier(zt: Any) -> Iterator[Metric]:
    st = zt.status()
    yield _gauge("hactl_zerotier_online", "1 if the controller identity heard from a root lately", int(st["online"]))
    yield _gauge("hactl_zerotier_members_online", "Members that asked this node within 2 minutes",
                 st.get("members_online", 0))
    yield _gauge("hactl_zerotier_members_served", "Members this node serves now (not handed over)",
                 st.get("members_served", 0))
    events = CounterMetricFamily("hactl_zerotier_events", "ZeroTier endpoint counters by identity (controller "
                                 "or root) and event", labels=["identity", "event"])
    drops = CounterMetricFamily("hactl_zerotier_dropped", "Datagrams dropped, by identity and reason",
                                labels=["identity", "reason"])
    for identity, stats in (("controller", st.get("stats") or {}), ("root", st.get("root_stats") or {})):
        for key, n in sorted(stats.items()):
            if key.startswith("dropped."):
                drops.add_metric([identity, key[len("dropped."):]], n)
            else:
                events.add_metric([identity, key], n)
    yield events
    yield drops
