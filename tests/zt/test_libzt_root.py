"""Our Root against REAL ZeroTier (libzt 1.8.4), in throw-away network namespaces:

  10.203.N.100  our root (this file run as a subprocess, `--serve`: an Endpoint driving a Root), the ONLY root of
                a planet we build and sign with hactl.zt.world; in its own namespace plugged into the harness
                namespace's bridge (a separate host on the LAN; why: see test_libzt_node.py)
  10.203.N.2-3  two libzt members, each in a namespace of its own on the same bridge (separate hosts), using
                that planet

The members come online through our root, join an ad-hoc network (`ff` + port, no controller needed), and
exchange TCP data through it: WHOIS answered, MULTICAST_LIKE/GATHER for neighbour discovery, the first packets
relayed, RENDEZVOUS sent to both. The root is then given a newer planet (same id, later timestamp, same signing
key): each member's next HELLO gets it in OK(HELLO) and libzt stores it in its storage dir as `roots`.

NOT asserted: that a second connection after RENDEZVOUS goes direct. It did in most runs (the root relayed none
of it), but in about one run in eight a second TCP connect from m0 was never answered within 90 s, with each
member on a host of its own; the cause is not known yet (issue 14's chaos work is where it belongs).
Needs root (network namespaces), g++ and, the first time, PyPI; if libzt cannot be had the test fails (no skip).
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as a script inside the namespace: make `hactl` and `tests` importable
    sys.path.insert(0, str(REPO))

from hactl.zt.endpoint import Endpoint  # noqa: E402
from hactl.zt.identity import Identity  # noqa: E402
from hactl.zt.inetaddress import InetAddress  # noqa: E402
from hactl.zt.root import Root  # noqa: E402
from hactl.zt.world import Root as WorldRoot, World, WorldType  # noqa: E402
from tests.zt import vectors as v  # noqa: E402
from tests.zt.libzt.harness import ServeProc, serve_main  # noqa: E402

ROOT_PORT, MEMBER_PORTS = 9993, (29994, 29995)
ROOT_HOST = 100  # 10.203.N.100, where test_libzt_node.controller_host puts its namespace
ECHO_PORT = 7001
WORLD_ID = 0x5EED0001


# --- the root process (runs inside its namespace) ----------------------------------------------------------------

def serve(identity: Identity, planet: World, bind: tuple[str, int]) -> None:
    """Print JSON lines {"event": "status", "stats": ...} every 500 ms. Stdin lines `planet <hex>` replace the
    planet served (Root.set_planet); exit when stdin closes."""
    def emit(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        root = Root(identity, planet)
        ep = Endpoint(root, bind, on_request=lambda r: None, tick_ms=250)
        await ep.start()
        emit({"event": "ready", "address": f"{identity.address:010x}", "bind": list(ep.local_address)})
        loop = asyncio.get_running_loop()
        closed = asyncio.Event()

        def read_stdin() -> None:
            for line in sys.stdin:
                cmd, _, arg = line.strip().partition(" ")
                if cmd == "planet":
                    w = World.decode(bytes.fromhex(arg))
                    loop.call_soon_threadsafe(root.set_planet, w)

            loop.call_soon_threadsafe(closed.set)

        threading.Thread(target=read_stdin, daemon=True).start()
        while not closed.is_set():
            emit({"event": "status", "stats": root.stats(), "planet_ts": root.planet.timestamp})
            try:
                await asyncio.wait_for(closed.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        await ep.stop()

    asyncio.run(main())


# --- the test ----------------------------------------------------------------------------------------------------

def root_proc(prefix: list[str], secret: str, planet_hex: str, bind: tuple[str, int],
              log: Path) -> ServeProc:
    """This file's `--serve` process."""
    return ServeProc("root", Path(__file__).resolve(), prefix, secret, planet_hex, bind, log, REPO)


def make_planet(root: Identity, host: str, ts: int) -> World:
    # The planet's update key is the root's own key here (any C25519 key pair would do).
    return World.make(WorldType.PLANET, WORLD_ID, ts, root.public_key,
                      [WorldRoot(root.public_only(), (InetAddress(IPv4Address(host), ROOT_PORT),))],
                      sign_with=root.private_key or b"")


