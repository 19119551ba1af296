"""The link between a node and one of its API workers: typed messages, their msgpack maps, and the validation of
what arrives.

Frames are the agent socket's (hactl.agent.protocol: a 4-byte length, then one msgpack map; never pickle). Every
map has a type ``t``:

    node -> worker   hello  (once, first: what to serve: WorkerSettings)
                     state  (whether the node can serve its model now: a pending restart cannot)
                     reply  (to a submit or barrier, by id)
                     sign   (ZeroTier configs to read and sign, by id: hactl.workers.netconf)
    worker -> node   ready  (once: the worker listens on the API port)
                     submit (an encoded fsm command and its request id: Controller.submit)
                     barrier (Controller.read_barrier)
                     signed (the configs of a sign, in its order, by id)

A reply carries the outcome of the node's own call: the Result, or the exception's kind and text, which the worker
raises again (``Reply.outcome``) so that the API answers with the bytes the node would have sent. Anything that
does not parse is a ProtocolError (hactl.agent.protocol), never a crash: the node answers it or drops the link.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Union

from hactl.agent.protocol import E_BAD_REQUEST, E_MALFORMED, ProtocolError
from hactl.api.cluster import ClusterUnavailable, NoSpace, OutcomeUnknown, Overloaded
from hactl.fsm.result import Result
from hactl.workers.netconf import MAX_JOBS, SignJob, Signed

MAX_REQUEST_ID = 1024  # characters; the API's are far shorter ("key:" + inputs.IDEMPOTENCY_MAX at most)
MIN_FRAME = 16 << 20


def max_frame(max_body_bytes: int) -> int:
    """The largest link frame: a command made from the largest body the API takes, with room for its encoding."""
    return max(MIN_FRAME, 2 * max_body_bytes + (1 << 20))

# What a failed call raised on the node, by wire name. Order matters: NoSpace is a kind of Overloaded.
ERROR_KINDS: tuple[tuple[str, type[Exception]], ...] = (
    ("nospace", NoSpace), ("overloaded", Overloaded), ("unavailable", ClusterUnavailable),
    ("unknown", OutcomeUnknown))
INTERNAL = "internal"  # anything else: the node's API would have answered 500, and so does the worker's


class NodeError(Exception):
    """A call failed on the node with an unexpected error (a bug, logged there): the API answers 500."""


@dataclass(frozen=True)
class WorkerSettings:
    """The node's hello: everything a worker serves with. Sent, not read from the config file: the node may run
    with command-line overrides (--data), and the worker must serve exactly the node's port and ctrl.db."""
    index: int  # 1..N (0 is the node itself in X-Hactl-Worker)
    node_id: str
    node_pid: int
    ctrl_db: str
    ctrl_db_max_bytes: int
    host: str
    port: int  # the node's bound port (api.listen may say 0)
    tls_cert: str
    tls_key: str
    max_body_bytes: int
    version: str
    node_api_socket: str  # the node's API on a unix socket: where node-state requests are proxied (proxy.py)
    apply_timeout_s: float  # the node answers a submit within this (plus its forwarding): the worker waits longer
    stream_limit: int  # streamed listings at once in this process (a share of ctrl.db's reader slots)
    log_level: str
    log_format: str

    def to_wire(self) -> dict[str, Any]:
        return {"t": "hello", **asdict(self)}

    @staticmethod
    def from_wire(obj: dict[str, Any]) -> "WorkerSettings":
        kwargs: dict[str, Any] = {}
        for f in fields(WorkerSettings):
            kind = {"int": int, "str": str, "float": (int, float)}[str(f.type)]
            value = obj.get(f.name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ProtocolError(E_BAD_REQUEST, f"hello: {f.name}: expected {f.type}, got {value!r:.80}")
            kwargs[f.name] = float(value) if f.type == "float" else value
        return WorkerSettings(**kwargs)


@dataclass(frozen=True)
class State:
    unavailable: str | None  # why the node's model cannot be served now (ClusterUnavailable's text), or None
    retry_after: float = 1.0

    def to_wire(self) -> dict[str, Any]:
        return {"t": "state", "unavailable": self.unavailable, "retry_after": self.retry_after}


@dataclass(frozen=True)
class Ready:
    pid: int

    def to_wire(self) -> dict[str, Any]:
        return {"t": "ready", "pid": self.pid}


@dataclass(frozen=True)
class Submit:
    id: int
    request_id: str
    command: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"t": "submit", "id": self.id, "rid": self.request_id, "command": self.command}


@dataclass(frozen=True)
class Barrier:
    id: int

    def to_wire(self) -> dict[str, Any]:
        return {"t": "barrier", "id": self.id}


