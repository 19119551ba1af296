"""The bus a controller runs, built from its `events:` configuration (one subscription per entry)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from hactl.config import EventSinkConfig
from hactl.events.bus import EventBus, Subscription
from hactl.events.sinks import FileSink, Sink, StdoutSink
from hactl.events.webhook import WebhookError, WebhookSink


class EventSinkError(ValueError):
    """A configured sink cannot be set up (an unreadable secret file, a file sink's directory): the controller
    refuses to start, naming the configuration key."""


def make_sink(cfg: EventSinkConfig, data_dir: Path, source: str = "") -> Sink:
    if cfg.type == "stdout":
        return StdoutSink()
    if cfg.type == "webhook":
        return WebhookSink(cfg.url, source, secret_file=cfg.secret_file, timeout_s=cfg.timeout_s,
                           retries=cfg.retries)
    return FileSink(Path(cfg.path or data_dir / "events.jsonl"), cfg.max_bytes, cfg.keep)


def build_bus(node_id: str, sinks: list[EventSinkConfig], data_dir: Path, clock: Callable[[], int]) -> EventBus:
    """Subscribed, not started (start() needs the running loop). Raises EventSinkError."""
    bus = EventBus(node_id, clock=clock)
    for i, sink_cfg in enumerate(sinks):
        try:
            sink = make_sink(sink_cfg, data_dir, node_id)
        except WebhookError as e:
            key = "secret_file" if sink_cfg.secret_file and "secret" in str(e) else "url"
            raise EventSinkError(f"events[{i}].{key}: {e}") from None
        except OSError as e:
            raise EventSinkError(f"events[{i}].path: {e}") from None
        bus.subscribe(Subscription(f"{sink_cfg.type}-{i}", set(sink_cfg.namespaces) or None, sink, sink_cfg.queue,
                                   propagate_always=sink_cfg.propagate_always))
    return bus
