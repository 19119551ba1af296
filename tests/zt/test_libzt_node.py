"""Our Node + Endpoint against REAL ZeroTier (libzt 1.8.4), in throw-away network namespaces:

  10.203.N.1    a libzt root (the planet's only root, made by the harness), in the harness's namespace
  (any)         a libzt member that joins (A << 24) | 1, A = the controller's address, same namespace
  10.203.N.100  our controller: this file run as a subprocess (`--serve`), an Endpoint with a test-only
                on_request that answers every request with a static signed config; in a second namespace whose
                veth is a port of the same bridge, i.e. a separate host on the namespace's LAN

The member finds the controller the way real nodes do: WHOIS via the root, its request relayed by the root, our
answer relayed back (and RENDEZVOUS/HELLO for a direct path). Asserted: our node reports online with the libzt
root, the member's network status is OK with the IPv4 address from our config, and our stats show the request.
Needs root (network namespaces), g++ and, the first time, PyPI; if libzt cannot be had the test fails (no skip).

Why a second namespace: libzt binds one socket per interface address with SO_BINDTODEVICE. Inside one namespace
every address is local, so a plain socket's datagrams to the root go through `lo` (or arrive on whichever veth
answered ARP) and the root's device-bound socket never sees them (UDP NoPorts). From another namespace they cross
the bridge like a real host's; `arp_ignore=1` in the harness's namespace makes only the veth owning an address
answer ARP for it, so each datagram arrives on the interface the libzt socket is bound to.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as a script inside the namespace: make `hactl` and `tests` importable
    sys.path.insert(0, str(REPO))

from hactl.zt.com import CertificateOfMembership  # noqa: E402
from hactl.zt.endpoint import Endpoint  # noqa: E402
from hactl.zt.identity import Identity  # noqa: E402
from hactl.zt.netconf import CTMD_DEFAULT, build_netconf, new_update_id, sign_chunks  # noqa: E402
from hactl.zt.node import ConfigRequest, Node  # noqa: E402
from hactl.zt.world import World  # noqa: E402
from tests.zt import vectors as v  # noqa: E402
from tests.zt.libzt.harness import ServeProc, serve_main  # noqa: E402

ROOT_PORT, CONTROLLER_PORT, MEMBER_PORT = 29993, 9993, 29994
MEMBER_IP = "10.147.17.10"
CONTROLLER_HOST = 100  # 10.203.N.100


# --- the controller process (runs inside the namespace) ----------------------------------------------------------

def static_views(nwid: int, member: Identity) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hand-written API views (the shape hactl/fsm/model.py produces): a private network with one route and one
    static IPv4 address, allow-all rules."""
    network = {"id": f"{nwid:016x}", "name": "hactl-node-test", "private": True, "revision": 1, "mtu": 2800,
               "multicastLimit": 32, "enableBroadcast": True, "v6AssignMode": {},
               "routes": [{"target": "10.147.17.0/24", "via": None}],
               "rules": [{"type": "ACTION_ACCEPT", "not": False, "or": False}]}
    return network, {"address": f"{member.address:010x}", "ipAssignments": [MEMBER_IP]}


