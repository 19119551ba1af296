"""The controller's Prometheus metrics, read when scraped (GET /metrics). Nothing here runs on a hot path: the
measuring code keeps plain ints and DurationHistograms (hactl.raft.metrics_hooks) on its own objects, and this
collector turns them into metric families at scrape time.

What it reads: Raft state, leader changes, proposals (RaftNode) and writes (WritePath), raft.db's fsync, apply and
snapshot durations, the Raft transport (messages by type, drops by reason), peers (last contact, ping round
trip), alarms, the ZeroTier endpoint (packets by verb, drops by reason, config requests and replies, members) and
the event subscriptions (queue depth, drops). The API's own request metrics live in hactl.api.metrics."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hactl.raft.metrics_hooks import DurationHistogram

if TYPE_CHECKING:
    from hactl.server.controller import Controller


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _counter_by(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one label, from a dict of counts."""
    fam = CounterMetricFamily(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        fam.add_metric([value], n)
    return fam


def _histogram(name: str, doc: str, h: DurationHistogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class ControllerCollector(Collector):
    def __init__(self, ctl: "Controller") -> None:
        self.ctl = ctl
        self._snapshot_size: tuple[str, int] | None = None  # (snapshot name, its ctrl.db size): read once each

    def collect(self) -> Iterator[Metric]:
        ctl = self.ctl
        node = ctl.node
        if node is not None:
            yield from self._raft(node)
        storage = getattr(ctl, "storage", None)
        if storage is not None and hasattr(storage, "fsync_seconds"):
            yield _histogram("hactl_raft_fsync_duration_seconds", "Durable commits of raft.db (write and fsync)",
                             storage.fsync_seconds)
        writes = getattr(ctl, "writes", None)
        if writes is not None:
            yield from _writes(writes)
        if ctl.mesh is not None:
            yield from _peers(ctl.mesh)
        transport = getattr(ctl, "raft_transport", None)
        if transport is not None:
            yield from _transport(transport)
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
        events = getattr(ctl, "events", None)
        if events is not None:
            yield from _events(events)

    def _raft(self, node: Any) -> Iterator[Metric]:
        st = node.status()
        yield _gauge("hactl_raft_term", "Current Raft term", st.term)
        yield _gauge("hactl_raft_commit_index", "Highest log index known committed", st.commit)
        yield _gauge("hactl_raft_applied_index", "Highest log index applied to ctrl.db", st.applied)
        yield _gauge("hactl_raft_is_leader", "1 if this node is the Raft leader", int(node.is_leader))
        yield _gauge("hactl_raft_has_leader", "1 if a leader is known", int(st.leader is not None))
        yield _gauge("hactl_raft_voters", "Voters in the configuration", len(st.conf.voters))
        yield _gauge("hactl_raft_io_stalled_seconds", "Age of the fsync/apply in progress (0: none)",
                     node.io_stalled_s)
        yield _counter("hactl_raft_leader_changes", "Leader changes seen by this node (the first leader included)",
                       node.leader_changes)
        yield _gauge("hactl_raft_proposals_pending", "Proposals made on this node waiting to be applied",
                     node.proposals_pending)
        yield _counter("hactl_raft_proposals_applied", "Proposals made on this node and applied",
                       node.proposals_applied)
        yield _counter("hactl_raft_proposals_dropped", "Proposals overwritten by another leader's entry "
                       "(never committed)", node.proposals_dropped)
        yield _counter_by("hactl_raft_proposals_failed", "Proposals that failed, by reason (not_leader, refused, "
                          "timeout, snapshot, stopped)", "reason", node.proposals_failed)
        yield _histogram("hactl_apply_duration_seconds", "Applying a batch of committed entries to ctrl.db",
                         node.apply_seconds)
        yield _histogram("hactl_raft_snapshot_duration_seconds", "Taking a snapshot of ctrl.db", node.snapshot_seconds)
        yield _gauge("hactl_raft_snapshot_index", "Log index of the newest snapshot the journal records",
                     node.snapshot_index)
        size = self._snapshot_bytes(node)
        if size is not None:
            yield _gauge("hactl_raft_snapshot_size_bytes", "Size of the newest snapshot's ctrl.db copy", size)

    def _snapshot_bytes(self, node: Any) -> int | None:
        """The newest snapshot's size from the snapshot store (its meta file, read once per snapshot)."""
        snap = node.core.snapshot
        if not snap.index:
            return None
        name = f"{snap.index}-{snap.term}"
        if self._snapshot_size is None or self._snapshot_size[0] != name:
            store = getattr(getattr(self.ctl, "model", None), "store", None)
            if store is None:
                return None
            try:
                self._snapshot_size = (name, int(store.load(name).size))
            except Exception:  # pruned or not stored here (a marker from before a restore): no sample
                return None
        return self._snapshot_size[1]


def _writes(writes: Any) -> Iterator[Metric]:
    yield _gauge("hactl_writes_in_flight", "Writes this node proposed as leader (its own and forwarded ones), "
                 "not applied yet", writes.in_flight)
    yield _counter_by("hactl_writes", "API writes by outcome (applied, unavailable, overloaded, no_space, unknown, "
                      "cancelled, error)", "outcome", writes.outcomes)
    yield _counter("hactl_writes_forwarded", "Followers' writes this node received as leader",
                   writes.forwarded_served)


def _peers(mesh: Any) -> Iterator[Metric]:
    conns = mesh.connected()
    yield _gauge("hactl_peers_connected", "Controllers connected on the control channel", len(conns))
    contact = GaugeMetricFamily("hactl_peer_last_contact_seconds", "Seconds since the last frame from a peer",
                                labels=["peer"])
    rtt = GaugeMetricFamily("hactl_peer_rtt_seconds", "Round trip of the last keepalive ping to a peer",
                            labels=["peer"])
    now = time.time()
    for pid, info in sorted(conns.items()):
        contact.add_metric([pid], max(0.0, now - info.last_contact))
        if info.rtt is not None:
            rtt.add_metric([pid], info.rtt)
    yield contact
    yield rtt


def _transport(transport: Any) -> Iterator[Metric]:
    msgs = CounterMetricFamily("hactl_raft_transport_events", "Raft transport counters (sent, drops by reason)",
                               labels=["event"])
    dropped = CounterMetricFamily("hactl_raft_messages_dropped", "Raft messages dropped by the transport, by "
                                  "reason", labels=["reason"])
    for event, n in sorted(transport.stats.items()):
        msgs.add_metric([event], n)
        if event.startswith("dropped_"):
            dropped.add_metric([event[len("dropped_"):]], n)
    yield msgs
    yield dropped
    for direction, counts in (("sent", transport.sent_by_type), ("received", transport.received_by_type)):
        fam = CounterMetricFamily(f"hactl_raft_messages_{direction}", f"Raft messages {direction}, by type",
                                  labels=["type"])
        for mtype, n in sorted(counts.items(), key=lambda kv: kv[0].name):
            fam.add_metric([mtype.name], n)
        yield fam


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
    rx = CounterMetricFamily("hactl_zerotier_packets_received", "Packets received and authenticated, by identity "
                             "and verb", labels=["identity", "verb"])
    tx = CounterMetricFamily("hactl_zerotier_packets_sent", "Packets sent, by identity and verb (a fragmented "
                             "packet counts once)", labels=["identity", "verb"])
    config = CounterMetricFamily("hactl_zerotier_config_requests", "Network config requests accepted from members",
                                 labels=["identity"])
    replies = CounterMetricFamily("hactl_zerotier_config_replies", "Network config answers: ok (the config), "
                                  "error (e.g. ACCESS_DENIED), push (sent unasked after a change)",
                                  labels=["identity", "kind"])
    for identity, stats in (("controller", st.get("stats") or {}), ("root", st.get("root_stats") or {})):
        for key, n in sorted(stats.items()):
            if key.startswith("dropped."):
                drops.add_metric([identity, key[len("dropped."):]], n)
                continue
            events.add_metric([identity, key], n)
            if key.startswith("rx."):
                rx.add_metric([identity, key[3:]], n)
            elif key.startswith("tx."):
                tx.add_metric([identity, key[3:]], n)
        if "requests" in stats:
            config.add_metric([identity], stats["requests"])
        for kind, key in (("ok", "config_replies"), ("error", "config_errors"), ("push", "config_pushes")):
            if key in stats:
                replies.add_metric([identity, kind], stats[key])
    yield from (events, drops, rx, tx, config, replies)


def _events(bus: Any) -> Iterator[Metric]:
    depth = GaugeMetricFamily("hactl_event_queue_events", "Events queued for a subscription's sink",
                              labels=["subscription"])
    dropped = CounterMetricFamily("hactl_event_dropped", "Events a subscription lost (queue full, sink failed)",
                                  labels=["subscription"])
    for sub in list(getattr(bus, "subscriptions", ())):
        depth.add_metric([sub.name], len(sub.queue))
        dropped.add_metric([sub.name], getattr(sub, "dropped_total", 0))
    yield depth
    yield dropped
