"""`hactl dev up` as a user runs it: supervised controllers, restart on crash, clean stop, resume with data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.proc_cluster import free_port_block, poll


def wait(cond, timeout: float, what: str):
    """Poll until `cond()` is true (a missing or half-written state file counts as "not yet")."""
    def tolerant():
        try:
            return cond()
        except (ValueError, KeyError, TypeError, StopIteration):
            return None
    return poll(tolerant, timeout, what, interval=0.2)


def api(url: str, token: str, method: str = "GET", body: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-ZT1-Auth": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_up_supervises_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    base = free_port_block(6)
    cmd = [sys.executable, "-m", "hactl.cli", "dev", "up", "--data", str(data), "--base-port", str(base)]
    log = open(tmp_path / "dev-up.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        state_file = data / "dev-cluster.json"
        state = wait(lambda: json.loads(state_file.read_text()) if all(
            n["pid"] for n in json.loads(state_file.read_text())["nodes"]) else None, 30, "dev-cluster.json")
        assert [n["id"] for n in state["nodes"]] == ["ctrl1", "ctrl2", "ctrl3"]
        assert set(state["nodes"][0]) >= {"id", "pid", "api_url", "ctrl_addr", "data_dir", "agent_socket"}
        token = Path(state["token_file"]).read_text().strip()
        assert os.stat(state["token_file"]).st_mode & 0o777 == 0o600
        urls = [n["api_url"] for n in state["nodes"]]
        addr = wait(lambda: api(urls[0] + "/status", token)[1]["address"], 30, "the cluster to initialise")
        code, net = wait(lambda: (lambda r: r if r[0] == 200 else None)(
            api(f"{urls[1]}/controller/network/{addr}______", token, "POST", {"name": "survives"})), 30, "a write")
        # a crashed controller is restarted by the supervisor (new pid) and serves again
        victim = state["nodes"][2]
        os.kill(victim["pid"], signal.SIGKILL)
        new_pid = wait(lambda: next(n["pid"] for n in json.loads(state_file.read_text())["nodes"]
                                    if n["id"] == "ctrl3" and n["pid"] != victim["pid"]), 30, "a restart")
        assert pid_alive(new_pid)
        wait(lambda: api(f"{urls[2]}/controller/network/{net['id']}", token)[0] == 200, 30, "ctrl3 back")
        pids = [n["pid"] for n in json.loads(state_file.read_text())["nodes"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        code_ = proc.wait(60)
    assert code_ == 0
    assert not any(pid_alive(p) for p in pids), "dev up left controllers running"
    # running it again on the same data resumes the same cluster
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        got = wait(lambda: (lambda r: r if r[0] == 200 else None)(
            api(f"{urls[0]}/controller/network/{net['id']}", token)), 40, "the resumed cluster")
        assert got[1]["name"] == "survives"
        assert api(urls[2] + "/status", token)[1]["address"] == addr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log.close()


def test_dev_zt_host_binds_each_node_and_records_its_endpoint(tmp_path: Path) -> None:
    import pytest
    import yaml

    from hactl.config import load
    from hactl.dev.cluster import DevInitError, Supervisor, init_cluster

    data = tmp_path / "data"
    from hactl.zt.world import zerotier_planet
    planet = tmp_path / "planet"
    planet.write_bytes(b"not a planet")
    with pytest.raises(DevInitError, match="not a serialized planet"):
        init_cluster(tmp_path / "d0", 3, zt_host="10.203.77.1", zt_planet=str(planet))
    planet.write_bytes(zerotier_planet().encode())
    base = free_port_block(6)
    specs = init_cluster(data, 3, base_port=base, zt_host="10.203.77.1", zt_planet=str(planet))
    assert [s.zt_endpoint for s in specs] == [f"10.203.77.1/{base + 2 * i}" for i in range(3)]
    for s in specs:
        cfg = load(s.config)
        assert cfg.zerotier.bind == s.zt_endpoint.replace("/", ":") and cfg.zerotier.planet == str(planet)
    Supervisor(data, specs, str(planet)).write_state()
    state = json.loads((data / "dev-cluster.json").read_text())
    assert [n["zt_endpoint"] for n in state["nodes"]] == [s.zt_endpoint for s in specs]
    assert state["planet"] == str(planet)
    # Resuming without --zt-host turns the endpoints off; the rest of each config is kept.
    again = init_cluster(data, 3, base_port=base)
    assert [s.zt_endpoint for s in again] == ["", "", ""]
    assert load(again[0].config).zerotier.bind == "" and load(again[0].config).api.listen.endswith(str(base))
    # ZeroTier never uses loopback; a planet without an address to bind is a mistake.
    for kwargs in ({"zt_host": "127.0.0.1"}, {"zt_host": "0.0.0.0"}, {"zt_host": "ctrl1"},
                   {"zt_planet": str(planet)}):
        with pytest.raises(DevInitError):
            init_cluster(data, 3, base_port=base, **kwargs)


def test_dev_up_zt_hosts_makes_the_nodes_the_roots_of_the_planet_it_writes(tmp_path: Path) -> None:
    """`hactl dev up --zt-hosts A,B,C` (inside a throw-away network namespace holding those addresses): each node
    binds its own address, and once the cluster has committed its planet, <data>/planet holds it (three roots,
    one per node at its address), named by dev-cluster.json for members to be given."""
    from hactl.zt.world import World, WorldType
    from tests.zt.libzt.netns import NetNS

    data = tmp_path / "data"
    base = free_port_block(6)
    with NetNS(3) as ns:
        cmd = ns.cmd([sys.executable, "-m", "hactl.cli", "dev", "up", "--data", str(data), "--base-port", str(base),
                      "--zt-hosts", ",".join(ns.addrs)])
        log = open(tmp_path / "dev-up.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            state_file = data / "dev-cluster.json"
            planet_file = data / "planet"
            want = sorted(f"{a}/{base + 2 * i}" for i, a in enumerate(ns.addrs))

            def planet() -> World | None:
                w = World.decode(planet_file.read_bytes())
                return w if sorted(str(e) for r in w.roots for e in r.stable_endpoints) == want else None
            world = wait(planet, 60, f"{planet_file} listing the three nodes' endpoints")
            assert world.type == WorldType.PLANET and len(world.roots) == 3
            state = wait(lambda: json.loads(state_file.read_text()) if json.loads(state_file.read_text())["planet"]
                         else None, 10, "dev-cluster.json naming the planet")
            assert state["planet"] == str(planet_file)
            assert [n["zt_endpoint"] for n in state["nodes"]] == [f"{a}/{base + 2 * i}" for i, a in enumerate(ns.addrs)]
            identities = {Path(n["data_dir"], "zt", "identity.public").read_text().strip() for n in state["nodes"]}
            assert {str(r.identity) for r in world.roots} == identities
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            log.close()
        assert code == 0, (tmp_path / "dev-up.log").read_text()[-3000:]
    import pytest
    from hactl.dev.cluster import DevInitError, init_cluster
    with pytest.raises(DevInitError, match="2 addresses for 3 nodes"):
        init_cluster(tmp_path / "d1", 3, zt_hosts=["10.203.77.1", "10.203.77.2"])
    with pytest.raises(DevInitError, match="not both"):
        init_cluster(tmp_path / "d1", 3, zt_host="10.203.77.1", zt_hosts=["10.203.77.1"] * 3)
