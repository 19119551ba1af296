"""What one durable journal append costs on this disk: raft.db's LMDB commit (two fsyncs: data pages, then the
meta page) against an append-only file with one fdatasync per append (the layout a single-fsync journal would
use, as etcd's WAL does). Issue 13 asks whether the second fsync is worth a journal of our own; this measures the
most that could be won per Raft round trip (a write waits on the leader's and one follower's appends).

    python bench/fsync.py [--appends 500] [--size 200] [--dir DIR]

Both write --size bytes per append (a typical member update entry) into files under --dir (default: a temp dir
next to the repository, i.e. the disk the data directories use in the other benches); the files are removed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import lmdb

REPO = Path(__file__).resolve().parent.parent


def timed(n: int, op: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        op(i)
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def report(name: str, ms: list[float]) -> None:
    print(f"BENCH fsync_{name}_p50 {ms[len(ms) // 2]:.3f} ms")
    print(f"BENCH fsync_{name}_p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--dir", default=str(REPO))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=args.dir))
    payload = b"x" * args.size
    try:
        # The flags raft.db uses (hactl/raft/storage.py): sync and metasync on, no writemap.
        env = lmdb.open(str(work / "raft.db"), subdir=False, map_size=1 << 30, sync=True, metasync=True,
                        writemap=False, max_dbs=2)

        def lmdb_append(i: int) -> None:
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), payload)

        report("lmdb_commit", timed(args.appends, lmdb_append))
        env.close()
        fd = os.open(work / "wal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def wal_append(_: int) -> None:
            os.write(fd, payload)
            os.fdatasync(fd)

        report("wal_append", timed(args.appends, wal_append))
        os.close(fd)
        print(f"# {args.appends} appends of {args.size} B each in {work.parent}; one Raft write waits on two of "
              "them in sequence at most (leader, then the follower completing the majority)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
