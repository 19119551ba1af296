"""Control-channel frames: one msgpack value per gRPC message.

Frame format (every gRPC message on ``/hactl.Control/Connect`` is exactly one msgpack value, never pickle):

* the **hello** is a msgpack *map* (so third-party routers can build it by hand)::

      {"type": "controller"|"router", "id": str, "cluster_id": str, "version": int,
       "software": str, "incarnation": str, "nonce": bin, "cert": bin, "sig": bin}

  ``version`` is the control-channel protocol version (:data:`PROTOCOL_VERSION`); ``incarnation`` is random per
  process start (it tells a restarted peer from a duplicate connection); a dialing controller sends ``nonce``
  and the answering controller sends ``cert`` (its PEM leaf) and ``sig`` (its key's signature over the
  handshake transcript, see :func:`hello_transcript`), which is how the dialer learns the server's SPIFFE id.

* every other frame is a msgpack *array* whose first element is a string tag::

      ["ping", n]                 ["pong", n]                  ["close", reason]
      ["raft", message_wire]      (hactl.raft.types.Message.to_wire())
      ["call", rid, method, body] ["reply", rid, body]         ["error", rid, code, message]
      ["snap_begin", sid, meta, message_wire]   ["snap_chunk", sid, seq, data]   ["snap_end", sid, count]
      ["snap_ack", sid, written]  ["snap_done", sid, ok, reason]   ["snap_abort", sid, reason]
      ["batch", [frame_bytes, ...]]   (protocol 2: several encoded frames in one gRPC message, in order; never
                                       nested, never a hello; sent only to peers whose hello says version >= 2)

Decoding validates the shape and types of every known frame and raises :class:`FrameError` otherwise; the
connection that sent it is closed. A well-formed array with an unknown tag decodes to :class:`UnknownFrame` and
is ignored, so a newer peer can add frame kinds without breaking an older one during a rolling upgrade.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import msgpack

PROTOCOL_VERSION = 3  # 3: TLS streams of length-prefixed frames (1 and 2 were gRPC streams)
BATCH_MIN_VERSION = 2  # peers from this control protocol version on read batch frames
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
HELLO_TYPES = ("controller", "router")
_MAX_STR = 256


class FrameError(ValueError):
    """Bytes that are not a valid frame; the message says what is wrong."""


def _no_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack extension type {code} is not allowed")


def packb(value: Any) -> bytes:
    """msgpack-encode a frame body; raises TypeError for values msgpack cannot carry (never pickles)."""
    return msgpack.packb(value, use_bin_type=True, strict_types=False, datetime=False)


def unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext,
                               timestamp=0)
    except FrameError:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError,
            UnicodeDecodeError) as e:
        raise FrameError(f"not a msgpack value: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------- validators

def _s(v: Any, name: str, *, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > _MAX_STR or (not v and not empty):
        raise FrameError(f"field {name!r}: expected a {'' if empty else 'non-empty '}string of at most "
                         f"{_MAX_STR} characters, got {type(v).__name__}")
    return v


def _i(v: Any, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
        raise FrameError(f"field {name!r}: expected an unsigned integer, got {v!r}")
    return v


def _b(v: Any, name: str) -> bytes:
    if not isinstance(v, (bytes, bytearray)):
        raise FrameError(f"field {name!r}: expected bytes, got {type(v).__name__}")
    return bytes(v)


def _opt_b(v: Any, name: str) -> bytes | None:
    return None if v is None else _b(v, name)


def _list(v: Any, name: str) -> list:
    if not isinstance(v, list):
        raise FrameError(f"field {name!r}: expected an array, got {type(v).__name__}")
    return v


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise FrameError(f"field {name!r}: expected a boolean, got {v!r}")
    return v


def _map(v: Any, name: str) -> dict:
    if not isinstance(v, dict):
        raise FrameError(f"field {name!r}: expected a map, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------------------------------------- frames

@dataclass(slots=True)
class Hello:
    type: str
    id: str | None = None
    cluster_id: str | None = None
    version: int = PROTOCOL_VERSION
    software: str = ""
    incarnation: str = ""
    nonce: bytes | None = None
    cert: bytes | None = None
    sig: bytes | None = None

    def to_value(self) -> dict:
        d: dict[str, Any] = {"type": self.type, "version": self.version}
        for k in ("id", "cluster_id", "nonce", "cert", "sig"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.software:
            d["software"] = self.software
        if self.incarnation:
            d["incarnation"] = self.incarnation
        return d

    @staticmethod
    def from_value(v: dict) -> "Hello":
        t = v.get("type")
        if t not in HELLO_TYPES:
            raise FrameError(f"hello: 'type' must be one of {HELLO_TYPES}, got {t!r}")
        ident = v.get("id")
        cluster = v.get("cluster_id")
        version = v.get("version", PROTOCOL_VERSION)
        return Hello(t, None if ident is None else _s(ident, "id"),
                     None if cluster is None else _s(cluster, "cluster_id"),
                     _i(version, "version"), _s(v.get("software", ""), "software", empty=True),
                     _s(v.get("incarnation", ""), "incarnation", empty=True),
                     _opt_b(v.get("nonce"), "nonce"), _opt_b(v.get("cert"), "cert"), _opt_b(v.get("sig"), "sig"))


@dataclass(slots=True)
class Ping:
    TAG: ClassVar[str] = "ping"
    n: int

    def to_value(self) -> list:
        return [self.TAG, self.n]


@dataclass(slots=True)
class Pong:
    TAG: ClassVar[str] = "pong"
    n: int

    def to_value(self) -> list:
        return [self.TAG, self.n]


@dataclass(slots=True)
class Close:
    """Sent before closing a connection on purpose, so the other side logs why."""
    TAG: ClassVar[str] = "close"
    reason: str

    def to_value(self) -> list:
        return [self.TAG, self.reason[:1000]]


@dataclass(slots=True)
class RaftFrame:
    TAG: ClassVar[str] = "raft"
    wire: list  # Message.to_wire(); validated by Message.from_wire on arrival

    def to_value(self) -> list:
        return [self.TAG, self.wire]


@dataclass(slots=True)
class Call:
    TAG: ClassVar[str] = "call"
    rid: int
    method: str
    body: Any

    def to_value(self) -> list:
        return [self.TAG, self.rid, self.method, self.body]


@dataclass(slots=True)
class Reply:
    TAG: ClassVar[str] = "reply"
    rid: int
    body: Any

    def to_value(self) -> list:
        return [self.TAG, self.rid, self.body]


@dataclass(slots=True)
class ErrorReply:
    TAG: ClassVar[str] = "error"
    rid: int
    code: str
    message: str

    def to_value(self) -> list:
        return [self.TAG, self.rid, self.code, self.message[:4000]]


@dataclass(slots=True)
class SnapBegin:
    TAG: ClassVar[str] = "snap_begin"
    sid: int
    meta: dict
    wire: list  # the SNAPSHOT raft message, delivered once the data is in the sink

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.meta, self.wire]


@dataclass(slots=True)
class SnapChunk:
    TAG: ClassVar[str] = "snap_chunk"
    sid: int
    seq: int
    data: bytes

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.seq, self.data]


@dataclass(slots=True)
class SnapEnd:
    TAG: ClassVar[str] = "snap_end"
    sid: int
    count: int

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.count]


@dataclass(slots=True)
class SnapAck:
    """Receiver -> sender: ``written`` chunks are safely in the sink (cumulative). Re-sent while the sink's
    finish() runs, so a long install is not mistaken for a stalled peer."""
    TAG: ClassVar[str] = "snap_ack"
    sid: int
    written: int

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.written]


@dataclass(slots=True)
class SnapDone:
    TAG: ClassVar[str] = "snap_done"
    sid: int
    ok: bool
    reason: str = ""

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.ok, self.reason[:1000]]


@dataclass(slots=True)
class SnapAbort:
    TAG: ClassVar[str] = "snap_abort"
    sid: int
    reason: str

    def to_value(self) -> list:
        return [self.TAG, self.sid, self.reason[:1000]]


@dataclass(slots=True)
class Batch:
    """Frames queued for a peer in one turn of the event loop, sent as one gRPC message: each gRPC message costs
    far more than the msgpack bytes it carries, and a busy leader queues several per follower per turn."""
    TAG: ClassVar[str] = "batch"
    frames: list[bytes]

    def to_value(self) -> list:
        return [self.TAG, self.frames]


def _frames(v: Any, name: str) -> list[bytes]:
    if not isinstance(v, list) or not v or not all(isinstance(x, (bytes, bytearray)) for x in v):
        raise FrameError(f"field {name!r}: expected a non-empty array of encoded frames")
    return [bytes(x) for x in v]


@dataclass(slots=True)
class UnknownFrame:
    tag: str
    fields: list = field(default_factory=list)

    def to_value(self) -> list:
        return [self.tag, *self.fields]


Frame = Union[Hello, Ping, Pong, Close, RaftFrame, Call, Reply, ErrorReply, SnapBegin, SnapChunk, SnapEnd,
              SnapAck, SnapDone, SnapAbort, Batch, UnknownFrame]

_DECODERS: dict[str, tuple[int, Any]] = {
    "ping": (1, lambda f: Ping(_i(f[0], "n"))),
    "pong": (1, lambda f: Pong(_i(f[0], "n"))),
    "close": (1, lambda f: Close(_text(f[0], "reason"))),
    "raft": (1, lambda f: RaftFrame(_list(f[0], "wire"))),
    "call": (3, lambda f: Call(_i(f[0], "rid"), _s(f[1], "method"), f[2])),
    "reply": (2, lambda f: Reply(_i(f[0], "rid"), f[1])),
    "error": (3, lambda f: ErrorReply(_i(f[0], "rid"), _s(f[1], "code"), _text(f[2], "message"))),
    "snap_begin": (3, lambda f: SnapBegin(_i(f[0], "sid"), _map(f[1], "meta"), _list(f[2], "wire"))),
    "snap_chunk": (3, lambda f: SnapChunk(_i(f[0], "sid"), _i(f[1], "seq"), _b(f[2], "data"))),
    "snap_end": (2, lambda f: SnapEnd(_i(f[0], "sid"), _i(f[1], "count"))),
    "snap_ack": (2, lambda f: SnapAck(_i(f[0], "sid"), _i(f[1], "written"))),
    "snap_done": (3, lambda f: SnapDone(_i(f[0], "sid"), _bool(f[1], "ok"), _text(f[2], "reason"))),
    "snap_abort": (2, lambda f: SnapAbort(_i(f[0], "sid"), _text(f[1], "reason"))),
    "batch": (1, lambda f: Batch(_frames(f[0], "frames"))),
}


def _text(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise FrameError(f"field {name!r}: expected a string, got {type(v).__name__}")
    return v[:4000]


def encode(frame: Frame) -> bytes:
    return packb(frame.to_value())


def unbatch(batch: Batch, *, max_frame: int = DEFAULT_MAX_FRAME) -> list[Frame]:
    """The frames of a batch, each validated like a frame of its own; a hello or a batch inside is an error."""
    out = [decode(data, max_frame=max_frame) for data in batch.frames]
    for f in out:
        if isinstance(f, (Batch, Hello)):
            raise FrameError(f"a batch may not carry a {type(f).__name__.lower()} frame")
    return out


def decode(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one frame, validating it; raises FrameError for anything that is not a valid frame."""
    if len(data) > max_frame:
        raise FrameError(f"frame of {len(data)} bytes exceeds the limit of {max_frame} bytes")
    v = unpackb(data)
    if isinstance(v, dict):
        return Hello.from_value(v)
    if not isinstance(v, list) or not v or not isinstance(v[0], str):
        raise FrameError(f"expected a hello map or a [tag, ...] array, got {type(v).__name__}")
    tag, fields = v[0], v[1:]
    spec = _DECODERS.get(tag)
    if spec is None:
        return UnknownFrame(tag[:64], fields)
    arity, build = spec
    if len(fields) != arity:
        raise FrameError(f"frame {tag!r}: expected {arity} fields, got {len(fields)}")
    return build(fields)
