"""A throw-away network namespace with a bridge and N veth ports holding private addresses (test tooling).

Everything is created inside the namespace (`ip -n NS ...`), so the host's interfaces and routes are never
touched, and deleting the namespace removes every interface in it. Needs root (CAP_NET_ADMIN).

    with NetNS(3) as ns:             # ns.addrs == ["10.203.N.1", "10.203.N.2", "10.203.N.3"]
        subprocess.run(ns.cmd(["ip", "addr"]))
"""
from __future__ import annotations

import os
import subprocess
import uuid


class NetNSError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise NetNSError(f"ip {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")


class NetNS:
    def __init__(self, n_addrs: int = 3, subnet: int | None = None) -> None:
        self.name = f"hzt-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.subnet = subnet if subnet is not None else 1 + os.getpid() % 250
        self.addrs = [f"10.203.{self.subnet}.{i + 1}" for i in range(n_addrs)]
        self.created = False
        self.hosts: dict[int, str] = {}  # veth index -> the namespace it was moved into (separate_host)

    def cmd(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def create(self) -> "NetNS":
        _ip("netns", "add", self.name)
        self.created = True
        try:
            n = self.name
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "link", "add", "br0", "type", "bridge")
            _ip("-n", n, "link", "set", "br0", "up")
            for i, addr in enumerate(self.addrs):
                _ip("-n", n, "link", "add", f"v{i}", "type", "veth", "peer", "name", f"v{i}br")
                _ip("-n", n, "link", "set", f"v{i}br", "master", "br0")
                _ip("-n", n, "link", "set", f"v{i}br", "up")
                _ip("-n", n, "addr", "add", f"{addr}/24", "dev", f"v{i}")
                _ip("-n", n, "link", "set", f"v{i}", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def separate_host(self, i: int) -> str:
        """Move veth v<i> and its address into a namespace of its own, still on the bridge: a separate host on
        the LAN (its own loopback and routes: nothing of the others' addresses is local to it). Its name."""
        name = f"{self.name}-h{i}"
        _ip("netns", "add", name)
        self.hosts[i] = name
        _ip("-n", self.name, "link", "set", f"v{i}", "netns", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{self.addrs[i]}/24", "dev", f"v{i}")
        _ip("-n", name, "link", "set", f"v{i}", "up")
        return name

    def host_cmd(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i], *argv]

    def destroy(self) -> None:
        for name in self.hosts.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.hosts.clear()
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)
            self.created = False

    def __enter__(self) -> "NetNS":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
