"""What every handler needs, stored once on the aiohttp application."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from hactl.api.cluster import Cluster

# A streamed listing holds one of ctrl.db's 256 LMDB reader slots for as long as its client takes to read it.
# Capped well below 256, so slow or stalled clients can never take the slots every other read needs (the other
# API reads, the write path's result lookups, snapshots); and bounded in time, so a client that stops reading gives
# its slot back.
MAX_STREAMS = 64
# Seconds for a whole streamed response. The full listing of a 100k-member network is ~40 MB: a client reading
# under ~1 MB/s cannot take it in time (and retries in vain), but holds a reader at most this long.
STREAM_DEADLINE = 60.0


@dataclass
class StreamLimits:
    """The streamed-listing limits of one application and how many streams it serves now (see streaming.py).
    Mutable so tests (and an embedding) can lower the limits of a running app."""
    limit: int = MAX_STREAMS
    deadline: float = STREAM_DEADLINE
    active: int = 0


@dataclass(frozen=True)
class ApiContext:
    cluster: Cluster
    max_body_bytes: int
    version: str
    streams: StreamLimits = field(default_factory=StreamLimits)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("hactl_api_context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
