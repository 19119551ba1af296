"""One declaration per route: what server.py registers and what openapi.py documents.

Keeping both in one record is what keeps the OpenAPI document honest; the test that walks the aiohttp router
and the document catches a route registered any other way.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hactl.api.errors import Handler

Schema = dict[str, Any]


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: Schema


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp template; a {name:regex} part is documented as {name}
    handler: Handler
    operation_id: str
    summary: str
    ok: Schema  # the 200 response body
    params: tuple[Param, ...] = ()  # path parameters, in order
    read: bool = False  # takes ?consistency (linearizable read)
    write: bool = False  # replicated write: Idempotency-Key, 503/429/504
    body: Schema | None = None  # request body schema
    errors: tuple[int, ...] = ()  # statuses besides 200 and the common ones
    auth: bool = True
    tags: tuple[str, ...] = field(default=())
    description: str = ""
    content_type: str = "application/json"  # of the 200 response


def post_and_put(route: Route) -> list[Route]:
    """ZeroTier treats PUT exactly as POST."""
    assert route.method == "POST"
    return [route, replace(route, method="PUT", operation_id=route.operation_id + "Put",
                           summary=route.summary + " (PUT = POST)")]