@dataclass(frozen=True)
class Reply:
    id: int
    result: Result | None = None  # a submit's; None for a barrier or an error
    error: str | None = None  # an ERROR_KINDS name, INTERNAL or E_BAD_REQUEST; None: success
    message: str = ""
    retry_after: float = 1.0

    @staticmethod
    def failure(call_id: int, e: BaseException) -> "Reply":
        """The exception a node-side call raised, as it travels (its kind and exact text)."""
        kind = next((name for name, cls in ERROR_KINDS if isinstance(e, cls)), INTERNAL)
        retry = e.retry_after if isinstance(e, ClusterUnavailable) else 1.0
        return Reply(call_id, error=kind, message=str(e), retry_after=float(retry))

    def outcome(self) -> Result | None:
        """The call's result on the worker's side: the Result, or the node's exception raised again."""
        if self.error is None:
            return self.result
        if self.error == "unavailable":
            raise ClusterUnavailable(self.message, retry_after=self.retry_after)
        cls = dict(ERROR_KINDS).get(self.error)
        if cls is not None:
            raise cls(self.message)
        raise NodeError(f"{self.error}: {self.message}")

    def to_wire(self) -> dict[str, Any]:
        return {"t": "reply", "id": self.id, "result": self.result.to_wire() if self.result else None,
                "error": self.error, "message": self.message, "retry_after": self.retry_after}


@dataclass(frozen=True)
class Sign:
    id: int
    jobs: list[SignJob]

    def to_wire(self) -> dict[str, Any]:
        return {"t": "sign", "id": self.id, "jobs": [j.to_wire() for j in self.jobs]}


@dataclass(frozen=True)
class SignedConfigs:
    id: int
    configs: list[Signed | None]  # one per job of the Sign, in its order (None: declined)

    def to_wire(self) -> dict[str, Any]:
        return {"t": "signed", "id": self.id, "configs": [None if c is None else c.to_wire() for c in self.configs]}


ToNode = Union[Ready, Submit, Barrier, SignedConfigs]
ToWorker = Union[WorkerSettings, State, Reply, Sign]


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):  # (bool is an int: never a number here)
        raise ProtocolError(E_BAD_REQUEST, f"{what}: {key}: expected {getattr(kind, '__name__', kind)}, "
                                           f"got {type(value).__name__}")
    return value


def call_id(obj: dict[str, Any]) -> int | None:
    """The id of a call that failed to parse, when it has a usable one (then it can be answered)."""
    value = obj.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63 else None


def parse_to_node(obj: dict[str, Any]) -> ToNode:
    """A worker's message, validated (types, sizes); raises ProtocolError naming what is wrong."""
    t = obj.get("t")
    if t == "ready":
        return Ready(_get(obj, "pid", int, "ready"))
    if t == "signed":
        configs = _get(obj, "configs", list, "signed")
        return SignedConfigs(_get(obj, "id", int, "signed"), [Signed.from_wire(c) for c in configs])
    if t not in ("submit", "barrier"):
        raise ProtocolError(E_MALFORMED, f"unknown message type {t!r:.40}")
    cid = call_id(obj)
    if cid is None:
        raise ProtocolError(E_BAD_REQUEST, f"{t}: id: expected an integer in [0, 2^63)")
    if t == "barrier":
        return Barrier(cid)
    rid = _get(obj, "rid", str, "submit")
    if not 0 < len(rid) <= MAX_REQUEST_ID:
        raise ProtocolError(E_BAD_REQUEST, f"submit: rid: 1 to {MAX_REQUEST_ID} characters, got {len(rid)}")
    return Submit(cid, rid, _get(obj, "command", bytes, "submit"))


def parse_to_worker(obj: dict[str, Any]) -> ToWorker:
    t = obj.get("t")
    if t == "hello":
        return WorkerSettings.from_wire(obj)
    if t == "state":
        reason = obj.get("unavailable")
        if reason is not None and not isinstance(reason, str):
            raise ProtocolError(E_BAD_REQUEST, "state: unavailable: expected a string or nil")
        return State(reason, float(_get(obj, "retry_after", (int, float), "state")))
    if t == "reply":
        raw = obj.get("result")
        error = obj.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError(E_BAD_REQUEST, "reply: error: expected a string or nil")
        try:
            result = Result.from_wire(raw) if raw is not None else None
        except (TypeError, ValueError):
            raise ProtocolError(E_BAD_REQUEST, "reply: result: not a Result") from None
        return Reply(_get(obj, "id", int, "reply"), result, error, str(obj.get("message", "")),
                     float(_get(obj, "retry_after", (int, float), "reply")))
    if t == "sign":
        jobs = _get(obj, "jobs", list, "sign")
        if len(jobs) > MAX_JOBS:
            raise ProtocolError(E_BAD_REQUEST, f"sign: {len(jobs)} jobs, at most {MAX_JOBS}")
        return Sign(_get(obj, "id", int, "sign"), [SignJob.from_wire(j) for j in jobs])
    raise ProtocolError(E_MALFORMED, f"unknown message type {t!r:.40}")
