"""GET /metrics (Prometheus text format, token required like the rest of the API) and the API's own request
metrics, recorded by a middleware: requests by route (the operation id, never the path: ids would make unbounded
label sets), method and status, and their latency."""
from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from hactl.api.spec import Route

METRICS: web.AppKey["ApiMetrics"] = web.AppKey("hactl_api_metrics", object)  # type: ignore[arg-type]


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("hactl_api_requests", "API requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("hactl_api_request_duration_seconds", "API request latency by route", ["route"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))


@web.middleware
async def metrics_middleware(request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route = request.match_info.route.name or "unmatched"
        m = request.app[METRICS]
        m.requests.labels(route, request.method, str(status)).inc()
        m.latency.labels(route).observe(time.perf_counter() - t0)


async def get_metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES: list[Route] = [
    Route("GET", "/metrics", get_metrics, "getMetrics", "Prometheus metrics of this node", {"type": "string"},
          tags=("status",), content_type="text/plain",
          description="Raft (term, commit/applied index, leader and leader changes, proposals, fsync/apply/"
                      "snapshot durations, messages by type and drops by reason), writes by outcome, peers (last "
                      "contact, round trip), alarms, the ZeroTier endpoint (packets by verb, drops by reason, config "
                      "requests and replies, members), event subscriptions (queue depth, drops) and the API itself "
                      "(requests by route and status, latency). Token required (Prometheus: "
                      "`authorization: {credentials: TOKEN}`). Metric names: README, /metrics."),
]
