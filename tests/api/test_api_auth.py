"""Authentication: the three token forms, 401 `{}` for everything else, /health, /livez and /readyz open."""
from __future__ import annotations

from api_helpers import ApiEnv, initialised


async def test_token_forms_accepted(env: ApiEnv) -> None:
    token = env.token
    forms = [
        {"headers": {"X-ZT1-Auth": token}},
        {"params": {"auth": token}},
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"headers": {"Authorization": f"bearer {token}"}},
        {"headers": {"Authorization": f"BEARER   {token}  "}},
        {"headers": {"Authorization": f"BeArEr {token}"}},
    ]
    for kw in forms:
        for path in ("/status", "/controller", "/controller/network", "/openapi.json"):
            r = await env.request("GET", path, auth=False, **kw)
            assert r.status == 200, (kw, path, r)


async def test_everything_else_is_401_with_empty_object(env: ApiEnv) -> None:
    token = env.token
    assert env.controller is not None
    stored = initialised(env.controller)["token_hash"]  # what ctrl.db keeps: "sha256:<hex>"
    bad = [
        {},
        {"headers": {"X-ZT1-Auth": "wrong"}},
        {"headers": {"X-ZT1-Auth": ""}},
        {"headers": {"X-ZT1-Auth": token + "x"}},
        {"headers": {"X-ZT1-Auth": token.upper()}},
        {"params": {"auth": "wrong"}},
        {"params": {"Auth": token}},  # the query parameter name is exact
        {"headers": {"Authorization": token}},  # no scheme
        {"headers": {"Authorization": f"Basic {token}"}},
        {"headers": {"Authorization": f"Token {token}"}},
        {"headers": {"Authorization": "Bearer"}},
        {"headers": {"Authorization": "Bearer " + "x" * 5000}},
        {"headers": {"X-Auth": token}},
        {"headers": {"X-ZT1-Auth": stored}},  # the stored hash is not a token
        {"headers": {"X-ZT1-Auth": stored.partition(":")[2]}},
    ]
    paths = [("GET", "/status"), ("GET", "/controller"), ("GET", "/controller/network"),
             ("POST", "/controller/network"), ("GET", "/unstable/controller/network"), ("GET", "/openapi.json"),
             ("DELETE", f"/controller/network/{env.nwid(1)}"), ("GET", "/no/such/path"),
             ("PATCH", "/controller/network")]
    for kw in bad:
        for method, path in paths:
            r = await env.request(method, path, auth=False, **kw)
            assert r.status == 401, (kw, method, path, r)
            assert r.json == {}
    # nothing was written by the refused POSTs
    assert (await env.ok("GET", "/controller/network")) == []


async def test_any_valid_form_among_several_is_enough(env: ApiEnv) -> None:
    r = await env.request("GET", "/controller", auth=False, headers={"X-ZT1-Auth": "wrong"},
                          params={"auth": env.token})
    assert r.status == 200


async def test_health_needs_no_token(env: ApiEnv) -> None:
    r = await env.request("GET", "/health", auth=False)
    assert r.status == 200, r
    assert r.json["healthy"] is True
    assert r.json["leader"] == env.cluster.node_id


async def test_health_is_503_without_a_leader(noleader_env: ApiEnv) -> None:
    r = await noleader_env.request("GET", "/health", auth=False)
    assert r.status == 503, r
    assert r.json["healthy"] is False


async def test_livez_and_readyz_need_no_token(env: ApiEnv) -> None:
    r = await env.request("GET", "/livez", auth=False)
    assert r.status == 200 and r.json["live"] is True and r.json["io_stalled_s"] >= 0, r
    r = await env.request("GET", "/readyz", auth=False)
    assert r.status == 200 and r.json["ready"] is True and r.json["reasons"] == [], r


async def test_quorum_lost_livez_stays_200_and_readyz_turns_503(quorum_lost_env: ApiEnv) -> None:
    """etcd's split: a supervisor restarts on /livez (restarting would not bring the quorum back), a load balancer
    routes on /readyz."""
    r = await quorum_lost_env.request("GET", "/livez", auth=False)
    assert r.status == 200 and r.json["live"] is True, r
    r = await quorum_lost_env.request("GET", "/readyz", auth=False)
    assert r.status == 503 and r.json["ready"] is False, r
    assert any("no leader" in why for why in r.json["reasons"]), r.json


async def test_non_utf8_token_bytes_are_401_not_500(env: ApiEnv) -> None:
    """Header bytes that are not UTF-8 arrive as lone surrogates; they must be refused, not hashed."""
    import asyncio
    assert env.server is not None
    for header in (b"X-ZT1-Auth: \xff\xfe", b"Authorization: Bearer \xed\xa0\x80", b"X-ZT1-Auth: caf\xe9"):
        reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
        writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 401 ") and reply.endswith(b"\r\n\r\n{}"), reply
