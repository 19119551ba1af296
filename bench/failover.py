"""Failover time: kill -9 of the leader until the first successful write through a survivor.

Three real controller processes with default raft timings (100 ms tick, elections after 1-2 s). Each trial kills
the current leader, then writes through the survivors every 20 ms until one write succeeds; the killed node is
restarted and the cluster settles before the next trial. Prints `BENCH` lines.

    python bench/failover.py [--trials 10] [--load 8]

--load N: N client threads keep writing through every node (each its own Idempotency-Key per write) during the
trials, so the leader dies with writes in flight and forwarded calls outstanding (BENCH failover_load_*).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.proc_cluster import ProcCluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--load", type=int, default=0, help="writer threads running during the trials")
    args = ap.parse_args()
    times = []
    stop = threading.Event()
    acked = [0]
    with tempfile.TemporaryDirectory(prefix="hactl-failover-") as d:
        c = ProcCluster(Path(d), 3)
        try:
            c.start_all()
            ctrl = c.wait_ready()

            def writer(k: int) -> None:
                for i in itertools.count():
                    if stop.is_set():
                        return
                    try:
                        code, _, _ = c.request(c.ids[(k + i) % 3], "POST", f"/controller/network/{ctrl}______",
                                               {"name": f"load{k}-{i}"}, timeout=5,
                                               headers={"Idempotency-Key": uuid.uuid4().hex})
                        acked[0] += code == 200
                    except OSError:
                        time.sleep(0.05)  # the killed node: connection refused until it is back
            threads = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(args.load)]
            for t in threads:
                t.start()
            for trial in range(args.trials):
                leader = c.leader()
                survivors = [n for n in c.ids if n != leader]
                c.kill(leader)
                t0 = time.monotonic()
                i = 0
                while True:
                    i += 1
                    target = survivors[i % 2]
                    try:
                        code, _, _ = c.request(target, "POST", f"/controller/network/{ctrl}______",
                                               {"name": f"t{trial}"}, timeout=2,
                                               headers={"Idempotency-Key": uuid.uuid4().hex})
                    except OSError:
                        code = 0
                    if code == 200:
                        break
                    time.sleep(0.02)
                elapsed = time.monotonic() - t0
                times.append(elapsed)
                print(f"trial {trial + 1}: {elapsed:.3f} s", file=sys.stderr, flush=True)
                c.start(leader)
                c.wait_ready(timeout=60)
                time.sleep(1.0)  # let the restarted node catch up before the next kill
        finally:
            stop.set()
            c.close()
    name = "failover_load" if args.load else "failover"
    print(f"BENCH {name}_p50 {statistics.median(times):.3f} s")
    print(f"BENCH {name}_max {max(times):.3f} s")
    if args.load:
        print(f"# {acked[0]} load writes acknowledged by {args.load} writer threads", file=sys.stderr)


if __name__ == "__main__":
    main()
