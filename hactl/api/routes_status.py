"""GET /health (no token), GET /status, GET /controller: about this node, never about model contents, so
none of them waits for a read barrier (they must answer while there is no leader)."""
from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hactl.api.cluster import ClusterUnavailable
from hactl.api.context import context
from hactl.api.errors import json_response
from hactl.api.schemas import ref
from hactl.api.spec import Route

API_VERSION = 4  # the ZeroTier controller API generation we speak


def _cluster_info(request: web.Request) -> dict[str, Any] | None:
    try:
        return context(request).cluster.machine().cluster_info()
    except ClusterUnavailable:
        return None  # ctrl.db is being rebuilt: report "not ready" rather than failing the status call


def _version_numbers(version: str) -> dict[str, int]:
    """ZeroTier's versionMajor/Minor/Rev/Build from our dotted version (missing parts are 0)."""
    nums = [int(x) for x in re.findall(r"\d+", version)[:4]]
    nums += [0] * (4 - len(nums))
    return dict(zip(("versionMajor", "versionMinor", "versionRev", "versionBuild"), nums))


async def get_livez(request: web.Request) -> web.Response:
    live, details = context(request).cluster.liveness()
    return json_response(details, 200 if live else 503)


async def get_readyz(request: web.Request) -> web.Response:
    ready, details = context(request).cluster.readiness()
    return json_response(details, 200 if ready else 503)


async def get_health(request: web.Request) -> web.Response:
    healthy, details = context(request).cluster.health()
    # 503 when unhealthy: that is what load balancers and compose healthchecks act on.
    return json_response({**details, "healthy": bool(healthy)}, 200 if healthy else 503)


async def get_status(request: web.Request) -> web.Response:
    ctx = context(request)
    info = _cluster_info(request)
    healthy, _ = ctx.cluster.health()
    return json_response({
        "address": info["address"] if info else None,
        "online": bool(healthy),
        "version": ctx.version,
        **_version_numbers(ctx.version),
        "clock": ctx.cluster.now_ms(),
        "tcpFallbackActive": False,
        "cluster": ctx.cluster.status(),
        "zerotier": ctx.cluster.zerotier_status(),
    })


async def get_controller(request: web.Request) -> web.Response:
    ctx = context(request)
    return json_response({"controller": True, "apiVersion": API_VERSION, "clock": ctx.cluster.now_ms(),
                          "databaseReady": _cluster_info(request) is not None})


ROUTES: list[Route] = [
    Route("GET", "/health", get_health, "getHealth", "Health of this node (no token needed)", ref("Health"),
          auth=False, errors=(503,), tags=("status",),
          description="200 when a leader is known and this node has applied up to the leader's commit index "
                      "as of the last contact, else 503 (same body)."),
    Route("GET", "/livez", get_livez, "getLivez", "Liveness of this node (no token needed)", ref("Livez"),
          auth=False, errors=(503,), tags=("status",),
          description="200 while the process and its Raft loop respond (no leader needed; restart it on 503)."),
    Route("GET", "/readyz", get_readyz, "getReadyz", "Readiness of this node (no token needed)", ref("Readyz"),
          auth=False, errors=(503,), tags=("status",),
          description="200 when a leader is known, this node is caught up and no alarm is on; else 503 with "
                      "`reasons`."),
    Route("GET", "/status", get_status, "getStatus", "Node status (ZeroTier fields plus `cluster`)",
          ref("Status"), tags=("status",)),
    Route("GET", "/controller", get_controller, "getController", "Controller status", ref("Controller"),
          tags=("status",),
          description="databaseReady is true once the cluster is initialised and ctrl.db can be served."),
]
