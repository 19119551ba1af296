"""A chaos run: a three-node cluster on separate (namespace) hosts, clients recording a history, real ZeroTier
members, and a nemesis injecting faults; then everything healed and checked.

    python -m tests.chaos.run --seconds 3600 --seed 7 --work /tmp/chaos-7      (or: make chaos SECONDS=3600 SEED=7)

What is checked at the end (Report.checks; any failure fails the run):
  linearizable      every key's history (member fields + revision counter, network creates) is linearizable
                    (tests/chaos/lincheck.py), including reads made on every node after healing with
                    ?consistency=local: every acknowledged write is on every node
  caught_up         every node has applied the leader's commit index within CATCH_UP_S of healing (none stuck)
  identical_dumps   `hactl db dump` is the same on every node
  no_wrong_answers  no answer outside the API's promises (a 500, a 404 for a member that exists...)
  read_back         every node answered every final read (else lincheck would not see what it lacks)
  zerotier          no libzt member authorized throughout lost its config, and each ends with the latest one
Reported: operations, faults, write unavailability per fault kind (tests/chaos/report.py), the checker's time.
A failing run prints its seed and the history file; `python -m tests.chaos.lincheck HISTORY` replays the check.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hactl.dev.cluster import node_ids
from tests.chaos import lincheck
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import KINDS, Nemesis
from tests.chaos.net import ChaosNet
from tests.chaos.report import FaultWindow, Report, ack_times, unavailability
from tests.chaos.ztwatch import ZtMembers
from tests.zt.libzt import fetch

log = logging.getLogger("chaos")
REPO = Path(__file__).resolve().parents[2]
CATCH_UP_S = 60.0       # after healing, every node must have applied the leader's commit index within this
START_S = 90.0          # give-up bound for the cluster's start
CHECK_TIMEOUT_S = 120.0  # lincheck budget per key


@dataclass
class Options:
    seconds: float
    seed: int
    work: Path
    clients: int = 6
    members: int = 0         # member keys the clients write (0: by length, so each key's history stays checkable)
    zt_members: int = 2
    kinds: tuple[str, ...] = KINDS
    fault_s: tuple[float, float] = (1.0, 6.0)
    gap_s: tuple[float, float] = (0.5, 3.0)
    max_concurrent: int = 1

    def member_keys(self) -> int:
        return self.members or max(8, int(self.seconds / 30))


def member_addresses(n: int, rng: random.Random) -> list[str]:
    """n distinct member addresses (40 bits, not 0, not ff...: the API refuses those)."""
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rng.randrange(1, 0xff00000000):010x}")
    return sorted(out)


class Run:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed)
        self.work = opts.work
        self.history = self.work / "history.jsonl"
        self.urls_file = self.work / "urls.json"
        self.report = Report(seed=opts.seed, seconds=opts.seconds)

    def workload(self, cluster: ChaosCluster, extra: list[str], timeout: float) -> dict[str, Any]:
        """tests.chaos.workload in the hub namespace; its summary line."""
        argv = cluster.hub_cmd([sys.executable, "-m", "tests.chaos.workload",
                                "--urls", ",".join(cluster.api_url(n) for n in cluster.ids),
                                "--urls-file", str(self.urls_file),
                                "--token", cluster.token, "--out", str(self.history), *extra])
        p = subprocess.run(argv, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
        (self.work / "workload.log").open("a").write(p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"workload exited {p.returncode}: {p.stderr[-3000:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def execute(self) -> Report:
        o, rep = self.o, self.report
        self.work.mkdir(parents=True, exist_ok=True)
        self.history.unlink(missing_ok=True)
        shutil.rmtree(self.work / "cluster", ignore_errors=True)  # a previous run's data in the same --work
        libzt = fetch.ensure() if o.zt_members else None
        ids = node_ids(3)
        with ChaosNet(ids, members=o.zt_members) as net, ChaosCluster(self.work / "cluster", net) as cluster:
            cluster.start_all()
            ctrl = cluster.wait_ready(timeout=START_S)
            code, body = cluster.write(ids[0], "POST", f"/controller/network/{ctrl}______", {"name": "chaos"})
            assert code == 200, (code, body)
            nwid = body["id"]
            zt = ZtMembers(cluster, libzt, self.work, o.zt_members) if libzt is not None else None
            try:
                if zt is not None:
                    zt.start(ctrl)
                    zt.watch()
                self._chaos(cluster, net, nwid)
            finally:
                if zt is not None:
                    zt.stop()
            nemesis_healed_at = time.monotonic()
            self._after(cluster, nwid, nemesis_healed_at, zt)
            if zt is not None:
                zt.close()
        rep.ok = all(v.get("ok") for v in rep.checks.values())
        (self.work / "report.json").write_text(rep.to_json())
        (self.work / "report.txt").write_text(rep.text() + "\n")
        return rep

    def _chaos(self, cluster: ChaosCluster, net: ChaosNet, nwid: str) -> None:
        o = self.o
        self.members = member_addresses(o.member_keys(), self.rng)
        setup = self.workload(cluster, ["--phase", "setup", "--nwid", nwid, "--members", ",".join(self.members)],
                              timeout=900)
        self.nemesis = Nemesis(cluster, net, random.Random(self.rng.getrandbits(64)), kinds=o.kinds,
                               duration=o.fault_s, max_concurrent=o.max_concurrent)
        stop = threading.Event()
        nem = threading.Thread(target=self.nemesis.run, args=(stop, o.gap_s), name="nemesis", daemon=True)
        urls = threading.Thread(target=self._publish_urls, args=(cluster, stop), name="urls", daemon=True)
        nem.start()
        urls.start()
        try:
            self.summary = self.workload(cluster, ["--nwid", nwid, "--members", ",".join(self.members),
                                                   "--seconds", str(o.seconds), "--clients", str(o.clients),
                                                   "--seed", str(self.rng.getrandbits(32)),
                                                   "--id-start", str(setup["next_id"])],
                                         timeout=o.seconds + 300)
        finally:
            stop.set()
            nem.join(timeout=120)
            urls.join(timeout=10)
            self.nemesis.heal_all()
        self.run_end = time.monotonic()

    def _publish_urls(self, cluster: ChaosCluster, stop: threading.Event) -> None:
        """Keep urls.json (the clients' view of where each node's API is) up to date as nodes move."""
        last: list[str] = []
        while True:
            now = [cluster.api_url(n) for n in cluster.ids]
            if now != last:
                tmp = self.urls_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(now))
                tmp.replace(self.urls_file)  # atomic: a client never reads half a list
                last = now
            if stop.wait(0.1):
                return

    def _after(self, cluster: ChaosCluster, nwid: str, healed_at: float, zt: ZtMembers | None) -> None:
        rep = self.report
        rep.faults = self.nemesis.report()
        # None stuck: every node applies the leader's commit index within CATCH_UP_S.
        try:
            cluster.wait_caught_up(timeout=CATCH_UP_S)
            rep.checks["caught_up"] = {"ok": True, "seconds": round(time.monotonic() - healed_at, 2)}
        except AssertionError as e:
            rep.checks["caught_up"] = {"ok": False, "error": str(e)[:2000]}
        # Every acknowledged write on every node: local reads of everything, into the same history.
        networks_file = self.work / "networks.txt"
        networks_file.write_text("\n".join(self.summary["networks"]) + "\n")
        final = self.workload(cluster, ["--phase", "final", "--nwid", nwid, "--members", ",".join(self.members),
                                        "--networks-file", str(networks_file),
                                        "--id-start", str(self.summary["next_id"])], timeout=600)
        stats = dict(self.summary["stats"])
        for k, v in final["stats"].items():
            stats[f"final.{k}"] = v
        rep.operations = stats
        unexpected = {k: v for k, v in stats.items() if "unexpected" in k}
        rep.checks["no_wrong_answers"] = {"ok": not unexpected, "unexpected": unexpected}
        unread = {k: v for k, v in final["stats"].items() if not k.endswith(".ok")}
        rep.checks["read_back"] = {"ok": not unread, "reads": final["stats"]}  # every node answered every read
        rep.checks["identical_dumps"] = self._dumps(cluster)
        res = lincheck.check_file(self.history, timeout=CHECK_TIMEOUT_S)
        rep.checker = {"seconds": round(res.seconds, 2), "operations": res.operations,
                       "partitions": len(res.partitions), "inconclusive": len(res.inconclusive)}
        rep.checks["linearizable"] = {"ok": res.ok is True,
                                      "result": {True: "linearizable", False: "NOT linearizable",
                                                 None: "inconclusive"}[res.ok],
                                      "failures": [lincheck.format_explanation(p) for p in res.failures][:3],
                                      "inconclusive": [p.key for p in res.inconclusive][:10]}
        history = [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]
        acks = ack_times(history)
        # Measured while the clients ran: after they stop, no write is acknowledged whatever the cluster can do.
        clients_end = max(op["call"] for op in history if op["client"] not in ("setup",) and
                          not str(op["client"]).startswith("final"))
        windows = [FaultWindow(ev.kind, ev.start, ev.end or self.run_end, ev.description)
                   for ev in self.nemesis.events if ev.start < clients_end]
        rep.add_unavailability([unavailability(acks, w, clients_end) for w in windows])
        if zt is not None:
            names = zt.wait_latest_name()
            summary = zt.summary()
            lost = {m: s for m, s in summary.items() if s["lost"] and not s["crashed"]}
            stale = {m: n for m, n in names.items() if n != zt.names[-1]}
            rep.checks["zerotier"] = {"ok": not lost and not stale and any(not s["crashed"] for s in summary.values()),
                                      "members": summary, "latest_name": zt.names[-1], "names": names}

    def _dumps(self, cluster: ChaosCluster) -> dict[str, Any]:
        """`hactl db dump` of every node, compared; retried while a node is still applying (its own writes)."""
        dumps: dict[str, str] = {}
        for _ in range(5):
            cluster.wait_caught_up(timeout=CATCH_UP_S)
            for nid in cluster.ids:
                p = subprocess.run([sys.executable, "-m", "hactl.cli", "db", "dump", "--data",
                                    str(cluster.specs[nid].data_dir)], capture_output=True, text=True, timeout=120)
                dumps[nid] = p.stdout if p.returncode == 0 else f"exit {p.returncode}: {p.stderr}"
            if len(set(dumps.values())) == 1:
                return {"ok": True, "lines": dumps[cluster.ids[0]].count("\n")}
            time.sleep(1)
        for nid, text in dumps.items():
            (self.work / f"dump-{nid}.jsonl").write_text(text)
        return {"ok": False, "error": "dumps differ; see dump-<node>.jsonl in " + str(self.work)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="where the history, logs and report go")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--zt-members", type=int, default=2)
    ap.add_argument("--kinds", default=",".join(KINDS), help="fault kinds, comma-separated")
    ap.add_argument("--concurrent", type=int, default=1, help="faults at once (1 or 2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = args.work or Path(f"/tmp/hactl-chaos-{args.seed}-{int(time.time())}")
    opts = Options(args.seconds, args.seed, work, clients=args.clients, zt_members=args.zt_members,
                   kinds=tuple(args.kinds.split(",")), max_concurrent=args.concurrent)
    rep = Run(opts).execute()
    print(rep.text())
    print(f"history: {work / 'history.jsonl'}  report: {work / 'report.json'}")
    if not rep.ok:
        print(f"FAILED: seed {opts.seed}; replay the check with: python -m tests.chaos.lincheck "
              f"{work / 'history.jsonl'}")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
