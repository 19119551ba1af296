"""The cluster's planet root: how many HELLOs a node answers per second, how many packets it relays per second and
with what latency, and where the relay's time goes. Prints `BENCH <name> <value> <unit>` lines, and `# ...` lines
saying how it was measured and where the time goes (node CPU per packet, a cProfile of the relay path, the
sans-IO relay path timed without sockets).

    python bench/roots.py [--pairs 64] [--hello-seconds 4] [--step-seconds 2] [--latency-seconds 3] [--dir DIR]

Target: one real controller process (a single-voter cluster from `hactl dev init` configs, log level warning,
default raft timings, data on disk), run through bench/netconf_node.py (`hactl controller run` plus a loopback
UDP bind 127.0.0.1:PORT, which the config loader refuses for real deployments; our load generator is the only
peer). With that bind the node's root endpoint is 127.0.0.1/PORT, which the cluster refuses in its root record
(fsm/validate.py: no client could reach a loopback root), so no planet is committed (GET /planet: 404) and the
root serves its placeholder world (id 0); the members report that one in HELLO, so nothing is pushed, as in the
steady state. The root identity comes from GET /status (zerotier.root.address) and <data_dir>/zt/identity.public.
Every node's socket answers for two identities: the controller's
(hactl/zt/node.py) and this node's root (hactl/zt/root.py), which also relays packets addressed to anyone else.
The controller identity's own upstream planet is a file whose one root sits on a local port nobody answers.
No Limits are overridden: the validation limit (4/s, burst 16 per source IP) and the relay limit (2000/s, burst
4000 per source IP) are met by giving every member its own source address 127.5.x.y.

Steps (the load generator is this process: one thread, epoll, our codec, one UDP socket per member):
  1. 2 x --pairs member identities (real ones, generated once per --dir and cached in identities.txt) HELLO the
     root identity (each is validated once: the memory-hard hash), get OK(HELLO), and answer the root's
     path-discovery HELLO with OK(HELLO): their socket address becomes a learned path, which relaying requires;
     each pair (A, B) then relays one probe packet each way to check it;
  2. HELLO rate: every member keeps --hello-window HELLOs (fresh packet id each) in flight to the root identity,
     closed loop; OK(HELLO)s per second after 1 s of warm-up, p50/p99 HELLO -> OK(HELLO) latency (queueing
     included); every OK is dearmored (MAC checked) and matched to its HELLO by in-re packet id;
  3. relay rate: open loop, every pair's A sends packets for B (header: destination B, source A, hops 0, a
     --payload-byte body the root never decrypts, carrying the send time; a unique packet id each) through the
     root, and so does B for A, at increasing offered rates (--rates, --step-seconds each) until the delivered
     rate stops following;
     B's socket counts arrivals (RENDEZVOUS from the root, sent once per pair per 30 s, are counted apart).
     roots_relay_rate is the best delivered rate of the ramp, roots_relay_loss_pct the loss at that step
     (packets not at B 0.5 s after the step), roots_relay_rate_no_loss the best step with under 0.1% loss;
  4. relay latency: open loop at half that rate (--latency-rate to override), p50/p99 send -> arrival at B;
  5. node CPU (/proc/<pid>/stat: all its threads) per HELLO and per relayed packet, the load generator's own
     CPU, the whole machine's; a cProfile of the node's event-loop thread while relaying (bench/netconf_node.py:
     SIGUSR1/SIGUSR2), and the sans-IO relay path (Root.receive + take_datagrams, no sockets) timed alone.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from hactl.zt.errors import ProtocolError  # noqa: E402
from hactl.zt.identity import Identity  # noqa: E402
from hactl.zt.inetaddress import InetAddress  # noqa: E402
from hactl.zt.packet import Cipher, Packet, Verb, armor, dearmor  # noqa: E402
from hactl.zt.verbs import Hello, OkHello  # noqa: E402
from hactl.zt.world import World  # noqa: E402
# The controller processes, the identity cache and the machine counters are bench/netconf.py's.
from netconf import (Cluster, bench, identity_pool, machine_busy, note, pct, proc_cpu, profile_busy,  # noqa: E402
                     profile_cum, profile_stats, profile_top, udp_drops, write_planet)

LOCAL = "127.0.0.1"
BLOCK = 5  # members' source addresses: 127.5.x.y (netconf.py uses 127.2 and 127.3)
OK, HELLO, FRAME, RENDEZVOUS = int(Verb.OK), int(Verb.HELLO), int(Verb.FRAME), int(Verb.RENDEZVOUS)
GOAL_RELAY = 20_000  # relayed packets/s per node (issue), reported, never asserted
U64 = struct.Struct(">Q")


def progress(text: str) -> None:
    print(f"[roots] {text}", file=sys.stderr, flush=True)


def source_ip(k: int) -> str:
    return f"127.{BLOCK}.{k // 250}.{k % 250 + 1}"


def http_json(url: str, token: str | None = None, raw: bool = False) -> Any:
    req = urllib.request.Request(url, headers={"X-ZT1-Auth": token} if token else {})
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - our own node's URL
        data = r.read()
    return data if raw else json.loads(data)


# ------------------------------------------------------------------------------------------ the load generator

class Member:
    __slots__ = ("ident", "address", "abytes", "key", "sock", "hellos", "attached", "answered_root")

    def __init__(self, ident: Identity, key: bytes, sock: socket.socket) -> None:
        self.ident, self.address, self.key, self.sock = ident, ident.address, key, sock
        self.abytes = ident.address.to_bytes(5, "big")
        self.hellos: dict[bytes, int] = {}  # HELLO packet id in flight -> send time (ns)
        self.attached = False  # got OK(HELLO)
        self.answered_root = False  # answered the root's path HELLO


class Load:
    def __init__(self, root: Identity, dest: tuple[str, int], planet: World | None, identities: list[Identity],
                 payload: int) -> None:
        self.root = root
        self.rbytes = root.address.to_bytes(5, "big")
        self.dest = dest
        # The planet the members report in HELLO: the root's current one, so nothing is pushed (steady state).
        self.planet_id, self.planet_ts = (planet.id, planet.timestamp) if planet is not None else (0, 0)
        self.epoll = select.epoll()
        self.members: list[Member] = []
        self.by_fd: dict[int, Member] = {}
        for k, ident in enumerate(identities):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((source_ip(k), 0))
            sock.setblocking(False)
            m = Member(ident, ident.agree(root), sock)
            self.members.append(m)
            self.by_fd[sock.fileno()] = m
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.ports = [m.sock.getsockname()[1] for m in self.members]
        self.dest_inet = InetAddress(ipaddress.ip_address(dest[0]), dest[1])
        self.stats: Counter[str] = Counter()
        # relay: pair i = members 2i and 2i+1; traffic flows both ways (flows 2i: A -> B, 2i+1: B -> A), so that
        # every member is a source (the root's relay limit is per source IP). One datagram template per flow.
        self.pairs = [(self.members[2 * i], self.members[2 * i + 1]) for i in range(len(self.members) // 2)]
        self.flows = [f for a, b in self.pairs for f in ((a, b), (b, a))]
        self.templates = []
        for a, b in self.flows:
            t = bytearray(8) + b.abytes + a.abytes + bytes([Cipher.POLY1305_SALSA2012 << 3]) + bytes(8)
            t += bytes([FRAME]) + bytes(max(payload, 8))
            self.templates.append(t)
        self.seq = 0
        self.hello_done: list[int] = []  # latencies (ns) of OK(HELLO)s, when recording
        self.recording = False
        self.relay_rx: list[tuple[int, int]] = []  # (seq, latency ns) of relayed packets received

    def close(self) -> None:
        self.epoll.close()
        for m in self.members:
            m.sock.close()

    # --- sending
    def hello(self, m: Member) -> None:
        pid = os.urandom(8)
        h = Hello(12, 1, 8, 4, int(time.time() * 1000), m.ident.public_only(), self.dest_inet, self.planet_id,
                  self.planet_ts, moons=())
        wire = armor(Packet(pid, self.root.address, m.address, HELLO, h.encode(m.key, pid),
                            cipher=Cipher.POLY1305_NONE), m.key)
        m.hellos[pid] = time.perf_counter_ns()
        m.sock.sendto(wire, self.dest)

    def relay(self, i: int) -> None:
        t = self.templates[i]
        self.seq += 1
        U64.pack_into(t, 0, self.seq)
        U64.pack_into(t, 28, time.perf_counter_ns())
        try:
            self.flows[i][0].sock.sendto(t, self.dest)
        except BlockingIOError:
            self.stats["relay_send_full"] += 1

    # --- receiving
    def poll(self, timeout: float) -> None:
        for fd, _ in self.epoll.poll(max(timeout, 0.0)):
            m = self.by_fd[fd]
            sock = m.sock
            while True:
                try:
                    data, src = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                self.datagram(m, data, src)

    def datagram(self, m: Member, data: bytes, src: tuple[str, int]) -> None:
        if data[13:18] != self.rbytes:  # relayed (source: the other member of the pair)
            now = time.perf_counter_ns()
            self.relay_rx.append((U64.unpack_from(data, 0)[0], now - U64.unpack_from(data, 28)[0]))
            return
        try:
            p = dearmor(data, m.key)
        except ProtocolError:
            self.stats["bad_mac"] += 1
            return
        if p.verb == OK and p.payload[0] == HELLO:
            sent = m.hellos.pop(p.payload[1:9], None)
            if sent is None:
                self.stats["ok_unexpected"] += 1
                return
            m.attached = True
            if self.recording:
                self.hello_done.append(time.perf_counter_ns() - sent)
            self.stats["ok_hello"] += 1
        elif p.verb == HELLO:
            # What a real member does: answer, which teaches the root this path.
            h = Hello.decode(p.payload, m.key, p.packet_id)
            ok = OkHello(p.packet_id, h.timestamp, 12, 1, 8, 4, InetAddress(ipaddress.ip_address(src[0]), src[1]))
            m.sock.sendto(armor(Packet(os.urandom(8), self.root.address, m.address, OK, ok.encode()), m.key), src)
            m.answered_root = True
            self.stats["root_hello_answered"] += 1
        elif p.verb == RENDEZVOUS:
            self.stats["rendezvous"] += 1
        else:
            self.stats[f"rx_{Verb(p.verb).name.lower()}"] += 1

    # --- phases
    def attach(self, timeout: float = 60, concurrency: int = 32) -> None:
        """Every member HELLOs until OK(HELLO) and has answered the root's path HELLO."""
        todo = list(self.members)
        active: list[Member] = []
        deadline = time.monotonic() + timeout
        retry_at: dict[int, float] = {}
        while todo or active:
            if time.monotonic() > deadline:
                raise RuntimeError(f"attach: {len(todo) + len(active)} members not through; {dict(self.stats)}")
            while todo and len(active) < concurrency:
                m = todo.pop()
                self.hello(m)
                retry_at[m.address] = time.monotonic() + 1.0
                active.append(m)
            self.poll(0.01)
            now = time.monotonic()
            for m in list(active):
                if m.attached and m.answered_root:
                    active.remove(m)
                elif now > retry_at[m.address]:
                    self.stats["attach_retry"] += 1  # dropped (validation queue, rate) or path HELLO lost
                    m.hellos.clear()
                    self.hello(m)
                    retry_at[m.address] = now + 1.0
        # the last OKs to the root's HELLOs are in flight: let them land
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            self.poll(0.01)

    def probe(self, timeout: float = 20) -> None:
        """One relayed packet per flow (both ways of every pair), until every flow got one through."""
        deadline = time.monotonic() + timeout
        waiting = set(range(len(self.flows)))
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"probe: {len(waiting)} flows relay nothing; {dict(self.stats)}")
            self.relay_rx.clear()
            first = self.seq + 1
            seq_pair = {}
            for i in waiting:
                self.relay(i)
                seq_pair[self.seq] = i
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                self.poll(0.01)
            for s, _ in self.relay_rx:
                if s >= first:
                    waiting.discard(seq_pair.get(s, -1))
            if waiting:
                self.stats["probe_retry"] += 1
                for i in waiting:  # HELLO again: the root HELLOs a path it does not know
                    a, b = self.flows[i]
                    self.hello(a)
                    self.hello(b)
        self.relay_rx.clear()

    def hello_loop(self, seconds: float, window: int, warmup: float, on_start: Any, on_end: Any) -> dict:
        """Closed loop: each member keeps `window` HELLOs in flight; a HELLO unanswered for 1 s is lost."""
        t0 = time.monotonic()
        start = t0 + warmup
        end = start + seconds
        measuring = False
        lost = 0
        answered_at_start = 0
        for m in self.members:
            m.hellos.clear()
            for _ in range(window):
                self.hello(m)
        while True:
            now = time.monotonic()
            if not measuring and now >= start:
                measuring, self.recording = True, True
                self.hello_done.clear()
                on_start()
                start = time.monotonic()
                end = start + seconds
                answered_at_start = self.stats["ok_hello"]
            if now >= end:
                break
            self.poll(0.005)
            now_ns = time.perf_counter_ns()
            for m in self.members:
                if len(m.hellos) < window:
                    stale = [p for p, t in m.hellos.items() if now_ns - t > 1_000_000_000]
                    for p in stale:
                        del m.hellos[p]
                        lost += measuring
                    for _ in range(window - len(m.hellos)):
                        self.hello(m)
                elif now_ns - min(m.hellos.values()) > 1_000_000_000:
                    for p in [p for p, t in m.hellos.items() if now_ns - t > 1_000_000_000]:
                        del m.hellos[p]
                        lost += measuring
                    for _ in range(window - len(m.hellos)):
                        self.hello(m)
        elapsed = time.monotonic() - start
        on_end()
        self.recording = False
        answered = self.stats["ok_hello"] - answered_at_start
        drain = time.monotonic() + 1.0
        while any(m.hellos for m in self.members) and time.monotonic() < drain:
            self.poll(0.01)
        for m in self.members:
            m.hellos.clear()
        return {"elapsed": elapsed, "answered": answered, "lat": list(self.hello_done), "lost": lost}

    def relay_loop(self, rate: float, seconds: float, on_start: Any = None, on_end: Any = None) -> dict:
        """Open loop: `rate` packets/s over all flows (round robin) for `seconds`; arrivals counted until 0.5 s
        after the last send."""
        self.relay_rx.clear()
        first = self.seq + 1
        n_pairs = len(self.flows)
        i = 0
        sent = 0
        if on_start is not None:
            on_start()
        start = time.perf_counter()
        end = start + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int((now - start) * rate) - sent
            if due > 0:
                for _ in range(min(due, 256)):
                    self.relay(i)
                    i = (i + 1) % n_pairs
                    sent += 1
                self.poll(0)
            else:
                self.poll(min(0.002, (sent + 1) / rate - (now - start)))
        elapsed = time.perf_counter() - start
        if on_end is not None:
            on_end()
        last = self.seq
        drain = time.perf_counter() + 0.5
        while time.perf_counter() < drain:
            self.poll(0.01)
        got = [(s, lat) for s, lat in self.relay_rx if first <= s <= last]
        uniq = len({s for s, _ in got})
        self.relay_rx.clear()
        return {"elapsed": elapsed, "sent": sent, "received": uniq, "dup": len(got) - uniq,
                "lat": [lat / 1e6 for _, lat in got]}


