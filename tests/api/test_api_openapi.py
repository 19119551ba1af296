"""GET /openapi.json describes exactly the routes the server has (walking the aiohttp router)."""
from __future__ import annotations

import json
from typing import Any

from api_helpers import VERSION, ApiEnv

from hactl.api.auth import OPEN_PATHS
from hactl.api.openapi import openapi_path
from hactl.api.server import build_app

METHODS = {"get", "post", "put", "delete", "patch", "head", "options"}


def router_routes(app: Any) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else None
        assert canonical, route
        out.add((route.method.lower(), canonical))
    return out


def document_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, path) for path, item in doc["paths"].items() for m in item if m in METHODS}


async def test_every_route_is_documented_and_nothing_else(env: ApiEnv) -> None:
    doc = await env.ok("GET", "/openapi.json")
    app = build_app(env.cluster, version=VERSION)
    in_router = router_routes(app)
    in_doc = document_routes(doc)
    assert in_router == in_doc, (in_router - in_doc, in_doc - in_router)
    # the served app is the same shape as a freshly built one
    assert env.server is not None
    assert router_routes(env.server.app) == in_router
    # and the contract's table is all there
    for method, path in [("get", "/status"), ("get", "/controller"), ("get", "/controller/network"),
                         ("post", "/controller/network"), ("post", "/controller/network/{ctrl}______"),
                         ("get", "/controller/network/{nwid}"), ("post", "/controller/network/{nwid}"),
                         ("put", "/controller/network/{nwid}"), ("delete", "/controller/network/{nwid}"),
                         ("get", "/controller/network/{nwid}/member"),
                         ("get", "/controller/network/{nwid}/member/{address}"),
                         ("post", "/controller/network/{nwid}/member/{address}"),
                         ("put", "/controller/network/{nwid}/member/{address}"),
                         ("delete", "/controller/network/{nwid}/member/{address}"),
                         ("get", "/unstable/controller/network"),
                         ("get", "/unstable/controller/network/{nwid}/member"), ("get", "/health"),
                         ("get", "/openapi.json")]:
        assert (method, path) in in_doc, (method, path)


def test_open_paths_are_the_routes_declared_without_auth() -> None:
    from hactl.api.server import all_routes
    assert OPEN_PATHS == {r.path for r in all_routes() if not r.auth}


async def test_document_content(env: ApiEnv) -> None:
    doc = await env.ok("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"] == VERSION
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ztAuthHeader"] == {"type": "apiKey", "in": "header", "name": "X-ZT1-Auth"}
    assert schemes["ztAuthQuery"] == {"type": "apiKey", "in": "query", "name": "auth"}
    assert schemes["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    for name in ("Network", "NetworkInput", "Member", "MemberInput", "Error"):
        assert name in schemas
    assert schemas["Network"]["properties"]["mtu"]["default"] == 2800
    assert schemas["Member"]["properties"]["vMajor"]["default"] == -1
    assert schemas["Error"]["required"] == ["error", "message"]

    text = json.dumps(doc)
    for ref in set(_refs(doc)):  # every $ref resolves
        name = ref.rsplit("/", 1)[1]
        assert ref.startswith("#/components/schemas/") and name in schemas, ref
    assert "{ctrl:" not in text  # aiohttp regexes are not leaked into templates

    for path, item in doc["paths"].items():
        template_params = {p.strip("{}") for p in _template_names(path)}
        for method, op in item.items():
            names = {(p["in"], p["name"]) for p in op["parameters"]}
            assert {n for i, n in names if i == "path"} == template_params, (method, path)
            assert "200" in op["responses"] and "500" in op["responses"]
            for status, resp in op["responses"].items():
                # the serialized world ZeroTier clients store; Prometheus's text format; Server-Sent Events
                special = {"/planet": "application/octet-stream", "/metrics": "text/plain",
                           "/events": "text/event-stream"}
                want = special.get(path, "application/json") if status == "200" else "application/json"
                assert want in resp["content"], (method, path, status)
            if path in OPEN_PATHS:
                assert op["security"] == [] and "401" not in op["responses"]
            else:
                assert "security" not in op and "401" in op["responses"]  # the global security applies
            if method == "get" and path.startswith(("/controller/network", "/unstable")):
                assert ("query", "consistency") in names and "503" in op["responses"], path
            if method in ("post", "put", "delete"):
                assert ("header", "Idempotency-Key") in names
                assert {"400", "429", "503", "504"} <= set(op["responses"]), (method, path)
            if method in ("post", "put"):
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/MemberInput" if "/member/" in path else "/NetworkInput")
            else:
                assert "requestBody" not in op
    assert openapi_path("/controller/network/{ctrl:[0-9a-fA-F]{10}}______") == "/controller/network/{ctrl}______"


def _refs(v: Any) -> list[str]:
    if isinstance(v, dict):
        out = [v["$ref"]] if isinstance(v.get("$ref"), str) else []
        for x in v.values():
            out += _refs(x)
        return out
    if isinstance(v, list):
        return [r for x in v for r in _refs(x)]
    return []


def _template_names(path: str) -> list[str]:
    import re
    return re.findall(r"\{[^}]+\}", path)
