"""Where a subscription's events go. A sink's write may block (a file, a pipe): the bus calls it on a thread, one
subscription at a time, so a slow sink delays only its own queue."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol


class Sink(Protocol):
    def write(self, lines: list[str]) -> int | None:
        """Deliver the batch; how many of its events were given up on (None or 0: all delivered). Raises OSError
        when the sink is broken (the bus drops what is queued and says so)."""

    def close(self) -> None: ...

    # Optional: ``interrupt()``, called at stop before the final flush, so that a sink that waits (a webhook's
    # retries) stops waiting and the stop stays bounded.


class FileSink:
    """JSON lines appended to `path`; when it would pass max_bytes it is rotated to path.1 (path.1 to path.2,
    ..., keeping `keep` old files), as logrotate would. Files are 0600: events name members and networks."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, lines: list[str]) -> None:
        for line in lines:
            if self._f.tell() > 0 and self._f.tell() + len(line) + 1 > self.max_bytes:
                self._rotate()
            self._f.write(line + "\n")
        self._f.flush()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._f = self._open()

    def close(self) -> None:
        self._f.close()


class StdoutSink:
    def write(self, lines: list[str]) -> None:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()

    def close(self) -> None:
        pass
