"""Streamed listings: each answer is one consistent state; streams are capped in number (429 TOO_MANY_STREAMS)
and in time (a client that stops reading is cut off and its LMDB reader freed). Real server, real sockets."""
from __future__ import annotations

import asyncio
import json
import socket

from api_helpers import WAIT, ApiEnv, until

from hactl.api.context import CONTEXT, StreamLimits


def limits(env: ApiEnv) -> StreamLimits:
    assert env.server is not None
    return env.server.app[CONTEXT].streams


def lmdb_readers(env: ApiEnv) -> int:
    """Reader slots of ctrl.db held right now (LMDB's own reader table)."""
    lmdb_env, _ = env.cluster.machine().tables()
    text = lmdb_env.readers()
    return 0 if "no active readers" in text else len(text.strip().splitlines()) - 1


async def big_networks(env: ApiEnv, n: int = 4) -> list[str]:
    """Networks of ~770 KB of JSON each (16384 rules): a listing of them cannot fit in socket buffers."""
    rules = [{"type": "ACTION_ACCEPT"}] * 16384
    return [(await env.ok("POST", env.create_path, {"rules": rules}))["id"] for _ in range(n)]


async def stalled_get(env: ApiEnv, path: str) -> socket.socket:
    """A GET whose client never reads: a raw socket with a tiny receive buffer."""
    assert env.server is not None
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sets the advertised window
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", env.server.port))
    await loop.sock_sendall(s, f"GET {path} HTTP/1.1\r\nHost: x\r\nX-ZT1-Auth: {env.token}\r\n\r\n".encode())
    return s


async def read_to_end(s: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sent, and whether the connection ended (EOF or reset) rather than stalling."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    try:
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(s, 1 << 16), WAIT)
            if not chunk:
                return bytes(got), True
            got += chunk
    except ConnectionResetError:
        return bytes(got), True
    except asyncio.TimeoutError:
        return bytes(got), False


# ------------------------------------------------------------------------------------------- consistency

async def test_listings_are_one_state_while_writes_are_applied(env: ApiEnv) -> None:
    """Networks are deleted (each with its one member, in one entry) and members added to another network while
    the listings are read: every answer must still be one state of the model."""
    names = {"name": "n" * 1000}  # ~1.5 KB per network: a listing spans several streamed batches
    olds = [r["id"] for r in await asyncio.gather(*(env.ok("POST", env.create_path, names) for _ in range(240)))]
    await asyncio.gather(*(env.ok("POST", f"/controller/network/{n}/member/abcdef0123", {"authorized": True})
                           for n in olds))
    hot = (await env.new_network())["id"]
    done = asyncio.Event()
    sizes: list[int] = []

    async def delete(nwids: list[str]) -> None:
        for n in nwids:
            await env.ok("DELETE", f"/controller/network/{n}")

    async def join(count: int) -> None:
        for i in range(count):
            await env.ok("POST", f"/controller/network/{hot}/member/{i + 1:010x}", {"authorized": i % 2 == 0})

    async def writers() -> None:
        try:  # several deletes in flight at once: entries are applied while listings are being streamed
            await asyncio.gather(*(delete(olds[lane::4]) for lane in range(4)), join(200))
        finally:
            done.set()

    async def networks_reader() -> None:
        while not done.is_set():
            listing = await env.ok("GET", "/unstable/controller/network")
            data = [n for n in listing["data"] if n["id"] != hot]
            assert listing["meta"]["networkCount"] == len(listing["data"]), listing["meta"]
            for n in data:  # every network but hot has exactly one authorized member in every state
                assert n["meta"] == {"totalMemberCount": 1, "authorizedMemberCount": 1}, (n["id"], n["meta"])
            sizes.append(len(data))

    async def members_reader() -> None:
        while not done.is_set():
            listing = await env.ok("GET", f"/unstable/controller/network/{hot}/member")
            authorized = sum(m["authorized"] for m in listing["data"])
            assert listing["meta"] == {"totalCount": len(listing["data"]), "authorizedCount": authorized}

    await asyncio.gather(writers(), networks_reader(), networks_reader(), members_reader())
    # the listings really ran while the deletes were applied
    assert any(0 < s < len(olds) for s in sizes), sizes


# ------------------------------------------------------------------------------------------------ limits

async def test_streams_beyond_the_cap_are_429_and_everything_else_still_works(env: ApiEnv) -> None:
    nwids = await big_networks(env)
    full = await env.ok("GET", "/unstable/controller/network")
    lim = limits(env)
    lim.limit = 3
    stalled = [await stalled_get(env, "/unstable/controller/network") for _ in range(lim.limit)]
    try:
        await until(lambda: lim.active == 3, "three streams are being served")
        await until(lambda: lmdb_readers(env) == 3, "each holds its LMDB reader")
        for path in ("/unstable/controller/network", f"/controller/network/{nwids[0]}/member",
                     f"/unstable/controller/network/{nwids[0]}/member"):
            r = await env.get(path)
            assert r.status == 429, (path, r)
            assert r.json["error"] == "TOO_MANY_STREAMS" and r.json["message"], r
            assert int(r.headers["Retry-After"]) >= 1
        # The 429s opened no read transaction (one they leaked would stay; a moment's reader elsewhere, e.g. the
        # event emitter reading the changes of an applied batch, goes).
        await until(lambda: lmdb_readers(env) == 3, "only the three streams' readers")
        # requests that stream nothing are served as usual, writes included
        assert (await env.get("/status")).status == 200
        assert (await env.ok("GET", f"/controller/network/{nwids[0]}"))["id"] == nwids[0]
        assert (await env.ok("GET", "/controller/network")) == sorted(nwids)
        await env.ok("POST", f"/controller/network/{nwids[0]}/member/abcdef0123", {})
        assert lim.active == 3  # the stalled clients are still stalled (their listing is larger than buffers)
    finally:
        for s in stalled:
            s.close()
    # a client going away frees its slot and reader at once
    await until(lambda: lim.active == 0 and lmdb_readers(env) == 0, "the closed streams are released")
    again = await env.ok("GET", "/unstable/controller/network")
    assert [n["id"] for n in again["data"]] == [n["id"] for n in full["data"]]


async def test_a_stalled_stream_is_cut_off_at_the_deadline_and_frees_its_reader(env: ApiEnv) -> None:
    await big_networks(env)
    full = await env.get("/unstable/controller/network")
    assert full.status == 200
    lim = limits(env)
    lim.limit, lim.deadline = 1, 0.5
    s = await stalled_get(env, "/unstable/controller/network")
    try:
        await until(lambda: lim.active == 1 and lmdb_readers(env) == 1, "the stalled stream holds a reader")
        assert (await env.get("/unstable/controller/network")).status == 429
        await until(lambda: lim.active == 0, "the deadline cuts the stalled stream off")
        assert lmdb_readers(env) == 0
        got, ended = await read_to_end(s)
        assert ended, "the server did not close the stalled connection"
        assert len(got) < len(full.raw)  # cut off part-way: a truncated transfer, never a wrong document
    finally:
        s.close()
    # the slot is free again: a client that reads gets the whole listing (well within the deadline)
    lim.deadline = WAIT
    again = await env.get("/unstable/controller/network")
    assert again.status == 200 and json.loads(again.raw) == json.loads(full.raw)
