"""A real hactl cluster, a libzt root and libzt members together inside one network namespace (test tooling).

Layout (NetNS addresses 10.203.N.x): the libzt root on .1 (UDP 29993), the hactl controllers ctrl1..3 on .2, .3
and .4 (UDP 9993, `zerotier.bind`), the libzt members on further addresses (their ports 29994...; a libzt node
binds its port on every address of the namespace). The planet names the root only; every hactl node gets it as
its `zerotier.planet` file, so all three HELLO the same root as the cluster's one controller identity.

The controllers run inside the namespace (`ip netns exec`, which execs, so the pids and signals are the
controllers'), so their API (127.0.0.1:port) is the namespace's loopback, which this process cannot reach. Every
HTTP call is therefore made by one dedicated thread that has entered the namespace (setns(2) with CLONE_NEWNET
changes only the calling thread): `InNetNS`, passed to ProcCluster as its `call`.

One namespace for every node has one trap, handled here: libzt binds its port on each address with
SO_BINDTODEVICE, so the root answers a controller's HELLO (which came to 10.203.N.1 over loopback) from its socket
bound to v0: the kernel sends that reply out of v0 onto the bridge, and it reaches the controller's veth with a
source address the namespace owns, which Linux drops as martian by default. Separate hosts never see this;
`accept_local=1` (and no reverse-path filter) in the namespace makes one namespace behave like them.

    with ZtScene(libzt, tmp_path, members=3) as z:
        z.start()                    # root + cluster + members started (not yet online)
        ctrl = z.cluster.wait_ready()
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar

from hactl.dev.cluster import node_ids
from hactl.zt.world import MAX_ROOTS, World
from tests.proc_cluster import ProcCluster, poll
from tests.zt.libzt.fetch import Libzt
from tests.zt.libzt.harness import NodeProc
from tests.zt.libzt.netns import NetNS

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
ROOT_PORT = 29993
CTRL_ZT_PORT = 9993
MEMBER_BASE_PORT = 29994
N_CTRL = 3


def _ns_sysctls(ns: NetNS) -> None:
    """accept_local=1, rp_filter=0 inside the namespace (see the module docstring); the host's are untouched."""
    keys = ["net/ipv4/conf/all/accept_local"] + [f"net/ipv4/conf/{d}/rp_filter"
                                                   for d in ["all", "default"] + [f"v{i}" for i in range(len(ns.addrs))]]
    vals = ["1"] + ["0"] * (len(keys) - 1)
    script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in zip(keys, vals)) + "; cat " + \
        " ".join(f"/proc/sys/{k}" for k in keys)
    p = subprocess.run(ns.cmd(["sh", "-c", script]), capture_output=True, text=True, timeout=20)
    if p.returncode != 0 or p.stdout.split() != vals:
        raise RuntimeError(f"setting sysctls in {ns.name} failed: exit {p.returncode} {p.stdout!r} {p.stderr!r}")


def _enter_netns(name: str) -> list[str]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}, CLONE_NEWNET): {os.strerror(err)}")
    finally:
        os.close(fd)
    names = [n for _, n in socket.if_nameindex()]
    if "br0" not in names:  # the thread really is in the test namespace (not the host's)
        raise RuntimeError(f"setns into {name} did not take: interfaces {names}")
    return names


