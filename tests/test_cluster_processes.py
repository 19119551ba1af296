"""Three real controller processes on loopback: forming, kill -9, SIGSTOP, restarts, snapshots, refusals."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.proc_cluster import ProcCluster



def member_addr(i: int, salt: int = 0) -> str:
    return f"{(0x1000000000 + salt * 0x10000000 + i):010x}"


def net_path(addr: str) -> str:
    return f"/controller/network/{addr}______"


def test_forms_writes_anywhere_read_everywhere_and_sigterm_exits_0(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    assert len(ctrl) == 10 and all(c.status(n)["address"] == ctrl for n in c.ids)  # one logical controller
    nets = {}
    for nid in c.ids:
        code, net = c.write(nid, "POST", net_path(ctrl), {"name": f"via-{nid}"})
        assert code == 200 and net["id"].startswith(ctrl)
        nets[nid] = net["id"]
        # read-your-writes on the node that took the write, even with a local read
        code, got, _ = c.request(nid, "GET", f"/controller/network/{net['id']}?consistency=local")
        assert code == 200 and got["name"] == f"via-{nid}"
    follower = next(n for n in c.ids if c.status(n)["cluster"]["role"] == "follower")
    code, m = c.write(follower, "POST", f"/controller/network/{nets[c.ids[0]]}/member/{member_addr(1)}",
                      {"authorized": True})
    assert code == 200 and m["authorized"] is True
    for nid in c.ids:  # linearizable reads on every node see every acknowledged write
        code, ids, _ = c.request(nid, "GET", "/controller/network")
        assert code == 200 and sorted(ids) == sorted(nets.values())
        code, members, _ = c.request(nid, "GET", f"/controller/network/{nets[c.ids[0]]}/member")
        assert code == 200 and members == {member_addr(1): 1}
    for nid in c.ids:
        assert c.stop(nid) == 0


def test_kill_leader_loses_no_acknowledged_write_and_restart_catches_up(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    _, net = c.write(c.ids[0], "POST", net_path(ctrl), {"name": "kill-test"})
    nwid = net["id"]
    leader = c.leader()
    survivors = [n for n in c.ids if n != leader]
    acked: set[str] = set()
    stop = threading.Event()
    killed = threading.Event()
    lock = threading.Lock()

    def writer(k: int) -> None:
        # Writers start on different nodes: started alike they move in lockstep, and when all of them are on the
        # leader as it dies, all wait out their 20 s on a dead node and no write can succeed in the window below.
        i = k
        while not stop.is_set():
            i += 1
            addr = member_addr(i, salt=k + 1)
            targets = survivors if killed.is_set() else c.ids
            try:
                code, _ = c.write(targets[i % len(targets)], "POST",
                                  f"/controller/network/{nwid}/member/{addr}", {"name": addr}, timeout=20)
            except (AssertionError, OSError):
                continue  # this client gave up on the node it chose; nothing acknowledged
            if code == 200:
                with lock:
                    acked.add(addr)

    with ThreadPoolExecutor(6) as pool:
        for k in range(6):
            pool.submit(writer, k)
        try:
            # Writes are flowing (and some are in flight on the leader) when it dies.
            c.wait(lambda: len(acked) >= 20, 30, "20 writes acknowledged before the kill")
            before = len(acked)
            c.kill(leader)
            killed.set()
            # The 20 s is a give-up bound for the recovery, not a speed requirement.
            c.wait(lambda: len(acked) > before + 20, 20, "writes to succeed again through the survivors")
            # Keep writing through the survivors for a while: until 20 more writes were acknowledged.
            after = len(acked)
            c.wait(lambda: len(acked) >= after + 20, 30, "20 more writes acknowledged without the killed node")
        finally:
            stop.set()  # the writers stop whatever happened above (else the pool's exit waits forever)
    new_leader = c.leader(among=survivors)
    assert new_leader in survivors
    c.start(leader)  # the killed node comes back from its raft.db and catches up

    def caught_up() -> bool:
        code, members, _ = c.request(leader, "GET", f"/controller/network/{nwid}/member?consistency=local")
        return code == 200 and acked <= set(members)
    c.wait(caught_up, 30, "the restarted node to hold every acknowledged write")
    views = [set(c.request(n, "GET", f"/controller/network/{nwid}/member")[1]) for n in c.ids]
    assert views[0] == views[1] == views[2] and acked <= views[0]


def test_follower_down_during_20000_writes_rejoins_through_a_snapshot(cluster) -> None:
    c: ProcCluster = cluster(snapshots={"every_entries": 2000, "trailing_entries": 500})
    ctrl = c.wait_ready()
    _, net = c.write(c.ids[0], "POST", net_path(ctrl), {"name": "bulk"})
    nwid = net["id"]
    leader = c.leader()
    down = next(n for n in c.ids if n != leader)
    assert c.stop(down) == 0
    up = [n for n in c.ids if n != down]
    total = 20_000

    def write_range(k: int) -> int:
        ok = 0
        for i in range(k, total, 32):
            code, _ = c.write(up[i % 2], "POST", f"/controller/network/{nwid}/member/{member_addr(i)}", {})
            ok += code == 200
        return ok
    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(write_range, range(32))) == total
    c.start(down)

    def caught_up() -> bool:
        code, members, _ = c.request(down, "GET", f"/controller/network/{nwid}/member?consistency=local")
        return code == 200 and len(members) == total
    c.wait(caught_up, 120, "the stopped follower to catch up")
    assert c.restarts[down] >= 1, "the follower caught up without installing a snapshot"
    assert "snapshot" in c.log(down)
    code, members, _ = c.request(leader, "GET", f"/controller/network/{nwid}/member")
    assert len(members) == total


def test_frozen_leader_steps_down_nothing_acknowledged_lost_or_doubled(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    leader = c.leader()
    acked: dict[str, str] = {}  # idempotency key -> network id
    current: dict[int, tuple[str, str]] = {}  # writer -> (target, key) of the write it is making now
    lock = threading.Lock()
    stop = threading.Event()

    def writer(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = f"w{k}-{n}-{uuid.uuid4().hex[:6]}"
            target = c.ids[(k + n) % 3]  # some of these land on the frozen leader and wait
            with lock:
                current[k] = (target, key)
            try:
                code, net = c.write(target, "POST", net_path(ctrl), {"name": key}, key=key, timeout=40)
            except (AssertionError, OSError):
                continue
            if code == 200:
                with lock:
                    acked[key] = net["id"]

    with ThreadPoolExecutor(6) as pool:
        for k in range(6):
            pool.submit(writer, k)
        try:
            c.wait(lambda: len(acked) >= 20, 30, "20 writes acknowledged before the freeze")
            c.signal(leader, signal.SIGSTOP)
            with lock:  # writes the other nodes had taken at the freeze: forwarded to the leader, now stuck there
                taken = {key for target, key in current.values() if target != leader}
            new_leader = c.wait_new_leader(leader, timeout=15)
            assert new_leader != leader
            # Stay frozen until those writes are acknowledged: the call to the frozen leader hangs until the apply
            # timeout (504), then the client retries with the same key through the new leader, while the frozen old
            # leader may still hold the first attempt in its log. That is the case "nothing doubled" is about.

            def taken_acked() -> bool:
                with lock:  # the writers add to `acked` meanwhile
                    return taken <= acked.keys()
            c.wait(taken_acked, 45, "the writes taken before the freeze to be acknowledged")
            c.signal(leader, signal.SIGCONT)
            c.wait(lambda: c.role(leader) == "follower", 20, "the old leader to step down after SIGCONT")
            # Keep writing with the old leader back as a follower: until 20 more writes were acknowledged.
            after = len(acked)
            c.wait(lambda: len(acked) >= after + 20, 45, "20 more writes acknowledged after SIGCONT")
        finally:
            stop.set()  # the writers stop whatever happened above (else the pool's exit waits forever)
    names: dict[str, list[str]] = {}
    code, ids, _ = c.request(new_leader, "GET", "/controller/network")
    for nwid in ids:
        _, net, _ = c.request(new_leader, "GET", f"/controller/network/{nwid}")
        names.setdefault(net["name"], []).append(nwid)
    doubled = {k: v for k, v in names.items() if len(v) > 1}
    assert not doubled, f"writes applied twice: {doubled}"
    lost = {k for k in acked if k not in names}
    assert not lost, f"acknowledged writes lost: {sorted(lost)[:5]}"
    assert all(names[k] == [v] for k, v in acked.items())
    for nid in c.ids:
        _, ids_n, _ = c.request(nid, "GET", "/controller/network")
        assert sorted(ids_n) == sorted(ids)


def test_foreign_ca_refused_and_a_connection_without_hello_is_a_router(cluster, tmp_path: Path) -> None:
    from hactl.transport import pki
    from hactl.transport.channel import open_stream
    from hactl.transport.frames import decode

    c: ProcCluster = cluster()
    c.wait_ready()
    target = c.ids[0]
    ctrl_addr = c.specs[target].ctrl_addr
    pki.init_ca(tmp_path / "foreign-ca", "hactl.local")
    pki.issue(tmp_path / "foreign-ca", tmp_path / "foreign", kind="controller", node_id="ctrl9",
              trust_domain="hactl.local")
    pki.issue(c.root / "pki" / "ca", tmp_path / "router", kind="router", node_id="edge1", trust_domain="hactl.local")

    async def probe() -> None:
        foreign = open_stream(ctrl_addr, pki.load_identity_dir(tmp_path / "foreign"))
        with pytest.raises(Exception):
            await asyncio.wait_for(foreign.read(), 10)  # TLS refuses a certificate from another CA
        await foreign.close()
        router = open_stream(ctrl_addr, pki.load_identity_dir(tmp_path / "router"))
        first = decode(await asyncio.wait_for(router.read(), 10))  # says nothing: becomes a router
        assert getattr(first, "id", None) == target
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            routers = c.status(target)["cluster"]["routers"]
            if routers:
                assert routers[0]["id"] == "edge1" and routers[0]["hello"] is False
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the silent connection was not listed as a router")
        await router.close()
    asyncio.run(probe())
    assert c.status(target)["cluster"]["leader"] is not None  # the cluster did not notice


def test_bad_config_exits_nonzero_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: ctrl1\nraft:\n  tick_ms: soon\n")
    out = subprocess.run([sys.executable, "-m", "hactl.cli", "controller", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert str(bad) in out.stderr and "raft.tick_ms" in out.stderr and "expected an integer" in out.stderr


def test_json_logs_carry_the_node_and_its_term(cluster) -> None:
    """log.format: json: every line a JSON object a log shipper can take as is, naming the node and, once Raft
    runs, its term; lines written while an API request is handled name it (X-Request-Id, echoed)."""
    import json
    c = cluster(log={"format": "json", "level": "debug"})
    c.wait_ready()
    code, _, headers = c.request("ctrl2", "GET", "/status", headers={"X-Request-Id": "probe-42"})
    assert code == 200 and headers.get("x-request-id") == "probe-42", headers
    code, _, headers = c.request("ctrl2", "GET", "/status", headers={"X-Request-Id": "not an id: spaces"})
    assert code == 200 and len(headers.get("x-request-id", "")) == 16, headers  # (ours instead)
    c.wait(lambda: any(json.loads(ln).get("request_id") == "probe-42" and "/status" in json.loads(ln)["msg"]
                       for ln in c.log("ctrl2").splitlines() if ln.strip()), 5, "the access line naming probe-42")
    for nid in c.ids:
        lines = [ln for ln in c.log(nid).splitlines() if ln.strip()]
        records = [json.loads(ln) for ln in lines]  # (raises, failing the test, on any line that is not JSON)
        assert records and all(r["node"] == nid and r["level"] in ("debug", "info", "warning", "error", "critical")
                               and r["ts"].endswith("+00:00") for r in records), lines[:5]
        assert any(r.get("term", 0) >= 1 for r in records), lines[-5:]


def test_killing_the_leader_is_told_by_the_survivors_events(cluster) -> None:
    """Each node's event file (events: [{type: file}]) names it as event_src_id. After a kill -9 of the leader
    the survivors report peer.disconnected for it, one reports leadership.gained, and both report
    state.has_leader with the new leader, at a higher term."""
    import json
    c = cluster(events=[{"type": "file", "namespaces": ["cluster"]}])
    c.wait_ready()
    old = c.leader()
    files = {nid: c.specs[nid].data_dir / "events.jsonl" for nid in c.ids}

    def events(nid: str) -> list[dict]:
        p = files[nid]
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
    c.wait(lambda: any(e["eventType"] == "leadership.gained" for e in events(old)), 10, f"{old}'s leadership event")
    old_term = next(e["term"] for e in events(old) if e["eventType"] == "leadership.gained")
    c.kill(old)
    survivors = [n for n in c.ids if n != old]
    new = c.wait_new_leader(old)

    def told(nid: str) -> bool:
        evs = events(nid)
        return any(e["eventType"] == "state.has_leader" and e["leaderId"] == new and e["term"] > old_term
                   for e in evs) and any(e["eventType"] == "peer.disconnected" and e["peer"] == old for e in evs)
    c.wait(lambda: all(told(n) for n in survivors), 20, f"both survivors to report {new} leading")
    assert any(e["eventType"] == "leadership.gained" and e["term"] > old_term for e in events(new))
    for nid in c.ids:
        assert events(nid) and all(e["event_src_id"] == nid and e["namespace"] == "cluster" for e in events(nid))
