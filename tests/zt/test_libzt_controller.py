"""End to end against real ZeroTier: libzt 1.8.4 members get their configs from a three-node hactl cluster.

Inside one throw-away network namespace (tests/zt/libzt/cluster_ns.py): a libzt root whose planet every node
uses, three `hactl controller run` processes answering on UDP as the cluster's one controller identity, and libzt
members. Everything the tests do to the network goes through the cluster's JSON API; everything they observe on
the members goes through libzt's own API (addresses, routes, name) and real TCP connections over ZeroTier.

libzt 1.8.4 never reports ACCESS_DENIED (its status is a copy taken at the last config callback, see
zerotier-protocol.md appendix C.8), so a refusal is observed as: the member's record exists unauthorized, and the
member gets no address; a deauthorization as: TCP to and from the member fails while the others still talk.

Two scenarios, each with its own namespace, root and cluster:
- refused until authorized, then addresses from the pool and TCP; a route and name change pushed long before the
  60 s refresh; a deauthorized member cut off within seconds;
- the controller node serving the members killed (kill -9), later another one frozen (SIGSTOP): new members are
  authorized through the survivors and get their configs, the first members keep talking.
Needs root (network namespaces), g++ and, the first time, PyPI (libzt's wheel). If libzt cannot be had, the tests
fail with the reason (they never skip). A run in which libzt itself crashes (it segfaults now and then) is run again
from scratch, at most three times.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.zt.libzt import fetch
from tests.zt.libzt.cluster_ns import ZtScene
from tests.zt.libzt.harness import NodeCrashed, NodeError, NodeProc, rerun_on_crash

POOL_START, POOL_END = "10.147.17.10", "10.147.17.250"
BASE_ROUTE = {"target": "10.147.17.0/24", "via": None}
PUSHED_ROUTE = {"target": "10.148.0.0/16", "via": "10.147.17.1"}
PUSHED_NAME = "e2e-pushed"
ECHO_PORT = 7000

# Give-up bounds (not speed requirements) unless named *_LIMIT_S. Going online is slow here: a ZeroTier node
# verifies at most one new identity per source /24 every 2 s (Node::rateGateIdentityVerification), and every node
# of the scenario is in one /24, so the root lets the members in one per HELLO round (~5 s).
ONLINE_S = 60
RECORD_S = 40       # a joined member's record appears (first request ~5 s after the join)
REFUSED_HOLD_S = 7  # an unauthorized member is watched this long (more than one ~5 s re-request) for an address
CONFIG_S = 40       # an authorized member has its IPv4 address
FAILOVER_CONFIG_S = 60
PUSH_LIMIT_S = 15   # "well before the 60 s refresh"
CUTOFF_LIMIT_S = 10  # a deauthorized member is unreachable within this long


def run_scenario(libzt: fetch.Libzt, tmp_path: Path, members: int, scenario: Callable[["E2E"], None],
                 **scene: Any) -> None:
    """scenario(E2E) in a fresh ZtScene (`scene`: its options), run again if libzt crashes."""
    def attempt(n: int) -> None:
        with ZtScene(libzt, tmp_path / f"attempt{n}", members=members, **scene) as z:
            e2e = E2E(z)
            try:
                scenario(e2e)
            finally:
                e2e.summary()
    rerun_on_crash(attempt, "libzt controller test")


class E2E:
    """The steps the scenarios share, on one ZtScene."""

    def __init__(self, z: ZtScene) -> None:
        self.z = z
        self.marks: list[tuple[str, float]] = []
        self.frozen: tuple[str, ...] = ()
        self.ctrl = ""
        self.nwid = ""
        self.ips: dict[int, str] = {}  # member index -> its ZeroTier IPv4 address

    @property
    def c(self):  # the ProcCluster
        assert self.z.cluster is not None
        return self.z.cluster

    def mark(self, what: str) -> None:
        self.marks.append((what, self.z.elapsed()))
        self.log(f"== {what}")

    def log(self, what: str) -> None:
        print(f"[{self.z.elapsed():6.1f}s] {what}", flush=True)

    def summary(self) -> None:
        print(f"\n{' / '.join(f'{w} {t:.1f}s' for w, t in self.marks)}")
        if self.z.cluster is not None:
            for nid in self.c.ids:
                if nid in self.c.procs and nid not in self.frozen:
                    zt = self.z.zt_status(nid) or {}
                    print(f"  {nid}: online={zt.get('online')} members_online={zt.get('members_online')} "
                          f"stats={zt.get('stats')}")

    def poll(self, cond: Callable, timeout: float, what: str, interval: float = 0.2):
        return self.z.poll(cond, timeout, what, skip=self.frozen, interval=interval)

    def fail(self, msg: str) -> None:
        pytest.fail(f"{msg}\n{self.z.context(skip=self.frozen)}", pytrace=True)

    def live(self) -> list[str]:
        """Controllers that are running and not frozen."""
        return [n for n in self.c.ids if n in self.c.procs and n not in self.frozen]

    def member(self, i: int) -> NodeProc:
        return self.z.members[i]

    def addr(self, i: int) -> str:
        return self.z.member_info[i]["node_id"]

    def member_path(self, i: int) -> str:
        return f"/controller/network/{self.nwid}/member/{self.addr(i)}"

    def record(self, i: int, via: str) -> dict | None:
        code, body, _ = self.c.request(via, "GET", self.member_path(i))
        return body if code == 200 else None

    # ------------------------------------------------------------------ steps

    def start(self) -> None:
        z = self.z
        z.start()
        self.mark("started")
        self.ctrl = self.c.wait_ready(timeout=30)
        for n in [n for n in [z.root, *z.members] if n is not None]:  # (no libzt root: the cluster's own planet)
            if not n.call("wait_online", wait=ONLINE_S + 5, timeout=ONLINE_S)["online"]:
                self.fail(f"libzt {n.name} never came online at its roots")
            self.log(f"libzt {n.name} online")
        self.mark("libzt online")

        def all_online() -> bool:
            sts = [z.zt_status(n) for n in self.c.ids]
            return all(st and st.get("online") for st in sts)
        self.poll(all_online, ONLINE_S, "every hactl node's ZeroTier endpoint online at its roots "
                                        "(/status zerotier.online)")
        for nid in self.c.ids:
            st = z.zt_status(nid)
            assert st["address"] == self.ctrl, st  # one controller identity, three endpoints
            assert st["endpoint"] == f"{z.ctrl_addr(self.c.ids.index(nid))}/9993", st
        self.mark("controllers online")
        code, net = self.c.write(self.c.ids[1], "POST", f"/controller/network/{self.ctrl}______", {
            "name": "e2e", "private": True, "v4AssignMode": {"zt": True},
            "ipAssignmentPools": [{"ipRangeStart": POOL_START, "ipRangeEnd": POOL_END}], "routes": [BASE_ROUTE]})
        assert code == 200 and net["id"].startswith(self.ctrl), (code, net)
        self.nwid = net["id"]

    def join(self, idxs: list[int]) -> None:
        for i in idxs:
            self.member(i).call("join", nwid=self.nwid)

    def wait_records(self, idxs: list[int]) -> dict[int, dict]:
        """Until the joined members' records exist (they asked for a config); checks what they recorded."""
        via = self.live()
        recs: dict[int, dict] = {}

        def have_all() -> bool:
            for k, i in enumerate(idxs):
                if i not in recs:
                    r = self.record(i, via[k % len(via)])
                    if r is not None and r.get("identity"):
                        recs[i] = r
            return len(recs) == len(idxs)
        self.poll(have_all, RECORD_S, f"the member records of {[self.addr(i) for i in idxs]} to appear with "
                                      "their identities (the members' config requests reaching the cluster)",
                  interval=0.5)
        for i, r in recs.items():
            assert r["identity"] == self.z.member_info[i]["identity_public"], (i, r)
            assert (r["vMajor"], r["vMinor"], r["vRev"]) == (1, 8, 4), r  # libzt 1.8.4 is ZeroTier 1.8.4
            assert r["vProto"] >= 11, r
        return recs

    def check_refused(self, idxs: list[int]) -> None:
        """Unauthorized members stay unauthorized and get no address for a while (more than one re-request)."""
        end = time.monotonic() + REFUSED_HOLD_S
        while time.monotonic() < end:
            for i in idxs:
                net = self.member(i).call("status", nwid=self.nwid)["net"]
                if net["ipv4"] or net["status"] == "OK":
                    self.fail(f"m{i} ({self.addr(i)}) got a config while unauthorized: {net}")
            time.sleep(0.5)
        for i in idxs:
            r = self.record(i, self.live()[0])
            assert r is not None and r["authorized"] is False and r["ipAssignments"] == [], r

    def authorize(self, idxs: list[int], via: list[str] | None = None) -> None:
        via = via or self.live()
        for k, i in enumerate(idxs):
            code, r = self.c.write(via[k % len(via)], "POST", self.member_path(i), {"authorized": True})
            assert code == 200 and r["authorized"] is True, (code, r)

    def wait_addresses(self, idxs: list[int], timeout: float = CONFIG_S) -> dict[int, str]:
        """Until each member has its IPv4 address; checks them against the pool and the records."""
        got: dict[int, str] = {}
        for i in idxs:
            try:
                net = self.member(i).call("wait_network", wait=timeout + 5, nwid=self.nwid, family="inet",
                                          timeout=timeout)["net"]
            except NodeError as e:  # (a crash is NodeCrashed, not a NodeError: it goes up to run_scenario)
                self.fail(f"authorized m{i} ({self.addr(i)}) got no IPv4 address within {timeout}s: "
                          f"{str(e).splitlines()[0]}")
            got[i] = net["ipv4"]
        pool = (ipaddress.ip_address(POOL_START), ipaddress.ip_address(POOL_END))
        for i, ip in got.items():
            assert pool[0] <= ipaddress.ip_address(ip) <= pool[1], (i, ip)
            r = self.record(i, self.live()[0])
            assert r is not None and r["authorized"] is True and r["ipAssignments"] == [ip], (i, ip, r)
        all_ips = [ip for i, ip in sorted(self.ips.items()) if i not in got] + list(got.values())
        assert len(set(all_ips)) == len(all_ips), all_ips
        self.ips.update(got)
        return got

    def listen(self, idxs: list[int]) -> None:
        for i in idxs:
            self.member(i).call("listen", port=ECHO_PORT, addr="0.0.0.0")

    def echo(self, src: int, dst: int, tries: int = 3, timeout: float = 15) -> dict:
        """TCP echo from member src to member dst's IPv4 address over ZeroTier; the first connection may need a
        retry while the members learn each other (MULTICAST_LIKE ~5 s after a config, ARP retried)."""
        msg = f"m{src} to m{dst} over zerotier " * 10
        last = None
        for k in range(tries):
            t0 = time.monotonic()
            try:
                got = self.member(src).call("echo", wait=timeout + 10, addr=self.ips[dst], port=ECHO_PORT,
                                            data=msg, timeout=timeout)
                assert got["data"] == msg, got
                self.log(f"echo m{src} -> m{dst} ok (try {k + 1}, connect {got['connect_s']}s)")
                return got
            except NodeCrashed:
                raise
            except NodeError as e:
                self.log(f"echo m{src} -> m{dst} try {k + 1} failed ({time.monotonic() - t0:.1f}s): "
                         f"{str(e).splitlines()[0][-80:]}")
                last = e
        self.fail(f"TCP echo m{src} -> m{dst} ({self.ips[dst]}) failed {tries} times: "
                  f"{str(last).splitlines()[0] if last else ''}")
        raise AssertionError  # not reached

    def echo_fails(self, src: int, dst: int, timeout: float = 3) -> bool:
        """One short TCP echo attempt that is expected to fail; True if it did."""
        t0 = time.monotonic()
        try:
            self.member(src).call("echo", wait=timeout + 10, addr=self.ips[dst], port=ECHO_PORT, data="x" * 32,
                                  timeout=timeout)
            self.log(f"echo m{src} -> m{dst} succeeded ({time.monotonic() - t0:.1f}s)")
            return False
        except NodeCrashed:
            raise
        except NodeError as e:
            self.log(f"echo m{src} -> m{dst} failed as expected ({time.monotonic() - t0:.1f}s): "
                     f"{str(e).splitlines()[0][-80:]}")
            return True

    def serving(self, among: list[str], required: bool = True) -> tuple[str, dict[str, int]]:
        """The controller node the members talk to: most members_online in /status zerotier (ties: the Raft
        leader, whose loss hurts most). `required`: fail if no node reports any member online."""
        counts, leader = {}, None
        for nid in among:
            st = self.c.status(nid) or {}
            counts[nid] = (st.get("zerotier") or {}).get("members_online") or 0
            if st.get("cluster", {}).get("role") == "leader":
                leader = nid
        best = max(among, key=lambda n: (counts[n], n == leader))
        if required and counts[best] == 0:
            self.fail(f"no controller node reports members online (/status zerotier.members_online): {counts}")
        return best, counts


