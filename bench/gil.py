"""raft.db appends on the I/O thread while the event loop thread is busy: what the GIL switch interval costs.

A node persists each Ready on its I/O thread while the event loop runs Python (HTTP, TLS, raft). The append's
fsyncs release the GIL; getting it back waits until the loop thread yields it, which a CPU-bound thread does only
every switch interval (sys.getswitchinterval(), 5 ms by default). So under load a 0.2 ms append took ~5 ms. `hactl
controller run` sets the interval to hactl.cli.SWITCH_INTERVAL_S; this bench shows why, by timing RaftStorage.save
on a thread while the main thread spins in Python, for each interval in --intervals.

    python bench/gil.py [--seconds 2] [--intervals 0.005,0.0005] [--dir DIR]

Prints per interval: the append p50/p99 and how much Python the main thread still got done (its iterations per
second, relative to the run without an I/O thread): a shorter interval costs the busy thread a little.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hactl.cli import SWITCH_INTERVAL_S  # noqa: E402
from hactl.raft.storage import RaftStorage  # noqa: E402
from hactl.raft.types import Entry, HardState  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def spin(seconds: float, stop: threading.Event | None = None) -> int:
    """The busy event loop: small Python steps; returns how many it made."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(50))
        n += 1
    if stop is not None:
        stop.set()
    return n


def appends_while_busy(path: Path, seconds: float) -> tuple[list[float], int]:
    store = RaftStorage(path)
    store.save(HardState(1, "n1", 0), [])
    stop = threading.Event()
    lat: list[float] = []

    def io() -> None:
        index = 1
        while not stop.is_set():
            t = time.perf_counter()
            store.save(None, [Entry(index, 1, data=b"x" * 200)])
            lat.append((time.perf_counter() - t) * 1000)
            index += 1

    th = threading.Thread(target=io)
    th.start()
    n = spin(seconds, stop)
    th.join()
    store.close()
    return sorted(lat), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--intervals", default=f"0.005,{SWITCH_INTERVAL_S}")
    ap.add_argument("--dir", default=str(REPO))
    args = ap.parse_args()
    alone = spin(args.seconds) / args.seconds
    work = Path(tempfile.mkdtemp(prefix="bench-gil-", dir=args.dir))
    try:
        for i, interval in enumerate(float(x) for x in args.intervals.split(",")):
            sys.setswitchinterval(interval)
            lat, n = appends_while_busy(work / f"raft-{i}.db", args.seconds)
            name = f"{interval * 1000:g}ms".replace(".", "_")
            print(f"BENCH gil_switch_{name}_append_p50 {lat[len(lat) // 2]:.3f} ms")
            print(f"BENCH gil_switch_{name}_append_p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.3f} ms")
            print(f"BENCH gil_switch_{name}_busy_thread_share {n / args.seconds / alone:.2f} x")
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
