"""The API served by real controllers (hactl.server.controller.Controller): three nodes in-process, real mTLS mesh, real
forwarding. Writes sent to any node (followers forward to the leader), reads on every node.

The bulk of the API tests use a single-node controller (api_helpers.ApiEnv); this file checks what only a
multi-node cluster can show: the same API, same answers, on every node.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from api_helpers import make_configs

from hactl.server import controller as controller_mod

IDS = ("c1", "c2", "c3")


async def test_every_node_serves_the_same_model(tmp_path: Path) -> None:
    # Slower ticks than the single-node tests: three nodes share two loaded cores, and a heartbeat delayed past
    # the election timeout would start needless elections.
    cfgs = make_configs(tmp_path, IDS, tick_ms=50, election_ticks=10)
    nodes = [controller_mod.Controller(c) for c in cfgs]
    urls = [f"http://{c.api.listen}" for c in cfgs]
    try:
        for n in nodes:
            await n.start()
        token_file = tmp_path / "api-token"
        deadline = time.monotonic() + 40
        async with aiohttp.ClientSession() as http:
            async def call(i: int, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
                """One request to node i; a 503 (an election under way, e.g. on a loaded machine) is retried,
                as the API asks clients to (with the same Idempotency-Key, if any)."""
                headers = kw.pop("headers", {}) | auth
                while True:
                    async with http.request(method, urls[i] + path, json=body, headers=headers, **kw) as r:
                        assert r.headers["Content-Type"].startswith("application/json")
                        status, value = r.status, await r.json(content_type=None)
                    if status != 503 or time.monotonic() > deadline:
                        return status, value
                    await asyncio.sleep(0.05)

            # the first leader initialises the cluster (address, token); wait until every node knows it
            while not token_file.exists():
                assert time.monotonic() < deadline, "no cluster initialisation"
                await asyncio.sleep(0.05)
            auth = {"X-ZT1-Auth": token_file.read_text().strip()}
            addresses = set()
            for i in range(3):
                while True:
                    status, st = await call(i, "GET", "/status")
                    if status == 200 and st["address"]:
                        break
                    assert time.monotonic() < deadline, st
                    await asyncio.sleep(0.05)
                addresses.add(st["address"])
                assert st["cluster"]["id"] == IDS[i]
            assert len(addresses) == 1
            address = addresses.pop()

            # a write to each node, followers included (forwarded), answered with the applied object
            while not any(n.node.is_leader for n in nodes):
                assert time.monotonic() < deadline, "no leader"
                await asyncio.sleep(0.05)
            leader = next(i for i, n in enumerate(nodes) if n.node.is_leader)
            followers = [i for i in range(3) if i != leader]
            status, net = await call(followers[0], "POST", f"/controller/network/{address}______", {"name": "fw"})
            assert status == 200 and net["id"].startswith(address), net
            nwid = net["id"]
            status, m = await call(followers[1], "POST", f"/controller/network/{nwid}/member/abcdef0123",
                                   {"authorized": True})
            assert status == 200 and m["authorized"] and m["lastAuthorizedCredentialType"] == "api", m
            status, _ = await call(leader, "POST", f"/controller/network/{nwid}/member/1234567890", {})
            assert status == 200

            # linearizable reads on every node see every acknowledged write
            for i in range(3):
                assert await call(i, "GET", "/controller/network") == (200, [nwid])
                status, members = await call(i, "GET", f"/controller/network/{nwid}/member")
                assert (status, members) == (200, {"abcdef0123": 1, "1234567890": 1})
                status, un = await call(i, "GET", "/unstable/controller/network")
                assert un["data"][0]["meta"] == {"totalMemberCount": 2, "authorizedMemberCount": 1}

            # one Idempotency-Key sent to two different nodes applies once
            key = {"Idempotency-Key": "across-nodes"}
            s1, n1 = await call(followers[0], "POST", f"/controller/network/{address}______", {}, headers=key)
            s2, n2 = await call(followers[1], "POST", f"/controller/network/{address}______", {}, headers=key)
            assert s1 == s2 == 200 and n1 == n2
            assert len((await call(leader, "GET", "/controller/network"))[1]) == 2
            # ... and bound to its request: another body under it is 422 on any node (the follower learns it from
            # its own ctrl.db after the forwarded entry applies), and changes nothing
            for i in (followers[1], leader):
                s3, err = await call(i, "POST", f"/controller/network/{address}______", {"name": "x"}, headers=key)
                assert s3 == 422 and err["error"] == "KEY_REUSED" and err["field"] == "Idempotency-Key", err
            assert len((await call(leader, "GET", "/controller/network"))[1]) == 2

            # errors are the same everywhere: validation (nothing proposed), 404 from apply, delete cascade
            for i in range(3):
                status, err = await call(i, "POST", f"/controller/network/{nwid}", {"mtu": "x"})
                assert status == 400 and err["field"] == "mtu"
            status, err = await call(followers[0], "POST", f"/controller/network/{address}fffffe/member/abcdef0123",
                                     {})
            assert status == 404, err
            status, gone = await call(followers[1], "DELETE", f"/controller/network/{nwid}")
            assert status == 200 and gone["id"] == nwid
            for i in range(3):
                assert (await call(i, "GET", f"/controller/network/{nwid}/member"))[0] == 404
    finally:
        for n in nodes:
            await n.stop()
