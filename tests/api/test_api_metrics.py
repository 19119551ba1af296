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
