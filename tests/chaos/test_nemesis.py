"""The chaos suite's fault injection does what it says, checked with real traffic between real namespaces and with
real controller processes (one 3-node ChaosCluster for the module, plus one member host). Needs root."""
from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from hactl.dev.cluster import node_ids
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import (KINDS, Ctx, Flap, Kill, Move, Nemesis, Netem, OneWay, Pause, PartitionFollower,
                                 PartitionLeaderMinority, SlowDiskFault, State)
from tests.chaos.net import NFT_TABLE, ChaosNet, connect_time
from tests.chaos.slowdisk import SlowDisk, build


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosCluster]:
    tmp = tmp_path_factory.mktemp("chaos")
    with ChaosNet(node_ids(3), members=1) as net, ChaosCluster(tmp / "cluster", net) as c:
        c.start_all()
        c.wait_ready(timeout=60)
        yield c
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.hub not in leftovers, leftovers


@pytest.fixture
def c(chaos: ChaosCluster) -> Iterator[ChaosCluster]:
    """The module's cluster, healthy before the test and made healthy again after it."""
    chaos.wait_ready(timeout=60)
    yield chaos
    Nemesis(chaos, chaos.net, random.Random(0)).heal_all()
    chaos.wait_ready(timeout=60)


def ctx(c: ChaosCluster) -> Ctx:
    return Ctx(c, c.net)


def ctrl_address(c: ChaosCluster) -> str:
    return c.status(c.leader())["address"]


def write_everywhere(c: ChaosCluster, what: str) -> None:
    """A network created through every node (ProcCluster.write: one Idempotency-Key, retried until answered)."""
    ctrl = ctrl_address(c)
    for nid in c.ids:
        code, body = c.write(nid, "POST", f"/controller/network/{ctrl}______", {"name": f"{what}-{nid}"}, timeout=30)
        assert code == 200, (nid, code, body)


def shaped(net: ChaosNet, nid: str) -> bool:
    s = net.shaping(nid)
    return "netem" in s or "NFQUEUE" in s


