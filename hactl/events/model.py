"""One event: a JSON object with `namespace`, `eventType`, `event_src_id` (the controller that emitted it),
`timestamp` (RFC 3339, UTC), `id` (the source and a per-process sequence: a consumer drops repeats by it) and the
event's own fields (e.g. `leaderId`, `peer`).

Events that come from the Raft log carry a stable ``key`` instead (entity changes: ``ec-<raft index>-<n>``), so
the same change emitted twice (a replay after a crash, a new leader covering for the old one) has the same id.
``propagated`` marks this node's own view of something another node reports too (a follower's apply, a member
another node answers): subscriptions skip those unless they set ``propagate_always``. ``seq`` is always this
process's emission order (SSE resumes by it)."""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    namespace: str
    event_type: str
    source: str
    timestamp_ms: int
    seq: int
    incarnation: str
    fields: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    propagated: bool = False
    # More fields, computed when the event is written out rather than when it is emitted: an entity change's
    # before/after states cost more to decode than everything else about it, and most events are never written
    # (no sink or stream wants them; the history ring drops them unread).
    lazy: Callable[[], dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.key or f"{self.source}-{self.incarnation}-{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        ts = datetime.datetime.fromtimestamp(self.timestamp_ms / 1000, datetime.timezone.utc)
        return {"namespace": self.namespace, "eventType": self.event_type, "event_src_id": self.source,
                "timestamp": ts.isoformat(timespec="milliseconds"), "id": self.id, **self.fields,
                **(self.lazy() if self.lazy is not None else {})}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)
