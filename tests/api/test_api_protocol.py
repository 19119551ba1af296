"""HTTP-level behaviour: bodies, errors, content types, Idempotency-Key, ?consistency, cluster failures."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator

from api_helpers import ApiEnv

from hactl.api.cluster import ClusterUnavailable, OutcomeUnknown, Overloaded
from hactl.fsm.result import Result
from hactl.server.controller import Controller


# ------------------------------------------------------------------------------------------------ bodies

async def test_bad_bodies_are_400_naming_the_body(env: ApiEnv) -> None:
    create, nwid = env.create_path, env.nwid(1)
    bad: list[bytes] = [
        b"{not json", b"{", b"[1, 2]", b'"a string"', b"42", b"null", b"true", b"{}x", b"{'a': 1}",
        b'{"name": NaN}', b'{"mtu": Infinity}', b"\xff\xfe\x00garbage", b'{"name": "\xff"}',
        b'{"mtu": ' + b"9" * 5000 + b"}",  # beyond Python's int digit limit
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
        b'{"a":' * 40 + b"1" + b"}" * 40,  # parses, but nests deeper than any real body
    ]
    for data in bad:
        for path in (create, f"/controller/network/{nwid}/member/abcdef0123", f"/controller/network/{nwid}"):
            r = await env.request("POST", path, data=data)
            assert r.status == 400, (data[:40], path, r)
            assert r.json["error"] == "INVALID" and r.json["field"] == "body", r
    assert env.cluster.machine().network_count() == 0


async def test_text_must_be_valid_unicode(env: ApiEnv) -> None:
    """JSON can escape lone UTF-16 surrogates (\\ud800); they are not Unicode text and no encoder takes them."""
    nwid = env.nwid(1)
    for data, field in [(rb'{"name": "\ud800"}', "name"), (rb'{"dns": {"domain": "a\udfffb"}}', "dns.domain"),
                        (rb'{"routes": [{"target": "\udc00"}]}', "routes[0].target"),
                        (rb'{"\ud800": 1}', "\ud800")]:
        r = await env.request("POST", f"/controller/network/{nwid}", data=data)
        assert r.status == 400 and r.json["field"] == field, (data, r)
    ok = await env.ok("POST", f"/controller/network/{nwid}", None, data=rb'{"name": "\ud83d\ude00 \u0000"}')
    assert ok["name"] == "\U0001F600 \x00"  # a proper surrogate pair is one character


async def test_body_limit_413(tmp_path: Path) -> None:
    async with ApiEnv(tmp_path, max_body_bytes=2048) as env:
        create = env.create_path
        big = {"name": "x" * 3000}
        r = await env.post(create, big)  # Content-Length over the limit: refused before reading
        assert r.status == 413 and r.json["error"] == "BODY_TOO_LARGE" and r.json["field"] == "body", r

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut off while reading
            yield b'{"name": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        r = await env.request("POST", create, data=chunks())  # type: ignore[arg-type]
        assert r.status == 413, r
        # right at the limit is fine
        body = json.dumps({"name": "z" * 100}).encode()
        body += b" " * (2048 - len(body))
        assert (await env.request("POST", create, data=body)).status == 200
        assert env.cluster.machine().network_count() == 1
        # the server still answers after the refusals
        assert (await env.get("/controller")).status == 200


async def test_compressed_bodies(tmp_path: Path) -> None:
    """aiohttp decompresses request bodies; the limit applies to what is decompressed (no gzip bombs), and a
    body that does not decompress is a 400 about the body, not a 500."""
    import gzip
    async with ApiEnv(tmp_path, max_body_bytes=4096) as env:
        create = env.create_path
        gz = {"Content-Encoding": "gzip"}
        r = await env.request("POST", create, data=gzip.compress(b'{"name": "zipped"}'), headers=gz)
        assert r.status == 200 and r.json["name"] == "zipped", r
        bomb = gzip.compress(b'{"name": "' + b"a" * 2_000_000 + b'"}')
        assert len(bomb) < 4096
        r = await env.request("POST", create, data=bomb, headers=gz)
        assert r.status == 413, r
        r = await env.request("POST", create, data=b"definitely not gzip", headers=gz)
        assert r.status == 400 and r.json["field"] == "body", r
        assert env.cluster.machine().network_count() == 1


async def test_unknown_paths_and_methods(env: ApiEnv) -> None:
    nwid = env.nwid(1)
    for method, path, status in [
        ("GET", "/nope", 404), ("GET", "/controller/", 404), ("GET", "/controller/network/x/y/z/w", 404),
        ("GET", "/controller/networks", 404), ("POST", "/status", 405), ("DELETE", "/controller/network", 405),
        ("PATCH", f"/controller/network/{nwid}", 405), ("HEAD", "/status", 405),
        ("OPTIONS", "/controller", 405), ("GET", f"/controller/network/{env.address}______x/member", 400),
        ("DELETE", f"/controller/network/{nwid}/member", 405), ("POST", "/unstable/controller/network", 405),
    ]:
        r = await env.request(method, path)
        assert r.status == status, (method, path, r)
        if method != "HEAD":
            assert set(r.json) == {"error", "message", "field"}, r
        if status == 405:
            assert "Allow" in r.headers


async def test_content_type_is_json_on_raw_connections(env: ApiEnv) -> None:
    """Below the client library: raw HTTP/1.1 requests, every answer application/json with a JSON body."""
    create, token = env.create_path, env.token
    assert env.server is not None
    cases = [
        b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n",  # 401
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /nope HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {token}\r\n\r\n".encode(),
        f"PATCH /status HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {token}\r\n\r\n".encode(),
        f"POST {create} HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {token}\r\nContent-Length: 9999999\r\n\r\n{{".encode(),
        f"POST {create} HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {token}\r\nContent-Length: 3\r\n\r\n[1]".encode(),
        f"GET /controller/network?consistency=x HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {token}\r\n\r\n".encode(),
    ]
    for req in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
        writer.write(req.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
        await writer.drain()
        # Read one response by its Content-Length (not to EOF: after a 413 aiohttp lingers, reading the body
        # the client announced, before it closes).
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        headers = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if b": " in line)
        body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), 5)
        writer.close()
        assert headers[b"content-type"].startswith(b"application/json"), head
        json.loads(body)


async def test_error_bodies_name_fields(env: ApiEnv) -> None:
    nwid = env.nwid(1)
    r = await env.post(f"/controller/network/{nwid}", {"mtu": "big"})
    assert r.json == {"error": "INVALID", "field": "mtu", "message": r.json["message"]}
    assert "mtu" in r.json["message"] or "integer" in r.json["message"]


# --------------------------------------------------------------------------------------- Idempotency-Key

async def test_idempotency_key_replays_the_first_result_and_applies_once(env: ApiEnv) -> None:
    create, nwid = env.create_path, env.nwid(1)
    key = {"Idempotency-Key": "create-1"}
    first = await env.ok("POST", create, {"name": "once"}, headers=key)
    again = await env.ok("POST", create, {"name": "once"}, headers=key)
    assert again == first
    assert await env.ok("GET", "/controller/network") == [first["id"]]
    # the token may move between header and ?auth= (the query string is not part of the request's fingerprint)
    assert await env.ok("POST", create, {"name": "once"}, headers=key, auth=False,
                        params={"auth": env.token}) == first
    # a replayed update answers the first outcome and is not applied again
    k2 = {"Idempotency-Key": "upd-7"}
    a = await env.ok("POST", f"/controller/network/{first['id']}", {"name": "a"}, headers=k2)
    b = await env.ok("POST", f"/controller/network/{first['id']}", {"name": "a"}, headers=k2)
    assert a == b and b["name"] == "a" and b["revision"] == 2
    assert (await env.ok("GET", f"/controller/network/{first['id']}"))["revision"] == 2
    # a replayed delete answers 200 with the deleted network, not 404
    k3 = {"Idempotency-Key": "del"}
    d1 = await env.ok("DELETE", f"/controller/network/{first['id']}", headers=k3)
    d2 = await env.ok("DELETE", f"/controller/network/{first['id']}", headers=k3)
    assert d1 == d2 and d1["id"] == first["id"]
    # a replayed failure is the same failure
    k4 = {"Idempotency-Key": "fail"}
    f1 = await env.request("POST", f"/controller/network/{nwid}/member/abcdef0123", body={}, headers=k4)
    await env.ok("POST", f"/controller/network/{nwid}", {})
    f2 = await env.request("POST", f"/controller/network/{nwid}/member/abcdef0123", body={}, headers=k4)
    assert f1.status == f2.status == 404 and f1.json == f2.json
    # without a key, every request is new
    n1 = await env.ok("POST", create, {})
    n2 = await env.ok("POST", create, {})
    assert n1["id"] != n2["id"]


async def test_idempotency_key_reused_for_another_request_is_422_and_changes_nothing(env: ApiEnv) -> None:
    create = env.create_path
    key = {"Idempotency-Key": "bound"}
    net = await env.ok("POST", create, {"name": "once"}, headers=key)
    member_path = f"/controller/network/{net['id']}/member/abcdef0123"
    mkey = {"Idempotency-Key": "member"}
    member = await env.ok("POST", member_path, {"authorized": True}, headers=mkey)
    before = (await env.ok("GET", "/unstable/controller/network"),
              await env.ok("GET", f"/unstable/controller/network/{net['id']}/member"))
    others = [("POST", create, {"name": "twice"}, key),  # another body
              ("POST", create, None, key),  # no body at all
              ("POST", "/controller/network", {"name": "once"}, key),  # another path
              ("PUT", create, {"name": "once"}, key),  # another method
              ("DELETE", f"/controller/network/{net['id']}", None, key),
              ("POST", member_path, {"authorized": False}, mkey),
              ("DELETE", member_path, None, mkey),
              ("POST", create, {"name": "once"}, mkey)]
    for method, path, body, headers in others:
        data = None if body is not None else b""
        r = await env.request(method, path, body=body, data=data, headers=headers)
        assert r.status == 422, (method, path, body, r)
        assert r.json["error"] == "KEY_REUSED" and r.json["field"] == "Idempotency-Key", r
        assert "another request" in r.json["message"] and "body" in r.json["message"], r
    after = (await env.ok("GET", "/unstable/controller/network"),
             await env.ok("GET", f"/unstable/controller/network/{net['id']}/member"))
    assert after == before
    # the keys still belong to their first requests, which replay as before
    assert await env.ok("POST", create, {"name": "once"}, headers=key) == net
    assert await env.ok("POST", member_path, {"authorized": True}, headers=mkey) == member


async def test_concurrent_retries_with_one_key_apply_once(env: ApiEnv) -> None:
    create = env.create_path
    key = {"Idempotency-Key": "burst"}
    replies = await asyncio.gather(*(env.request("POST", create, body={"name": "n"}, headers=key)
                                     for i in range(10)))
    assert {r.status for r in replies} == {200}
    assert len({json.dumps(r.json, sort_keys=True) for r in replies}) == 1
    assert env.cluster.machine().network_count() == 1


async def test_concurrent_requests_racing_with_one_key_apply_one_of_them(env: ApiEnv) -> None:
    create = env.create_path
    key = {"Idempotency-Key": "race"}
    replies = await asyncio.gather(*(env.request("POST", create, body={"name": f"n{i}"}, headers=key)
                                     for i in range(10)))
    assert sorted(r.status for r in replies) == [200] + [422] * 9, replies
    winner = next(r.json for r in replies if r.status == 200)
    assert await env.ok("GET", "/controller/network") == [winner["id"]]


async def test_bad_idempotency_keys_are_400_naming_the_header(env: ApiEnv) -> None:
    create = env.create_path
    for bad in ("", "x" * 129, "tab\there", "caf\u00e9"):
        r = await env.request("POST", create, body={}, headers={"Idempotency-Key": bad})
        assert r.status == 400 and r.json["field"] == "Idempotency-Key", (bad, r)
    ok = await env.request("POST", create, body={}, headers={"Idempotency-Key": "k" * 128})
    assert ok.status == 200
    ok = await env.request("POST", create, body={}, headers={"Idempotency-Key": "a key/with:odd=chars!"})
    assert ok.status == 200
    assert env.cluster.machine().network_count() == 2


# ------------------------------------------------------------------------------------------ consistency

async def test_consistency_parameter(env: ApiEnv) -> None:
    net = await env.new_network()
    await env.ok("POST", f"/controller/network/{net['id']}/member/abcdef0123", {})
    reads = ["/controller/network", f"/controller/network/{net['id']}", f"/controller/network/{net['id']}/member",
             f"/controller/network/{net['id']}/member/abcdef0123", "/unstable/controller/network",
             f"/unstable/controller/network/{net['id']}/member"]
    for path in reads:
        default = await env.ok("GET", path)
        assert await env.ok("GET", path, params={"consistency": "local"}) == default
        assert await env.ok("GET", path, params={"consistency": "linearizable"}) == default
        for bad in ("", "LOCAL", "strong", "x" * 300):
            r = await env.get(path, params={"consistency": bad})
            assert r.status == 400 and r.json["field"] == "consistency", (path, bad, r)


# ------------------------------------------------------------------------------------- cluster failures

async def test_no_leader_is_503_with_retry_after(quorum_lost_env: ApiEnv) -> None:
    """An initialised node that lost its quorum: whatever needs the leader is 503, the rest still answers."""
    env = quorum_lost_env
    create, nwid = env.create_path, env.nwid(1)
    requests = [("GET", "/controller/network"), ("GET", f"/controller/network/{nwid}"),
                ("GET", f"/controller/network/{nwid}/member"), ("GET", "/unstable/controller/network"),
                ("GET", f"/controller/network/{nwid}/member/abcdef0123"),
                ("POST", "/controller/network"), ("POST", create), ("POST", f"/controller/network/{nwid}"),
                ("DELETE", f"/controller/network/{nwid}"),
                ("POST", f"/controller/network/{nwid}/member/abcdef0123"),
                ("DELETE", f"/controller/network/{nwid}/member/abcdef0123")]
    # concurrently: each write waits the (short) apply timeout for a leader to appear before it answers
    replies = await asyncio.gather(*(env.request(method, path, body={} if method == "POST" else None)
                                     for method, path in requests))
    for (method, path), r in zip(requests, replies):
        assert r.status == 503, (method, path, r)
        assert r.json["error"] == "CLUSTER_NO_LEADER" and r.json["message"], r
        assert int(r.headers["Retry-After"]) >= 1
    # bad input is still 400 first (validated before anything waits on the cluster)
    r = await env.post(f"/controller/network/{nwid}", {"mtu": "x"})
    assert r.status == 400 and r.json["field"] == "mtu"
    r = await env.get("/controller/network", params={"consistency": "bogus"})
    assert r.status == 400
    # node-local endpoints keep answering
    st = await env.ok("GET", "/status")
    assert st["online"] is False and st["cluster"]["leader"] is None and st["address"] == env.address
    ctl = await env.ok("GET", "/controller")
    assert ctl == {"controller": True, "apiVersion": 4, "clock": ctl["clock"], "databaseReady": True}
    # local reads skip the barrier: the local model answers
    assert await env.ok("GET", "/controller/network", params={"consistency": "local"}) == []
    r = await env.get(f"/controller/network/{nwid}", params={"consistency": "local"})
    assert r.status == 404, r
    assert env.cluster.machine().network_count() == 0  # none of the refused writes was applied


async def test_before_initialisation_every_request_with_a_token_is_503(noleader_env: ApiEnv) -> None:
    """No leader was ever elected, so the cluster has no token hash yet: the controller cannot authenticate
    anyone, and answers every request that presents a token (right or wrong, node-local endpoints and bad input
    included) 503 "retry soon" rather than 401, since the token may well be right once the cluster exists."""
    env = noleader_env
    nwid = "0123456789000001"  # no controller address exists yet; any well-formed network id
    for method, path, kw in [("GET", "/status", {}), ("GET", "/controller", {}), ("GET", "/openapi.json", {}),
                             ("GET", "/controller/network", {"params": {"consistency": "local"}}),
                             ("GET", "/controller/network", {}), ("POST", "/controller/network", {"body": {}}),
                             ("POST", f"/controller/network/{nwid}", {"body": {"mtu": "x"}}),
                             ("DELETE", f"/controller/network/{nwid}/member/abcdef0123", {}),
                             ("GET", "/controller", {"auth": False, "headers": {"X-ZT1-Auth": "wrong"}})]:
        r = await env.request(method, path, **kw)
        assert r.status == 503, (method, path, r)
        assert r.json["error"] == "CLUSTER_NO_LEADER" and r.json["message"], r
        assert int(r.headers["Retry-After"]) >= 1
    # no token at all is still 401: there is nothing to check
    r = await env.get("/controller", auth=False)
    assert r.status == 401 and r.json == {}, r


class FaultyCluster:
    """The real controller, except that submit raises the given exception: the write path's failure modes, which
    a healthy single node cannot be made to produce on demand, injected just below the HTTP layer."""

    def __init__(self, inner: Controller, exc: Exception) -> None:
        self._inner = inner
        self._exc = exc
        self.node_id = inner.node_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def submit(self, command: bytes, request_id: str) -> Result:
        raise self._exc


async def test_overloaded_is_429(tmp_path: Path) -> None:
    async with ApiEnv(tmp_path, wrap=lambda c: FaultyCluster(c, Overloaded("queue full"))) as env:
        r = await env.post(env.create_path, {})
        assert r.status == 429 and r.json["error"] == "OVERLOADED" and int(r.headers["Retry-After"]) >= 1, r
        assert (await env.get("/controller/network")).status == 200  # reads unaffected


async def test_outcome_unknown_is_504(tmp_path: Path) -> None:
    async with ApiEnv(tmp_path, wrap=lambda c: FaultyCluster(c, OutcomeUnknown("apply timeout"))) as env:
        r = await env.post(env.create_path, {}, headers={"Idempotency-Key": "k"})
        assert r.status == 504 and r.json["error"] == "OUTCOME_UNKNOWN", r
        assert "may still commit" in r.json["message"] and "Idempotency-Key" in r.json["message"]


async def test_cluster_unavailable_retry_after_is_rounded_up(tmp_path: Path) -> None:
    exc = ClusterUnavailable("restarting", retry_after=2.2)
    async with ApiEnv(tmp_path, wrap=lambda c: FaultyCluster(c, exc)) as env:
        r = await env.request("DELETE", f"/controller/network/{env.nwid(1)}")
        assert r.status == 503 and r.headers["Retry-After"] == "3" and r.json["error"] == "CLUSTER_NO_LEADER"
        assert r.json["message"] == "restarting"


class BuggyCluster(FaultyCluster):
    async def submit(self, command: bytes, request_id: str) -> Result:
        raise RuntimeError("a bug in the controller")


async def test_a_bug_is_a_logged_500_json_and_the_server_lives_on(tmp_path: Path, caplog: Any) -> None:
    async with ApiEnv(tmp_path, wrap=lambda c: BuggyCluster(c, RuntimeError())) as env:
        r = await env.post(env.create_path, {}, params={"auth": env.token})
        assert r.status == 500 and r.json["error"] == "INTERNAL", r
        assert (await env.get("/controller")).status == 200
    logged = [rec for rec in caplog.records if rec.name == "hactl.api" and "unexpected error" in rec.getMessage()]
    assert logged and env.token not in logged[0].getMessage()  # the query (which may hold the token) is not logged
