"""One event: a JSON object with `namespace`, `eventType`, `event_src_id` (the controller that emitted it),
`timestamp` (RFC 3339, UTC), `id` (the source and a per-process sequence: a consumer drops repeats by it) and the
event's own fields (e.g. `leaderId`, `peer`)."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any



@dataclass(frozen=True)
class Event:
    namespace: str
    event_type: str
    source: str
    timestamp_ms: int
    seq: int
    incarnation: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.source}-{self.incarnation}-{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        ts = datetime.datetime.fromtimestamp(self.timestamp_ms / 1000, datetime.timezone.utc)
        return {"namespace": self.namespace, "eventType": self.event_type, "event_src_id": self.source,
                "timestamp": ts.isoformat(timespec="milliseconds"), "id": self.id, **self.fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)
