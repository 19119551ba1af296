"""Duration histograms kept by the code that measures (raft.db's durable commits, applies, snapshots) and read by
the Prometheus collector at scrape time (hactl.server.metrics).

Plain ints rather than prometheus_client objects: the raft package stays free of the metrics library, several
nodes in one process (tests, the simulator) need no registry, and an observation is a bisect and three additions
with no lock. Each histogram has one writer at a time (the I/O thread, or the loop thread while that thread is
idle); a scrape racing an observation may see a count one ahead of the sum, which Prometheus tolerates."""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Iterable

# Seconds: from a fast NVMe fsync (~100 us) to a disk that hangs (10 s).
DURATION_BUCKETS: tuple[float, ...] = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0,
                                       2.5, 5.0, 10.0)
# Snapshots copy ctrl.db: up to minutes for a large one.
SNAPSHOT_BUCKETS: tuple[float, ...] = (.01, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

clock = time.perf_counter


class DurationHistogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float] = DURATION_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (Prometheus' "le").
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """[(le, count of observations <= le)], "+Inf" last, as prometheus_client's HistogramMetricFamily takes."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out