# ------------------------------------------------------------------------------------------ analysis

def root_stats(api: str, token: str) -> Counter[str]:
    st = http_json(f"{api}/status", token)
    return Counter((st.get("zerotier") or {}).get("root_stats") or {})


def delta(before: Counter[str], after: Counter[str], keys: tuple[str, ...] = ()) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after)
            if (k.startswith("dropped.") or k in keys) and after[k] != before[k]}


PARTS = [
    ("Endpoint._readable (recvfrom loop, receive, flush)", "zt/endpoint.py", "_readable"),
    ("  socket.recvfrom", "~", "<method 'recvfrom' of '_socket.socket' objects>"),
    ("  Endpoint._datagram -> Switch.receive", "zt/switch.py", "receive"),
    ("    Node.receive (Root: counters, bytes(), _src, header parse)", "zt/node.py", "receive"),
    ("      Root._not_for_us (sender check, rate bucket, hops, best path)", "zt/root.py", "_not_for_us"),
    ("        Root._root_at (is the sender another root?)", "zt/root.py", "_root_at"),
    ("        Root._owner", "zt/root.py", "_owner"),
    ("        Peer.path (the sender's learned path)", "zt/peer.py", "path"),
    ("        Root._maybe_unite (RENDEZVOUS once per pair per 30 s)", "zt/root.py", "_maybe_unite"),
    ("        TokenBuckets.take", "zt/peer.py", "take"),
    ("        increment_hops", "zt/packet.py", "increment_hops"),
    ("        Peer.best_path", "zt/peer.py", "best_path"),
    ("      Header.parse", "zt/packet.py", "parse"),
    ("  Endpoint.flush (Switch.take_datagrams, sendto)", "zt/endpoint.py", "flush"),
    ("    Switch.take_datagrams", "zt/switch.py", "take_datagrams"),
    ("    socket.sendto", "~", "<method 'sendto' of '_socket.socket' objects>"),
    ("  Endpoint._dispatch", "zt/endpoint.py", "_dispatch"),
]


