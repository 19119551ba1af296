"""Log set-up: the classic text lines, or one JSON object per line (`log.format: json`) for log shippers, with the
node id and, once Raft runs, its term on every record, and the request id on records logged while an API request
is handled."""
from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys
from typing import Any, Callable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: Callable[[], dict[str, Any]] = dict  # fields added to every JSON record (the controller sets it)
# The API request being handled (set by the API's middleware for the request's task and what it awaits).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("hactl_request_id", default=None)


def set_context(fn: Callable[[], dict[str, Any]]) -> None:
    global _context
    _context = fn


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out: dict[str, Any] = {"ts": ts.isoformat(timespec="milliseconds"), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        if self.node_id:
            out["node"] = self.node_id
        try:
            out.update(_context())
        except Exception:  # a context that cannot be read (shutting down) costs its fields, not the record
            pass
        rid = REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str, fmt: str = "text", node_id: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
