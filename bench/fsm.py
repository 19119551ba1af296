"""State machine and snapshot benchmark: prints `BENCH <name> <value> <unit>` lines.

    python bench/fsm.py [--members 1000000] [--batch 500] [--updates 100000] [--dir DIR] [--profile PREFIX]

Phases (one process, as a controller would run them):
  1. apply N member upserts creating authorized members (so each also gets an auto-assigned IPv4 address through
     the per-network address index), one command per journal entry, in apply_batch calls of --batch entries (a
     driver hands over one batch per Ready);
  2. snapshot ctrl.db (create: consistent compacted copy + sha256 + fsync): time and size;
  3. apply --updates upserts renaming existing members (the journal after the snapshot);
  4. restore: copy the snapshot into place and open it: time;
  5. start-up rebuild (set ctrl.db aside, restore, replay the journal of step 3): total time, and replay
     entries/s = journal entries / (rebuild time - restore time);
  6. peak RSS of the whole run (VmHWM: anonymous memory plus the mapped ctrl.db pages it touched).
Wall-clock rates are what the targets mean; the *_cpu lines divide by this process's CPU time instead, which is
steadier on a shared machine. Command encoding (the proposer's work) is done outside every timed section.
--profile PREFIX: cProfile the apply_batch calls of phases 1 and 3 into PREFIX-create.prof and PREFIX-update.prof
(pstats files; the top functions are printed too). The rates printed then include the profiler's overhead.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.fsm import commands as C  # noqa: E402
from hactl.fsm.machine import StateMachine  # noqa: E402
from hactl.snapshots.rebuild import rebuild_ctrl_db  # noqa: E402
from hactl.snapshots.store import SnapshotStore  # noqa: E402

NETWORK = {"name": "bench", "v4AssignMode": {"zt": True}, "routes": [{"target": "10.0.0.0/8"}],
           "ipAssignmentPools": [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.255.255.254"}]}
T0 = 1_700_000_000_000

Entry = tuple[int, int, bytes]


def bench(name: str, value: float, unit: str) -> None:
    print(f"BENCH {name} {value:.6g} {unit}", flush=True)


def rss_mb() -> tuple[float, float, float]:
    """(peak RSS, current anonymous RSS, current file-backed RSS) in MB, from the kernel's own counters."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "RssAnon", "RssFile"):
                fields[k] = int(v.split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max(peak, fields.get("VmHWM", 0)), fields.get("RssAnon", 0), fields.get("RssFile", 0)


def addresses(n: int) -> Iterator[int]:
    """n distinct, random-looking member addresses (as a real network's would be), none reserved, generated
    without remembering them: multiplying by an odd constant is a bijection modulo 2^40."""
    i = 0
    while n:
        i += 1
        a = (i * 0x9E3779B97F) & ((1 << 40) - 1)
        if a >> 32 != 0xFF:
            n -= 1
            yield a


class Journal:
    """Numbers entries and encodes commands like a proposer would."""

    def __init__(self) -> None:
        self.index = 0
        self.seq = 0

    def entry(self, data: bytes) -> Entry:
        self.index += 1
        return (self.index, 1, data)

    def rid(self) -> str:
        self.seq += 1
        return f"bench-{self.seq:08d}"


def timed_apply(m: StateMachine, batches: Iterator[list[Entry]],
                profile: str | None = None) -> tuple[int, float, float]:
    """(entries, wall seconds, cpu seconds) spent inside apply_batch only; ``profile``: a file to write the
    cProfile stats of those calls to."""
    n, wall, cpu = 0, 0.0, 0.0
    prof = cProfile.Profile() if profile else None
    for batch in batches:
        w, c = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        m.apply_batch(batch)
        if prof is not None:
            prof.disable()
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
        n += len(batch)
    if prof is not None and profile:
        prof.dump_stats(profile)
        print(f"--- {profile}: apply_batch, by own time", flush=True)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(20)
    return n, wall, cpu


def chunked(items: Iterator[int], size: int, make: Callable[[int], Entry]) -> Iterator[list[Entry]]:
    while batch := [make(x) for _, x in zip(range(size), items)]:
        yield batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500, help="entries per apply_batch (one driver Ready)")
    ap.add_argument("--updates", type=int, default=100_000, help="rename upserts, also the replay journal")
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--profile", metavar="PREFIX", help="cProfile the applies into PREFIX-create.prof and "
                                                         "PREFIX-update.prof (the rates then include its overhead)")
    args = ap.parse_args()
    n = args.members
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hactl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"
    try:
        j = Journal()
        m = StateMachine(work / "ctrl.db")
        ident = C.new_controller_identity()
        init = C.build_cluster_init(j.rid(), T0, cluster_id="bench", timeline_id="t1",
                                    address=f"{ident.address:010x}", signing_key=ident.to_bytes(include_private=True),
                                    token_hash="sha256:bench")
        r = m.apply_batch([j.entry(init), j.entry(C.build_network_create(j.rid(), T0, NETWORK, start=1))])
        nwid = r[1].value["id"]  # type: ignore[union-attr,index]
        first = f"{next(addresses(1)):010x}"

        def create(a: int) -> Entry:
            return j.entry(C.build_member_update(j.rid(), T0 + j.index, nwid, f"{a:010x}",
                                                 {"authorized": True, "name": "m"}))

        count, wall, cpu = timed_apply(m, chunked(addresses(n), args.batch, create),
                                       args.profile and f"{args.profile}-create.prof")
        bench(f"fsm_apply_member_create_{tag}", count / wall, "applies/s")
        bench(f"fsm_apply_member_create_{tag}_cpu", count / cpu, "applies/s")
        assert m.counts(nwid) == (n, n), m.counts(nwid)

        store = SnapshotStore(work / "snapshots")
        w = time.perf_counter()
        info = store.create(m, cluster_id="bench", timeline_id="t1", created=time.time())
        bench(f"fsm_snapshot_create_{tag}", time.perf_counter() - w, "s")
        bench(f"fsm_snapshot_size_{tag}", info.size / 1e6, "MB")

        # Updates after the snapshot: measured as applies, and written to a file as the journal the rebuild
        # replays (read back from disk, as raft.db would be, rather than held in memory).
        journal_path = work / "journal.msgpack"
        journal_file = open(journal_path, "wb")
        packer = msgpack.Packer(use_bin_type=True)

        def update(a: int) -> Entry:
            e = j.entry(C.build_member_update(j.rid(), T0 + j.index, nwid, f"{a:010x}", {"name": f"u{j.index}"}))
            journal_file.write(packer.pack(e))
            return e

        count, wall, cpu = timed_apply(m, chunked(addresses(min(args.updates, n)), args.batch, update),
                                       args.profile and f"{args.profile}-update.prof")
        bench(f"fsm_apply_member_update_{tag}", count / wall, "applies/s")
        bench(f"fsm_apply_member_update_{tag}_cpu", count / cpu, "applies/s")
        journal_file.close()
        _, anon, filed = rss_mb()
        bench(f"fsm_rss_after_apply_{tag}", anon + filed, "MB")
        want = m.get_member(nwid, first)
        final = m.applied()
        m.close()

        w = time.perf_counter()
        store.restore_to(info, work / "restore-probe.db")
        with StateMachine(work / "restore-probe.db") as probe:
            assert probe.applied() == (info.index, info.term) and probe.counts(nwid) == (n, n)
        restore = time.perf_counter() - w
        bench(f"fsm_snapshot_restore_{tag}", restore, "s")
        for p in ("restore-probe.db", "restore-probe.db-lock"):
            os.unlink(work / p)

        # Start-up: ctrl.db set aside, snapshot restored, the journal after it replayed.
        w = time.perf_counter()
        replayed = 0

        def journal_after(machine: StateMachine) -> Iterator[Entry]:
            nonlocal replayed
            i = machine.applied()[0]
            with open(journal_path, "rb") as f:
                for index, term, data in msgpack.Unpacker(f, use_list=False):
                    if index > i:
                        replayed += 1
                        yield index, term, data

        m, _ = rebuild_ctrl_db(work, store, journal_after, batch_entries=args.batch)
        rebuild = time.perf_counter() - w
        assert m.applied() == final
        assert m.get_member(nwid, first) == want
        m.close()
        bench(f"fsm_rebuild_{tag}", rebuild, "s")
        bench(f"fsm_replay_{tag}", replayed / max(rebuild - restore, 1e-9), "entries/s")
        peak, _, _ = rss_mb()
        bench(f"fsm_peak_rss_{tag}", peak, "MB")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