class InNetNS:
    """One thread inside network namespace `name`; `in_ns(fn)` runs fn there and returns its result. Calls are
    serialised (one thread), so each must carry its own time limit (HTTP timeouts do)."""

    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}")
        self.interfaces = self._pool.submit(_enter_netns, name).result(timeout=10)

    def __call__(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ZtScene:
    """The namespace, the in-namespace HTTP thread, the libzt root, the hactl cluster and the libzt members of one
    scenario run; `close()` (or leaving the `with`) kills every process and deletes the namespace whatever
    happened. `zt_bind=False` starts the controllers without a ZeroTier endpoint (to check the harness alone)."""

    def __init__(self, libzt: Libzt, tmp: Path, members: int, zt_bind: bool = True,
                 config: dict[str, Any] | None = None, own_planet: bool = False,
                 before_members: Callable[["ZtScene"], None] | None = None, n_ctrl: int = N_CTRL) -> None:
        self.libzt = libzt
        self.tmp = tmp
        self.n_members = members
        self.zt_bind = zt_bind
        self.extra_config = config or {}
        self.own_planet = own_planet  # no libzt root: the cluster's nodes are the roots (zerotier.planet: own)
        self.before_members = before_members  # e.g. firewall rules, run once the namespace exists
        self.n_ctrl = n_ctrl
        self.ns = NetNS(n_addrs=1 + n_ctrl + members)
        self.in_ns: InNetNS | None = None
        self.root: NodeProc | None = None
        self.cluster: ProcCluster | None = None
        self.members: list[NodeProc] = []
        self.member_info: list[dict] = []   # start answers: node_id, port, identity_public
        self.planet_hex = ""
        self.planet_file = tmp / "planet"
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ addresses

    @property
    def root_endpoint(self) -> str:
        return f"{self.ns.addrs[0]}/{ROOT_PORT}"

    def ctrl_addr(self, i: int) -> str:
        return self.ns.addrs[1 + i]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ns.create()
        _ns_sysctls(self.ns)
        self.in_ns = InNetNS(self.ns.name)
        if self.before_members is not None:
            self.before_members(self)
        if self.own_planet:
            self._start_own_planet()
            return
        # The root first: its planet is every other node's.
        self.root = NodeProc("root", self.libzt, self.tmp / "root.log", prefix=self.ns.cmd([]), role="root")
        made = self.root.call("make_root", storage=str(self.tmp / "root"), endpoints=[self.root_endpoint])
        self.planet_hex = made["planet"]
        self.planet_file.write_bytes(bytes.fromhex(self.planet_hex))
        self.root_id = made["node_id"]
        self.root.call("start", storage=str(self.tmp / "root"), port=ROOT_PORT, planet=self.planet_hex)
        ids = node_ids(self.n_ctrl)
        node_config = {nid: {"zerotier": {"bind": f"{self.ctrl_addr(i)}:{CTRL_ZT_PORT}" if self.zt_bind else "",
                                          "planet": str(self.planet_file) if self.zt_bind else ""}}
                       for i, nid in enumerate(ids)}
        self.cluster = ProcCluster(self.tmp / "cluster", self.n_ctrl, config=self.extra_config, node_config=node_config,
                                   prefix=self.ns.cmd([]), call=self.in_ns)
        assert self.cluster.ids == ids, self.cluster.ids
        self.cluster.start_all()
        self._start_members()

    def _start_own_planet(self) -> None:
        """The cluster first, with its own planet (the default); members get GET /planet as theirs once it
        lists every node, as a user hands it out."""
        ids = node_ids(self.n_ctrl)
        node_config = {nid: {"zerotier": {"bind": f"{self.ctrl_addr(i)}:{CTRL_ZT_PORT}"}} for i, nid in enumerate(ids)}
        self.cluster = ProcCluster(self.tmp / "cluster", self.n_ctrl, config=self.extra_config, node_config=node_config,
                                   prefix=self.ns.cmd([]), call=self.in_ns)
        assert self.cluster.ids == ids, self.cluster.ids
        self.cluster.start_all()
        listed = min(self.n_ctrl, MAX_ROOTS)
        world = self.poll(lambda: self.planet_with(listed), 60, f"GET /planet listing {listed} nodes as roots")
        self.planet_hex = world.encode().hex()
        self.planet_file.write_bytes(world.encode())
        self._start_members()

    def planet(self, nid: str | None = None) -> "World | None":
        """The cluster's planet as GET /planet serves it (from nid, or the first node that answers)."""
        assert self.cluster is not None
        for n in [nid] if nid else list(self.cluster.procs):
            try:
                code, body, _ = self.cluster.request(n, "GET", "/planet", auth=False, timeout=5)
            except OSError:
                continue
            if code == 200 and isinstance(body, (bytes, bytearray)):
                return World.decode(bytes(body))
        return None

    def planet_with(self, n_roots: int) -> "World | None":
        w = self.planet()
        return w if w is not None and len(w.roots) == n_roots else None

    def move(self, nid: str, addr: str) -> None:
        """Give node nid another ZeroTier address (its config; takes effect when it is started again)."""
        import yaml
        assert self.cluster is not None
        path = self.cluster.specs[nid].config
        doc = yaml.safe_load(path.read_text())
        doc["zerotier"]["bind"] = f"{addr}:{CTRL_ZT_PORT}"
        path.write_text(yaml.safe_dump(doc))

    def _start_members(self) -> None:
        for i in range(self.n_members):
            m = NodeProc(f"m{i}", self.libzt, self.tmp / f"m{i}.log", prefix=self.ns.cmd([]))
            self.members.append(m)
            self.member_info.append(m.call("start", storage=str(self.tmp / f"m{i}"), port=MEMBER_BASE_PORT + i,
                                           planet=self.planet_hex))

    def close(self) -> None:
        for n in [*self.members, *([self.root] if self.root else [])]:
            try:
                n.close()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        if self.cluster is not None:
            self.cluster.close()
        if self.in_ns is not None:
            self.in_ns.close()
        self.ns.destroy()

    def __enter__(self) -> "ZtScene":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ observation

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def zt_status(self, nid: str) -> dict | None:
        """The `zerotier` object of node nid's /status (None if it does not answer)."""
        assert self.cluster is not None
        st = self.cluster.status(nid)
        return (st or {}).get("zerotier") if st else None

    def context(self, ctrl_chars: int = 4000, libzt_chars: int = 1500, skip: tuple[str, ...] = ()) -> str:
        """Log tails of every process (for failure messages), and each live controller's zerotier status. Nodes
        in `skip` (e.g. a frozen one, whose /status would hang) are not asked."""
        out = [f"(logs under {self.tmp}; {self.elapsed():.1f}s into the run)"]
        if self.cluster is not None:
            for nid in self.cluster.ids:
                zt = None if nid in skip or nid not in self.cluster.procs else self.zt_status(nid)
                out.append(f"--- {nid} zerotier status: {zt}")
                out.append(f"--- {nid} log tail ---\n{self.cluster.log(nid)[-ctrl_chars:]}")
        for n in [*([self.root] if self.root else []), *self.members]:
            out.append(f"--- libzt {n.name} log tail ---\n{n.log_tail(libzt_chars)}")
        return "\n".join(out)

    def poll(self, cond: Callable[[], Any], timeout: float, what: str, skip: tuple[str, ...] = (),
             interval: float = 0.2) -> Any:
        return poll(cond, timeout, what, context=lambda: self.context(skip=skip), interval=interval)