# ---------------------------------------------------------------------- scenario 1


def refused_authorized_push_deauthorize(t: E2E) -> None:
    t.start()
    members = [0, 1, 2]
    t.join(members)
    recs = t.wait_records(members)
    assert all(r["authorized"] is False for r in recs.values()), recs
    t.mark("records")
    t.check_refused(members)
    t.mark("refused")
    t.authorize(members)
    t.wait_addresses(members)
    t.mark("addresses")
    t.listen(members)
    t.echo(0, 1)
    t.echo(1, 0)
    t.echo(2, 0)
    t.mark("tcp")

    # A route (and a new name) added through the API reaches the online members by push.
    code, net = t.c.write(t.live()[2], "POST", f"/controller/network/{t.nwid}",
                          {"name": PUSHED_NAME, "routes": [BASE_ROUTE, PUSHED_ROUTE]})
    assert code == 200 and len(net["routes"]) == 2, (code, net)
    t0 = time.monotonic()
    want = {"target": PUSHED_ROUTE["target"].split("/")[0], "via": PUSHED_ROUTE["via"]}

    def pushed() -> bool:
        for i in members:
            info = t.member(i).call("net_info", nwid=t.nwid)["net"]
            if info["name"] != PUSHED_NAME or not any(
                    {"target": r["target"], "via": r["via"]} == want for r in info["routes"]):
                return False
        return True
    t.poll(pushed, PUSH_LIMIT_S, f"the new route {PUSHED_ROUTE} and name {PUSHED_NAME!r} on every member "
                                 f"(a push; the members' own refresh comes 60 s after their last config)")
    push_s = time.monotonic() - t0
    t.mark(f"push({push_s:.1f}s)")

    # Deauthorize m2: it can no longer reach the others, and they still talk to each other.
    code, r = t.c.write(t.live()[0], "POST", t.member_path(2), {"authorized": False})
    assert code == 200 and r["authorized"] is False, (code, r)
    t0 = time.monotonic()
    while True:  # attempts one after the other; the first one in which both directions fail must start in time
        started = time.monotonic() - t0
        if started > CUTOFF_LIMIT_S:
            t.fail(f"deauthorized m2 ({t.addr(2)}) still reached m0 over TCP {CUTOFF_LIMIT_S}s after the "
                   "deauthorization")
        if t.echo_fails(2, 0) and t.echo_fails(0, 2):
            break
        time.sleep(0.2)
    cut_s = started
    t.mark(f"cut off({cut_s:.1f}s)")
    assert t.echo_fails(2, 1) and t.echo_fails(1, 2), "deauthorized m2 still talks to m1"
    t.echo(0, 1, tries=2)
    t.echo(1, 0, tries=2)
    t.mark("others still talk")
    check_events(t, members)


