"""Command line for the Raft simulator.

    python -m tests.sim --seeds 10000            run seeds 0..9999 (3 and 5 nodes alternate by seed parity)
    python -m tests.sim --seed 1234 -v           replay one seed, printing its trace (-vv: every message)
    python -m tests.sim --seeds 200 --bug prev-term-commit --scenario figure8   hunt an injected bug

Exit status: 0 when every seed passed, 1 when any failed (their seeds and replay commands are listed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from .buggy import BUGS, bug_kwargs
from .checker import InvariantViolation
from .sim import SCENARIOS, Sim, default_nodes, run_case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, help="run seeds START..START+N-1")
    g.add_argument("--seed", type=int, help="replay one seed")
    ap.add_argument("--start", type=int, default=0, help="first seed for --seeds (default 0)")
    ap.add_argument("--steps", type=int, default=2000, help="steps (ticks) per run (default 2000)")
    ap.add_argument("--nodes", type=int, choices=(3, 5), help="cluster size (default: 3 for even seeds, 5 for odd)")
    ap.add_argument("--bug", choices=sorted(BUGS), help="run a deliberately broken core (to see the checker bite)")
    ap.add_argument("--scenario", choices=SCENARIOS, default="default",
                    help="fault mix: figure8 = new leaders cut off or killed, leaders crash right after committing; "
                         "churn = membership changes, snapshots, transfers and reads on slow disks")
    ap.add_argument("--skip", action="append", default=[], metavar="KIND",
                    help="do not fail on this kind of violation (repeatable; for exploring around a known bug)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for --seeds")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="trace events (-vv: every message)")
    a = ap.parse_args(argv)

    if a.seed is not None:
        nodes = a.nodes or default_nodes(a.seed)
        kw = bug_kwargs(a.bug)
        t0 = time.perf_counter()
        try:
            res = Sim(a.seed, nodes, a.steps, scenario=a.scenario, verbose=a.verbose, disabled_checks=tuple(a.skip),
                      **kw).run()
        except InvariantViolation as e:
            print(f"FAIL {e}")
            return 1
        print(f"ok seed {a.seed} ({time.perf_counter() - t0:.2f}s): " + " ".join(f"{k}={v}" for k, v in res.items()))
        return 0

    n = a.seeds if a.seeds is not None else 300
    seeds = range(a.start, a.start + n)
    jobs = [(s, a.nodes, a.steps, a.bug, a.scenario, tuple(a.skip)) for s in seeds]
    failures: list[tuple[int, str, str]] = []
    totals: dict[str, int] = {}
    t0 = time.perf_counter()
    every = max(1, n // 20)
    done = 0
    with ProcessPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        for seed, res, kind, msg in ex.map(run_case, jobs, chunksize=max(1, min(16, n // (4 * max(1, a.jobs))))):
            done += 1
            if res is None:
                failures.append((seed, kind or "?", msg or ""))
                print(f"FAIL seed {seed}: {msg.splitlines()[0] if msg else kind}", flush=True)
            else:
                for k, v in res.items():
                    if k not in ("seed", "nodes", "digest", "terms", "commit", "members"):
                        totals[k] = totals.get(k, 0) + v
            if done % every == 0 or done == n:
                print(f"[{done}/{n}] {time.perf_counter() - t0:.1f}s, {len(failures)} failed", flush=True)
    dt = time.perf_counter() - t0
    print(f"\n{n} seeds x {a.steps} steps in {dt:.1f}s ({dt / n * 1000:.0f} ms/seed); "
          + " ".join(f"{k}={v}" for k, v in totals.items()))
    if failures:
        print(f"\n{len(failures)} FAILED seed(s): {' '.join(str(s) for s, _, _ in failures)}")
        by_kind: dict[str, int] = {}
        for _, kind, _ in failures:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        print("by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(by_kind.items())))
        for seed, _, msg in failures[:5]:
            print(f"\n--- seed {seed}\n{msg}")
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
