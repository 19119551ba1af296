"""What every handler needs, stored once on the aiohttp application."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from hactl.api.cluster import Cluster


@dataclass(frozen=True)
class ApiContext:
    cluster: Cluster
    max_body_bytes: int
    version: str


CONTEXT: web.AppKey[ApiContext] = web.AppKey("hactl_api_context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