def profile_report(path: Path, packets: int) -> None:
    raw = profile_stats(path)
    packets = max(packets, 1)

    def found(suffix: str, func: str) -> bool:
        return any(k[0].endswith(suffix) and k[2] == func for k in raw)

    total, idle = profile_busy(raw)
    note(f"cProfile of the node's event-loop thread over {packets} relayed packets: {total:.2f} s profiled, "
         f"{idle:.2f} s of it waiting in epoll: {(total - idle) / packets * 1e6:.1f} us busy per relayed packet "
         "under the profiler (it inflates Python-level costs)")
    note("top 12 by own time (us per relayed packet: own, cumulative; calls):")
    for where, line, func, nc, tt, ct in profile_top(raw, 12, by=2):
        note(f"  {tt / packets * 1e6:6.2f} {ct / packets * 1e6:7.2f} {nc:>8}  {func}  {where}:{line}")
    note("relay path breakdown (cumulative us per relayed packet, under the profiler; functions not called left "
         "out):")
    for label, suffix, func in PARTS:
        if found(suffix, func):
            note(f"  {profile_cum(raw, suffix, func) / packets * 1e6:7.2f}  {label}")
    loop_own = sum(v[2] for k, v in raw.items() if "/asyncio/" in k[0] or k[0].endswith("selectors.py"))
    note(f"  {loop_own / packets * 1e6:7.2f}  asyncio's own code (event loop, handles)")


