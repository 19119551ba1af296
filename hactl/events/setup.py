"""The bus a controller runs, built from its `events:` configuration (one subscription per entry)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from hactl.config import EventSinkConfig
from hactl.events.bus import EventBus, Subscription
from hactl.events.sinks import FileSink, Sink, StdoutSink


def make_sink(cfg: EventSinkConfig, data_dir: Path) -> Sink:
    if cfg.type == "stdout":
        return StdoutSink()
    return FileSink(Path(cfg.path or data_dir / "events.jsonl"), cfg.max_bytes, cfg.keep)


def build_bus(node_id: str, sinks: list[EventSinkConfig], data_dir: Path, clock: Callable[[], int]) -> EventBus:
    """Subscribed, not started (start() needs the running loop)."""
    bus = EventBus(node_id, clock=clock)
    for i, sink_cfg in enumerate(sinks):
        bus.subscribe(Subscription(f"{sink_cfg.type}-{i}", set(sink_cfg.namespaces) or None,
                                   make_sink(sink_cfg, data_dir), sink_cfg.queue,
                                   propagate_always=sink_cfg.propagate_always))
    return bus
