"""GET /openapi.json: an OpenAPI 3.1 document generated from the route declarations (spec.Route)."""
from __future__ import annotations

import re
from typing import Any, Iterable

from aiohttp import web

from hactl.api.errors import dumps
from hactl.api.inputs import CONSISTENCY_PARAM, CONSISTENCY_VALUES, IDEMPOTENCY_HEADER, IDEMPOTENCY_MAX
from hactl.api.schemas import COMPONENTS, ref
from hactl.api.spec import Route

DOC_KEY: web.AppKey[str] = web.AppKey("hactl_api_openapi", str)

_REGEX_PART = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")

_STATUS_TEXT = {
    400: "Bad input: the `field` names the body field, path/query parameter or header at fault",
    401: "Missing or wrong token (body `{}`)",
    404: "No such network/member (or path)",
    405: "Method not allowed on this path",
    409: "Conflict (an IP address already assigned to another member)",
    413: "Body larger than the configured limit",
    422: "KEY_REUSED: this Idempotency-Key was already used for another request (method, path or body differ); "
         "nothing was applied",
    429: "Nothing was done: the leader's proposal queue is full (OVERLOADED, writes) or too many listings are "
         "being streamed (TOO_MANY_STREAMS, listings); retry after Retry-After seconds",
    500: "A bug in hactl (logged on the server)",
    503: "No leader is known (CLUSTER_NO_LEADER) or the cluster is not initialised; retry after Retry-After",
    504: "OUTCOME_UNKNOWN: the write may still commit; retry with the same Idempotency-Key",
    507: "NOSPACE: a storage alarm is on (a node's raft.db, ctrl.db or disk is nearly full); nothing was applied. "
         "Deletes still work: free space (or raise the storage limits) and the alarm clears by itself",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def openapi_path(aiohttp_path: str) -> str:
    """'/controller/network/{ctrl:[0-9a-f]{10}}______' -> '/controller/network/{ctrl}______'."""
    return _REGEX_PART.sub(r"{\1}", aiohttp_path)


def _error_response(status: int) -> dict[str, Any]:
    if status == 401:
        content = {"application/json": {"schema": {"type": "object", "maxProperties": 0}}}
    else:
        content = {"application/json": {"schema": ref("Error")}}
    out: dict[str, Any] = {"description": _STATUS_TEXT[status], "content": content}
    if status in (429, 503):
        out["headers"] = _RETRY_AFTER
    return out


def _operation(r: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p.name, "in": "path", "required": True, "description": p.description, "schema": p.schema}
        for p in r.params]
    statuses = set(r.errors) | {500}
    if r.auth:
        statuses.add(401)
    if r.read:
        params.append({"name": CONSISTENCY_PARAM, "in": "query", "required": False,
                       "description": "linearizable (default: a read barrier first) or local (this node's "
                                      "applied state, no waiting)",
                       "schema": {"type": "string", "enum": list(CONSISTENCY_VALUES), "default": "linearizable"}})
        statuses |= {400, 503}
    if r.write:
        params.append({"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
                       "description": "a retry with the same key applies once and answers with the first "
                                      "outcome (printable ASCII); the key is bound to its request's method, path "
                                      "and body: reusing it for another request is 422",
                       "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_MAX}})
        statuses |= {400, 422, 429, 503, 504}
        if r.method != "DELETE":  # deletes are what frees space: a storage alarm never refuses them
            statuses.add(507)
    op: dict[str, Any] = {
        "operationId": r.operation_id,
        "summary": r.summary,
        "tags": list(r.tags),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {r.content_type: {"schema": r.ok}}},
                      **{str(s): _error_response(s) for s in sorted(statuses)}},
    }
    if r.description:
        op["description"] = r.description
    if r.body is not None:
        op["requestBody"] = {"required": False, "description": "a JSON object; an empty body counts as {}",
                             "content": {"application/json": {"schema": r.body}}}
    if not r.auth:
        op["security"] = []
    return op


def build_document(routes: Iterable[Route], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        item = paths.setdefault(openapi_path(r.path), {})
        assert r.method.lower() not in item, f"{r.method} {r.path} declared twice"
        item[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "hactl management API", "version": version,
                 "description": "The ZeroTier controller JSON API (apiVersion 4) served by every node of a hactl "
                                "cluster, plus /health, cluster status and ?consistency."},
        "servers": [{"url": "/"}],
        "security": [{"ztAuthHeader": []}, {"ztAuthQuery": []}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "ztAuthHeader": {"type": "apiKey", "in": "header", "name": "X-ZT1-Auth"},
                "ztAuthQuery": {"type": "apiKey", "in": "query", "name": "auth"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(text=request.app[DOC_KEY], content_type="application/json")


ROUTES: list[Route] = [
    Route("GET", "/openapi.json", get_openapi, "getOpenApi", "This document", {"type": "object"},
          tags=("meta",)),
]


def render(routes: Iterable[Route], version: str) -> str:
    return dumps(build_document(routes, version))