def sans_io_relay(n: int = 20_000) -> tuple[float, float]:
    """(us per relayed packet through a sans-IO Root: receive + take_datagrams, us per HELLO: receive +
    take_datagrams), no sockets, no event loop; the identities attached as tests/zt/test_zt_root.py does."""
    from hactl.zt.root import Root, RootLimits
    from hactl.zt.world import Root as WorldRoot, WorldType
    r_id, a_id, b_id = Identity.generate(), Identity.generate(), Identity.generate()
    ep = ("10.0.0.1", 9993)
    world = World.make(WorldType.PLANET, 0xC0FFEE, 10, r_id.public_key,
                       [WorldRoot(r_id.public_only(), (InetAddress(ipaddress.ip_address(ep[0]), ep[1]),))],
                       sign_with=r_id.private_key or b"")
    root = Root(r_id, world, limits=RootLimits(relay_rate=1e9, relay_burst=10**9))
    root.families = {4}
    now = 1_000_000
    eps = {a_id.address: ("192.168.1.10", 9993), b_id.address: ("192.168.1.20", 9993)}
    keys = {}
    for ident in (a_id, b_id):
        key = ident.agree(r_id)
        keys[ident.address] = key
        pid = os.urandom(8)
        h = Hello(12, 1, 8, 4, 1, ident.public_only(), InetAddress(ipaddress.ip_address(ep[0]), ep[1]), 0xC0FFEE, 10,
                  moons=())
        root.receive(armor(Packet(pid, r_id.address, ident.address, HELLO, h.encode(key, pid),
                                  cipher=Cipher.POLY1305_NONE), key), eps[ident.address], now)
        for i in root.take_validations():
            root.validated(i, True, now)
        for d, dest in root.take_datagrams():
            try:
                p = dearmor(d, key)
            except ProtocolError:
                continue
            if p.verb == HELLO:
                ok = OkHello(p.packet_id, 0, 12, 1, 8, 4).encode()
                root.receive(armor(Packet(os.urandom(8), r_id.address, ident.address, OK, ok), key), dest, now + 1)
        root.take_datagrams()
    t = bytearray(8) + b_id.address.to_bytes(5, "big") + a_id.address.to_bytes(5, "big") + bytes(10) + bytes(100)
    t[27] = FRAME
    wires = []
    for s in range(n):
        U64.pack_into(t, 0, s + 1)
        wires.append(bytes(t))
    src = eps[a_id.address]
    start = time.perf_counter()
    for w in wires:
        root.receive(w, src, now + 2)
        root.take_datagrams()
    relay_us = (time.perf_counter() - start) / n * 1e6
    assert root.stats().get("relayed", 0) == n, root.stats()
    key = keys[a_id.address]
    hellos = []
    for _ in range(n // 4):
        pid = os.urandom(8)
        h = Hello(12, 1, 8, 4, 1, a_id.public_only(), InetAddress(ipaddress.ip_address(ep[0]), ep[1]), 0xC0FFEE, 10,
                  moons=())
        hellos.append(armor(Packet(pid, r_id.address, a_id.address, HELLO, h.encode(key, pid),
                                   cipher=Cipher.POLY1305_NONE), key))
    start = time.perf_counter()
    for w in hellos:
        root.receive(w, src, now + 3)
        root.take_datagrams()
    hello_us = (time.perf_counter() - start) / len(hellos) * 1e6
    return relay_us, hello_us


# ------------------------------------------------------------------------------------------ main

def wait_root(api: str, token: str, public_file: Path, timeout: float = 60) -> tuple[Identity, World | None,
                                                                               dict[str, Any]]:
    """This node's root identity (GET /status zerotier.root.address, the key from <data_dir>/zt/identity.public)
    and the cluster's planet if it has one (GET /planet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            st = http_json(f"{api}/status", token)
            zt = st.get("zerotier") or {}
            root_addr = (zt.get("root") or {}).get("address")
            if root_addr and st.get("cluster", {}).get("leader") and public_file.exists():
                ident = Identity.from_string(public_file.read_text().strip())
                if f"{ident.address:010x}" != root_addr:
                    raise RuntimeError(f"{public_file} holds {ident.address:010x}, /status says {root_addr}")
                try:
                    world: World | None = World.decode(http_json(f"{api}/planet", raw=True))
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
                    world = None
                return ident, world, zt
            last = st
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
        time.sleep(0.3)
    raise RuntimeError(f"the node's root did not come up: {last}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=64, help="relaying pairs (2 x this many member identities)")
    ap.add_argument("--hello-seconds", type=float, default=4.0)
    ap.add_argument("--hello-window", type=int, default=2, help="HELLOs in flight per member")
    ap.add_argument("--rates", default="10000,20000,30000,40000,50000,60000,70000,80000,100000,120000",
                    help="offered relay rates of the ramp (packets/s, all pairs together)")
    ap.add_argument("--step-seconds", type=float, default=2.0)
    ap.add_argument("--latency-rate", type=float, default=0.0, help="default: half the best delivered rate")
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    ap.add_argument("--payload", type=int, default=100, help="bytes after the 28-byte header of relayed packets")
    ap.add_argument("--profile-seconds", type=float, default=2.0, help="0: no profile")
    ap.add_argument("--dir", help="work directory, kept (identities.txt is reused); default: a temporary one")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hactl-roots-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cluster: Cluster | None = None
    load: Load | None = None
    try:
        idents = identity_pool(work / "identities.txt", 2 * args.pairs)
        planet_file = write_planet(work / "upstream-planet")
        node_dir = work / "node"
        if node_dir.exists():
            shutil.rmtree(node_dir)
        progress("starting one controller process")
        cluster = Cluster(node_dir, 1, planet_file, {})
        cluster.start()
        cluster.identity()  # the controller identity: its endpoint serves
        api, token = cluster.api[0], cluster.token
        root_id, planet, zt = wait_root(api, token, Path(cluster.specs[0].data_dir) / "zt" / "identity.public")
        if planet is None:
            # The root record names the root's endpoints; the cluster refuses loopback ones (fsm/validate.py: no
            # client could reach them), so with the bench's loopback bind no planet is committed and the root
            # serves its placeholder (id 0, no roots). Neither HELLO answers nor relaying depend on it.
            time.sleep(1.0)
            try:
                planet = World.decode(http_json(f"{api}/planet", raw=True))
            except urllib.error.HTTPError:
                planet = None
        listed = planet is not None and any(r.identity.address == root_id.address for r in planet.roots)
        dest = (LOCAL, cluster.udp[0])
        pid = cluster.procs[0].pid
        where = (f"listed in the cluster's planet {planet.id:016x}/{planet.timestamp}" if listed else
                 f"endpoints {zt['root']['endpoints']} refused in the cluster's root record (loopback), so no "
                 "planet lists it: the members HELLO it with planet id 0 (no world pushed in OK(HELLO))")
        note(f"node: one controller process (bench/netconf_node.py = `hactl controller run` + UDP bound to "
             f"{dest[0]}:{dest[1]}), root identity {root_id.address:010x} ({where}); {os.cpu_count()} cores "
             "shared with the load generator (and whatever else runs on this machine); Limits are the defaults")

        load = Load(root_id, dest, planet, idents, args.payload)
        t = time.perf_counter()
        load.attach()
        load.probe()
        note(f"setup: {len(load.members)} members from {len(load.members)} source addresses (127.{BLOCK}.x.y) "
             f"HELLOed, validated and answered the root's path HELLO, {len(load.pairs)} pairs relayed a probe, in "
             f"{time.perf_counter() - t:.1f} s (a probe each way); generator saw {dict(load.stats)}")
        cores = os.cpu_count() or 1
        snap: dict[str, Any] = {}

        def mark(when: str) -> None:
            snap[when] = (proc_cpu(pid), time.process_time(), *machine_busy())

        def cpu_split(el: float) -> tuple[float, float, float, float]:
            node_cpu, gen_cpu, busy, total = (e - s for s, e in zip(snap["start"], snap["end"]))
            machine = busy / max(total, 1e-9) * cores
            return node_cpu, gen_cpu, machine, max(0.0, machine - (node_cpu + gen_cpu) / el)

        # --- HELLOs
        progress(f"HELLO rate: {len(load.members)} members x {args.hello_window} in flight, {args.hello_seconds} s")
        s0, k0 = root_stats(api, token), udp_drops(cluster.udp)
        r = load.hello_loop(args.hello_seconds, args.hello_window, 1.0, lambda: mark("start"), lambda: mark("end"))
        s1, k1 = root_stats(api, token), udp_drops(cluster.udp)
        el, n = r["elapsed"], r["answered"]
        lat = [x / 1e6 for x in r["lat"]]
        node_cpu, gen_cpu, machine, other = cpu_split(el)
        hello_rate = n / el
        bench("roots_hello_rate", hello_rate, "hellos/s")
        bench("roots_hello_p50_ms", pct(lat, 0.50), "ms")
        bench("roots_hello_p99_ms", pct(lat, 0.99), "ms")
        bench("roots_hello_cpu_us", node_cpu / max(n, 1) * 1e6, "us/hello")
        note(f"HELLO: {n} OK(HELLO) in {el:.1f} s ({len(load.members)} known identities, {args.hello_window} "
             f"HELLOs each in flight, closed loop), {r['lost']} unanswered after 1 s; node CPU {node_cpu / el:.2f} "
             f"cores = {node_cpu / max(n, 1) * 1e6:.0f} us per HELLO; generator {gen_cpu / el:.2f} cores "
             f"({gen_cpu / max(n, 1) * 1e6:.0f} us per HELLO: build + armor + dearmor the OK); machine busy "
             f"{machine:.2f} of {cores} cores, other processes {other:.2f}; root counters "
             f"{delta(s0, s1, ('rx.hello', 'sent'))}; kernel drops at the node {k1 - k0}; the latency is mostly "
             "queueing: "
             f"{len(load.members) * args.hello_window} HELLOs in flight / {hello_rate:.0f} per s = "
             f"{len(load.members) * args.hello_window / max(hello_rate, 1) * 1e3:.1f} ms (--hello-window 1 halves it)")

        # --- relay ramp
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
        steps = []
        gen_ports = load.ports
        progress(f"relay ramp: {rates}, {args.step_seconds} s each")
        for rate in rates:
            s0, k0, g0 = root_stats(api, token), udp_drops(cluster.udp), udp_drops(gen_ports)
            r = load.relay_loop(rate, args.step_seconds, lambda: mark("start"), lambda: mark("end"))
            s1, k1, g1 = root_stats(api, token), udp_drops(cluster.udp), udp_drops(gen_ports)
            el = r["elapsed"]
            node_cpu, gen_cpu, machine, other = cpu_split(el)
            relayed = s1["relayed"] - s0["relayed"]
            step = {"offered": rate, "sent_rate": r["sent"] / el, "delivered": r["received"] / el,
                    "loss": 100.0 * (r["sent"] - r["received"]) / max(r["sent"], 1), "node_cpu": node_cpu / el,
                    "gen_cpu": gen_cpu / el, "machine": machine, "other": other,
                    "cpu_us": node_cpu / max(relayed, 1) * 1e6, "gen_us": gen_cpu / max(r["received"], 1) * 1e6,
                    "p50": pct(r["lat"], 0.5), "p99": pct(r["lat"], 0.99), "relayed": relayed,
                    "drops": delta(s0, s1), "kdrop": k1 - k0, "gdrop": g1 - g0}
            steps.append(step)
            note(f"relay step: offered {rate:.0f}/s, sent {step['sent_rate']:.0f}/s, delivered "
                 f"{step['delivered']:.0f}/s, loss {step['loss']:.2f}%, p50/p99 {step['p50']:.2f}/{step['p99']:.2f} "
                 f"ms; node {step['node_cpu']:.2f} cores ({step['cpu_us']:.1f} us/pkt), generator "
                 f"{step['gen_cpu']:.2f} cores, other {other:.2f}, machine {machine:.2f}/{cores}; root drops "
                 f"{step['drops']}, kernel drops at node {step['kdrop']}, at members {step['gdrop']}")
            if (step["delivered"] < 0.9 * rate or step["loss"] > 5) and len(steps) >= 2:
                break  # saturated: the delivered rate stopped following the offered one
        best = max(steps, key=lambda s: s["delivered"])
        bench("roots_relay_rate", best["delivered"], "pkts/s")
        bench("roots_relay_loss_pct", best["loss"], "%")
        clean = [s for s in steps if s["loss"] < 0.1]
        no_loss = max(clean, key=lambda s: s["delivered"]) if clean else None
        bench("roots_relay_rate_no_loss", no_loss["delivered"] if no_loss else 0.0, "pkts/s")
        note(f"relay rate: the best delivered rate of the ramp (offered {best['offered']:.0f}/s); the highest step "
             "delivered with under 0.1% loss is roots_relay_rate_no_loss" +
             (f" (offered {no_loss['offered']:.0f}/s, p50/p99 {no_loss['p50']:.2f}/{no_loss['p99']:.2f} ms: "
              "queueing in the node's socket buffer near saturation)" if no_loss else ""))
        bench("roots_relay_cpu_us", best["cpu_us"], "us/pkt")
        bench("roots_relay_generator_cpu_us", best["gen_us"], "us/pkt")

        # --- relay latency at a moderate rate
        lrate = args.latency_rate or max(1000.0, best["delivered"] / 2)
        progress(f"relay latency at {lrate:.0f}/s, {args.latency_seconds} s")
        s0 = root_stats(api, token)
        r = load.relay_loop(lrate, args.latency_seconds, lambda: mark("start"), lambda: mark("end"))
        s1 = root_stats(api, token)
        el = r["elapsed"]
        node_cpu, gen_cpu, machine, other = cpu_split(el)
        bench("roots_relay_p50_ms", pct(r["lat"], 0.5), "ms")
        bench("roots_relay_p99_ms", pct(r["lat"], 0.99), "ms")
        note(f"relay latency: open loop at {lrate:.0f}/s for {el:.1f} s over {len(load.pairs)} pairs, both ways: "
             f"{r['received']}/{r['sent']} delivered, send -> arrival at B (through the root, one hop); node "
             f"{node_cpu / el:.2f} cores, generator {gen_cpu / el:.2f}, other {other:.2f}; root drops "
             f"{delta(s0, s1)}")

        # --- where the time goes
        relay_us, hello_us = sans_io_relay()
        note(f"sans-IO (no sockets, no event loop, this process): Root.receive + take_datagrams {relay_us:.1f} "
             f"us per relayed packet, {hello_us:.1f} us per HELLO answered; the node process spent "
             f"{best['cpu_us']:.1f} us per relayed packet in all (recvfrom + sendto syscalls, the asyncio reader, "
             f"Endpoint/Switch, the kernel's UDP work on both sockets), {steps[0]['cpu_us']:.1f} at "
             f"{steps[0]['offered']:.0f}/s")
        if args.profile_seconds > 0:
            prof_rate = best["delivered"]
            progress(f"profiling the node while relaying at {prof_rate:.0f}/s, {args.profile_seconds} s")
            done = Path(str(cluster.profile_out) + ".done")
            s0 = root_stats(api, token)
            r = load.relay_loop(prof_rate, args.profile_seconds, lambda: cluster.signal_all(signal.SIGUSR1),
                                lambda: cluster.signal_all(signal.SIGUSR2))
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            s1 = root_stats(api, token)
            relayed = s1["relayed"] - s0["relayed"]
            note(f"profiled run: offered {prof_rate:.0f}/s, delivered {r['received'] / r['elapsed']:.0f}/s under "
                 "the profiler")
            if done.exists():
                profile_report(cluster.profile_out, relayed)
        last = steps[-1]
        saturated = last["delivered"] < 0.9 * last["offered"] or last["loss"] > 5
        gen_limited = last["sent_rate"] < 0.95 * last["offered"]
        if not saturated and not gen_limited:
            why = (f"not saturated within the ramp (up to {last['offered']:.0f}/s): raise --rates; the node used "
                   f"{last['node_cpu']:.2f} cores there")
        elif gen_limited and last["node_cpu"] < 0.85:
            why = (f"the load generator (one Python thread) could not send more than {last['sent_rate']:.0f}/s "
                   f"({last['gen_cpu']:.2f} cores; machine {last['machine']:.2f}/{cores}): the node (at "
                   f"{last['node_cpu']:.2f} cores) was not the limit, so its capacity is above this figure")
        elif last["node_cpu"] >= 0.85:
            why = (f"the node's event-loop thread: at {last['offered']:.0f}/s offered the node process used "
                   f"{last['node_cpu']:.2f} cores (receiving, relaying and sending all run on its one asyncio "
                   f"thread, so one core is its ceiling), {last['cpu_us']:.1f} us per relayed packet")
        else:
            why = (f"the machine's {cores} cores: at {last['offered']:.0f}/s offered, node {last['node_cpu']:.2f} "
                   f"+ generator {last['gen_cpu']:.2f} + other {last['other']:.2f} = machine {last['machine']:.2f}; "
                   "the node's thread waits for CPU while the generator and the kernel's loopback delivery run")
        note(f"bottleneck: {why}")
        verdict = "met" if best["delivered"] >= GOAL_RELAY else "NOT met"
        note(f"goal (reported, not asserted): >= {GOAL_RELAY} relayed packets/s per node on this {cores}-core "
             f"machine: {best['delivered']:.0f} ({verdict}); at that step the node used {best['node_cpu']:.2f} "
             f"cores, the generator {best['gen_cpu']:.2f} ({best['gen_us']:.1f} us per packet: sendto + epoll + "
             f"recvfrom in Python), other processes {best['other']:.2f}")
        progress(f"done in {time.perf_counter() - started:.0f} s")
        return 0
    finally:
        if load is not None:
            load.close()
        if cluster is not None:
            cluster.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