def events(t: E2E) -> list[dict]:
    out = []
    for nid in t.c.ids:
        p = t.c.specs[nid].data_dir / "events.jsonl"
        out += [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
    return out


def check_events(t: E2E, members: list[int]) -> None:
    """What the nodes' event files (zerotier and entityChange, every node's view) said about the scenario: each
    member was refused before its authorization, came online, was sent its config (pushed at least once); its
    record was created by its own ZeroTier request (the author of the entity change)."""
    def about(i: int, evs: list[dict]) -> list[dict]:
        return [e for e in evs if e.get("memberId") == t.addr(i) or
                e.get("entityId") == f"{t.nwid}/{t.addr(i)}"]

    def told() -> bool:
        evs = events(t)
        return all({"access.denied", "member.online", "config.sent"} <= {e["eventType"] for e in about(i, evs)}
                   for i in members)
    t.poll(told, 10, "zerotier events about every member")
    for i in members:
        mine = about(i, events(t))
        zt = [e for e in mine if e["namespace"] == "zerotier"]
        assert all(e["networkId"] == t.nwid and e["event_src_id"] in t.c.ids for e in zt), zt
        kinds = [e["eventType"] for e in zt]
        assert kinds.index("access.denied") < kinds.index("config.sent"), kinds  # refused, then authorized
        assert "push" in {e.get("why") for e in zt if e["eventType"] == "config.sent"}, zt  # (the new route)
        created = [e for e in mine if e["namespace"] == "entityChange" and e["eventType"] == "created"]
        assert created and created[0]["metadata"]["author"]["kind"] == "zerotier", created
        assert created[0]["metadata"]["author"]["member"] == t.addr(i)
        assert created[0]["finalState"]["authorized"] is False


def test_members_refused_until_authorized_then_addresses_tcp_push_and_deauthorization(
        libzt: fetch.Libzt, tmp_path: Path) -> None:
    run_scenario(libzt, tmp_path, 3, refused_authorized_push_deauthorize, config={"events": [
        {"type": "file", "namespaces": ["zerotier", "entityChange"], "propagate_always": True}]})


# ---------------------------------------------------------------------- scenario 2


def kill_and_freeze(t: E2E) -> None:
    t.start()
    t.join([0, 1])
    t.wait_records([0, 1])
    t.authorize([0, 1])
    t.wait_addresses([0, 1])
    t.listen([0, 1, 2, 3])
    t.echo(0, 1)
    t.mark("m0,m1 talk")

    # kill -9 the node that served them; a third member is authorized through a survivor and gets its config.
    killed, counts = t.serving(t.c.ids)
    print(f"\nmembers_online before the kill: {counts}; killing {killed}")
    t.c.kill(killed)
    t.mark(f"killed {killed}")
    t.join([2])
    survivors = t.live()
    t.wait_records([2])
    t.mark("m2 record")
    t.authorize([2], via=[survivors[-1]])
    t.wait_addresses([2], timeout=FAILOVER_CONFIG_S)
    t.mark("m2 config")
    t.echo(0, 1)
    t.echo(1, 0)
    t.echo(2, 0)
    t.mark("tcp after kill")

    # The killed node comes back; then the node serving now is frozen, and a fourth member gets its config.
    t.c.start(killed)
    t.c.wait_caught_up(timeout=30)
    t.poll(lambda: (t.z.zt_status(killed) or {}).get("online"), ONLINE_S, f"restarted {killed} online at the root")
    t.mark(f"{killed} back")
    frozen, counts = t.serving([n for n in t.c.ids if n != killed], required=False)
    print(f"members_online before the freeze: {counts}; freezing {frozen} (another node than the killed one)")
    t.c.signal(frozen, signal.SIGSTOP)
    t.frozen = (frozen,)
    try:
        t.mark(f"froze {frozen}")
        t.join([3])
        t.wait_records([3])
        t.mark("m3 record")
        t.authorize([3])
        t.wait_addresses([3], timeout=FAILOVER_CONFIG_S)
        t.mark("m3 config")
        t.echo(0, 1)
        t.echo(1, 0)
        t.echo(3, 1)
        t.mark("tcp while frozen")
    finally:
        t.c.signal(frozen, signal.SIGCONT)
        t.frozen = ()
    t.c.wait_caught_up(timeout=30)  # the thawed node is part of the cluster again
    t.mark(f"{frozen} thawed")


def test_members_keep_working_when_the_serving_controller_is_killed_or_frozen(
        libzt: fetch.Libzt, tmp_path: Path) -> None:
    run_scenario(libzt, tmp_path, 4, kill_and_freeze)
