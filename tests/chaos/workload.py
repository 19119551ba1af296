"""The chaos run's clients: closed-loop HTTP clients against every node, recording a history for lincheck.

Runs as its own process inside the hub namespace (`ip netns exec HUB python -m tests.chaos.workload ...`), so the
recording has its own clock and GIL, and the test process only reads the history file it leaves (one JSON line
per operation, written as each one ends; the format is lincheck's).

Operations (each client picks a node at random for every operation, so followers forward and minorities refuse):
  * member update  POST /controller/network/{nwid}/member/{addr} {"name": <unique>}: MemberRecord.update, output the
                   revision the answer carries (the revision is the counter: +1 per change).
  * member read    GET of the same member (linearizable by default): MemberRecord.read.
  * network create POST /controller/network/{id} for an id never used before: NetworkSet.create.
  * network read   GET /controller/network/{id} of an id some client tried to create: NetworkSet.read.
Half the clients send writes without Idempotency-Key, once; the other half with one, retried on 503/504/no answer
until --retry-s has passed, as a careful client would. Besides them, one probe per node writes members through
that node only (without a key): closed-loop clients all end up waiting on a frozen node, the probes of the other
nodes do not, so the acknowledgements show when the cluster could take writes again.

Answers, as the API promises them: 200 -> ok; 503 and 429 -> never applied (fail); 504, a timeout or a lost
connection -> unknown; a refused connection -> fail (nothing was sent). Anything else (400, 404, 500, ...) is a
wrong answer: it is recorded with status "unknown" (so the check stays sound) and counted under `unexpected` in
the summary line, which the runner treats as a failure.

`--phase setup` creates the members first (before the faults start); `--phase final` reads every member and every network id once from each node with ?consistency=local (the runner
calls it after healing, once every node has applied the leader's commit index): those reads go into the same
history, after everything else, so "every acknowledged write is on every node" is checked by lincheck too.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REQUEST_TIMEOUT_S = 10.0
FINAL_READERS = 16  # concurrent reads in the final phase
FINAL_ATTEMPTS = 5
SETUP_RETRY_S = 120.0  # the members must exist before the run: their creation is retried this long
NETWORK_BASE = 0xC00000  # workload-created network ids: (controller << 24) | NETWORK_BASE + n


@dataclass
class Answer:
    status: str  # "ok" | "fail" | "unknown"
    body: Any = None
    http: int | None = None
    unexpected: bool = False


@dataclass
class Recorder:
    """Appends finished operations to the history file; ids in call order."""

    path: Path
    first_id: int = 0
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.ids = itertools.count(self.first_id)
        self._f = self.path.open("a", buffering=1)

    def call(self) -> tuple[int, float]:
        return next(self.ids), time.monotonic()

    def done(self, op_id: int, client: str, key: str, op: str, inp: Any, call: float, ans: Answer,
             output: Any) -> None:
        unknown = ans.status == "unknown"
        rec = {"id": op_id, "client": client, "key": key, "op": op, "input": inp,
               "output": None if unknown else output, "call": call,
               "return": None if unknown else time.monotonic(), "status": ans.status}
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self.stats[f"{op}.{ans.status}"] += 1
        if ans.unexpected:
            self.stats["unexpected"] += 1
            self.stats[f"unexpected.{op}.{ans.http}"] += 1

    def close(self) -> None:
        self._f.close()


async def send(session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
               body: Any = None, *, write: bool) -> Answer:
    try:
        async with session.request(method, url, json=body, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
            raw = await r.read()
            parsed = json.loads(raw) if raw else None
            if r.status == 200:
                return Answer("ok", parsed, 200)
            if r.status in (503, 429):
                return Answer("fail", parsed, r.status)
            if r.status == 504:
                return Answer("unknown", parsed, 504)
            if not write and r.status == 404:
                return Answer("ok", None, 404)  # a read of something absent: output None
            return Answer("unknown", parsed, r.status, unexpected=True)
    except aiohttp.ClientConnectorError:
        return Answer("fail")  # the connection was never made: nothing was sent
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return Answer("unknown")  # sent, answer lost (or garbled): it may have been applied


class Workload:
    def __init__(self, args: argparse.Namespace) -> None:
        self._urls: list[str] = args.urls.split(",")
        self.urls_file = Path(args.urls_file) if args.urls_file else None
        self._urls_seen = (0.0, 0)  # (when the file was last looked at, its mtime_ns then)
        self.headers = {"X-ZT1-Auth": args.token}
        self.nwid: str = args.nwid
        self.controller = self.nwid[:10]
        self.members: list[str] = args.members.split(",")
        self.rng = random.Random(args.seed)
        self.rec = Recorder(Path(args.out), args.id_start)
        self.retry_s: float = args.retry_s
        self.values = itertools.count(1)
        self.networks: list[str] = Path(args.networks_file).read_text().split() if args.networks_file else []
        self.next_network = itertools.count()

    @property
    def urls(self) -> list[str]:
        """Every node's API URL now: a node that moved is reached at its new address, as a client that resolves
        names again would (the runner rewrites --urls-file when an address changes; looked at every 0.2 s)."""
        now = time.monotonic()
        if self.urls_file is not None and now - self._urls_seen[0] > 0.2:
            try:
                mtime = self.urls_file.stat().st_mtime_ns
                if mtime != self._urls_seen[1]:
                    self._urls = json.loads(self.urls_file.read_text())
                self._urls_seen = (now, mtime)
            except (OSError, ValueError):  # being replaced right now: the last list serves meanwhile
                pass
        return self._urls

    def member_url(self, node: int, addr: str) -> str:
        return f"{self.urls[node]}/controller/network/{self.nwid}/member/{addr}"

    def network_url(self, node: int, nwid: str) -> str:
        return f"{self.urls[node]}/controller/network/{nwid}"

    async def write(self, session: aiohttp.ClientSession, rng: random.Random, keyed: bool, url_of: Any,
                    body: Any) -> Answer:
        """One write: once without a key, or retried with one Idempotency-Key on answers that are not final."""
        if not keyed:
            return await send(session, "POST", url_of(rng.randrange(len(self.urls))), self.headers, body, write=True)
        headers = dict(self.headers, **{"Idempotency-Key": f"chaos-{rng.getrandbits(64):016x}"})
        deadline = time.monotonic() + self.retry_s
        maybe = False
        while True:
            ans = await send(session, "POST", url_of(rng.randrange(len(self.urls))), headers, body, write=True)
            if ans.status == "ok" or ans.unexpected:
                return ans
            maybe = maybe or ans.status == "unknown"
            if time.monotonic() > deadline:
                return Answer("unknown" if maybe else "fail", ans.body, ans.http)
            await asyncio.sleep(0.2)

    async def client(self, c: int, session: aiohttp.ClientSession, until: float) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        keyed = c % 2 == 1
        name = f"c{c}{'k' if keyed else ''}"
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.45:
                if not await self.update_member(session, rng, name, keyed, None):
                    await asyncio.sleep(0.05)
            elif roll < 0.80:
                await self.read_member(session, name, rng.choice(self.members), rng.randrange(len(self.urls)))
            elif roll < 0.90 or not self.networks:
                nwid = f"{self.controller}{NETWORK_BASE + next(self.next_network):06x}"
                self.networks.append(nwid)
                op_id, t0 = self.rec.call()
                ans = await self.write(session, rng, keyed, lambda n: self.network_url(n, nwid), {"name": nwid})
                self.rec.done(op_id, name, f"network:{nwid}", "create", nwid, t0, ans, None)
            else:
                recent = self.networks[-50:]
                await self.read_network(session, name, rng.choice(recent), rng.randrange(len(self.urls)))

    async def probe(self, node: int, session: aiohttp.ClientSession, until: float) -> None:
        """Writes through one node only, one after the other: while some node can commit, its probe shows it,
        whatever the other clients are stuck on (how long writes were unavailable is read from all acks)."""
        rng = random.Random(self.rng.getrandbits(64))
        while time.monotonic() < until:
            if not await self.update_member(session, rng, f"probe{node}", False, node):
                await asyncio.sleep(0.05)  # a node refusing at once (503) is asked again soon, not in a spin

    async def update_member(self, session: aiohttp.ClientSession, rng: random.Random, client: str, keyed: bool,
                            node: int | None) -> bool:
        addr = rng.choice(self.members)
        value = f"v{next(self.values)}"
        op_id, t0 = self.rec.call()
        url_of = (lambda n: self.member_url(n, addr)) if node is None else (lambda _: self.member_url(node, addr))
        ans = await self.write(session, rng, keyed, url_of, {"name": value})
        rev = ans.body.get("revision") if ans.status == "ok" and isinstance(ans.body, dict) else None
        self.rec.done(op_id, client, f"member:{addr}", "update", {"name": value}, t0, ans, rev)
        return ans.status == "ok"

    async def read_member(self, session: aiohttp.ClientSession, client: str, addr: str, node: int,
                          query: str = "") -> bool:
        def output(body: Any) -> Any:
            if not isinstance(body, dict):
                return None
            return {"fields": {"name": body.get("name")}, "revision": body.get("revision")}
        return await self._read(session, client, f"member:{addr}", None, self.member_url(node, addr) + query,
                                output)

    async def read_network(self, session: aiohttp.ClientSession, client: str, nwid: str, node: int,
                           query: str = "") -> bool:
        return await self._read(session, client, f"network:{nwid}", nwid, self.network_url(node, nwid) + query,
                                lambda body: body is not None)

    async def _read(self, session: aiohttp.ClientSession, client: str, key: str, inp: Any, url: str,
                    output: Any) -> bool:
        """One GET recorded as a read of ``key``; whether it was answered."""
        op_id, t0 = self.rec.call()
        ans = await send(session, "GET", url, self.headers, write=False)
        if ans.status == "unknown" and not ans.unexpected:
            ans = Answer("fail")  # a read that got no answer had no effect: drop it
        self.rec.done(op_id, client, key, "read", inp, t0, ans, output(ans.body) if ans.status == "ok" else None)
        return ans.status == "ok"

    async def setup(self) -> None:
        """Each member once, before the faults and the clients start (retried with one key until it exists)."""
        self.retry_s = SETUP_RETRY_S
        rng = random.Random(self.rng.getrandbits(64))
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for addr in self.members:
                await self.create_member(session, rng, addr)

    async def create_member(self, session: aiohttp.ClientSession, rng: random.Random, addr: str) -> None:
        value = f"s{next(self.values)}"  # (setup's values are its own: written values are unique in a history)
        op_id, t0 = self.rec.call()
        ans = await self.write(session, rng, True, lambda n: self.member_url(n, addr), {"name": value})
        self.rec.done(op_id, "setup", f"member:{addr}", "create", {"name": value}, t0, ans,
                      ans.body.get("revision") if ans.status == "ok" else None)
        if ans.status != "ok":
            raise SystemExit(f"workload: creating member {addr} failed: {ans}")

    async def run(self, seconds: float, clients: int) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a refused connect then means "not sent"
        async with aiohttp.ClientSession(connector=connector) as session:
            until = time.monotonic() + seconds
            await asyncio.gather(*(self.client(c, session, until) for c in range(clients)),
                                 *(self.probe(n, session, until) for n in range(len(self.urls))))

    async def final(self) -> None:
        """Everything read once from every node (FINAL_READERS at a time: tens of thousands of networks after an
        hour; the order does not matter, nothing is written any more)."""
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        gate = asyncio.Semaphore(FINAL_READERS)

        async def one(read: Any, client: str, what: str, node: int) -> None:
            async with gate:
                for _ in range(FINAL_ATTEMPTS):  # (healed and caught up: a failure here is worth a second look)
                    if await read(session, client, what, node, "?consistency=local"):
                        return
                    await asyncio.sleep(0.5)

        async with aiohttp.ClientSession(connector=connector) as session:
            reads = [one(self.read_member, f"final{node}", addr, node)
                     for node in range(len(self.urls)) for addr in self.members]
            reads += [one(self.read_network, f"final{node}", nwid, node)
                      for node in range(len(self.urls)) for nwid in self.networks]
            await asyncio.gather(*reads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", required=True, help="every node's API base URL, comma-separated")
    ap.add_argument("--urls-file", default="", help="a JSON list of the URLs, rewritten when a node moves")
    ap.add_argument("--token", required=True)
    ap.add_argument("--nwid", required=True, help="the network whose members are written")
    ap.add_argument("--members", required=True, help="member addresses, comma-separated")
    ap.add_argument("--networks-file", default="", help="--phase final: network ids to read, one per line")
    ap.add_argument("--id-start", type=int, default=0, help="first operation id (after an earlier history)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--retry-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="history file (JSON lines, appended)")
    ap.add_argument("--phase", choices=["setup", "run", "final"], default="run",
                    help="setup: create the members; run: the clients; final: read everything from every node")
    args = ap.parse_args(argv)
    wl = Workload(args)
    try:
        asyncio.run(wl.setup() if args.phase == "setup" else wl.final() if args.phase == "final"
                    else wl.run(args.seconds, args.clients))
    finally:
        wl.rec.close()
    # One summary line for the runner: counts by op and outcome, the networks tried, and any wrong answers.
    print(json.dumps({"stats": dict(wl.rec.stats), "networks": wl.networks, "next_id": next(wl.rec.ids)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
