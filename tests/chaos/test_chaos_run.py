"""The short chaos run CI makes (tests/chaos/run.py): a seeded nemesis against a three-node cluster on separate
namespace hosts, clients on every node, real ZeroTier members; every check of the run must pass.

HACTL_CHAOS_SEED and HACTL_CHAOS_SECONDS change the seed (default 1) and the length (default 45 s of faults);
`make chaos SECONDS=3600 SEED=N` is the long run. A failure prints the report, the seed and the history file.
Needs root (network namespaces), and libzt (fetched once, as for the ZeroTier tests).
"""
from __future__ import annotations

import os
from pathlib import Path

from tests.chaos.run import Options, Run


def test_a_short_seeded_chaos_run_passes_every_check(tmp_path: Path) -> None:
    seed = int(os.environ.get("HACTL_CHAOS_SEED", "1"))
    seconds = float(os.environ.get("HACTL_CHAOS_SECONDS", "45"))
    work = tmp_path / f"chaos-{seed}"
    rep = Run(Options(seconds, seed, work, zt_members=2)).execute()
    print(rep.text())
    assert rep.ok, (f"chaos run failed (seed {seed}; history {work / 'history.jsonl'}, report "
                    f"{work / 'report.json'}):\n{rep.text()}")
    # The run did what it says: faults were injected, writes were acknowledged, the checker saw them.
    assert len(rep.faults) >= 5 and rep.operations.get("update.ok", 0) > 100, rep.text()
    assert rep.checker["operations"] > 1000 and rep.checker["inconclusive"] == 0, rep.checker
