"""Real ZeroTier members (libzt) through a chaos run: they join a network of the cluster, are authorized, and are
watched once a second until the end; the network's name is changed now and then so that configs keep flowing.

Each member is its own host (a ChaosNet member namespace) whose planet is the cluster's own (GET /planet: the
controllers are the roots), so a moved controller reaches members through a newer planet, as users' nodes would.

What counts as losing the config (libzt never reports ACCESS_DENIED, zerotier-protocol.md C.8): a member that
had status OK and its IPv4 address seen without either. libzt itself crashes now and then (a segfault in its own
threads, tests/zt/libzt/harness.py); such a member is reported as crashed and left out of the check, since that
says nothing about the cluster.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hactl.zt.world import World
from tests.chaos.cluster import ChaosCluster
from tests.proc_cluster import poll
from tests.zt.libzt.fetch import Libzt
from tests.zt.libzt.harness import NodeError, NodeProc

MEMBER_PORT = 29994
POOL = {"ipRangeStart": "10.147.20.10", "ipRangeEnd": "10.147.20.250"}
ROUTE = {"target": "10.147.20.0/24", "via": None}
ONLINE_S = 120  # give-up bounds for the start (identity verification is rate-limited per /24: ~5 s a member)


@dataclass
class MemberWatch:
    name: str
    proc: NodeProc
    address: str = ""
    had_config: bool = False
    lost: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what was seen)
    crashed: str = ""
    samples: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class ZtMembers:
    def __init__(self, cluster: ChaosCluster, libzt: Libzt, work: Path, count: int) -> None:
        self.cluster = cluster
        self.libzt = libzt
        self.work = work
        self.count = count
        self.nwid = ""
        self.members: list[MemberWatch] = []
        self.names: list[str] = []  # network names set so far; the last is the one members must end with
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _any_node(self) -> str:
        return self.cluster.running()[0]

    def planet(self) -> World:
        def get() -> World | None:
            for nid in self.cluster.running():
                code, body, _ = self.cluster.request(nid, "GET", "/planet", auth=False, timeout=5)
                if code == 200 and isinstance(body, (bytes, bytearray)):
                    w = World.decode(bytes(body))
                    if len(w.roots) == len(self.cluster.ids):
                        return w
            return None
        return poll(get, 60, "GET /planet listing every controller")

    def start(self, ctrl_address: str) -> None:
        """Network, members started and joined, authorized, and each with its IPv4 address."""
        code, body = self.cluster.write(self._any_node(), "POST", f"/controller/network/{ctrl_address}______",
                                        {"name": "zt-0", "private": True, "v4AssignMode": {"zt": True},
                                         "ipAssignmentPools": [POOL], "routes": [ROUTE]})
        assert code == 200, (code, body)
        self.nwid = body["id"]
        self.names.append("zt-0")
        planet = self.planet().encode().hex()
        net = self.cluster.net
        for j in range(self.count):
            host = net.member[j]
            proc = NodeProc(f"m{j}", self.libzt, self.work / f"zt-m{j}.log", prefix=net.cmd(host.ns, []))
            w = MemberWatch(f"m{j}", proc)
            self.members.append(w)
            info = proc.call("start", storage=str(self.work / f"zt-m{j}"), port=MEMBER_PORT, planet=planet)
            w.address = info["node_id"]
            proc.call("join", nwid=self.nwid)
        for w in self.members:
            code, body = self.cluster.write(self._any_node(), "POST",
                                            f"/controller/network/{self.nwid}/member/{w.address}",
                                            {"authorized": True})
            assert code == 200, (code, body)
        for w in self.members:
            poll(lambda: self._configured(w), ONLINE_S, f"ZeroTier member {w.name} ({w.address}) configured",
                 context=lambda: w.proc.log_tail(3000))
            w.had_config = True

    def _configured(self, w: MemberWatch) -> bool:
        net = w.proc.call("status", wait=10, nwid=self.nwid)["net"]
        w.last = net
        return net["status"] == "OK" and bool(net["ipv4"])

    def rename(self, i: int) -> None:
        """A config change every member must receive (pushed, or at its next request)."""
        name = f"zt-{i}"
        try:
            code, _ = self.cluster.write(self._any_node(), "POST", f"/controller/network/{self.nwid}",
                                         {"name": name}, timeout=20)
        except AssertionError:
            return  # the cluster was unavailable for 20 s: the next rename tries again
        if code == 200:
            self.names.append(name)

    # ------------------------------------------------------------------ watching

    def watch(self, rename_every: float = 20.0) -> None:
        self._thread = threading.Thread(target=self._watch, args=(rename_every,), daemon=True, name="zt-watch")
        self._thread.start()

    def _watch(self, rename_every: float) -> None:
        next_rename, i = time.monotonic() + rename_every, 1
        while not self._stop.wait(1.0):
            for w in self.members:
                if w.crashed:
                    continue
                try:
                    ok = self._configured(w)
                except NodeError as e:
                    if w.proc.proc.poll() is not None:
                        w.crashed = str(e).splitlines()[0]
                    continue
                w.samples += 1
                if not ok:
                    w.lost.append((time.monotonic(), f"status {w.last.get('status')} ipv4 {w.last.get('ipv4')}"))
            if time.monotonic() >= next_rename:
                self.rename(i)
                i += 1
                next_rename = time.monotonic() + rename_every

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def wait_latest_name(self, timeout: float = 90) -> dict[str, str]:
        """After healing: every member not crashed ends with the last name set; {member: what it has}."""
        want = self.names[-1]
        seen: dict[str, str] = {}

        def done() -> bool:
            for w in self.members:
                if w.crashed:
                    continue
                try:
                    seen[w.name] = w.proc.call("net_info", wait=10, nwid=self.nwid)["net"].get("name") or ""
                except NodeError as e:
                    w.crashed = str(e).splitlines()[0]
            return all(seen.get(w.name) == want for w in self.members if not w.crashed)
        try:
            poll(done, timeout, f"every ZeroTier member with network name {want}")
        except AssertionError:
            pass  # reported as is: the caller's check names who has what
        return seen

    def summary(self) -> dict[str, Any]:
        return {w.name: {"address": w.address, "samples": w.samples, "lost": len(w.lost),
                         "first_lost": w.lost[0] if w.lost else None, "crashed": w.crashed}
                for w in self.members}

    def close(self) -> None:
        self.stop()
        for w in self.members:
            try:
                w.proc.close()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