def test_libzt_members_through_our_root(libzt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.zt.libzt.harness import rerun_on_crash
    from tests.zt.libzt.netns import NetNS

    def attempt(n: int) -> None:
        with NetNS(3) as ns:
            scenario(libzt, ns, tmp_path / f"attempt{n}")
    # libzt 1.8.4 crashes in lwIP's IPv6 TCP output (tcp_output, on connect or close: gdb backtraces with
    # HACTL_LIBZT_GDB=1) in many runs of this IPv6-only (ad-hoc network) scenario, so it gets more tries.
    rerun_on_crash(attempt, "libzt root test", tries=6)


def echo(member, addr: str, data: str) -> dict:  # type: ignore[no-untyped-def]
    from tests.zt.libzt.harness import NodeCrashed
    last: Exception | None = None
    for _ in range(3):  # the first SYN can be lost while the members still learn each other
        try:
            return member.call("echo", wait=40, addr=addr, port=ECHO_PORT, data=data, timeout=30)
        except NodeCrashed:
            raise
        except Exception as e:  # noqa: BLE001
            last = e
    raise AssertionError(f"echo failed: {last}")


def scenario(libzt, ns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.zt.libzt.harness import NodeProc
    from tests.zt.test_libzt_node import controller_host
    tmp_path.mkdir(parents=True)
    t0 = time.monotonic()
    ident = Identity.from_string(v.ROOT_SECRET)
    host = f"10.203.{ns.subnet}.{ROOT_HOST}"
    planet = make_planet(ident, host, ts=1000)
    procs: list[Any] = []
    hosts: list[str] = []
    try:
        rootns = controller_host(ns)  # 10.203.N.100 on the bridge, arp_ignore in the harness namespace
        hosts.append(rootns)
        root = root_proc(["ip", "netns", "exec", rootns], ident.to_string(True), planet.encode().hex(),
                        (host, ROOT_PORT), tmp_path / "root.log")
        procs.append(root)
        assert root.ready.wait(20), root.log_tail()

        members = []
        for i, port in enumerate(MEMBER_PORTS):
            ns.separate_host(1 + i)
            m = NodeProc(f"m{i}", libzt, tmp_path / f"m{i}.log", prefix=ns.host_cmd(1 + i, []))
            procs.append(m)
            m.call("start", storage=str(tmp_path / f"m{i}"), port=port, planet=planet.encode().hex())
            members.append(m)
        for m in members:
            assert m.call("wait_online", wait=30, timeout=25)["online"], f"{m.name} never online"
        t_online = time.monotonic() - t0
        # "online" alone does not prove a path (appendix C 4): the root must have learned both members' paths,
        # which takes their authenticated OK to our HELLO.
        root.wait("members' paths learned", lambda s: s["stats"].get("peers_added", 0) >= 2, 20)

        nwid = "ff" + f"{ECHO_PORT:04x}" * 2 + "000000"
        for m in members:
            m.call("join", nwid=nwid)
        nets = [m.call("wait_network", wait=45, nwid=nwid, family="inet6", timeout=40)["net"] for m in members]
        for net in nets:
            assert net["status"] == "OK" and net["ipv6"], net
        members[1].call("listen", port=ECHO_PORT, addr="::")
        # lwIP keeps a new IPv6 address tentative for its duplicate address detection (about 3 s); a connect from
        # a member that has no usable source address yet crashes libzt 1.8.4 (SIGSEGV in tcp_output).
        time.sleep(5)

        msg = "hello through our root " * 20
        got = echo(members[0], nets[1]["ipv6"], msg)
        assert got["data"] == msg
        t_echo = time.monotonic() - t0
        st = root.wait("relaying and RENDEZVOUS",
                       lambda s: s["stats"].get("relayed", 0) >= 1 and s["stats"].get("rendezvous_sent", 0) >= 2, 10)
        stats = st["stats"]
        assert stats.get("whois_answered", 0) >= 1, stats
        assert "dropped.internal_error" not in stats, stats

        # A newer planet: pushed in OK(HELLO) to members that report the older one, stored by libzt as `roots`.
        newer = make_planet(ident, host, ts=2000)
        root.send("planet " + newer.encode().hex())
        stored = [tmp_path / f"m{i}" / "roots" for i in range(len(members))]
        # Members send a root a full HELLO (which its OK answers with the newer world) every 60 s: two periods.
        deadline = time.monotonic() + 130
        while time.monotonic() < deadline and not all(p.exists() and p.read_bytes() == newer.encode()
                                                       for p in stored):
            time.sleep(0.5)
        st = root.wait("world pushed", lambda s: s["stats"].get("world_pushed", 0) >= 1, 5)
        for p in stored:
            assert p.exists() and World.decode(p.read_bytes()).timestamp == 2000, p
        stats = st["stats"]
        assert "dropped.internal_error" not in stats, stats
        print(f"\nlibzt root: members online {t_online:.1f}s, echo done {t_echo:.1f}s; root stats {stats}")
    finally:
        for p in procs:
            p.close()
        for h in hosts:
            subprocess.run(["ip", "netns", "del", h], capture_output=True, timeout=20)


if __name__ == "__main__":
    serve_main(serve, "root")
