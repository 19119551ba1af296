"""One pysyncobj (0.3.17) node behind a small aiohttp server: the comparison peer of bench/api_load.py.

NOT part of hactl. pysyncobj pickles its commands and messages on the wire (pysyncobj.pickle), so a node trusts
every byte its peers send; that is fine for a loopback benchmark and one reason hactl does not use it.

    python bench/peers/pysyncobj_node.py --raft 127.0.0.1:P0 --peers 127.0.0.1:P1,127.0.0.1:P2 \
        --http 127.0.0.1:H0 --dir DIR

State: a replicated dict (a SyncObjConsumer with @replicated methods). On disk: DIR/journal.bin (journalFile:
every log entry is appended to an mmap'd file as soon as it is received; pysyncobj never msyncs/fsyncs it per
entry, so its "durable" write is durable against a process crash, not a power loss) and DIR/dump.bin
(fullDumpFile: written by log compaction, which pysyncobj starts once the log exceeds 5000 entries).

HTTP API (JSON bodies, like the other targets):
    PUT  /kv/{key}  {"value": "..."}   -> 200 {"ok": true} once the entry is committed and applied on this node.
         Any node accepts it: pysyncobj forwards a command from a follower to its leader itself.
    GET  /kv/{key}                     -> "linearizable" read. pysyncobj has no ReadIndex or lease read, so the
         read goes through the log: a @replicated method that returns the value when it is applied, which makes
         every such read cost one log entry (append + replicate + commit), like a write.
    GET  /kv/{key}?consistency=local   -> the local dict, no coordination (may be stale on a follower).
    GET  /status                       -> {"ready", "leader", "state", "commit_idx", "last_applied", "log_len"}
Errors: a pysyncobj FAIL_REASON is 503 {"error": <name>}; no result in --timeout seconds is 504.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.syncobj import SyncObjConsumer, replicated

FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}


class KVStore(SyncObjConsumer):
    """The replicated dict. Attributes set after SyncObjConsumer.__init__ are what log compaction serializes."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}

    @replicated
    def set(self, key: str, value: str) -> bool:
        self.data[key] = value
        return True

    @replicated
    def read(self, key: str) -> str | None:
        # Applied at its place in the log, so the value is the one every replica has at that index.
        return self.data.get(key)

    def get_local(self, key: str) -> str | None:
        return self.data.get(key)


async def call_replicated(method: Callable[..., Any], *args: Any, timeout: float) -> tuple[Any, int | None]:
    """Run a @replicated method without blocking the event loop: pysyncobj calls the callback on its tick thread,
    so the result is handed back with call_soon_threadsafe. Returns (result, fail reason or None)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

    def done(res: Any, err: int) -> None:
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result((res, err)))

    method(*args, callback=done)
    try:
        res, err = await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        return None, -1
    return res, (None if err == FAIL_REASON.SUCCESS else err)


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type="application/json")


def failure(err: int) -> web.Response:
    if err == -1:
        return json_response({"error": "TIMEOUT"}, 504)
    return json_response({"error": FAIL_NAMES.get(err, str(err))}, 503)


def make_app(node: SyncObj, store: KVStore, timeout: float) -> web.Application:
    async def put(request: web.Request) -> web.Response:
        body = await request.json()
        _, err = await call_replicated(store.set, request.match_info["key"], body["value"], timeout=timeout)
        return failure(err) if err is not None else json_response({"ok": True})

    async def get(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if request.query.get("consistency") == "local":
            value = store.get_local(key)
        else:
            value, err = await call_replicated(store.read, key, timeout=timeout)
            if err is not None:
                return failure(err)
        if value is None:
            return json_response({}, 404)
        return json_response({"key": key, "value": value})

    async def status(_: web.Request) -> web.Response:
        st = node.getStatus()
        leader = st.get("leader")
        return json_response({"ready": node.isReady(), "leader": str(leader) if leader else None,
                              "state": st.get("state"), "commit_idx": st.get("commit_idx"),
                              "last_applied": st.get("last_applied"), "log_len": st.get("log_len")})

    app = web.Application()
    app.router.add_put("/kv/{key}", put)
    app.router.add_get("/kv/{key}", get)
    app.router.add_get("/status", status)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raft", required=True, help="this node's raft address host:port")
    ap.add_argument("--peers", required=True, help="the other nodes' raft addresses, comma separated")
    ap.add_argument("--http", required=True, help="host:port of the HTTP API")
    ap.add_argument("--dir", required=True, help="directory for journal.bin and dump.bin")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a replicated call")
    ap.add_argument("--batch", choices=("on", "off"), default="on",
                    help="appendEntriesUseBatch: on (library default) waits for the next appendEntriesPeriod "
                         "(100 ms) tick to send entries; off sends each entry at once")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.dir)
    data.mkdir(parents=True, exist_ok=True)
    # Library defaults otherwise (50 ms tick, 100 ms appendEntriesPeriod, compaction after 5000 entries).
    conf = SyncObjConf(journalFile=str(data / "journal.bin"), fullDumpFile=str(data / "dump.bin"),
                       appendEntriesUseBatch=args.batch == "on")
    store = KVStore()
    node = SyncObj(args.raft, [p for p in args.peers.split(",") if p], conf=conf, consumers=[store])
    host, _, port = args.http.rpartition(":")
    try:
        web.run_app(make_app(node, store, args.timeout), host=host, port=int(port), print=None,
                    access_log=None, handle_signals=True)
    finally:
        node.destroy()


if __name__ == "__main__":
    main()
