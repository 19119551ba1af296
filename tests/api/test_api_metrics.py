"""GET /metrics: Prometheus text that prometheus_client's own parser reads, token required, and counters that
move with traffic (a real controller: Raft, ctrl.db, the API)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.api_helpers import ApiEnv


async def scrape(env: ApiEnv) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert env.session is not None
    async with env.session.get("/metrics", headers={"X-ZT1-Auth": env.token}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r.status
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_need_the_token_and_move_with_traffic(env: ApiEnv) -> None:
    assert env.session is not None
    async with env.session.get("/metrics") as r:
        assert r.status == 401
    before = await scrape(env)
    assert value(before, "hactl_raft_term") >= 1 and value(before, "hactl_raft_is_leader") == 1
    assert value(before, "hactl_raft_has_leader") == 1 and value(before, "hactl_raft_voters") == 1
    for _ in range(3):
        assert (await env.request("GET", "/status")).status == 200
    await env.new_network()
    after = await scrape(env)
    assert value(after, "hactl_api_requests_total", route="getStatus", method="GET", status="200") == \
        value(before, "hactl_api_requests_total", route="getStatus", method="GET", status="200") + 3
    assert value(after, "hactl_api_request_duration_seconds_count", route="getStatus") >= 3
    assert value(after, "hactl_raft_applied_index") > value(before, "hactl_raft_applied_index")
    # the refused scrape was counted too, under its route and status
    assert value(after, "hactl_api_requests_total", route="getMetrics", method="GET", status="401") == 1


async def test_writes_move_proposals_apply_and_fsync_histograms(env: ApiEnv) -> None:
    """N writes through the API: N proposals applied (and N writes with outcome applied), at least one apply batch
    and one durable raft.db commit observed per write (a single voter fsyncs each before it commits), and the
    write route's request counter."""
    n = 5
    before = await scrape(env)
    for _ in range(n):
        await env.new_network()
    after = await scrape(env)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("hactl_raft_proposals_applied_total") == n
    assert moved("hactl_writes_total", outcome="applied") == n
    assert value(after, "hactl_raft_proposals_pending") == 0 and value(after, "hactl_writes_in_flight") == 0
    assert moved("hactl_apply_duration_seconds_count") >= n and moved("hactl_apply_duration_seconds_sum") > 0
    assert moved("hactl_raft_fsync_duration_seconds_count") >= n
    # +Inf bucket = count: the histograms are well formed
    for h in ("hactl_apply_duration_seconds", "hactl_raft_fsync_duration_seconds"):
        assert value(after, f"{h}_bucket", le="+Inf") == value(after, f"{h}_count")
    assert moved("hactl_api_requests_total", route="createNetworkUnder", method="POST", status="200") == n
    assert value(after, "hactl_raft_leader_changes_total") == 1  # a single voter: elected once
    assert value(after, "hactl_raft_proposals_failed_total", reason="timeout") == 0


def test_duration_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    from hactl.raft.metrics_hooks import DurationHistogram
    h = DurationHistogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)] and h.count == 5 and abs(h.sum - 4.65) < 1e-9
