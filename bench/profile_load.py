"""Where a hactl node's time goes under an API load: py-spy samples every controller of a bench/api_load.py run.

    python bench/profile_load.py [--workload write_c64] [--seconds 8] [--rate 250] [--top 25] [--native]

Runs `bench/api_load.py --targets hactl --workloads W` (three controllers on loopback), waits until the
controllers are busy (the measured window after the warm-up), then records each with `py-spy record --format raw`
for --seconds (by default only the thread holding the GIL: where Python spends CPU) and prints, per controller (the busiest first, usually the leader):
its CPU seconds in the window, and the top frames by self time and by inclusive time, as shares of its samples.
The method is what is committed here, not profiles: run it before and after a change, on the same machine.
py-spy comes with `pip install -e '.[bench]'` (make bench-load installs it); it needs ptrace (root, or
kernel.yama.ptrace_scope=0).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LINE = re.compile(r"^(?P<stack>.*) (?P<n>\d+)$")


def controllers() -> dict[int, str]:
    """pid -> node id of running `hactl.cli controller run` processes (from their --config file name)."""
    out: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"controller" in argv and b"run" in argv and any(a.endswith(b"hactl.cli") for a in argv):
            conf = next((a.decode() for a in argv if a.endswith(b".yaml")), "?")
            out[int(d.name)] = Path(conf).stem
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(raw: Path, top: int) -> list[str]:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        n = int(m["n"])
        frames = [f for f in m["stack"].split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[_short(frames[-1])] += n
        for f in set(map(_short, frames)):
            incl[f] += n
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} busy samples", "  self:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["  inclusive:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """'func (path/to/module.py:123)' -> 'func (module.py)': one row per function, not per line."""
    m = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    return f"{m[1]} ({Path(m[2]).name})" if m else frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="write_c64", help="an api_load workload (write_c1, write_c64, ...)")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds sampled (the load runs longer)")
    ap.add_argument("--workers", type=int, default=0,
                    help="API workers per node (default 0: the controllers serve everything, and are what is sampled)")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--native", action="store_true", help="include native (C) frames")
    ap.add_argument("--wall", action="store_true", help="every thread not idle (waits on fsync included), not "
                    "only the thread holding the GIL (CPU spent in Python, the default)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy (or make bench-load, which installs the bench extras)")
    clients = re.search(r"_c(\d+)$", args.workload)
    load = subprocess.Popen([sys.executable, str(REPO / "bench" / "api_load.py"), "--targets", "hactl",
                             "--workloads", args.workload, "--clients", clients[1] if clients else "64",
                             "--warmup", "3", "--seconds", str(args.seconds + 6),
                             "--hactl-workers", str(args.workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    work = Path(tempfile.mkdtemp(prefix="hactl-profile-"))
    lines: list[str] = []
    try:
        assert load.stdout is not None
        for line in load.stdout:  # until the keys exist: the load (3 s of warm-up first) starts right after
            lines.append(line)
            if "keys created" in line:
                break
        else:
            sys.exit("api_load ended before its load started:\n" + "".join(lines))
        procs = controllers()
        if len(procs) != 3:
            sys.exit(f"expected the three controllers of api_load's `hactl dev up`, found {procs}")
        time.sleep(3.5)
        before = {pid: cpu_seconds(pid) for pid in procs}
        spies = {pid: subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                                        "--rate", str(args.rate), "--format", "raw", "--nonblocking",
                                        "--output", str(work / f"{pid}.txt"), *(["--native"] if args.native else []),
                                        *([] if args.wall else ["--gil"])],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid in procs}
        for p in spies.values():
            p.wait(timeout=args.seconds + 60)
        used = {pid: cpu_seconds(pid) - before[pid] for pid in procs}
        out, _ = load.communicate(timeout=300)
        print("".join(line + "\n" for line in lines + out.splitlines() if line.startswith("BENCH")), end="")
        for pid in sorted(procs, key=lambda p: -used[p]):
            print(f"\n{procs[pid]} (pid {pid}): {used[pid]:.2f} CPU s in ~{args.seconds:g} s sampled")
            path = work / f"{pid}.txt"
            print("\n".join(summarize(path, args.top) if path.exists() else ["  (py-spy wrote nothing)"]))
    finally:
        if load.poll() is None:
            load.terminate()
            load.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
