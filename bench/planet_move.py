"""A root changes address: how long until the cluster commits the newer planet and every real ZeroTier member holds
it, and how the address-change path behaves when two roots move at once. Prints `BENCH <name> <value> <unit>`
lines, and `# ...` lines saying what was done and what was observed.

    python bench/planet_move.py [--members 3] [--push-timeout 140] [--observe 90] [--phases one,two,none-left]

Each phase runs in a fresh tests/zt/libzt/cluster_ns.ZtScene (one throw-away network namespace; needs root, g++
and, the first time, PyPI for libzt's wheel): three `hactl controller run` processes with `zerotier.planet: own`
(every node a root of the cluster's private planet at its own address 10.203.N.2-4, UDP 9993), and --members
libzt 1.8.4 members started with the planet GET /planet served. The members join no network: they only need to be
online at the cluster's roots. libzt keeps the planet it uses as `<member storage>/roots`, compared byte for byte
with GET /planet. Moves are done as an operator would: SIGTERM (ProcCluster.stop), a new `zerotier.bind` in the
node's config (ZtScene.move), start again. Times are from that start (t0):
  commit    GET /planet (asked of a node that did not move, or of a moved one when no other runs) lists every
            moved node at its new endpoint and none at its old one;
  members   every member's roots file equals that planet's bytes (polled every --interval s);
  reattach  every member has sent a packet to the moved root's new endpoint and received one from it (iptables
            counters in the namespace; the root's own root_stats.peers_added also counts the controller identity
            and the other roots, so it says little about members).
A member learns a newer planet only from a root's OK(HELLO), and only from a root at an address its current planet
names. The same counters time the members' HELLOs to the roots that did not move (a HELLO is a burst of packets:
libzt sends it from every local socket; the single packets in between are ECHO keepalives, which carry no
planet), so the `# ...` lines say how much of commit -> members was waiting for the next HELLO.

Phases:
  one        one node moves (1 of 3: the other two keep the quorum and the members stay online through them);
  two        two nodes move at once (a renumbering: both stopped, so no quorum while they are down, both started
             at new addresses): the planet can only be committed once they are back, and the members can only
             learn it from the one root that did not move (they HELLO the roots their planet names, and two of
             those addresses are dead);
  none-left  two nodes move and the third, which stayed at its old address, is stopped before they come back: no
             root answers at any address the members know, so they cannot learn the new planet in-band (ZeroTier
             has no other way). Watched for --observe s; then the third node is started again at its (unchanged)
             address, and the time until the members hold the new planet is reported too.
libzt 1.8.4 segfaults now and then on its own (NodeCrashed); a phase in which a member crashes is said so and run
again once from scratch.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hactl.zt.world import World  # noqa: E402
from tests.zt.libzt import fetch  # noqa: E402
from tests.zt.libzt.cluster_ns import CTRL_ZT_PORT, MEMBER_BASE_PORT, N_CTRL, ZtScene  # noqa: E402
from tests.zt.libzt.harness import NodeCrashed  # noqa: E402
from tests.zt.libzt.netns import NetNS  # noqa: E402

ONLINE_S = 90  # give-up bound for the members' first online (one identity verification per /24 every 2 s)


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def note(msg: str) -> None:
    for line in msg.splitlines() or [""]:
        print(f"# {line}", flush=True)


def ep(addr: str) -> str:
    return f"{addr}/{CTRL_ZT_PORT}"


def endpoints(w: World | None) -> set[str]:
    return {str(e) for r in (w.roots if w else ()) for e in r.stable_endpoints}


def describe(w: World | None) -> str:
    if w is None:
        return "none"
    return f"ts {w.timestamp} [" + ", ".join(f"{r.identity.address:010x}@" + ",".join(str(e) for e in
                                                                                      r.stable_endpoints)
                                            for r in w.roots) + "]"


class PhaseFailed(RuntimeError):
    pass


class Scene:
    """A started ZtScene with `extra` more free addresses (own veths on the namespace's bridge, like other hosts),
    members online at the cluster's roots and holding its planet."""

    def __init__(self, libzt: fetch.Libzt, tmp: Path, members: int, extra: int) -> None:
        self.z = ZtScene(libzt, tmp, members=members, own_planet=True)
        n = len(self.z.ns.addrs)
        self.z.ns = NetNS(n_addrs=n + extra, subnet=self.z.ns.subnet)  # (before start: nothing exists yet)
        # In own-planet mode addrs[0] (the libzt root's) is free; addrs[1..3] are the controllers'; the member
        # addresses are not used by anyone (libzt binds its port on every address); the extra ones are free.
        self.free = [self.z.ns.addrs[0], *self.z.ns.addrs[n:]]
        self.n = members
        self.rules: dict[str, str] = {}  # iptables comment -> what it counts

    @property
    def c(self):  # noqa: ANN201 - the ProcCluster
        assert self.z.cluster is not None
        return self.z.cluster

    def start(self) -> World:
        t = time.monotonic()
        z = self.z
        z.start()
        self.c.wait_ready(timeout=60)
        for m in z.members:
            if not m.call("wait_online", wait=ONLINE_S + 5, timeout=ONLINE_S)["online"]:
                raise PhaseFailed(f"libzt {m.name} never came online at the cluster's roots\n{z.context()}")
        first = World.decode(bytes.fromhex(z.planet_hex))
        z.poll(lambda: all(self.roots_file(i) == first.encode() for i in range(self.n)), 30,
               "every member's roots file == the planet it was started with", interval=0.5)
        z.poll(lambda: all((z.zt_status(n) or {}).get("online") for n in self.c.ids), 60,
               "every hactl node's ZeroTier endpoint online", interval=0.5)
        note(f"scene ready in {time.monotonic() - t:.1f} s: {N_CTRL} controllers, {self.n} libzt members online, "
             f"planet {describe(first)}")
        return first

    def close(self) -> None:
        self.z.close()

    def roots_file(self, i: int) -> bytes | None:
        p = self.z.tmp / f"m{i}" / "roots"
        try:
            return p.read_bytes()
        except OSError:
            return None

    def iptables(self, *rule: str) -> str:
        p = subprocess.run(self.z.ns.cmd(["iptables", "-w", *rule]), capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            raise PhaseFailed(f"iptables {' '.join(rule)}: {p.stderr}")
        return p.stdout

    def count_paths(self, addr: str) -> None:
        """Counting rules (ACCEPT, the policy anyway) for every member's packets to addr:9993 and back."""
        for i in range(self.n):
            port = str(MEMBER_BASE_PORT + i)
            for tag, rule in ((f"m{i}>{addr}", ["-p", "udp", "--sport", port, "-d", addr, "--dport",
                                                str(CTRL_ZT_PORT)]),
                              (f"{addr}>m{i}", ["-p", "udp", "-s", addr, "--sport", str(CTRL_ZT_PORT), "--dport",
                                                port])):
                self.iptables("-A", "OUTPUT", *rule, "-m", "comment", "--comment", tag, "-j", "ACCEPT")
                self.rules[tag] = tag

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.iptables("-L", "OUTPUT", "-v", "-n", "-x").splitlines():
            m = re.search(r"/\* (\S+) \*/", line)
            if m and line.split() and line.split()[0].isdigit():
                out[m.group(1)] = int(line.split()[0])
        return out


class Watch:
    """From t0: the planets the cluster serves, what each member holds and whether it is online, and when every
    member has exchanged packets with each moved root at its new address."""

    def __init__(self, s: Scene, t0: float, moved: dict[str, str], observers: list[str]) -> None:
        self.s, self.t0, self.moved, self.observers = s, t0, moved, observers
        ids = s.c.ids
        # The roots that did not move, at the addresses the members know: when each member sends them packets.
        self.stay_addrs = [s.z.ctrl_addr(i) for i, n in enumerate(ids) if n not in moved]
        self.sent: dict[tuple[int, str], list[tuple[float, int]]] = {}  # (member, addr) -> (t, packets) growths
        self.old_eps = {ep(s.z.ctrl_addr(ids.index(n))) for n in moved}
        self.new_eps = {ep(a) for a in moved.values()}
        self.planets: list[tuple[float, World]] = []     # distinct planets served, first seen
        self.final: World | None = None
        self.t_commit: float | None = None
        self.held: dict[int, list[tuple[float, int | None]]] = {i: [] for i in range(s.n)}  # roots file timestamps
        self.t_member: dict[int, float] = {}
        self.online: dict[int, list[tuple[float, bool]]] = {i: [] for i in range(s.n)}
        self.t_reattach: dict[str, float] = {}
        self.root_stats: dict[str, dict] = {}
        self.first_push: dict[str, float] = {}  # root -> when its world_pushed first grew after t0
        self._push0: dict[str, int] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def tick(self) -> None:
        s, z = self.s, self.s.z
        t = self.now()
        w = None
        for nid in self.observers:
            if nid in s.c.procs:
                try:
                    w = z.planet(nid)
                except OSError:
                    w = None
                if w is not None:
                    break
        if w is not None and (not self.planets or self.planets[-1][1].timestamp != w.timestamp):
            self.planets.append((t, w))
        if w is not None and self.final is None and self.new_eps <= endpoints(w) and \
                not (self.old_eps & endpoints(w)):
            self.final, self.t_commit = w, t
        for i, m in enumerate(z.members):
            online = bool(m.call("status", wait=15).get("online"))
            if not self.online[i] or self.online[i][-1][1] != online:
                self.online[i].append((t, online))
            data = s.roots_file(i)
            try:
                ts = World.decode(data).timestamp if data else None
            except Exception:  # noqa: BLE001 - a file being rewritten
                ts = -1
            if not self.held[i] or self.held[i][-1][1] != ts:
                self.held[i].append((t, ts))
            if self.final is not None and data == self.final.encode() and i not in self.t_member:
                self.t_member[i] = t
        if s.rules:
            cnt = s.counters()
            for i in range(s.n):
                for addr in self.stay_addrs:
                    v = cnt.get(f"m{i}>{addr}", 0)
                    seen = self.sent.setdefault((i, addr), [])
                    if not seen or seen[-1][1] != v:  # (from 0: the rules are added just before t0)
                        seen.append((t, v))
            for nid, addr in self.moved.items():
                if nid not in self.t_reattach and all(cnt.get(f"m{i}>{addr}", 0) > 0 and
                                                      cnt.get(f"{addr}>m{i}", 0) > 0 for i in range(s.n)):
                    self.t_reattach[nid] = t
        for nid in list(s.c.procs):
            st = z.zt_status(nid)
            if st and st.get("root_stats") is not None:
                self.root_stats[nid] = rs = st["root_stats"]
                pushed = rs.get("world_pushed", 0)
                base = self._push0.setdefault(nid, pushed if nid not in self.moved else 0)
                if pushed > base and nid not in self.first_push:
                    self.first_push[nid] = t

    def run(self, until: Callable[[], bool], timeout: float, interval: float) -> bool:
        end = time.monotonic() + timeout
        while True:
            t = time.monotonic()
            self.tick()
            if until():
                return True
            if time.monotonic() > end:
                return False
            time.sleep(max(0.0, interval - (time.monotonic() - t)))

    def members_done(self) -> bool:
        return len(self.t_member) == self.s.n

    def everything(self) -> bool:
        return self.members_done() and len(self.t_reattach) == len(self.moved)

    def report(self, what: str) -> None:
        for t, w in self.planets:
            note(f"  {what}: +{t:5.1f} s GET /planet serves {describe(w)}")
        for i in range(self.s.n):
            held = ", ".join(f"+{t:.1f}s ts {ts}" for t, ts in self.held[i])
            onl = ", ".join(f"+{t:.1f}s {'online' if o else 'OFFLINE'}" for t, o in self.online[i])
            note(f"  {what}: m{i} roots file: {held}; status: {onl}")
        for nid, st in sorted(self.root_stats.items()):
            keys = ("peers_added", "rx.hello", "world_pushed", "relayed", "whois_sent")
            push = f" first push at +{self.first_push[nid]:.1f} s" if nid in self.first_push else ""
            note(f"  {what}: {nid} root_stats " + " ".join(f"{k}={st.get(k, 0)}" for k in keys)
                 + (" (moved)" if nid in self.moved else "") + push)

    def hello_cadence(self) -> str:
        """How often the members HELLO the roots that did not move (only an OK(HELLO) can carry a planet), and the
        first HELLO after the commit. A HELLO is a burst of packets (libzt sends it from every local socket, one
        per address in the namespace); a single packet is an ECHO (a keepalive, which carries no planet)."""
        gaps, sizes, after, echoes = [], [], [], 0
        for (i, addr), seen in self.sent.items():
            hellos = []
            for (ta, va), (tb, vb) in zip(seen, seen[1:]):
                if vb - va >= 2:
                    hellos.append(tb)
                    sizes.append(vb - va)
                else:
                    echoes += 1
            gaps += [b - a for a, b in zip(hellos, hellos[1:])]
            if self.t_commit is not None:
                nxt = [t for t in hellos if t >= self.t_commit]
                if nxt:
                    after.append(nxt[0] - self.t_commit)
        if not sizes:
            return "no member HELLO to a root that did not move was counted after t0"
        gaps.sort()
        sizes.sort()
        cad = (f"every {gaps[len(gaps) // 2]:.1f} s (median; {gaps[0]:.1f}-{gaps[-1]:.1f} s)" if gaps else
               "(one HELLO per member seen: no interval)")
        return (f"members HELLO each root that did not move {cad}, each HELLO a burst of "
                f"{sizes[len(sizes) // 2]} packets (libzt sends it from every local socket), with single-packet "
                f"ECHO keepalives ({echoes} seen) in between, which carry no planet; first HELLO after the commit: "
                + (f"{min(after):.1f}-{max(after):.1f} s later" if after else "none seen"))

    def offline_span(self) -> tuple[float | None, float | None]:
        """First time any member was seen offline, and the time from then until all were online again."""
        first_off = None
        for i in range(self.s.n):
            for t, o in self.online[i]:
                if not o and (first_off is None or t < first_off):
                    first_off = t
        if first_off is None:
            return None, None
        last_on = 0.0
        for i in range(self.s.n):
            tr = self.online[i]
            if tr and not tr[-1][1]:
                return first_off, None
            last_on = max([last_on] + [t for t, o in tr if o and t >= first_off])
        return first_off, last_on - first_off


def stop(s: Scene, nids: list[str]) -> float:
    """SIGTERM each (one after the other, as ProcCluster.stop waits); the seconds it took."""
    t = time.monotonic()
    for nid in nids:
        code = s.c.stop(nid)
        if code != 0:
            note(f"  {nid} exited {code} on SIGTERM")
    return time.monotonic() - t


def leader_of(s: Scene) -> str | None:
    try:
        return s.c.leader(timeout=10)
    except AssertionError:
        return None


# ---------------------------------------------------------------------------------------------------- phases

def phase_one(s: Scene, args: argparse.Namespace) -> dict[str, float]:
    s.start()
    ids = s.c.ids
    mover, others = ids[0], ids[1:]
    new = s.free[0]
    for a in [new, *(s.z.ctrl_addr(ids.index(n)) for n in others)]:
        s.count_paths(a)
    lead = leader_of(s)
    note(f"phase one: {mover} (leader: {lead == mover}) moves from {s.z.ctrl_addr(0)} to {new}")
    took = stop(s, [mover])
    s.z.move(mover, new)
    t0 = time.monotonic()
    s.c.start(mover)
    note(f"  stopped in {took:.1f} s, started again at {new} (t0)")
    w = Watch(s, t0, {mover: new}, observers=others)
    ok = w.run(lambda: w.everything() and w.now() >= args.min_watch, args.push_timeout, args.interval)
    w.report("one")
    note(f"  {w.hello_cadence()}")
    out: dict[str, float] = {}
    if w.t_commit is None:
        raise PhaseFailed(f"phase one: no planet with {mover} at {new} within {args.push_timeout} s")
    out["planet_move_commit_s"] = w.t_commit
    if w.members_done():
        out["planet_move_members_s"] = max(w.t_member.values())
        out["planet_move_commit_to_members_s"] = max(w.t_member.values()) - w.t_commit
    else:
        note(f"  members without the new planet after {args.push_timeout} s: "
             f"{[i for i in range(s.n) if i not in w.t_member]}")
    if mover in w.t_reattach:
        out["planet_move_reattach_s"] = w.t_reattach[mover]
    off, back = w.offline_span()
    note("  no member was seen offline" if off is None else
         f"  a member was offline from +{off:.1f} s, all online again after {back} s")
    if not ok:
        note(f"  phase one incomplete after {args.push_timeout} s")
    return out


def phase_two(s: Scene, args: argparse.Namespace) -> dict[str, float]:
    s.start()
    ids = s.c.ids
    stay, movers = ids[0], ids[1:]
    new = dict(zip(movers, s.free[:2]))
    for a in [*new.values(), s.z.ctrl_addr(0)]:
        s.count_paths(a)
    lead = leader_of(s)
    moves = ", ".join(f"{n} {s.z.ctrl_addr(ids.index(n))} -> {a}" for n, a in new.items())
    note(f"phase two: {movers[0]} and {movers[1]} move at once ({moves}); {stay} stays (leader was {lead})")
    before = s.z.planet(stay)
    took = stop(s, movers)
    t_down = time.monotonic()
    for n, a in new.items():
        s.z.move(n, a)
    time.sleep(args.down)
    during = s.z.planet(stay)
    st = s.c.status(stay) or {}
    note(f"  both stopped in {took:.1f} s; {args.down:.0f} s later {stay} is {st.get('cluster', {}).get('role')} "
         f"(leader {st.get('cluster', {}).get('leader')!r}) and GET /planet "
         f"{'still serves the old planet' if during == before else 'serves ' + describe(during)}")
    online_down = [bool(m.call("status").get("online")) for m in s.z.members]
    note(f"  members online while both were down: {online_down}")
    t0 = time.monotonic()
    for n in movers:
        s.c.start(n)
    note(f"  both started again at their new addresses (t0; down {t0 - t_down:.1f} s)")
    w = Watch(s, t0, new, observers=[stay])
    ok = w.run(lambda: w.everything() and w.now() >= args.min_watch, args.push_timeout, args.interval)
    w.report("two")
    note(f"  {w.hello_cadence()}")
    out: dict[str, float] = {}
    if w.t_commit is None:
        raise PhaseFailed(f"phase two: no planet with both moved nodes at their new addresses within "
                          f"{args.push_timeout} s")
    newer = [x for x in w.planets if x[1].timestamp > (before.timestamp if before else 0)]
    note(f"  {len(newer)} newer planet(s) committed after t0" +
         ("" if len(newer) < 2 else ": one per moved node's root record (each node commits its own new "
                                    "endpoint, and the leader re-plans after each)"))
    out["planet_move2_commit_s"] = w.t_commit
    if w.members_done():
        out["planet_move2_members_s"] = max(w.t_member.values())
        out["planet_move2_commit_to_members_s"] = max(w.t_member.values()) - w.t_commit
    else:
        note(f"  members without the new planet after {args.push_timeout} s: "
             f"{[i for i in range(s.n) if i not in w.t_member]}")
    for n in movers:
        if n in w.t_reattach:
            out[f"planet_move2_reattach_{n}_s"] = w.t_reattach[n]
    if len(w.t_reattach) == len(movers):
        out["planet_move2_reattach_s"] = max(w.t_reattach.values())
    pushed = {n: st_.get("world_pushed", 0) for n, st_ in w.root_stats.items()}
    note(f"  world_pushed per root (OK(HELLO)s carrying the newer planet): {pushed}")
    off, back = w.offline_span()
    note("  members online during the move: " + ("always" if off is None else
                                                 f"offline from +{off:.1f} s, back after {back} s"))
    if not ok:
        note(f"  phase two incomplete after {args.push_timeout} s")
    return out


def phase_none_left(s: Scene, args: argparse.Namespace) -> dict[str, float]:
    first = s.start()
    ids = s.c.ids
    stay, movers = ids[0], ids[1:]
    new = dict(zip(movers, s.free[:2]))
    note(f"phase none-left: {movers[0]} and {movers[1]} move at once, and {stay} (still at "
         f"{s.z.ctrl_addr(0)}) is stopped before they come back: no root at any address the members know")
    for a in [*new.values(), s.z.ctrl_addr(0)]:
        s.count_paths(a)
    took = stop(s, movers)
    for n, a in new.items():
        s.z.move(n, a)
    took += stop(s, [stay])
    t0 = time.monotonic()
    for n in movers:
        s.c.start(n)
    note(f"  all three stopped ({took:.1f} s), the two moved started again (t0)")
    w = Watch(s, t0, new, observers=movers)
    w.run(lambda: w.t_commit is not None, 60, args.interval)
    if w.t_commit is None:
        w.report("none-left")
        raise PhaseFailed("phase none-left: the two moved nodes committed no planet with their new addresses "
                          "within 60 s")
    note(f"  the two moved nodes committed {describe(w.final)} at +{w.t_commit:.1f} s")
    w.run(lambda: False, max(0.0, args.observe - w.now()), args.interval)
    w.report("none-left")
    changed = [i for i in range(s.n) if s.roots_file(i) != first.encode()]
    online = [bool(m.call("status").get("online")) for m in s.z.members]
    note(f"  after {w.now():.0f} s: members whose roots file changed: {changed or 'none'}; online now: {online}")
    first_off = [next((t for t, o in w.online[i] if not o), None) for i in range(s.n)]
    note(f"  members first seen offline at: {['never' if t is None else f'+{t:.1f}s' for t in first_off]}")
    out: dict[str, float] = {}
    if not args.recover:
        return out
    # The third node comes back at its old address (which the members' planet names): they learn from it.
    t1 = time.monotonic()
    s.c.start(stay)
    note(f"  {stay} started again at its unchanged address {s.z.ctrl_addr(0)} (t1)")
    w2 = Watch(s, t1, new, observers=[stay])
    w2.final = w.final
    w2.run(w2.everything, args.push_timeout, args.interval)
    w2.report("recover")
    sent = w2.sent.get((0, s.z.ctrl_addr(0)), [])
    note(f"  m0 sent packets to {stay}'s address at: " + ", ".join(f"+{t:.1f}s" for t, _ in sent[1:7])
         + " (after t1)")
    if w2.members_done():
        out["planet_move_none_left_recover_s"] = max(w2.t_member.values())
    if len(w2.t_reattach) == len(new):
        out["planet_move_none_left_reattach_s"] = max(w2.t_reattach.values())
    else:
        note(f"  members still without the new planet {args.push_timeout} s after {stay} came back")
    off, back = w2.offline_span()
    if off is not None and back is not None:
        note(f"  every member online again {off + back:.1f} s after t1")
    return out


PHASES: dict[str, tuple[Callable[[Scene, argparse.Namespace], dict[str, float]], int]] = {
    "one": (phase_one, 0), "two": (phase_two, 1), "none-left": (phase_none_left, 1)}


def run_phase(name: str, libzt: fetch.Libzt, tmp: Path, args: argparse.Namespace) -> bool:
    fn, extra = PHASES[name]
    for attempt in range(2):
        s = Scene(libzt, tmp / f"{name}-{attempt}", args.members, extra)
        t = time.monotonic()
        try:
            out = fn(s, args)
        except NodeCrashed as e:
            note(f"phase {name}: libzt crashed ({str(e).splitlines()[0]})"
                 + ("; running the phase again from scratch" if attempt == 0 else "; giving up on this phase"))
            continue
        except (PhaseFailed, AssertionError) as e:
            note(f"phase {name} FAILED: {str(e)[:6000]}")
            return False
        finally:
            s.close()
        for k, v in out.items():
            bench(k, v, "s")
        note(f"phase {name} took {time.monotonic() - t:.0f} s")
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--push-timeout", type=float, default=140.0,
                    help="give-up bound for the members to hold the new planet (they HELLO each root every 60 s)")
    ap.add_argument("--observe", type=float, default=90.0, help="none-left: how long to watch the stranded members")
    ap.add_argument("--down", type=float, default=3.0, help="two: seconds both moved nodes stay down")
    ap.add_argument("--interval", type=float, default=0.5, help="polling interval")
    ap.add_argument("--min-watch", type=float, default=25.0,
                    help="one, two: watch at least this long after t0 (to see a few member HELLOs)")
    ap.add_argument("--no-recover", dest="recover", action="store_false",
                    help="none-left: do not start the third node again afterwards")
    ap.add_argument("--phases", default="one,two,none-left")
    ap.add_argument("--dir", help="work directory (kept); default: a temporary one, deleted")
    args = ap.parse_args()
    try:
        libzt = fetch.ensure()
    except fetch.LibztUnavailable as e:
        print(f"planet_move: libzt 1.8.4 is needed and could not be prepared:\n{e}", file=sys.stderr)
        return 1
    t = time.monotonic()
    ok = True
    with tempfile.TemporaryDirectory(prefix="planet-move-") as td:
        tmp = Path(args.dir) if args.dir else Path(td)
        for name in [p.strip() for p in args.phases.split(",") if p.strip()]:
            if name not in PHASES:
                print(f"unknown phase {name!r} (known: {', '.join(PHASES)})", file=sys.stderr)
                return 2
            ok = run_phase(name, libzt, tmp, args) and ok
    note(f"total {time.monotonic() - t:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
