"""What a chaos run measured, from its history and its fault log: write unavailability per fault, and the report.

Unavailability of one fault: the longest stretch, between the fault's start and GRACE_S after its heal, in which
no write was acknowledged (by any client, through any node). The stretch that starts at the fault's start counts
whole, so a fault that stops writes at once shows the time to the first acknowledged write after it. Times are
CLOCK_MONOTONIC seconds, which the workload process and the runner share (one machine, one boot).
"""
from __future__ import annotations

import json
import statistics
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

GRACE_S = 10.0
WRITE_OPS = ("update", "create")


@dataclass
class FaultWindow:
    kind: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Unavailability:
    kind: str
    detail: str
    start: float
    seconds: float  # the longest stretch without an acknowledged write
    gap_from: float  # where that stretch began


def ack_times(history: Iterable[dict[str, Any]]) -> list[float]:
    """When each acknowledged write returned, sorted."""
    return sorted(op["return"] for op in history
                  if op["op"] in WRITE_OPS and op["status"] == "ok" and op.get("return") is not None)


def unavailability(acks: Sequence[float], fault: FaultWindow, clients_end: float) -> Unavailability:
    """``clients_end``: when the clients stopped sending (the stretch is cut there)."""
    lo, hi = fault.start, min(fault.end + GRACE_S, clients_end)
    inside = list(acks[bisect_left(acks, lo):bisect_right(acks, hi)])
    marks = [lo, *inside, hi]
    best, at = 0.0, lo
    for a, b in zip(marks, marks[1:]):
        if b - a > best:
            best, at = b - a, a
    return Unavailability(fault.kind, fault.detail, fault.start, best, at)


@dataclass
class Report:
    seed: int
    seconds: float
    operations: dict[str, int] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    unavailability_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    longest_unavailability: dict[str, Any] | None = None
    checker: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    ok: bool = False

    def add_unavailability(self, rows: list[Unavailability]) -> None:
        by_kind: dict[str, list[float]] = {}
        for r in rows:
            by_kind.setdefault(r.kind, []).append(r.seconds)
        self.unavailability_by_kind = {
            k: {"faults": len(v), "max_s": round(max(v), 3), "p50_s": round(statistics.median(v), 3)}
            for k, v in sorted(by_kind.items())}
        if rows:
            worst = max(rows, key=lambda r: r.seconds)
            self.longest_unavailability = {k: (round(v, 3) if isinstance(v, float) else v)
                                           for k, v in asdict(worst).items()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def text(self) -> str:
        lines = [f"chaos run: seed {self.seed}, {self.seconds:.0f} s, {'PASSED' if self.ok else 'FAILED'}",
                 "operations: " + ", ".join(f"{k}={v}" for k, v in sorted(self.operations.items())),
                 f"faults: {len(self.faults)}"]
        lines.append("write unavailability per fault kind (longest stretch without an acknowledged write):")
        for kind, u in self.unavailability_by_kind.items():
            lines.append(f"  {kind:28s} faults {u['faults']:3d}  max {u['max_s']:7.3f} s  p50 {u['p50_s']:7.3f} s")
        if self.longest_unavailability:
            w = self.longest_unavailability
            lines.append(f"longest: {w['seconds']:.3f} s after {w['kind']} ({w['detail']})")
        lines.append("checker: " + ", ".join(f"{k}={v}" for k, v in self.checker.items()))
        for name, value in self.checks.items():
            lines.append(f"check {name}: {value}")
        return "\n".join(lines)
