"""The event bus and its sinks, with real files: event shape, namespaces, order, bounded queues (a gap event says
how many were dropped), rotation keeping the configured count."""
from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path

from hactl.events.bus import EventBus, Subscription
from hactl.events.sinks import FileSink


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_are_json_naming_their_source_in_order_and_filtered_by_namespace(tmp_path: Path) -> None:
    async def main() -> None:
        bus = EventBus("ctrl2", clock=lambda: 1_700_000_000_123)
        everything = FileSink(tmp_path / "all.jsonl", 1 << 20, 2)
        cluster_only = FileSink(tmp_path / "cluster.jsonl", 1 << 20, 2)
        bus.subscribe(Subscription("all", None, everything))
        bus.subscribe(Subscription("cluster", {"cluster"}, cluster_only))
        bus.start()
        for i in range(500):
            bus.emit("cluster" if i % 2 else "zerotier", "tick", n=i)
        await asyncio.sleep(0.2)
        await bus.stop()
    asyncio.run(main())
    events = read(tmp_path / "all.jsonl")
    assert [e["n"] for e in events] == list(range(500))
    first = events[0]
    assert first["event_src_id"] == "ctrl2" and first["namespace"] == "zerotier" and first["eventType"] == "tick"
    assert datetime.datetime.fromisoformat(first["timestamp"]) == \
        datetime.datetime.fromtimestamp(1_700_000_000.123, datetime.timezone.utc)
    assert first["timestamp"].endswith("+00:00")
    assert len({e["id"] for e in events}) == 500 and all(e["id"].startswith("ctrl2-") for e in events)
    assert [e["n"] for e in read(tmp_path / "cluster.jsonl")] == list(range(1, 500, 2))
    assert (tmp_path / "all.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_full_queue_drops_and_says_so_with_a_gap_event(tmp_path: Path) -> None:
    async def main() -> Subscription:
        bus = EventBus("ctrl1")
        sub = Subscription("slow", None, FileSink(tmp_path / "e.jsonl", 1 << 20, 1), limit=10)
        bus.subscribe(sub)
        bus.start()
        for i in range(25):  # nothing drains in between: the loop never yields
            bus.emit("cluster", "tick", n=i)
        await asyncio.sleep(0.1)
        bus.emit("cluster", "tick", n=99)
        await asyncio.sleep(0.1)
        await bus.stop()
        return sub
    sub = asyncio.run(main())
    events = read(tmp_path / "e.jsonl")
    assert [e.get("n") for e in events] == list(range(10)) + [None, 99]
    assert events[10]["eventType"] == "gap" and events[10]["dropped"] == 15 and sub.dropped_total == 15


def test_rotation_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = FileSink(path, 4096, 3)
    line = json.dumps({"pad": "x" * 200})
    for _ in range(200):  # ~40 KB: about ten rotations
        sink.write([line])
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2", "events.jsonl.3"], files
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 4096 and all(json.loads(x) for x in p.read_text().splitlines())
