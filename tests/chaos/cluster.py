"""A real hactl cluster on a ChaosNet: each controller a separate host (its own namespace and address), its control
plane, API and ZeroTier endpoint on that address; the test's HTTP calls made from the hub namespace.

Follows tests/zt/test_zt_endpoints_auto.py (per-node `ip netns exec`, each node's YAML rewritten for its address).
Every controller runs under the slow-disk library (tests/chaos/slowdisk.c) with its own control file, 0 at start.

    with ChaosNet(node_ids(3)) as net, ChaosCluster(tmp / "c", net) as c:
        c.start_all(); c.wait_ready()
        c.write("ctrl1", "POST", "/controller/network/...", {...})      # ProcCluster's API, through the hub
        subprocess.Popen(c.hub_cmd([sys.executable, "client.py", c.api_url("ctrl2")]))   # a client process
"""
from __future__ import annotations

import atexit
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.chaos.net import ChaosNet
from tests.chaos.slowdisk import SlowDisk, build
from tests.proc_cluster import ProcCluster
from tests.zt.libzt.cluster_ns import InNetNS

ZT_PORT = 9993


class ChaosCluster(ProcCluster):
    """ProcCluster (start/kill/signal/stop/status/leader/write/request...) whose node i runs in net's namespace
    for node id i. `config`/`node_config` as ProcCluster's. close() stops the processes and the hub thread (the
    namespaces are the ChaosNet's to delete)."""

    def __init__(self, root: Path, net: ChaosNet, config: dict[str, Any] | None = None, *,
                 node_config: dict[str, dict[str, Any]] | None = None) -> None:
        self.net = net
        self.hub = InNetNS(net.hub)
        self._move_lock = threading.Lock()
        so = build()
        self.slow = {nid: SlowDisk(root.parent / f"{root.name}-slowdisk" / nid) for nid in net.node_ids}
        self._so = so
        zt = {nid: {"zerotier": {"bind": f"{net.addr(nid)}:{ZT_PORT}"}} for nid in net.node_ids}
        for nid, sections in (node_config or {}).items():
            for section, values in sections.items():
                zt.setdefault(nid, {}).setdefault(section, {}).update(values)
        try:
            super().__init__(root, len(net.node_ids), config, node_config=zt, call=self.hub,
                             node_prefix={nid: self._prefix(nid) for nid in net.node_ids},
                             api_host={nid: net.addr(nid) for nid in net.node_ids})
            if self.ids != net.node_ids:
                raise ValueError(f"the net's nodes {net.node_ids} are not the cluster's {self.ids}")
            self._write_addresses()
        except BaseException:
            self.hub.close()
            raise
        atexit.register(self.close)  # (registered after the net's: runs before it, processes before namespaces)

    def _prefix(self, nid: str) -> list[str]:
        """`ip netns exec NS env VAR=... ` before the controller's argv: both exec, so the pid is the
        controller's; env adds the slow-disk library to this node's environment only."""
        env = [f"{k}={v}" for k, v in self.slow[nid].env(self._so).items()]
        return self.net.cmd(self.net.node[nid].ns, ["env", *env])

    def ctrl_port(self, nid: str) -> int:
        return int(self.specs[nid].ctrl_addr.rsplit(":", 1)[1])

    def _write_addresses(self) -> None:
        """Every node's YAML: initial_cluster with every node's current address; its own control listen and
        advertise, API listen and ZeroTier bind on its address (ports as dev init chose them)."""
        ctrl = {nid: f"{self.net.addr(nid)}:{self.ctrl_port(nid)}" for nid in self.ids}
        for nid in self.ids:
            path = self.specs[nid].config
            doc = yaml.safe_load(path.read_text())
            doc["cluster"]["initial_cluster"] = ctrl
            doc["control"].update(listen=ctrl[nid], advertise=ctrl[nid])
            doc["api"]["listen"] = f"{self.net.addr(nid)}:{self.port(nid)}"
            doc.setdefault("zerotier", {})["bind"] = f"{self.net.addr(nid)}:{ZT_PORT}"
            path.write_text(yaml.safe_dump(doc))

    # ------------------------------------------------------------------ for the runner

    def api_url(self, nid: str) -> str:
        """Node nid's API as a client in the hub namespace reaches it (its current address)."""
        return f"http://{self.net.addr(nid)}:{self.port(nid)}"

    def hub_cmd(self, argv: list[str]) -> list[str]:
        """argv run in the hub namespace (a client process: it reaches every node's api_url)."""
        return self.net.cmd(self.net.hub, argv)

    def running(self) -> list[str]:
        return [nid for nid in self.ids if nid in self.procs]

    # ------------------------------------------------------------------ faults' mechanisms

    def set_slow_disk(self, nid: str, ms: int) -> None:
        """Node nid's fsync/fdatasync/msync/sync_file_range sleep ms first (0: normal); seen within ~50 ms."""
        self.slow[nid].set(ms)

    def move(self, nid: str, new_addr: str | None = None) -> str:
        """Node nid stopped (SIGTERM), its namespace's address replaced by one of its spares (new_addr, or the
        first), its config rewritten for it (control listen/advertise, API listen, ZeroTier bind; the others'
        initial_cluster lists it too, as an operator would edit them, though their membership in ctrl.db is what
        they use once formed), and restarted. The new address."""
        return self.move_together({nid: new_addr})[nid]

    def move_together(self, moves: dict[str, str | None], *, start: bool = True) -> dict[str, str]:
        """Several nodes moved at once (each as in move: all stopped first, then all started, unless not
        ``start``: the caller starts them): {nid: new address}."""
        with self._move_lock:
            new = {nid: addr or self.net.spares(nid)[0] for nid, addr in moves.items()}
            for nid in new:
                p = self.procs.get(nid)
                if p is None:
                    continue
                p.send_signal(signal.SIGCONT)  # (a paused node would not see the SIGTERM)
                try:
                    self.stop(nid)
                except subprocess.TimeoutExpired:  # did not exit in time: a kill is as good for a move
                    p.kill()
                    p.wait()
            for nid, addr in new.items():
                self.net.move_addr(nid, addr)
                self.api_host[nid] = addr
            self._write_addresses()
            for nid in new if start else ():
                self.start(nid)
            return new

    def close(self) -> None:
        atexit.unregister(self.close)
        try:
            for nid in self.ids:  # no delay left behind for a last clean stop
                self.slow[nid].set(0)
            super().close()
        finally:
            self.hub.close()

    def __enter__(self) -> "ChaosCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
