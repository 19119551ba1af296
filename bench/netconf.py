"""ZeroTier config requests: how fast hactl answers NETWORK_CONFIG_REQUEST, what a reply costs, how fast it admits
new members. Prints `BENCH <name> <value> <unit>` lines, and `# ...` lines saying how it was measured and where
the time goes (a cProfile of the reply path).

    python bench/netconf.py [--members 10000] [--seconds 8] [--skip-cluster] [--workers 1,2] [--dir DIR]

Targets, one after the other, each a fresh cluster of real controller processes on this machine (bench/
netconf_node.py: `hactl controller run` plus a loopback UDP bind and the Limits override below), configs from
`hactl dev init` (hactl.dev.cluster.init_cluster, log level warning), default raft timings, data on disk:
  node     one controller (a single-voter cluster);
  cluster  three controllers; the members are spread over the three UDP endpoints (every node answers for the
           one controller identity: ReadIndex barrier on followers too);
  node_w<N> one controller with N API worker processes (--workers, default 1,2; the two targets above run
           workers: 0): the node dispatches each batch's configs to its workers, which read and sign them
           (hactl/workers/netconf.py); steps 1-4 only. netconf_replies_scaling_w<N> is its replies/s over the
           node target's. The controllers' CPU includes their workers'.

Per target:
  1. a network with --members member records (authorized, each with an auto-assigned IPv4 address), created
     through the API: POST /controller/network/{nwid}/member/{addr} {"authorized": true}, 64 at a time. The
     network is public (so that a new member is admitted on its first request, step 6); the load generator's
     members are among the records;
  2. --load-members member identities (real, generated once per --dir and cached in identities.txt) HELLO the
     node(s), answer the node's path-discovery HELLO, and ask once (that first answer writes their identity
     through Raft; it is checked: signed by the controller identity, an IPv4 address from the pool);
  3. saturation: every member keeps one request in flight (closed loop), --seconds measured after 1 s of
     warm-up: replies/s, p50/p99 request->reply latency (queueing included), node CPU per reply, the load
     generator's own CPU;
  4. latency: an open loop at a fixed rate (--latency-rate, or half the saturated rate if lower): p50/p99;
  5. (node only) cProfile of the controller's event-loop thread during a few thousand replies, and the pure
     steps of a reply timed again without the profiler (it roughly doubles Python-level costs), on the records
     the node serves;
  6. admission: --admit new identities (never seen by this cluster) join, --admit-concurrency at a time (64: as
     many as the node queues for validation; more get dropped and retry after 1 s, as members do): HELLO
     -> identity validation (memory-hard hash, on the node's validation thread) -> OK(HELLO) -> request ->
     member.request through Raft (record, authorization, IPv4 assignment) -> signed config. Admitted/s counts
     configs received, from the first HELLO to the last config.

Rate limits. The node allows one request per (member, network) per second (Limits.request_interval_ms); a
few hundred identities cannot offer thousands of requests per second under that, so the bench lowers it to
--request-interval-ms (10 ms by default; each member still waits that long between its requests) and says so.
Everything else keeps its defaults: identity validations per source IP (4/s, burst 16) and writes per source
(20/s, burst 40) are met by giving the members distinct source addresses, --per-source members per address
(127.0.x.y: the whole 127/8 is local on Linux), as members behind different NATs would have.

The load generator (this process: one thread, epoll, our codec; every reply is dearmored, its MAC checked and
matched to the request by in-re packet id; each request gets a fresh packet id, the Salsa20 nonce) runs on the
same 2 cores as the controllers: its CPU is measured and printed, and so is the whole machine's.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import multiprocessing
import os
import pstats
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from hactl.dev.cluster import init_cluster  # noqa: E402
from hactl.zt.dictionary import Dictionary  # noqa: E402
from hactl.zt.errors import ProtocolError  # noqa: E402
from hactl.zt.identity import Identity  # noqa: E402
from hactl.zt.inetaddress import InetAddress, Reader  # noqa: E402
from hactl.zt.netconf import assemble  # noqa: E402
from hactl.zt.packet import Cipher, Packet, Verb, armor, dearmor  # noqa: E402
from hactl.zt.verbs import Hello, NetworkConfigRequest, OkHello, OkNetworkConfig  # noqa: E402
from hactl.zt.world import Root, World, WorldType  # noqa: E402

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "netconf_node.py"
LOCAL = "127.0.0.1"
# What a ZeroTier 1.8.4 member puts in its request (protocol 12, rules engine 1).
METADATA = b"v=0000000000000007\nvend=0000000000000001\npv=000000000000000c\nmajv=0000000000000001\n" \
           b"minv=0000000000000008\nrevv=0000000000000004\nrevr=0000000000000001\n"
POOL = ("10.0.0.1", "10.0.255.254")
NETWORK = {"name": "bench", "private": False, "v4AssignMode": {"zt": True},
           "ipAssignmentPools": [{"ipRangeStart": POOL[0], "ipRangeEnd": POOL[1]}],
           "routes": [{"target": "10.0.0.0/16", "via": None}]}
PLANET_ID, PLANET_TS = 0xC0FFEE, 1
LOST_AFTER = 1.0  # s: a request unanswered this long counts as lost ("timeout") and its member asks again
OK, ERROR, HELLO, NCR = Verb.OK, Verb.ERROR, Verb.HELLO, Verb.NETWORK_CONFIG_REQUEST


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def note(text: str) -> None:
    for line in text.splitlines():
        print(f"# {line}", flush=True)


def progress(text: str) -> None:
    print(f"[netconf] {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------------------------------ identities, planet

def _generate(_: int) -> str:
    return Identity.generate().to_string(include_private=True)


def identity_pool(path: Path, n: int) -> list[Identity]:
    """n identities with private keys, from path (one per line), generating (on every core) what is missing."""
    lines = path.read_text().split() if path.exists() else []
    missing = n - len(lines)
    if missing > 0:
        t = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            lines += pool.map(_generate, range(missing), chunksize=8)
        path.write_text("\n".join(lines) + "\n")
        progress(f"generated {missing} identities in {time.perf_counter() - t:.1f} s (cached in {path})")
    return [Identity.from_string(s) for s in lines[:n]]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def free_port_block(n: int) -> int:
    """base..base+n-1 free for TCP on 127.0.0.1 now, below the ephemeral range."""
    for _ in range(200):
        base = 20000 + random.randrange(12000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind((LOCAL, p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


PLANET_FILE: list[Path] = []


def write_planet(path: Path) -> Path:
    """A planet whose one root sits on a local port nobody answers: the nodes never reach beyond this machine."""
    root = Identity.generate()
    world = World.make(WorldType.PLANET, PLANET_ID, PLANET_TS, root.public_key,
                       [Root(root.public_only(), (InetAddress(ipaddress.ip_address(LOCAL), free_udp_port()),))],
                       sign_with=root.private_key or b"")
    path.write_bytes(world.encode())
    PLANET_FILE[:] = [path]
    return path


def source_ip(block: int, k: int) -> str:
    return f"127.{block}.{k // 250}.{k % 250 + 1}"


# ------------------------------------------------------------------------------------------ controller processes

def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a node's API workers: they sign configs too, their CPU is the node's)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def udp_drops(ports: list[int]) -> int:
    """Datagrams the kernel dropped on the sockets bound to these local UDP ports (receive buffer full):
    the node never sees them, so its counters cannot say."""
    want = {f"{p:04X}" for p in ports}
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1].rsplit(":", 1)[1] in want:
                total += int(fields[-1])
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(v) - idle) / tick, sum(v) / tick


class Cluster:
    """Controller processes from `hactl dev init` configs, run through bench/netconf_node.py."""

    def __init__(self, root: Path, nodes: int, planet: Path, limits: dict[str, Any], workers: int) -> None:
        self.root = root
        self.specs = init_cluster(root, nodes, base_port=free_port_block(2 * nodes), log_level="warning")
        for spec in self.specs:  # API worker processes per node (they also sign the config replies)
            doc = yaml.safe_load(spec.config.read_text())
            doc["workers"] = workers
            spec.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.token = (root / "api-token").read_text().strip()
        self.planet = planet
        self.limits = limits
        self.udp = [free_udp_port() for _ in self.specs]
        self.procs: list[subprocess.Popen] = []
        self.profile_out = root / "profile.pstats"

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        return [(LOCAL, p) for p in self.udp]

    @property
    def api(self) -> list[str]:
        return [s.api_url for s in self.specs]

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for spec, port in zip(self.specs, self.udp):
            log = open(self.root / f"{spec.id}.log", "ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, str(LAUNCHER), "--config", str(spec.config), "--zt-bind", f"{LOCAL}:{port}",
                 "--zt-planet", str(self.planet), "--limits", json.dumps(self.limits),
                 "--profile-out", str(self.profile_out), "--identity-out", str(self.root / f"{spec.id}.identity")],
                stdout=log, stderr=subprocess.STDOUT, env=env))
            log.close()

    def identity(self, timeout: float = 60) -> Identity:
        deadline = time.monotonic() + timeout
        files = [self.root / f"{s.id}.identity" for s in self.specs]
        while not all(f.exists() for f in files):
            for p, s in zip(self.procs, self.specs):
                if p.poll() is not None:
                    raise RuntimeError(f"controller {s.id} exited ({p.returncode}):\n{self.log(s.id)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the controllers' ZeroTier endpoints did not come up:\n" +
                                   "\n".join(self.log(s.id) for s in self.specs))
            time.sleep(0.1)
        idents = {f.read_text().strip() for f in files}
        assert len(idents) == 1, idents
        return Identity.from_string(idents.pop())

    def log(self, nid: str) -> str:
        return (self.root / f"{nid}.log").read_text(errors="replace")[-3000:]

    def cpu(self) -> float:
        """The controllers' CPU seconds, their API workers' included (a worker restarted meanwhile would make
        this jump down: the bench's workers are not killed)."""
        return sum(proc_cpu(q) for p in self.procs for q in process_tree(p.pid))

    def main_cpu(self) -> float:
        """The controller processes' own CPU seconds, without their workers'."""
        return sum(proc_cpu(p.pid) for p in self.procs)

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            p.send_signal(sig)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Api:
    """The controllers' HTTP API (aiohttp, one session)."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster

    async def __aenter__(self) -> "Api":
        self.session = aiohttp.ClientSession(headers={"X-ZT1-Auth": self.c.token},
                                             connector=aiohttp.TCPConnector(limit=128))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, url: str, body: Any = None, retries: int = 50) -> Any:
        for attempt in range(retries):
            try:
                async with self.session.request(method, url, json=body) as r:
                    data = await r.json(content_type=None)
                    if r.status == 200:
                        return data
                    if r.status not in (429, 503, 504):
                        raise RuntimeError(f"{method} {url}: {r.status} {data}")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1 * (attempt + 1))
        raise RuntimeError(f"{method} {url}: kept failing")

    async def ready(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            sts = []
            for url in self.c.api:
                try:
                    async with self.session.get(f"{url}/status") as r:
                        sts.append(await r.json() if r.status == 200 else None)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    sts.append(None)
            if all(st and st.get("address") and st["cluster"].get("leader") for st in sts):
                return sts[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ready: {sts}")
            await asyncio.sleep(0.2)

    async def populate(self, nwid: str, addresses: list[str], concurrency: int = 64) -> float:
        """Members created per second."""
        queue = deque(addresses)
        urls = self.c.api

        async def worker(k: int) -> None:
            while queue:
                addr = queue.popleft()
                await self.call("POST", f"{urls[k % len(urls)]}/controller/network/{nwid}/member/{addr}",
                                {"authorized": True})
        t = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return len(addresses) / (time.perf_counter() - t)

    async def roles(self) -> list[str]:
        out = []
        for url in self.c.api:
            async with self.session.get(f"{url}/status") as r:
                out.append((await r.json())["cluster"]["role"])
        return out

    async def zt_stats(self) -> list[dict[str, int]]:
        out = []
        for url in self.c.api:
            async with self.session.get(f"{url}/status") as r:
                out.append(((await r.json()).get("zerotier") or {}).get("stats") or {})
        return out


def member_addresses(n: int, taken: set[int]) -> list[str]:
    out: list[str] = []
    rnd = random.Random(1)
    while len(out) < n:
        a = rnd.getrandbits(40)
        if a == 0 or a >> 32 == 0xFF or a in taken:
            continue
        taken.add(a)
        out.append(f"{a:010x}")
    return out


# ------------------------------------------------------------------------------------------ the load generator

class Member:
    __slots__ = ("ident", "address", "key", "sock", "dest", "pid", "sent", "hello_pid", "hello_sent", "t0",
                 "hello_ok")

    def __init__(self, ident: Identity, key: bytes, sock: socket.socket, dest: tuple[str, int]) -> None:
        self.ident, self.address, self.key, self.sock, self.dest = ident, ident.address, key, sock, dest
        self.pid: bytes | None = None  # the request in flight
        self.sent = 0.0
        self.hello_pid: bytes | None = None
        self.hello_sent = 0.0
        self.t0 = 0.0
        self.hello_ok = 0.0


class Swarm:
    """Members speaking the ZeroTier protocol with our codec, from one thread: one UDP socket per source
    address, shared by --per-source members (a node tells members apart by their ZeroTier address)."""

    def __init__(self, controller: Identity, nwid: int, identities: list[Identity],
                 endpoints: list[tuple[str, int]], block: int, per_source: int) -> None:
        self.controller = controller
        self.ctl = controller.address
        self.nwid = nwid
        self.epoll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.members: list[Member] = []
        self.by_addr: dict[bytes, Member] = {}
        sock = None
        for i, ident in enumerate(identities):
            if i % per_source == 0:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((source_ip(block, i // per_source), 0))
                sock.setblocking(False)
                self.socks[sock.fileno()] = sock
                self.epoll.register(sock.fileno(), select.EPOLLIN)
            assert sock is not None
            m = Member(ident, ident.agree(controller), sock, endpoints[i % len(endpoints)])
            self.members.append(m)
            self.by_addr[ident.address.to_bytes(5, "big")] = m
        self.payload = NetworkConfigRequest(nwid, METADATA, 0, 0).encode()
        self.done: deque[tuple[Member, str, Any]] = deque()  # (member, "ok"|"error"|"hello", detail)
        self.stats: Counter[str] = Counter()
        # admission: (first HELLO -> OK(HELLO), then -> config, the endpoint it joined through)
        self.stages: list[tuple[float, float, tuple[str, int]]] = []
        self.pool_range = (ipaddress.ip_address(POOL[0]), ipaddress.ip_address(POOL[1]))

    def close(self) -> None:
        self.epoll.close()
        for s in self.socks.values():
            s.close()

    # --- sending
    def request(self, m: Member, now: float) -> None:
        pid = os.urandom(8)
        m.sock.sendto(armor(Packet(pid, self.ctl, m.address, NCR, self.payload), m.key), m.dest)
        m.pid, m.sent = pid, now

    def hello(self, m: Member, now: float) -> None:
        pid = os.urandom(8)
        h = Hello(12, 1, 8, 4, int(time.time() * 1000), m.ident.public_only(),
                  InetAddress(ipaddress.ip_address(m.dest[0]), m.dest[1]), PLANET_ID, PLANET_TS, moons=())
        m.sock.sendto(armor(Packet(pid, self.ctl, m.address, HELLO, h.encode(m.key, pid),
                                   cipher=Cipher.POLY1305_NONE), m.key), m.dest)
        m.hello_pid, m.hello_sent = pid, now

    # --- receiving
    def poll(self, timeout: float) -> None:
        for fd, _ in self.epoll.poll(max(timeout, 0.0)):
            sock = self.socks[fd]
            while True:
                try:
                    data, src = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                self.datagram(data, src)

    def datagram(self, data: bytes, src: tuple[str, int]) -> None:
        if len(data) < 28 or data[13] == 0xFF or data[18] & 0x40:
            self.stats["fragmented_or_short"] += 1  # configs fit one datagram (1200-byte chunks)
            return
        m = self.by_addr.get(data[8:13])
        if m is None:
            self.stats["not_ours"] += 1
            return
        try:
            p = dearmor(data, m.key)
        except ProtocolError:
            self.stats["bad_mac"] += 1
            return
        verb, body = p.verb, p.payload
        if verb == OK or verb == ERROR:
            in_verb, in_pid = body[0], body[1:9]
            if in_verb == NCR and in_pid == m.pid:
                m.pid = None
                self.done.append((m, "ok" if verb == OK else "error", body if verb == OK else body[9]))
            elif verb == OK and in_verb == HELLO and in_pid == m.hello_pid:
                m.hello_pid = None
                self.done.append((m, "hello", None))
            else:
                self.stats["late_or_unexpected"] += 1
        elif verb == HELLO:
            # What a real member does: answer, which is how the node learns a path to it.
            h = Hello.decode(body, m.key, p.packet_id)
            ok = OkHello(p.packet_id, h.timestamp, 12, 1, 8, 4, InetAddress(ipaddress.ip_address(src[0]), src[1]))
            m.sock.sendto(armor(Packet(os.urandom(8), self.ctl, m.address, OK, ok.encode()), m.key), src)
        else:
            self.stats[f"rx_{Verb(verb).name.lower()}"] += 1  # pushes (NETWORK_CONFIG), revocations

    def check_config(self, m: Member, ok_payload: bytes) -> None:
        """The full member-side check of an answer: signed by the controller identity, for this member and
        network, with an IPv4 address from the pool. Single-chunk configs only (they are ~1 KB)."""
        chunk = OkNetworkConfig.decode(ok_payload).chunk
        assert chunk.verify(self.controller.public_key), "config chunk not signed by the controller identity"
        assert chunk.index == 0 and len(chunk.data) == chunk.total_length, "multi-chunk config"
        d = Dictionary.parse(assemble([chunk]))
        assert d.get_str("id") == f"{m.address:010x}" and d.get_int("nwid") == self.nwid
        r, ips = Reader(d.get("I") or b""), []
        while r.remaining:
            a = InetAddress.read(r)
            if a.ip is not None and a.ip.version == 4:
                ips.append(a.ip)
        assert ips and self.pool_range[0] <= ips[0] <= self.pool_range[1], f"no pool address in {ips}"
        self.stats["config_bytes"] = chunk.total_length

    # --- phases
    def handshake(self, timeout: float = 60, concurrency: int = 48) -> None:
        """HELLO until OK(HELLO) (the node validates each identity once), concurrency at a time."""
        self._join(timeout, concurrency, then_request=False)

    def warm(self, timeout: float = 60) -> None:
        """One answered request per member (the first one writes its identity), each answer fully checked."""
        todo = deque(self.members)
        active: set[Member] = set()
        deadline = time.perf_counter() + timeout
        while todo or active:
            now = time.perf_counter()
            assert now < deadline, f"warm-up: {len(todo) + len(active)} members unanswered; {self.stats}"
            while todo and len(active) < 64:
                m = todo.popleft()
                self.request(m, now)
                active.add(m)
            self.poll(0.01)
            while self.done:
                m, kind, detail = self.done.popleft()
                assert kind == "ok", (kind, detail)
                self.check_config(m, detail)
                active.discard(m)
            for m in active:
                if m.pid is not None and now - m.sent > 2.0:
                    self.stats["warm_retry"] += 1
                    self.request(m, now)

    def admit(self, timeout: float, concurrency: int) -> tuple[int, float, list[float]]:
        """(admitted, seconds from the first HELLO to the last config, per-member join latencies)."""
        return self._join(timeout, concurrency, then_request=True)

    def _join(self, timeout: float, concurrency: int, then_request: bool) -> tuple[int, float, list[float]]:
        todo = deque(self.members)
        active: set[Member] = set()
        start = time.perf_counter()
        deadline = start + timeout
        latencies: list[float] = []
        last = start
        while (todo or active) and time.perf_counter() < deadline:
            now = time.perf_counter()
            while todo and len(active) < concurrency:
                m = todo.popleft()
                m.t0 = now
                self.hello(m, now)
                active.add(m)
            self.poll(0.005)
            now = time.perf_counter()
            while self.done:
                m, kind, detail = self.done.popleft()
                if kind == "hello":
                    m.hello_ok = now
                    if then_request:
                        self.request(m, now)
                    else:
                        active.discard(m)
                        latencies.append(now - m.t0)
                        last = now
                elif kind == "ok":
                    self.check_config(m, detail)
                    active.discard(m)
                    latencies.append(now - m.t0)
                    self.stages.append((m.hello_ok - m.t0, now - m.hello_ok, m.dest))
                    last = now
                else:
                    self.stats[f"join_error_{detail}"] += 1
                    active.discard(m)
            for m in active:
                if m.hello_pid is not None and now - m.hello_sent > 1.0:
                    self.stats["hello_retry"] += 1  # dropped by the node (validation queue full, rate)
                    self.hello(m, now)
                elif m.hello_pid is None and m.pid is not None and now - m.sent > 2.0:
                    self.stats["request_retry"] += 1  # not answered (e.g. busy, write rate): ask again
                    self.request(m, now)
        if todo or active:
            progress(f"join: {len(todo) + len(active)} members not through after {timeout} s; {dict(self.stats)}")
        return len(latencies), last - start, latencies

    def closed_loop(self, seconds: float, interval: float, on_start: Callable[[], None] | None = None,
                    warmup: float = 1.0, until_replies: int = 0,
                    on_end: Callable[[], None] | None = None) -> dict[str, Any]:
        """Every member keeps one request in flight, waiting `interval` after each reply. Counts replies
        to requests sent after `warmup` s until `seconds` more have passed (or until_replies replies)."""
        ready: deque[tuple[float, Member]] = deque((0.0, m) for m in self.members)
        inflight: set[Member] = set()
        t_begin = time.perf_counter()
        t_measure = t_begin + warmup
        t_end = t_measure + seconds
        measuring = False
        lat: list[float] = []
        counts: Counter[str] = Counter()
        next_timeout_scan = t_begin + 0.5
        while True:
            now = time.perf_counter()
            if not measuring and now >= t_measure:
                measuring = True
                if on_start is not None:
                    on_start()
                t_measure = time.perf_counter()
                t_end = t_measure + seconds
                now = t_measure
            if now >= t_end or (until_replies and len(lat) >= until_replies):
                break
            while ready and ready[0][0] <= now:
                _, m = ready.popleft()
                self.request(m, now)
                inflight.add(m)
            self.poll(min(0.005, ready[0][0] - now) if ready else 0.005)
            now = time.perf_counter()
            while self.done:
                m, kind, detail = self.done.popleft()
                if m.sent >= t_measure and measuring:
                    counts[kind] += 1
                    lat.append(now - m.sent)
                inflight.discard(m)
                ready.append((now + interval, m))
            if now >= next_timeout_scan:
                next_timeout_scan = now + 0.5
                for m in [m for m in inflight if now - m.sent > LOST_AFTER]:
                    counts["timeout"] += 1 if measuring else 0
                    m.pid = None
                    inflight.discard(m)
                    ready.append((now, m))
        elapsed = time.perf_counter() - t_measure
        if on_end is not None:
            on_end()
        self._drain(inflight)
        return {"elapsed": elapsed, "counts": counts, "lat": lat}

    def open_loop(self, rate: float, seconds: float) -> dict[str, Any]:
        """Requests at a fixed rate, each from the member idle the longest; replies' latencies."""
        idle: deque[Member] = deque(self.members)
        inflight: set[Member] = set()
        start = time.perf_counter()
        end = start + seconds
        step = 1.0 / rate
        next_send = start
        lat: list[float] = []
        counts: Counter[str] = Counter()
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            while next_send <= now:
                if idle:
                    m = idle.popleft()
                    self.request(m, now)
                    inflight.add(m)
                else:
                    counts["generator_no_idle_member"] += 1
                next_send += step
            self.poll(max(0.0, min(next_send - time.perf_counter(), 0.005)))
            now = time.perf_counter()
            while self.done:
                m, kind, _ = self.done.popleft()
                counts[kind] += 1
                lat.append(now - m.sent)
                inflight.discard(m)
                idle.append(m)
            for m in [m for m in inflight if now - m.sent > LOST_AFTER]:
                counts["timeout"] += 1
                m.pid = None
                inflight.discard(m)
                idle.append(m)
        elapsed = time.perf_counter() - start
        self._drain(inflight)
        return {"elapsed": elapsed, "counts": counts, "lat": lat}

    def _drain(self, inflight: set[Member], wait: float = 2.0) -> None:
        """Let the replies still in flight arrive (not counted), so the next phase starts clean."""
        deadline = time.perf_counter() + wait
        while any(m.pid is not None for m in inflight) and time.perf_counter() < deadline:
            self.poll(0.01)
            self.done.clear()
        for m in self.members:
            m.pid = None
        self.done.clear()


# ------------------------------------------------------------------------------------------ profile

# The reply path's parts, by (file suffix, function name), as they appear in the profile.
PARTS = [
    ("datagram in (Endpoint._datagram: parse, dearmor, replay check, queue)", "zt/endpoint.py", "_datagram"),
    ("  of which Node.receive", "zt/node.py", "receive"),
    ("  of which dearmor", "zt/packet.py", "dearmor"),
    ("answer (ZeroTierService._answer, all its steps)", "server/zerotier.py", "_answer"),
    ("  read barrier (ReadIndex round, wait applied)", "server/zerotier.py", "_barrier"),
    ("  ctrl.db read of network + member", "server/zerotier.py", "_read"),
    ("  request metadata parse (Versions.of)", "server/zerotier.py", "of"),
    ("  needs_write", "server/zerotier.py", "needs_write"),
    ("  signed_config (COM, netconf, signatures)", "zt/netconf.py", "signed_config"),
    ("    COM sign", "zt/com.py", "sign"),
    ("    build_netconf", "zt/netconf.py", "build_netconf"),
    ("    sign_chunks", "zt/netconf.py", "sign_chunks"),
    ("    Dictionary.encode (escapes byte by byte)", "zt/dictionary.py", "encode"),
    ("    Ed25519 signatures (crypto.sign, 2 per reply)", "zt/crypto.py", "sign"),
    ("      of which Ed25519PrivateKey.from_private_bytes", "~", "<built-in method ed25519.from_private_bytes>"),
    ("  answer_config (OK packet, armor)", "zt/node.py", "answer_config"),
    ("  Endpoint.flush (sendto)", "zt/endpoint.py", "flush"),
]


SCAFFOLDING = {"<built-in method builtins.exec>", "run_forever", "_run_once", "_run",
               "<method 'run' of '_contextvars.Context' objects>", "select",
               "<method 'poll' of 'select.epoll' objects>"}


def profile_stats(path: Path) -> dict[tuple[str, int, str], tuple]:
    return pstats.Stats(str(path)).stats  # type: ignore[attr-defined]


def profile_cum(raw: dict, suffix: str, func: str) -> float:
    """Cumulative seconds of the function `func` in files ending with `suffix`."""
    return sum(v[3] for k, v in raw.items() if k[0].endswith(suffix) and k[2] == func)


def profile_busy(raw: dict) -> tuple[float, float]:
    """(profiled seconds of the thread, of which waiting in epoll)."""
    total = sum(v[2] for v in raw.values())  # own time of everything: the thread's whole profiled time
    idle = sum(v[2] for k, v in raw.items() if k[2] in ("<method 'poll' of 'select.epoll' objects>",
                                                          "<method 'select' of 'select.epoll' objects>"))
    return total, idle


def profile_top(raw: dict, n: int, by: int) -> list[tuple[str, int, str, int, float, float]]:
    """The n heaviest entries by own (by=2) or cumulative (by=3) time, the event loop's dispatch frames left out:
    (where, line, function, calls, own s, cumulative s)."""
    out = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(raw.items(), key=lambda kv: kv[1][by], reverse=True):
        if func in SCAFFOLDING and (file == "~" or "/asyncio/" in file or file.endswith("selectors.py")):
            continue
        where = file.split("site-packages/")[-1].replace(str(HERE.parent) + "/", "").replace(sys.base_prefix, "<py>")
        out.append((where, line, func, nc, tt, ct))
        if len(out) == n:
            break
    return out


def profile_report(path: Path) -> None:
    raw = profile_stats(path)

    def cum(suffix: str, func: str) -> float:
        return profile_cum(raw, suffix, func)

    replies = sum(v[1] for k, v in raw.items() if k[0].endswith("zt/node.py") and k[2] == "answer_config")
    replies = max(replies, 1)
    total, idle = profile_busy(raw)
    note(f"cProfile of the node's event-loop thread over {replies} replies: {total:.2f} s profiled, "
         f"{idle:.2f} s of it waiting in epoll: {(total - idle) / replies * 1e6:.0f} us busy per reply under the "
         "profiler (about twice the unprofiled cost)")
    note("top 15 by cumulative time (us per reply: cumulative, own; calls), the event loop's dispatch frames "
         "(run_forever, _run_once, Handle._run, Context.run) and its idle wait (epoll) left out:")
    for where, line, func, nc, tt, ct in profile_top(raw, 15, by=3):
        note(f"  {ct / replies * 1e6:7.1f} {tt / replies * 1e6:6.1f} {nc:>7}  {func}  {where}:{line}")
    note("reply path breakdown (cumulative us per reply; a coroutine counts only the steps it runs itself):")
    for label, suffix, func in PARTS:
        note(f"  {cum(suffix, func) / replies * 1e6:7.1f}  {label}")
    loop_own = sum(v[2] for k, v in raw.items() if "/asyncio/" in k[0])
    raft = cum("raft/node.py", "_loop")
    note(f"  {loop_own / replies * 1e6:7.1f}  asyncio's own code (event loop, tasks, futures, wait_for)")
    note(f"  {raft / replies * 1e6:7.1f}  raft node loop on the event loop (ReadIndex rounds, ticks)")


def pure_costs(network: dict[str, Any], member: dict[str, Any], member_identity: Identity,
               cpu_per_reply: float) -> None:
    """The reply path's pure steps timed without a profiler (best of 5 runs of 1000 calls) on the network and
    member records the node serves (read back through the API), signing with an identity of our own."""
    from hactl.server.zerotier import Versions, needs_write
    from hactl.zt.netconf import signed_config
    from hactl.zt import crypto
    from hactl.zt.com import CertificateOfMembership
    from hactl.zt.netconf import CTMD_DEFAULT, build_netconf
    signer = Identity.generate()
    pub = member_identity.public_only()
    now = int(time.time() * 1000)
    nwid = int(network["id"], 16)
    com = CertificateOfMembership.build(nwid, pub, now, CTMD_DEFAULT).sign(signer)
    netconf = build_netconf(network, member, now=now, com=com, revision=1, rules_engine=True)
    blob = netconf.encode()
    versions = Versions.of(METADATA)
    assert not needs_write(network, member, versions), "the load member's record should need no write"

    def us(fn: Callable[[], Any]) -> float:
        fn()
        return min(timeit.repeat(fn, number=1000, repeat=5)) / 1000 * 1e6
    parts = [
        ("Versions.of(request metadata): Dictionary.parse + 5 get_int", us(lambda: Versions.of(METADATA))),
        ("needs_write (V4Plan.of parses routes and pools each time)", us(lambda: needs_write(network, member,
                                                                                              versions))),
        ("str(identity) (compared with the record)", us(lambda: str(pub))),
        ("signed_config, all of it:", us(lambda: signed_config(network, member, pub, signer, now, True))),
        ("  CertificateOfMembership.build + sign", us(lambda: CertificateOfMembership.build(
            nwid, pub, now, CTMD_DEFAULT).sign(signer))),
        ("  build_netconf", us(lambda: build_netconf(network, member, now=now, com=com, revision=1,
                                                     rules_engine=True))),
        ("  Dictionary.encode (escape: a generator over every byte)", us(netconf.encode)),
        ("  one crypto.sign (2 per reply)", us(lambda: crypto.sign(signer.private_key or b"", blob))),
        ("    of which Ed25519PrivateKey.from_private_bytes", us(lambda: crypto.Ed25519PrivateKey.from_private_bytes(
            (signer.private_key or b"")[32:]))),
    ]
    sans_io = node_costs(signed_config(network, member, pub, signer, now, True), member_identity)
    parts.append(("sans-IO Node: receive(request datagram) + take_requests + answer_config + take_datagrams "
                  "(dearmor, replay check, rate check, OK packet, armor)", sans_io))
    note(f"pure steps of a reply without the profiler (us per call; {cpu_per_reply:.0f} us CPU per reply measured "
         "at saturation):")
    for label, cost in parts:
        note(f"  {cost:7.1f}  {label}")
    pure = parts[0][1] + parts[1][1] + parts[2][1] + parts[3][1] + sans_io
    note(f"  {pure:7.1f}  these together; the other {max(0.0, cpu_per_reply - pure):.0f} us: the event loop, "
         "recvfrom/sendto, a task per request, the ReadIndex barrier (raft loop), the ctrl.db read")


def node_costs(chunks: list[Any], member: Identity, n: int = 3000) -> float:
    """us per request through a sans-IO Node (hactl.zt.node) answering as a controller identity of our own:
    a pre-armored request in, the OK with the pre-signed config chunk out."""
    from hactl.zt.node import Limits, Node
    ctl = Identity.generate()
    planet = World.decode(Path(PLANET_FILE[0]).read_bytes())
    node = Node(ctl, planet, limits=Limits(request_interval_ms=0))
    node.families = {4}
    key = member.agree(ctl)
    src = ("127.0.9.1", 40000)
    pid = os.urandom(8)
    hello = Hello(12, 1, 8, 4, 1, member.public_only(), InetAddress(ipaddress.ip_address(LOCAL), 9993),
                  PLANET_ID, PLANET_TS, moons=())
    node.receive(armor(Packet(pid, ctl.address, member.address, HELLO, hello.encode(key, pid),
                              cipher=Cipher.POLY1305_NONE), key), src, 1)
    for ident in node.take_validations():
        node.validated(ident, True, 1)
    node.take_datagrams()
    payload = NetworkConfigRequest((ctl.address << 24) | 1, METADATA, 0, 0).encode()
    wires = [armor(Packet(os.urandom(8), ctl.address, member.address, NCR, payload), key) for _ in range(n)]
    t = time.perf_counter()
    for i, wire in enumerate(wires):
        node.receive(wire, src, 2 + i)
        for req in node.take_requests():
            node.answer_config(req, chunks, 2 + i)
        node.take_datagrams()
    per = (time.perf_counter() - t) / n * 1e6
    assert node.stats().get("requests") == n, node.stats()
    return per


# ------------------------------------------------------------------------------------------ one target

def run_target(name: str, nodes: int, args: argparse.Namespace, work: Path, planet: Path,
               load_ids: list[Identity], admit_ids: list[Identity], limits: dict[str, Any], *, workers: int = 0,
               full: bool = True) -> dict[str, float]:
    """Runs one target; returns its replies/s and admitted members/s (``full``: also the profile, the pure
    costs and admission, else saturation and latency only)."""
    root = work / name
    if root.exists():
        shutil.rmtree(root)
    progress(f"{name}: starting {nodes} controller process(es)")
    cluster = Cluster(root, nodes, planet, limits, workers)
    cluster.start()
    swarms: list[Swarm] = []
    try:
        controller = cluster.identity()

        async def setup() -> tuple[str, float]:
            async with Api(cluster) as api:
                st = await api.ready()
                assert st["address"] == f"{controller.address:010x}", (st["address"], controller)
                net = await api.call("POST", f"{cluster.api[0]}/controller/network/{st['address']}______", NETWORK)
                taken = {i.address for i in load_ids + admit_ids}
                addrs = [f"{i.address:010x}" for i in load_ids]
                addrs += member_addresses(args.members - len(addrs), taken)
                rate = await api.populate(net["id"], addrs)
                got = await api.call("GET", f"{cluster.api[0]}/controller/network/{net['id']}/member")
                assert len(got) == args.members, len(got)
                return net["id"], rate
        nwid_s, pop_rate = asyncio.run(setup())
        nwid = int(nwid_s, 16)
        progress(f"{name}: {args.members} members created through the API at {pop_rate:.0f}/s")
        note(f"{name}: network {nwid_s} (public, pool {POOL[0]}-{POOL[1]}), {args.members} authorized members "
             f"with IPv4 addresses, created through the API at {pop_rate:.0f} members/s (64 concurrent POSTs)")

        swarm = Swarm(controller, nwid, load_ids, cluster.endpoints, block=2, per_source=args.per_source)
        swarms.append(swarm)
        swarm.handshake()
        swarm.warm()
        note(f"{name}: {len(load_ids)} load members over {len(swarm.socks)} source addresses; config reply "
             f"{swarm.stats['config_bytes']} bytes of dictionary in one signed chunk")

        # Saturation.
        snap: dict[str, Any] = {}

        def mark(when: str) -> None:
            snap[when] = (cluster.cpu(), time.process_time(), *machine_busy(), cluster.main_cpu())
        progress(f"{name}: saturation, {args.seconds} s")
        c_before, k_before = node_counters(cluster), udp_drops(cluster.udp)
        r = swarm.closed_loop(args.seconds, args.request_interval_ms / 1000, on_start=lambda: mark("start"),
                              on_end=lambda: mark("end"))
        node_cpu, gen_cpu, m_busy, m_total, main_cpu = (e - s for s, e in zip(snap["start"], snap["end"]))
        el, counts, lat = r["elapsed"], r["counts"], r["lat"]
        ok = counts["ok"]
        rate = ok / el
        cores = os.cpu_count() or 1
        bench(f"netconf_replies_per_s_{name}", rate, "replies/s")
        bench(f"netconf_saturated_p50_{name}", pct(lat, 0.50) * 1000, "ms")
        bench(f"netconf_saturated_p99_{name}", pct(lat, 0.99) * 1000, "ms")
        cpu_per_reply = node_cpu / max(ok, 1) * 1e6
        bench(f"netconf_cpu_per_reply_{name}", cpu_per_reply, "us")
        bench(f"netconf_server_cpu_{name}", node_cpu / el, "cores")
        if workers:
            # The node process is the part that does not scale with workers: its share bounds replies/s at
            # 1 / (its CPU per reply) however many cores the workers get.
            bench(f"netconf_node_process_cpu_per_reply_{name}", main_cpu / max(ok, 1) * 1e6, "us")
            bench(f"netconf_workers_cpu_per_reply_{name}", (node_cpu - main_cpu) / max(ok, 1) * 1e6, "us")
        bench(f"netconf_generator_cpu_{name}", gen_cpu / el, "cores")
        bench(f"netconf_generator_cpu_per_reply_{name}", gen_cpu / max(ok, 1) * 1e6, "us")
        note(f"{name}: saturation {el:.1f} s, {len(load_ids)} members in a closed loop, replies {dict(counts)}; "
             f"machine busy {m_busy / max(m_total, 1e-9) * cores:.2f} of {cores} cores: controllers "
             f"{node_cpu / el:.2f}, generator {gen_cpu / el:.2f}, other processes "
             f"{max(0.0, m_busy / max(m_total, 1e-9) * cores - (node_cpu + gen_cpu) / el):.2f}; node drops "
             f"{drops(c_before, node_counters(cluster))}; requests dropped by the kernel (node's UDP receive buffer "
             f"full) {udp_drops(cluster.udp) - k_before}")

        # Latency at a fixed rate.
        lrate = min(args.latency_rate, max(50.0, rate / 2))
        progress(f"{name}: latency at {lrate:.0f} requests/s, {args.latency_seconds} s")
        c_before, k_before = node_counters(cluster), udp_drops(cluster.udp)
        r = swarm.open_loop(lrate, args.latency_seconds)
        c_after, k_after = node_counters(cluster), udp_drops(cluster.udp)
        lat = r["lat"]
        bench(f"netconf_p50_{name}", pct(lat, 0.50) * 1000, "ms")
        bench(f"netconf_p99_{name}", pct(lat, 0.99) * 1000, "ms")
        note(f"{name}: latency at a fixed {lrate:.0f} requests/s for {r['elapsed']:.1f} s: replies "
             f"{dict(r['counts'])}; node drops {drops(c_before, c_after)}, kernel drops {k_after - k_before}")

        if not full:
            return {"replies": rate, "admit": math.nan, "node_us": main_cpu / max(ok, 1) * 1e6,
                    "workers_us": (node_cpu - main_cpu) / max(ok, 1) * 1e6}
        if args.profile and nodes == 1:
            progress(f"{name}: profiling {args.profile_replies} replies")
            done = Path(str(cluster.profile_out) + ".done")
            r = swarm.closed_loop(30, args.request_interval_ms / 1000, warmup=0.5,
                                  on_start=lambda: cluster.signal_all(signal.SIGUSR1),
                                  until_replies=args.profile_replies)
            cluster.signal_all(signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            note(f"{name}: profiled run: {r['counts']['ok'] / r['elapsed']:.0f} replies/s under the profiler")
            profile_report(cluster.profile_out)

        if nodes == 1:
            async def records() -> tuple[dict[str, Any], dict[str, Any]]:
                async with Api(cluster) as api:
                    base = f"{cluster.api[0]}/controller/network/{nwid_s}"
                    return (await api.call("GET", base),
                            await api.call("GET", f"{base}/member/{load_ids[0].address:010x}"))
            network, member = asyncio.run(records())
            pure_costs(network, member, load_ids[0], cpu_per_reply)

        # Admission of new members.
        progress(f"{name}: admitting {len(admit_ids)} new members, {args.admit_concurrency} at a time")
        c_before, k_before = node_counters(cluster), udp_drops(cluster.udp)
        adm = Swarm(controller, nwid, admit_ids, cluster.endpoints, block=3, per_source=args.per_source)
        swarms.append(adm)
        c0, g0 = cluster.cpu(), time.process_time()
        n, el, lat = adm.admit(120, args.admit_concurrency)
        node_cpu, gen_cpu = cluster.cpu() - c0, time.process_time() - g0
        bench(f"netconf_admit_per_s_{name}", n / max(el, 1e-9), "members/s")
        bench(f"netconf_admit_p50_{name}", pct(lat, 0.50) * 1000, "ms")
        bench(f"netconf_admit_p99_{name}", pct(lat, 0.99) * 1000, "ms")
        bench(f"netconf_admit_cpu_per_member_{name}", node_cpu / max(n, 1) * 1e3, "ms")
        delta = drops(c_before, node_counters(cluster), ("validations", "peers_added"))
        hello_lat, req_lat = [h for h, _, _ in adm.stages], [q for _, q, _ in adm.stages]
        note(f"{name}: admission of {n}/{len(admit_ids)} new members in {el:.2f} s from "
             f"{len(adm.socks)} source addresses, {args.admit_concurrency} joining at a time; p50/p99 ms: HELLO -> "
             f"OK(HELLO) (validation) {pct(hello_lat, .5) * 1e3:.0f}/{pct(hello_lat, .99) * 1e3:.0f}, request -> "
             f"config (barrier, Raft write, answer) {pct(req_lat, .5) * 1e3:.0f}/{pct(req_lat, .99) * 1e3:.0f}; "
             f"controllers {node_cpu / max(el, 1e-9):.2f} cores, generator {gen_cpu / max(el, 1e-9):.2f}")
        if nodes > 1:
            async def roles() -> list[str]:
                async with Api(cluster) as api:
                    return await api.roles()
            role = dict(zip(cluster.endpoints, asyncio.run(roles())))
            via_leader = [q for _, q, d in adm.stages if role.get(d) == "leader"]
            via_follower = [q for _, q, d in adm.stages if role.get(d) != "leader"]
            note(f"{name}: admission request -> config p50/p99 ms through the leader's endpoint "
                 f"{pct(via_leader, .5) * 1e3:.0f}/{pct(via_leader, .99) * 1e3:.0f} ({len(via_leader)} members), "
                 f"through followers' {pct(via_follower, .5) * 1e3:.0f}/{pct(via_follower, .99) * 1e3:.0f} "
                 f"({len(via_follower)}): a follower forwards the member.request to the leader and answers once it "
                 "has applied it itself")
        note(f"{name}: admission: generator saw {dict((k, v) for k, v in adm.stats.items() if k != 'config_bytes')}"
             f" (rx_network_config: configs pushed after the member's own write, on top of the answer); node "
             f"counters {delta}; kernel drops {udp_drops(cluster.udp) - k_before}")
        return {"replies": rate, "admit": n / max(el, 1e-9)}
    finally:
        for s in swarms:
            s.close()
        cluster.stop()


async def _stats(cluster: Cluster) -> list[dict[str, int]]:
    async with Api(cluster) as api:
        return await api.zt_stats()


def node_counters(cluster: Cluster) -> Counter[str]:
    """The nodes' ZeroTier counters (/status zerotier.stats), summed."""
    out: Counter[str] = Counter()
    for st in asyncio.run(_stats(cluster)):
        out.update(st)
    return out


def drops(before: Counter[str], after: Counter[str], keys: tuple[str, ...] = ()) -> dict[str, int]:
    """What the nodes dropped (and the given counters) between two node_counters()."""
    return {k: after[k] - before[k] for k in sorted(after) if (k.startswith("dropped.") or k in keys)
            and after[k] != before[k]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=10_000, help="member records in the network")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds of the saturation run")
    ap.add_argument("--skip-cluster", action="store_true", help="only the single node")
    ap.add_argument("--load-members", type=int, default=256, help="member identities sending requests")
    ap.add_argument("--admit", type=int, default=600, help="new members admitted per target")
    ap.add_argument("--admit-concurrency", type=int, default=64,
                    help="members joining at once (the node queues at most 64 identity validations)")
    ap.add_argument("--per-source", type=int, default=4, help="members per source IP address")
    ap.add_argument("--request-interval-ms", type=int, default=10,
                    help="the node's per-(member, network) request interval for the bench (default limit: 1000)")
    ap.add_argument("--latency-rate", type=float, default=1000.0, help="requests/s of the fixed-rate latency run")
    ap.add_argument("--latency-seconds", type=float, default=4.0)
    ap.add_argument("--profile-replies", type=int, default=3000)
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 2],
                    help="API worker counts of the extra node_w<N> targets (comma-separated; empty: none)")
    ap.add_argument("--dir", help="work directory, kept (identities.txt is reused); default: a temporary one")
    args = ap.parse_args()
    if args.members < args.load_members:
        ap.error("--members must be at least --load-members")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hactl-netconf-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        idents = identity_pool(work / "identities.txt", args.load_members + args.admit)
        load_ids, admit_ids = idents[:args.load_members], idents[args.load_members:]
        planet = write_planet(work / "planet")
        limits = {"request_interval_ms": args.request_interval_ms}
        note(f"controllers: real processes (bench/netconf_node.py = `hactl controller run` + UDP bound to "
             f"127.0.0.1, which the config loader refuses for real deployments); {os.cpu_count()} cores shared "
             "with the load generator")
        note(f"bench-only limit: request_interval_ms={args.request_interval_ms} (default 1000: one request per "
             "member and network per second); validation and write limits are the defaults, met with "
             f"{args.per_source} members per source address (127.0.x.y)")
        note("workers: 0 for the node and cluster targets (the node process alone answers and signs); node_w<N> "
             "runs the node with N API worker processes signing the configs (saturation and latency only)")
        results = {"node": run_target("node", 1, args, work, planet, load_ids, admit_ids, limits)}
        for n in args.workers:
            results[f"node_w{n}"] = run_target(f"node_w{n}", 1, args, work, planet, load_ids, admit_ids, limits,
                                               workers=n, full=False)
            bench(f"netconf_replies_scaling_w{n}", results[f"node_w{n}"]["replies"] / results["node"]["replies"],
                  "x")
        if args.workers:
            # Expected on bigger machines, from the per-reply CPU of the last node_w<N> run: the node process
            # (receive, decrypt, barrier, decisions, encrypt, send) does not scale, the signing does.
            last = results[f"node_w{args.workers[-1]}"]
            for cores in (8, 32):
                expect = min(1e6 / last["node_us"], (cores - 1) * 1e6 / last["workers_us"])
                bench(f"netconf_expected_replies_per_s_{cores}_cores", expect, "replies/s")
            note(f"expected scaling: one node process at {last['node_us']:.0f} us per reply caps a node at "
                 f"{1e6 / last['node_us']:.0f} replies/s however many cores its workers get; the workers' "
                 f"{last['workers_us']:.0f} us per reply need "
                 f"{last['workers_us'] / last['node_us']:.1f} cores to keep up with it. Assumes the per-reply costs "
                 "measured here hold on other cores and one node process per machine")
        if not args.skip_cluster:
            # The same identities: a new cluster has a new controller identity and has never seen them.
            results["cluster"] = run_target("cluster", 3, args, work, planet, load_ids, admit_ids, limits)
        note(f"goals on this {os.cpu_count()}-core machine (reported, not asserted):")
        note(f"  >= 5000 config replies/s per node: {results['node']['replies']:.0f} "
             f"({'met' if results['node']['replies'] >= 5000 else 'NOT met'})")
        for name, r in results.items():
            if math.isnan(r["admit"]):
                continue
            verdict = "met" if r["admit"] >= 200 else "NOT met"
            note(f"  >= 200 new members admitted/s ({name}): {r['admit']:.0f} ({verdict})")
        progress(f"done in {time.perf_counter() - started:.0f} s")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