def serve(identity: Identity, planet: World, bind: tuple[str, int]) -> None:
    """Print JSON lines: {"event": "request", ...} per config request and {"event": "status", ...} every 500 ms;
    exit when stdin closes."""
    def emit(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        def on_request(req: ConfigRequest) -> None:
            nwid = req.request.network_id
            emit({"event": "request", "member": f"{req.source:010x}", "nwid": f"{nwid:016x}",
                  "path": req.path, "hops": req.hops})
            ts = int(time.time() * 1000)
            com = CertificateOfMembership.build(nwid, req.identity, ts, CTMD_DEFAULT).sign(identity)
            network, member = static_views(nwid, req.identity)
            config = build_netconf(network, member, now=ts, com=com).encode()
            ep.node.answer_config(req, sign_chunks(config, nwid, identity, new_update_id()), ep.now())
            ep.flush()

        ep = Endpoint(Node(identity, planet), bind, on_request=on_request, tick_ms=250)
        await ep.start()
        emit({"event": "ready", "address": f"{identity.address:010x}", "bind": list(ep.local_address)})
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        while not stdin_closed.done():
            emit({"event": "status", "status": ep.node.status(ep.now()), "stats": ep.node.stats()})
            await asyncio.sleep(0.5)
        await ep.stop()

    asyncio.run(main())


# --- the test ----------------------------------------------------------------------------------------------------

def controller_proc(prefix: list[str], secret: str, planet_hex: str, bind: tuple[str, int],
                    log: Path) -> ServeProc:
    """This file's `--serve` process."""
    return ServeProc("controller", Path(__file__).resolve(), prefix, secret, planet_hex, bind, log, REPO)


def test_libzt_member_gets_its_config_from_our_node(libzt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.zt.libzt.harness import rerun_on_crash
    from tests.zt.libzt.netns import NetNS

    def attempt(n: int) -> None:
        with NetNS(3) as ns:
            scenario(libzt, ns, tmp_path / f"attempt{n}")
    rerun_on_crash(attempt, "libzt node test")


def scenario(libzt, ns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.zt.libzt.harness import NodeProc
    tmp_path.mkdir(parents=True)
    t0 = time.monotonic()
    controller = Identity.from_string(v.ROOT_SECRET)
    nwid = (controller.address << 24) | 1
    procs: list[Any] = []
    hostns = controller_host(ns)
    try:
        root = NodeProc("root", libzt, tmp_path / "root.log", prefix=ns.cmd([]), role="root")
        procs.append(root)
        made = root.call("make_root", storage=str(tmp_path / "root"), endpoints=[f"{ns.addrs[0]}/{ROOT_PORT}"])
        planet = made["planet"]
        root.call("start", storage=str(tmp_path / "root"), port=ROOT_PORT, planet=planet)

        host = f"10.203.{ns.subnet}.{CONTROLLER_HOST}"
        ctl = controller_proc(["ip", "netns", "exec", hostns], controller.to_string(True), planet,
                             (host, CONTROLLER_PORT), tmp_path / "controller.log")
        procs.append(ctl)
        st = ctl.wait("online", lambda s: s["status"]["online"], 30)
        assert st["status"]["address"] == f"{controller.address:010x}"
        assert [r["address"] for r in st["status"]["roots"]] == [made["node_id"]]
        t_online = time.monotonic() - t0

        member = NodeProc("member", libzt, tmp_path / "member.log", prefix=ns.cmd([]))
        procs.append(member)
        member.call("start", storage=str(tmp_path / "member"), port=MEMBER_PORT, planet=planet)
        assert member.call("wait_online", wait=30, timeout=25)["online"], "member never online"
        member.call("join", nwid=f"{nwid:016x}")
        net = member.call("wait_network", wait=50, nwid=f"{nwid:016x}", family="inet", timeout=45)["net"]
        assert net["status"] == "OK" and net["ipv4"] == MEMBER_IP, net
        t_net = time.monotonic() - t0

        st = ctl.wait("request counted", lambda s: s["stats"].get("requests", 0) >= 1, 5)
        stats = st["stats"]
        member_id = member.call("status")["node_id"]
        assert ctl.requests and ctl.requests[0]["member"] == member_id and ctl.requests[0]["nwid"] == f"{nwid:016x}"
        # The member was unknown to us: its first request came relayed by the root, waited for our WHOIS to the
        # root, and its identity was validated before the request reached the glue.
        assert stats.get("whois_sent", 0) >= 1 and stats.get("validations", 0) >= 1, stats
        assert ctl.requests[0]["hops"] >= 1 and ctl.requests[0]["path"] is None, ctl.requests
        assert "dropped.internal_error" not in stats, stats
        print(f"\nlibzt node: controller online {t_online:.1f}s, member network OK {t_net:.1f}s;"
              f" requests {ctl.requests}; stats {stats}")
    finally:
        for p in procs:
            p.close()
        subprocess.run(["ip", "netns", "del", hostns], capture_output=True, timeout=20)


def controller_host(ns) -> str:  # type: ignore[no-untyped-def]
    """A namespace for our controller, plugged into the harness namespace's bridge (see the module doc)."""
    def ip(*args: str) -> None:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, f"ip {' '.join(args)}: {p.stderr.strip()}"

    name = ns.name + "-c"
    ip("netns", "add", name)
    try:
        ip("-n", ns.name, "link", "add", "c0br", "type", "veth", "peer", "name", "c0", "netns", name)
        ip("-n", ns.name, "link", "set", "c0br", "master", "br0")
        ip("-n", ns.name, "link", "set", "c0br", "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "addr", "add", f"10.203.{ns.subnet}.{CONTROLLER_HOST}/24", "dev", "c0")
        ip("-n", name, "link", "set", "c0", "up")
        p = subprocess.run(ns.cmd(["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"]), capture_output=True,
                           text=True, timeout=20)
        assert p.returncode == 0, p.stderr
    except BaseException:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        raise
    return name


if __name__ == "__main__":
    serve_main(serve, "controller")
