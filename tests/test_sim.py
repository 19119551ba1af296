"""Deterministic simulation of the Raft core (tests/sim): safety checked after every step, liveness after heals.

The big run is 300 seeds x 2,000 steps, alternating 3- and 5-node clusters (override with HACTL_SIM_SEEDS /
HACTL_SIM_STEPS, never lower in CI). A failure names each failing seed with the command that replays it.

The simulator runs the shipped driver (hactl/raft/driver.py) and core over simulated disks: the I/O-thread apply, the
snapshot bookkeeping and the early messages are the real code. The checker is shown to bite: test-only variants
of the core and the driver with one known bug each (tests/sim/buggy.py) must be caught, each by its own check.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` run without `python -m`: make `tests.sim` importable
    sys.path.insert(0, str(ROOT))

from tests.sim import InvariantViolation, Sim  # noqa: E402
from tests.sim.buggy import DoubleVoteRaft, PrevTermCommitRaft, bug_kwargs  # noqa: E402
from tests.sim.sim import run_case  # noqa: E402

SEEDS = int(os.environ.get("HACTL_SIM_SEEDS", "300"))
STEPS = int(os.environ.get("HACTL_SIM_STEPS", "2000"))
WORKERS = int(os.environ.get("HACTL_SIM_WORKERS", str(min(2, os.cpu_count() or 1))))
SAFETY = {"two-leaders", "double-vote", "log-matching", "leader-completeness", "state-machine-safety",
          "duplicate-apply", "read-index", "snapshot-unknown", "term-regressed", "commit-regressed", "not-durable",
          "lost-committed", "commit-not-durable", "snapshot-membership"}


def _run_many(cases: list[tuple]) -> list[tuple[int, dict | None, str | None, str | None]]:
    if WORKERS <= 1:
        return [run_case(c) for c in cases]
    # spawn, not fork: other tests may have left threads behind in this process
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(run_case, cases, chunksize=4))


def _report(results: list[tuple]) -> str:
    bad = [(seed, kind, msg) for seed, res, kind, msg in results if res is None]
    lines = [f"{len(bad)} of {len(results)} seeds violated an invariant; failing seeds: "
             + " ".join(str(s) for s, _, _ in bad)]
    for seed, kind, msg in bad[:10]:
        lines.append(f"\n--- seed {seed} ({kind})\n{msg}")
    return "\n".join(lines)


def test_random_seeds_hold_every_invariant() -> None:
    """300 seeds x 2,000 steps: drops, duplicates, reordering, partitions, crash-restarts, transfers, membership
    changes and snapshots, with safety checked after every step and liveness after every heal."""
    results = _run_many([(seed, None, STEPS, None, "default", ()) for seed in range(SEEDS)])
    assert all(res is not None for _, res, _, _ in results), _report(results)
    total = {k: sum(r[1][k] for r in results) for k in ("applied", "acked", "reads", "crashes", "heals",
                                                         "conf_changes", "elections")}
    # the runs must actually exercise what they claim to
    assert all(v > 0 for v in total.values()), total
    assert sum(r[1].get("snapshots_installed", 0) for r in results) > 0
    assert sum(r[1].get("transfers", 0) for r in results) > 0


def test_figure8_fault_pattern_holds_every_invariant() -> None:
    """The fault mix that exposes commit-by-counting (new leaders killed or cut off right away, leaders crashing
    right after they commit) must not trip the checker on the real core."""
    results = _run_many([(seed, None, STEPS, None, "figure8", ()) for seed in range(0, 40)])
    assert all(res is not None for _, res, _, _ in results), _report(results)


def test_membership_and_snapshot_churn_holds_every_invariant() -> None:
    """Learners added, promoted and removed, snapshots taken and installed (also while a slow disk's writes are
    in flight), transfers and reads, all at high rates."""
    results = _run_many([(seed, None, STEPS, None, "churn", ()) for seed in range(0, 60)])
    assert all(res is not None for _, res, _, _ in results), _report(results)


def _hunt(factory: type | None, bug: str, seeds: range, nodes: int | None, scenario: str, skip: tuple[str, ...]
          ) -> InvariantViolation:
    found = []
    for seed in seeds:
        try:
            Sim(seed, nodes or (3 if seed % 2 == 0 else 5), STEPS, scenario=scenario, disabled_checks=skip,
                **bug_kwargs(bug)).run()
        except InvariantViolation as e:
            found.append(e)
            if e.kind in SAFETY:
                return e
    pytest.fail(f"the simulator did not catch {bug} in seeds {seeds.start}..{seeds.stop - 1}: "
                f"{[(e.seed, e.kind) for e in found]}")


def test_checker_catches_double_voting() -> None:
    e = _hunt(DoubleVoteRaft, "double-vote", range(0, 20), None, "default", ("liveness", "not-durable"))
    assert e.kind == "double-vote"
    assert f"--seed {e.seed} " in str(e) and "--bug double-vote" in str(e)


def test_checker_catches_two_leaders_in_a_term() -> None:
    # Without the per-node vote check, the consequence (two leaders in one term) must be caught by itself.
    e = _hunt(DoubleVoteRaft, "double-vote", range(0, 40), None, "default", ("liveness", "double-vote",
                                                                              "not-durable"))
    assert e.kind == "two-leaders"


def test_checker_catches_commit_by_counting_previous_term_entries() -> None:
    e = _hunt(PrevTermCommitRaft, "prev-term-commit", range(0, 60), 3, "figure8", ("liveness",))
    assert e.kind in ("leader-completeness", "state-machine-safety"), e
    assert "--scenario figure8" in str(e)


def test_state_machine_safety_catches_a_lost_committed_entry() -> None:
    # The same bug seen one step later: two different entries applied at one index.
    e = _hunt(PrevTermCommitRaft, "prev-term-commit", range(0, 60), 3, "figure8",
              ("liveness", "leader-completeness", "lost-committed"))
    assert e.kind == "state-machine-safety", e


def test_clock_skew_holds_every_invariant() -> None:
    """Clocks at very different rates and leaders cut off with a minority while reads keep coming: leases stop
    meaning the same on every node, so reads must still take a real quorum round."""
    results = _run_many([(seed, None, STEPS, None, "skew", ()) for seed in range(0, 60)])
    assert all(res is not None for _, res, _, _ in results), _report(results)


# Each injected bug, and the check that must catch it (on its own: the hunt stops at the first safety violation).
MUTANTS = [
    ("vote-before-durable", "default", {"not-durable"}),
    ("read-without-quorum", "skew", {"read-index"}),
    ("truncate-matching", "default", {"lost-committed"}),
    ("counts-unpersisted", "default", {"commit-not-durable"}),
    ("stale-snapshot-membership", "churn", {"snapshot-membership"}),
]


@pytest.mark.parametrize("bug,scenario,kinds", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_checker_catches_each_injected_bug(bug: str, scenario: str, kinds: set[str]) -> None:
    e = _hunt(None, bug, range(0, 60), None, scenario, ("liveness",))
    assert e.kind in kinds, e
    assert f"--bug {bug}" in str(e)


def test_a_seed_replays_identically_across_processes() -> None:
    """Replays must not depend on str hashing (PYTHONHASHSEED) or anything else outside the seed."""
    outs = []
    for hs in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        p = subprocess.run([sys.executable, "-m", "tests.sim", "--seed", "7", "--nodes", "5", "--steps", "600"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode in (0, 1), p.stderr
        outs.append([ln for ln in p.stdout.splitlines() if "digest=" in ln or ln.startswith("FAIL")])
    assert outs[0] and outs[0][0].split(": ", 1)[1] == outs[1][0].split(": ", 1)[1]


def test_cli_lists_failing_seeds_and_how_to_replay_them() -> None:
    p = subprocess.run([sys.executable, "-m", "tests.sim", "--seeds", "4", "--steps", "300", "--jobs", "1",
                        "--bug", "vote-before-durable"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAILED seed(s): 0 1 2 3" in p.stdout
    assert "replay: python -m tests.sim --seed 0 --nodes 3 --steps 300 --bug vote-before-durable" in p.stdout