def proc_state(c: ChaosCluster, nid: str) -> str:
    """R, S, T (stopped)... of the controller's main thread."""
    return Path(f"/proc/{c.procs[nid].pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def control(c: ChaosCluster, nid: str) -> tuple[str, int]:
    return c.net.addr(nid), c.ctrl_port(nid)


# ---------------------------------------------------------------------- slow disk (no cluster)

FSYNC_PROG = """
import ctypes, mmap, os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600); os.write(fd, b"x" * 4096)
m = mmap.mmap(fd, 4096)
libc = ctypes.CDLL(None, use_errno=True)
calls = [("fsync", lambda: os.fsync(fd)), ("fdatasync", lambda: os.fdatasync(fd)), ("msync", lambda: m.flush()),
         ("sync_file_range", lambda: libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), 2))]
for name, call in calls:
    t = time.monotonic(); call(); print(name, time.monotonic() - t)
"""


def fsync_times(tmp: Path, env: dict[str, str]) -> dict[str, float]:
    p = subprocess.run([sys.executable, "-c", FSYNC_PROG, str(tmp / "data")], env=dict(os.environ, **env),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return {line.split()[0]: float(line.split()[1]) for line in p.stdout.splitlines()}


def test_slowdisk_delays_every_sync_call_by_the_control_file_and_not_when_0(tmp_path: Path) -> None:
    so = build()
    ctl = SlowDisk(tmp_path / "ctl")
    data = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path  # tmpfs: the real calls cost ~nothing
    d = Path(data) / f"slowdisk-test-{uuid.uuid4().hex}"
    d.mkdir()
    try:
        ctl.set(100)
        slow = fsync_times(d, ctl.env(so))
        assert set(slow) == {"fsync", "fdatasync", "msync", "sync_file_range"}
        assert all(t >= 0.1 for t in slow.values()), slow
        ctl.set(0)
        fast = fsync_times(d, ctl.env(so))
        assert all(t < 0.05 for t in fast.values()), fast
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def test_slowdisk_rereads_its_control_file_in_a_running_process(tmp_path: Path) -> None:
    ctl = SlowDisk(tmp_path / "ctl")
    prog = ("import os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "for line in sys.stdin:\n    time.sleep(0.12); t = time.monotonic(); os.fsync(fd)\n"
            "    print(time.monotonic() - t, flush=True)\n")
    p = subprocess.Popen([sys.executable, "-c", prog, str(tmp_path / "f")], env=dict(os.environ, **ctl.env(build())),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        seen = []
        for ms in (150, 0, 150):
            ctl.set(ms)
            p.stdin.write("go\n")
            p.stdin.flush()
            seen.append(float(p.stdout.readline()))
        assert seen[0] >= 0.15 and seen[2] >= 0.15, seen
        assert seen[1] < 0.15, seen  # (the file said 0: no added sleep; the disk's own fsync may take a little)
    finally:
        p.kill()
        p.wait()


# ---------------------------------------------------------------------- the cluster's processes

def test_each_controller_is_its_own_host_with_the_slowdisk_library_loaded(c: ChaosCluster) -> None:
    for nid in c.ids:
        maps = Path(f"/proc/{c.procs[nid].pid}/maps").read_text()
        assert "slowdisk-" in maps, f"{nid} runs without the slow-disk library"
        assert c.status(nid) is not None
        # its API on its own address, reached from the hub
        assert c.hub(lambda nid=nid: connect_time(c.net.addr(nid), c.port(nid))) is not None
        assert c.api_url(nid) == f"http://{c.net.addr(nid)}:{c.port(nid)}"
    # a client process started in the hub namespace reaches every node's API
    prog = ("import sys, urllib.request\nfor u in sys.argv[1:]:\n"
            "    print(urllib.request.urlopen(u + '/health', timeout=5).status)")
    p = subprocess.run(c.hub_cmd([sys.executable, "-c", prog, *(c.api_url(n) for n in c.ids)]), capture_output=True,
                       text=True, timeout=60)
    assert p.stdout.split() == ["200"] * 3, (p.stdout, p.stderr)


def test_slow_disk_fault_slows_the_clusters_writes(c: ChaosCluster) -> None:
    ctrl = ctrl_address(c)
    leader = c.leader()

    def write_time() -> float:
        t = time.monotonic()
        code, _ = c.write(leader, "POST", f"/controller/network/{ctrl}______", {"name": "disk"})
        assert code == 200
        return time.monotonic() - t
    nem = Nemesis(c, c.net, random.Random(1))
    events = [nem.begin(SlowDiskFault(ctx(c), node=n, ms=150)) for n in c.ids]  # every node: a quorum needs it
    slow = statistics.median(write_time() for _ in range(3))
    for ev in events:
        nem.end(ev)
    assert slow >= 0.15, f"writes took {slow:.3f}s with 150 ms fsyncs"
    assert all(s.ms == 0 for s in c.slow.values())


# ---------------------------------------------------------------------- network faults

def test_partition_leader_minority_cuts_controllers_only_both_ways_and_heals(c: ChaosCluster) -> None:
    leader = c.leader()
    rest = [n for n in c.ids if n != leader]
    net = c.net
    nem = Nemesis(c, net, random.Random(2))
    ev = nem.begin(PartitionLeaderMinority(ctx(c), group=(leader,), rest=tuple(rest)))
    try:
        for f in rest:
            assert net.tcp_connect(net.node[leader].ns, *control(c, f), timeout=1) is None, f"{leader} -> {f}"
            assert net.tcp_connect(net.node[f].ns, *control(c, leader), timeout=1) is None, f"{f} -> {leader}"
        # clients still reach the cut-off leader: from the hub and from a member host
        assert c.hub(lambda: connect_time(net.addr(leader), c.port(leader))) is not None
        assert net.tcp_connect(net.member[0].ns, net.addr(leader), c.port(leader)) is not None
        assert net.tcp_connect(net.node[rest[0]].ns, *control(c, rest[1]), timeout=1) is not None  # majority intact
        new = c.leader(among=rest, timeout=30)
        assert new in rest
    finally:
        nem.end(ev)
    assert ev.error is None and ev.end is not None and ev.nodes == (leader, *rest)
    for f in rest:
        assert net.tcp_connect(net.node[leader].ns, *control(c, f), timeout=2) is not None
    assert "drop" not in net.rules(net.node[leader].ns)
    write_everywhere(c, "after-partition")


def test_partition_follower_keeps_the_leader_and_heals(c: ChaosCluster) -> None:
    leader = c.leader()
    follower = next(n for n in c.ids if n != leader)
    net = c.net
    nem = Nemesis(c, net, random.Random(3))
    ev = nem.begin(PartitionFollower(ctx(c), group=(follower,), rest=tuple(n for n in c.ids if n != follower)))
    try:
        assert net.tcp_connect(net.node[follower].ns, *control(c, leader), timeout=1) is None
        code, _ = c.write(leader, "POST", f"/controller/network/{ctrl_address(c)}______", {"name": "p"}, timeout=20)
        assert code == 200
        assert c.leader(among=[n for n in c.ids if n != follower]) == leader
    finally:
        nem.end(ev)
    assert net.tcp_connect(net.node[follower].ns, *control(c, leader), timeout=2) is not None


def test_one_way_drops_only_one_direction(c: ChaosCluster) -> None:
    a, b = c.ids[0], c.ids[1]
    net = c.net
    ns_a, ns_b = net.node[a].ns, net.node[b].ns
    assert net.udp_reaches(ns_b, ns_a, net.addr(a)) and net.udp_reaches(ns_a, ns_b, net.addr(b))
    nem = Nemesis(c, net, random.Random(4))
    ev = nem.begin(OneWay(ctx(c), receiver=a, sender=b))
    try:
        assert not net.udp_reaches(ns_b, ns_a, net.addr(a)), f"{a} still receives {b}"
        assert net.udp_reaches(ns_a, ns_b, net.addr(b)), f"{b} no longer receives {a}"
        c3 = c.ids[2]
        assert net.udp_reaches(net.node[c3].ns, ns_a, net.addr(a)), f"{a} no longer receives {c3}"
    finally:
        nem.end(ev)
    assert net.udp_reaches(ns_b, ns_a, net.addr(a))


def test_netem_adds_delay_both_ways_and_heals(c: ChaosCluster) -> None:
    nid = c.ids[2]
    net = c.net

    def rtt() -> float:
        t = c.hub(lambda: connect_time(net.addr(nid), c.port(nid), timeout=5))
        assert t is not None
        return t
    nem = Nemesis(c, net, random.Random(5))
    ev = nem.begin(Netem(ctx(c), node=nid, delay_ms=60))
    try:
        assert shaped(net, nid), net.shaping(nid)
        delayed = min(rtt() for _ in range(3))
        assert delayed >= 0.115, f"TCP connect took {delayed:.3f}s with 60 ms each way"  # SYN + SYN-ACK: 120 ms
    finally:
        nem.end(ev)
    assert not shaped(net, nid), net.shaping(nid)
    # loss, jitter and reordering are accepted too (what the nemesis draws); the cluster still answers through it
    ev = nem.begin(Netem(ctx(c), node=nid, delay_ms=20, jitter_ms=5, loss_pct=20, reorder_pct=25))
    try:
        s = net.shaping(nid)
        assert net.netem_backend == "nfqueue" or ("loss 20%" in s and "reorder 25%" in s), s
        c.wait(lambda: c.status(nid), 30, f"{nid} answering through 20% loss")
    finally:
        nem.end(ev)
    assert ev.error is None and not shaped(net, nid), net.shaping(nid)


def test_netem_loss_drops_packets(c: ChaosCluster) -> None:
    nid = c.ids[0]
    net = c.net
    nem = Nemesis(c, net, random.Random(11))
    ev = nem.begin(Netem(ctx(c), node=nid, loss_pct=100))
    try:
        assert c.hub(lambda: connect_time(net.addr(nid), c.port(nid), timeout=1)) is None
    finally:
        nem.end(ev)
    assert c.hub(lambda: connect_time(net.addr(nid), c.port(nid), timeout=5)) is not None


def test_flap_takes_the_link_down_and_up_until_healed(c: ChaosCluster) -> None:
    nid = c.ids[1]
    net = c.net
    addr, port = net.addr(nid), c.port(nid)
    nem = Nemesis(c, net, random.Random(6))
    fault = Flap(ctx(c), node=nid, period=(0.3, 0.4), seed=6)
    ev = nem.begin(fault)
    ok = failed = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if c.hub(lambda: connect_time(addr, port, timeout=0.15)) is None:
                failed += 1
            else:
                ok += 1
            time.sleep(0.05)
    finally:
        nem.end(ev)
    assert fault.flips >= 4 and ok and failed, (fault.flips, ok, failed)
    assert c.hub(lambda: connect_time(addr, port, timeout=3)) is not None


# ---------------------------------------------------------------------- process faults

def test_kill_and_pause_of_the_leader_elect_another_and_heal(c: ChaosCluster) -> None:
    nem = Nemesis(c, c.net, random.Random(7))
    for make in (lambda n: Kill(ctx(c), node=n), lambda n: Pause(ctx(c), node=n)):
        old = c.leader()
        fault = make(old)
        ev = nem.begin(fault)
        try:
            if isinstance(fault, Kill):
                assert old not in c.procs
            else:
                c.wait(lambda: proc_state(c, old) == "T", 5, f"{old} stopped")  # (signals arrive asynchronously)
            new = c.wait_new_leader(old, timeout=30)
            assert new != old
        finally:
            nem.end(ev)
        assert ev.error is None
        c.wait_ready(timeout=60)
        c.wait_caught_up(timeout=60)


def test_move_restarts_the_node_on_a_spare_address_and_the_cluster_works(c: ChaosCluster) -> None:
    """A follower moves, and back; then the leader, and back (one node away from its first address at a time:
    two at once is a product bug, see the suite's report). Each answers on its new address only, and a write
    through every node is answered."""
    net = c.net
    nem = Nemesis(c, net, random.Random(8))
    leader = c.leader()
    follower = next(n for n in c.ids if n != leader)
    for nid in (follower, leader):
        first = net.addr(nid)
        ev = nem.begin(Move(ctx(c), node=nid))
        nem.end(ev)
        new = ev.details["new"]
        assert ev.error is None and new != first and net.addr(nid) == new and ev.details["old"] == first
        assert new in net.node_addrs[nid] and c.api_url(nid) == f"http://{new}:{c.port(nid)}"
        c.wait(lambda nid=nid: c.status(nid), 60, f"{nid} answering on {new}")
        assert c.hub(lambda first=first, nid=nid: connect_time(first, c.port(nid), timeout=1)) is None
        c.wait_ready(timeout=60)
        write_everywhere(c, f"moved-{nid}")
        ev = nem.begin(Move(ctx(c), node=nid, new=first))
        nem.end(ev)
        assert ev.error is None and net.addr(nid) == first
        c.wait_ready(timeout=60)
        write_everywhere(c, f"back-{nid}")


# ---------------------------------------------------------------------- the nemesis

def test_nemesis_choices_follow_the_seed_and_the_state(c: ChaosCluster) -> None:
    st = State(free=list(c.ids), leader=c.ids[0], down=set())
    picks = [[Nemesis(c, c.net, random.Random(42)).next_fault(st).describe() for _ in range(1)] for _ in range(2)]
    assert picks[0] == picks[1]
    nem = Nemesis(c, c.net, random.Random(9))
    kinds = {nem.next_fault(st).kind for _ in range(300)}
    assert kinds == set(KINDS), kinds
    # no leader known: no partition that needs one; a node down: nothing that takes another away (3 nodes)
    no_leader = {nem.next_fault(State(list(c.ids), None, set())).kind for _ in range(200)}
    assert not no_leader & {"partition_leader_minority", "partition_follower"}
    one_down = {nem.next_fault(State(c.ids[1:], c.ids[1], {c.ids[0]})).kind for _ in range(200)}
    assert one_down <= {"netem", "slow_disk"}, one_down


def test_nemesis_runs_faults_records_them_and_heal_all_leaves_nothing(c: ChaosCluster) -> None:
    # (max_moved=1: two nodes away from their first addresses at once split the cluster for good, a product bug)
    nem = Nemesis(c, c.net, random.Random(10), duration=(0.3, 0.8), max_concurrent=2, max_moved=1)
    stop = threading.Event()
    t = threading.Thread(target=nem.run, args=(stop,), kwargs={"gap": (0.1, 0.3)})
    t.start()
    time.sleep(8)
    stop.set()
    t.join(timeout=60)
    assert not t.is_alive()
    # and a few left active on purpose for heal_all
    ev_p = nem.begin(Pause(ctx(c), node=c.ids[0]))
    ev_n = nem.begin(Netem(ctx(c), node=c.ids[1], delay_ms=30, loss_pct=10))
    ev_s = nem.begin(SlowDiskFault(ctx(c), node=c.ids[2], ms=50))
    nem.heal_all()
    assert all(e.end is not None for e in (ev_p, ev_n, ev_s))
    report = nem.report()
    assert len(report) >= 5, report
    for e in report:
        assert e["error"] is None, e
        assert e["kind"] in KINDS and e["nodes"] and e["description"].startswith(e["kind"])
        assert e["start"] <= e["injected"] <= e["heal_start"] <= e["end"], e
    net = c.net
    for nid in c.ids:
        assert "drop" not in net.rules(net.node[nid].ns)
        assert not shaped(net, nid), net.shaping(nid)
        assert nid in c.procs
        c.wait(lambda nid=nid: proc_state(c, nid) != "T", 5, f"{nid} running")
        assert c.slow[nid].ms == 0
    assert NFT_TABLE in net.rules(net.node[c.ids[0]].ns)
    c.wait_ready(timeout=60)
    write_everywhere(c, "after-nemesis")
