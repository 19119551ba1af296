"""The chaos suite's network: each controller (and each ZeroTier member host) a separate host in a network namespace
of its own, joined by a veth pair to one bridge in a hub namespace (test tooling; needs root).

    hub namespace       br0, client address .1 (the test's HTTP thread, the runner's client processes)
    node namespaces     one per controller: its veth v<i> with its address (.2, .3, ...), nft cuts live here
    member namespaces   optional, one per ZeroTier member host (addresses after the nodes')
    spare addresses     .101... on the same /24, some for each node to move to (ChaosCluster.move)

Built on tests/zt/libzt/netns.NetNS (bridge, veths, separate_host); every interface and every rule is inside
namespaces this object creates, so nothing outside them is touched or reached, and deleting the namespaces (close,
also at exit) removes all of it: qdiscs and nft tables vanish with them.

    with ChaosNet(["ctrl1", "ctrl2", "ctrl3"], members=2) as net:
        net.run(net.node_ns["ctrl1"], ["nft", "list", "ruleset"])
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.zt.libzt.netns import NetNS, NetNSError

PREFIX = "hchaos"  # namespace names: hchaos-<pid>-<random> (hub), ...-h<i> (hosts); stale ones are ours to remove
SPARE_BASE = 101    # spare addresses .101, .102, ... (well above the nodes' and members' addresses)
NFT_TABLE = "hactl_chaos"
DELAYER = Path(__file__).with_name("delayer.py")


class ChaosNetError(RuntimeError):
    pass


@dataclass
class Host:
    """One separate host: its namespace, its veth (inside it) and that veth's peer on the hub's bridge."""
    ns: str
    index: int  # NetNS veth index
    addr: str

    @property
    def ifname(self) -> str:
        return f"v{self.index}"

    @property
    def hub_ifname(self) -> str:
        return f"v{self.index}br"


@dataclass
class _Cut:
    """Drop rules of one fault, per namespace: {ns: (drop input from these, drop output to these)}."""
    rules: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)


def remove_stale() -> list[str]:
    """Delete namespaces left by chaos runs whose process is gone (a run killed before its clean-up)."""
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    removed = []
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        removed.append(name)
    return removed


class ChaosNet:
    """Namespaces for `nodes` controllers and `members` member hosts on one bridge, and `spares` addresses of its
    own per node to move to (never another node's: a peer dialing a stale address must not reach someone else).
    `node[nid]`/`member[j]` are Hosts (their addr is the current one: move_addr changes it)."""

    def __init__(self, nodes: list[str], members: int = 0, spares: int = 2) -> None:
        self.node_ids = list(nodes)
        self._ns = NetNS(n_addrs=1 + len(nodes) + members)
        self._ns.name = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"  # ours, told apart from other suites'
        self.hub = self._ns.name
        self.client_addr = self._ns.addrs[0]
        self.subnet = f"10.203.{self._ns.subnet}"
        self.node: dict[str, Host] = {}
        self.member: list[Host] = []
        self.n_spares = spares
        self.node_addrs: dict[str, list[str]] = {}  # nid -> its first address, then its spares
        self.n_members = members
        self._cuts: dict[str, _Cut] = {}
        self._netem: set[str] = set()   # nids with a netem qdisc
        self._down: set[str] = set()    # nids whose link is down
        self._delayers: dict[str, subprocess.Popen] = {}  # nid -> its delayer (netem by NFQUEUE)
        self.netem_backend = ""         # "tc" or "nfqueue", found out by the first netem
        self._open = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> "ChaosNet":
        remove_stale()
        atexit.register(self.close)
        try:
            self._ns.create()
            self._open = True
            for i, nid in enumerate(self.node_ids):
                self.node[nid] = Host(self._ns.separate_host(1 + i), 1 + i, self._ns.addrs[1 + i])
                self.node_addrs[nid] = [self._ns.addrs[1 + i]] + [f"{self.subnet}.{SPARE_BASE + i * self.n_spares + k}"
                                                                   for k in range(self.n_spares)]
            for j in range(self.n_members):
                k = 1 + len(self.node_ids) + j
                self.member.append(Host(self._ns.separate_host(k), k, self._ns.addrs[k]))
            for ns in self.all_ns():  # nft tables exist from the start: a cut is then one rule added
                self._nft(ns, ["add", "table", "inet", NFT_TABLE])
                for chain, hook in (("input", "input"), ("output", "output")):
                    self._nft(ns, ["add", "chain", "inet", NFT_TABLE, chain, "{", "type", "filter", "hook", hook,
                                   "priority", "0", ";", "policy", "accept", ";", "}"])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete every namespace (their interfaces, qdiscs and rules with them). Idempotent."""
        for p in self._delayers.values():
            p.kill()
            p.communicate()
        self._delayers.clear()
        self._ns.destroy()
        self._open = False
        atexit.unregister(self.close)

    def __enter__(self) -> "ChaosNet":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def all_ns(self) -> list[str]:
        return [h.ns for h in self.node.values()] + [h.ns for h in self.member]

    # ------------------------------------------------------------------ commands

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        """argv run inside namespace ns (ip netns exec execs it: the pid and signals are argv's)."""
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: list[str], *, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
        p = subprocess.run(self.cmd(ns, argv), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ChaosNetError(f"in {ns}: {' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
        return p

    def _ip(self, ns: str, *args: str) -> None:
        p = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            raise NetNSError(f"ip -n {ns} {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")

    def _nft(self, ns: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return self.run(ns, ["nft", *args], check=check)

    def python(self, ns: str, code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """A short Python program run inside ns (probes); -I -S: no site packages, a fast start."""
        return self.run(ns, [sys.executable, "-I", "-S", "-c", code, *args], check=False, timeout=timeout)

    # ------------------------------------------------------------------ addresses

    def spares(self, nid: str) -> list[str]:
        """The addresses node nid may move to now: its own, other than its current one."""
        return [a for a in self.node_addrs[nid] if a != self.node[nid].addr]

    def move_addr(self, nid: str, new: str) -> str:
        """Replace node nid's address by `new`, one of spares(nid); the old address."""
        h = self.node[nid]
        if new not in self.spares(nid):
            raise ChaosNetError(f"{new} is not a spare address of {nid} ({self.spares(nid)})")
        old = h.addr
        # Old one out first: deleting a primary address deletes its secondaries (no promote_secondaries).
        self._ip(h.ns, "addr", "del", f"{old}/24", "dev", h.ifname)
        self._ip(h.ns, "addr", "add", f"{new}/24", "dev", h.ifname)
        h.addr = new
        return old

    def addr(self, nid: str) -> str:
        return self.node[nid].addr

    # ------------------------------------------------------------------ cuts (nft, inside the node namespaces)

    def cut(self, tag: str, rules: dict[str, tuple[list[str], list[str]]]) -> None:
        """Fault `tag` drops, in each namespace ns of `rules`, input from the first list's addresses and output to
        the second's. Silent drops (no reject): connections time out as across a real partition."""
        if tag in self._cuts:
            raise ChaosNetError(f"cut {tag} already in place")
        self._cuts[tag] = _Cut()
        for ns, (drop_from, drop_to) in rules.items():
            self._cuts[tag].rules[ns] = (list(drop_from), list(drop_to))
            for chain, key, addrs in (("input", "saddr", drop_from), ("output", "daddr", drop_to)):
                for a in addrs:
                    self._nft(ns, ["add", "rule", "inet", NFT_TABLE, chain, "ip", key, a, "drop",
                                   "comment", f'"{tag}"'])

    def uncut(self, tag: str) -> None:
        """Remove fault `tag`'s rules (those carrying its comment), in every namespace it touched."""
        cut = self._cuts.pop(tag, None)
        if cut is None:
            return
        for ns in cut.rules:
            for chain in ("input", "output"):
                for handle in self._handles(ns, chain, tag):
                    self._nft(ns, ["delete", "rule", "inet", NFT_TABLE, chain, "handle", handle])

    def _handles(self, ns: str, chain: str, tag: str) -> list[str]:
        out = self._nft(ns, ["-a", "list", "chain", "inet", NFT_TABLE, chain]).stdout
        return [line.rsplit("# handle ", 1)[1].strip() for line in out.splitlines()
                if f'comment "{tag}"' in line and "# handle " in line]

    def rules(self, ns: str) -> str:
        """The chaos table of ns as nft lists it (for reports and tests)."""
        return self._nft(ns, ["list", "table", "inet", NFT_TABLE]).stdout

    def isolate(self, tag: str, group: list[str], rest: list[str]) -> None:
        """Controller-to-controller traffic between `group` and `rest` dropped both ways (in both sides'
        namespaces); the hub's clients and the member hosts still reach everyone."""
        rules: dict[str, tuple[list[str], list[str]]] = {}
        for a, others in [(n, rest) for n in group] + [(n, group) for n in rest]:
            addrs = [self.addr(o) for o in others]
            rules[self.node[a].ns] = (addrs, addrs)
        self.cut(tag, rules)

    def one_way(self, tag: str, receiver: str, sender: str) -> None:
        """`receiver` stops receiving from `sender` (sender still receives receiver)."""
        self.cut(tag, {self.node[receiver].ns: ([self.addr(sender)], [])})

    # ------------------------------------------------------------------ link and qdisc

    def link(self, nid: str, up: bool) -> None:
        """The node's cable: its hub-side veth down or up (the node's own interface and address untouched)."""
        self._ip(self.hub, "link", "set", self.node[nid].hub_ifname, "up" if up else "down")
        (self._down.discard if up else self._down.add)(nid)

    def netem(self, nid: str, *, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0,
              reorder_pct: float = 0, seed: int = 0) -> str:
        """Delay (+- jitter), loss and reordering on the node's link, both directions; the mechanism used.
        "tc": netem qdiscs on the egress of its veth (what it sends) and of the hub-side peer (what it receives).
        "nfqueue", where the kernel has no sch_netem: iptables NFQUEUE rules on the node's veth, in and out, and
        tests/chaos/delayer.py in its namespace holding each packet (same parameters, same meaning)."""
        self.clear_netem(nid)
        if self.netem_backend != "nfqueue":
            try:
                self._tc_netem(nid, delay_ms, jitter_ms, loss_pct, reorder_pct)
                self.netem_backend = "tc"
            except ChaosNetError as e:
                if "unknown" not in str(e).lower() or self.netem_backend == "tc":
                    raise
                self.clear_netem(nid)
                self.netem_backend = "nfqueue"  # CONFIG_NET_SCH_NETEM off (e.g. a CI VM's kernel)
        if self.netem_backend == "nfqueue":
            self._nfqueue_netem(nid, delay_ms, jitter_ms, loss_pct, reorder_pct, seed)
        self._netem.add(nid)
        return self.netem_backend

    def _tc_netem(self, nid: str, delay_ms: float, jitter_ms: float, loss_pct: float, reorder_pct: float) -> None:
        # (netem sends reordered packets at once, ahead of the delayed ones: reordering needs a delay)
        args = ["delay", f"{delay_ms}ms"] + ([f"{jitter_ms}ms"] if jitter_ms else [])
        args += ["loss", f"{loss_pct}%"] if loss_pct else []
        args += ["reorder", f"{reorder_pct}%", "50%"] if reorder_pct and delay_ms else []
        h = self.node[nid]
        for ns, dev in ((h.ns, h.ifname), (self.hub, h.hub_ifname)):
            self.run(ns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *args])

    def _nfqueue_netem(self, nid: str, delay_ms: float, jitter_ms: float, loss_pct: float, reorder_pct: float,
                       seed: int) -> None:
        h = self.node[nid]
        queue = str(h.index)  # (queues are per namespace anyway)
        p = subprocess.Popen(self.cmd(h.ns, [sys.executable, "-I", "-S", str(DELAYER), queue, str(delay_ms),
                                             str(jitter_ms), str(loss_pct), str(reorder_pct), str(seed)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._delayers[nid] = p
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            self.clear_netem(nid)
            raise ChaosNetError(f"the delayer in {h.ns} did not start: {p.stderr.read() if p.stderr else ''}")
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            self.run(h.ns, ["iptables", "-w", "-A", chain, flag, h.ifname, "-j", "NFQUEUE", "--queue-num", queue,
                            "--queue-bypass"])

    def clear_netem(self, nid: str) -> None:
        h = self.node[nid]
        if self.netem_backend != "nfqueue":
            for ns, dev in ((h.ns, h.ifname), (self.hub, h.hub_ifname)):
                self.run(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)  # none there: nothing to do
        if self.netem_backend != "tc":
            for chain in ("INPUT", "OUTPUT"):  # (only netem puts rules in iptables, in our namespaces)
                self.run(h.ns, ["iptables", "-w", "-F", chain], check=False)
            p = self._delayers.pop(nid, None)
            if p is not None:
                p.kill()
                p.communicate()
        self._netem.discard(nid)

    def shaping(self, nid: str) -> str:
        """What shapes the node's link now: its qdiscs (both ends) and its iptables rules (for checks, reports)."""
        h = self.node[nid]
        out = [self.run(ns, ["tc", "qdisc", "show", "dev", dev]).stdout
               for ns, dev in ((h.ns, h.ifname), (self.hub, h.hub_ifname))]
        out.append(self.run(h.ns, ["iptables", "-w", "-S"], check=False).stdout)
        return "".join(out)

    def heal_all(self) -> None:
        """Every cut removed, every qdisc deleted, every link up (whatever this object remembers or not)."""
        self._cuts.clear()
        for ns in self.all_ns():
            for chain in ("input", "output"):
                self._nft(ns, ["flush", "chain", "inet", NFT_TABLE, chain])
        for nid in self.node_ids:
            self.clear_netem(nid)
            self.link(nid, True)

    # ------------------------------------------------------------------ probes (real traffic, for checks)

    def tcp_connect(self, ns: str, addr: str, port: int, timeout: float = 1.0) -> float | None:
        """Seconds a TCP connect from inside ns to addr:port took, None if it failed or timed out."""
        p = self.python(ns, _TCP_PROBE, addr, str(port), str(timeout), timeout=timeout + 20)
        out = p.stdout.strip()
        return None if not out or out.startswith("fail") else float(out)

    def udp_reaches(self, src_ns: str, dst_ns: str, dst_addr: str, port: int = 40999, wait: float = 0.7) -> bool:
        """Whether UDP datagrams sent from inside src_ns reach a socket bound to dst_addr:port inside dst_ns."""
        recv = subprocess.Popen(self.cmd(dst_ns, [sys.executable, "-I", "-S", "-c", _UDP_RECV, dst_addr,
                                                  str(port), str(wait)]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert recv.stdout is not None
            if recv.stdout.readline().strip() != "ready":
                why = recv.stderr.read() if recv.stderr else ""
                raise ChaosNetError(f"UDP receiver in {dst_ns} did not start: {why}")
            self.python(src_ns, _UDP_SEND, dst_addr, str(port))
            out, _ = recv.communicate(timeout=wait + 20)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        return "got" in out


def connect_time(addr: str, port: int, timeout: float = 1.0) -> float | None:
    """A TCP connect from the calling thread's namespace (e.g. a ChaosCluster.hub thread): seconds, or None."""
    s = socket.socket()
    s.settimeout(timeout)
    t = time.monotonic()
    try:
        s.connect((addr, port))
        return time.monotonic() - t
    except OSError:
        return None
    finally:
        s.close()


_TCP_PROBE = """
import socket, sys, time
s = socket.socket(); s.settimeout(float(sys.argv[3])); t = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(time.monotonic() - t)
except OSError as e:
    print("fail", e)
"""

_UDP_RECV = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, src = s.recvfrom(100)
    except OSError:
        break
    print("got", data, src, flush=True)
    break  # one is enough
"""

_UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    s.sendto(b"probe", (sys.argv[1], int(sys.argv[2]))); time.sleep(0.05)
"""
