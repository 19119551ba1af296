"""Linearizability checker benchmark (tests/chaos/lincheck.py): prints `BENCH <name> <value> <unit>` lines.

    python bench/lincheck.py [--seed 1] [--ops 100000] [--clients 32] [--keys 1000] [--hot-ops 5000]
                             [--hot-key register:hot] [--unknown 0.02] [--fail 0.02]

Two histories, both linearizable by construction (tests/chaos/test_lincheck.py random_history: a simulated
linearizable object, each operation taking effect at a random point inside its [call, return]; unknown-outcome
operations at any point after their call or never; failed ones never), generated from --seed, then checked:

  many keys  --ops operations by --clients concurrent clients over --keys keys (registers 40 %, counters 20 %,
             members 40 %, plus one network-set), --unknown / --fail of them unknown-outcome / failed:
             lincheck_100k_ops_seconds (check time, generation excluded) and lincheck_ops_per_s.
  hot key    --hot-ops operations of 8 clients on ONE key, --hot-key (one partition: the search itself, no
             P-compositionality to help), same unknown/failed fractions: lincheck_hot_key_5k_seconds.
             (A register by default. Unknown-outcome operations are what makes a hot key expensive: each may
             or may not have taken effect at any later point. With 8 clients on one key, 5,000 operations and 2 %
             unknown, a member or a counter key can exceed the checker's default 60 s budget (an inconclusive
             result, reported as such): try --hot-key member:8056c2e21c000001:a1b2c3d4e5 --unknown 0.01.)

A history the checker does not call linearizable is an error (exit 1): the numbers would mean nothing.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.lincheck import CheckResult, Operation, check_operations, format_result  # noqa: E402
from tests.chaos.test_lincheck import random_history  # noqa: E402  (the tests' generator and reference object)


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def many_keys(n: int) -> tuple[str, ...]:
    regs, counters = n * 2 // 5, n // 5
    members = n - regs - counters - 1
    return (tuple(f"register:r{i}" for i in range(regs)) + tuple(f"counter:c{i}" for i in range(counters))
            + tuple(f"member:8056c2e21c000001:{i:010x}" for i in range(members)) + ("network-set",))


def timed_check(ops: list[Operation], label: str) -> tuple[float, CheckResult]:
    t0 = time.perf_counter()
    res = check_operations(ops)
    elapsed = time.perf_counter() - t0
    slowest = max(res.partitions, key=lambda p: p.seconds)
    info(f"{label}: {len(ops)} ops, {len(res.partitions)} partitions, {elapsed:.3f} s; slowest partition "
         f"{slowest.key} ({slowest.operations} ops, {slowest.steps} steps, {slowest.seconds:.3f} s)")
    if res.ok is not True:
        info(format_result(res, failures_only=True))
        raise SystemExit(f"{label}: the generated history was not found linearizable ({res.ok})")
    return elapsed, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--hot-ops", type=int, default=5000)
    ap.add_argument("--hot-key", default="register:hot", help="the hot key (its prefix picks the model)")
    ap.add_argument("--unknown", type=float, default=0.02, help="fraction of unknown-outcome operations")
    ap.add_argument("--fail", type=float, default=0.02, help="fraction of failed operations")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    ops = random_history(rng, args.ops, clients=args.clients, keys=many_keys(args.keys), p_unknown=args.unknown,
                         p_fail=args.fail, mean_gap=0.5 * args.clients / 8)
    info(f"generated {len(ops)} ops in {time.perf_counter() - t0:.2f} s (seed {args.seed})")
    elapsed, _ = timed_check(ops, "many keys")
    bench(f"lincheck_{args.ops // 1000}k_ops_seconds", elapsed, "s")
    bench("lincheck_ops_per_s", len(ops) / elapsed, "ops/s")

    hot = random_history(random.Random(args.seed + 1), args.hot_ops, clients=8, keys=(args.hot_key,),
                         p_unknown=args.unknown, p_fail=args.fail)
    elapsed, _ = timed_check(hot, "hot key")
    bench(f"lincheck_hot_key_{args.hot_ops // 1000}k_seconds", elapsed, "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
