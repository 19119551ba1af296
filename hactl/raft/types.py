"""Value types shared by the Raft core, its storage and its drivers.

Everything here is plain data: dataclasses that can be turned into msgpack-ready tuples and back. The wire
form (``to_wire``/``from_wire``) is what transports and raft.db carry; ``from_wire`` validates types and raises
``MalformedError`` naming the field, so a damaged frame never becomes a half-built object.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

NodeId = str


class MalformedError(ValueError):
    """A wire value that does not decode into a valid message, entry or state."""


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(enum.IntEnum):
    NORMAL = 0  # data for the state machine; empty data is the leader's term-start no-op
    CONF_CHANGE = 1  # data is an encoded ConfChange


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0  # add a non-voting member (or keep an existing learner)
    PROMOTE = 1  # turn a caught-up learner into a voter
    REMOVE = 2  # remove a voter or learner
    UPDATE = 3  # a member's context changes (its control address, after a move); the membership stays as it is


class MsgType(enum.IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # carries SnapshotMeta; the driver moves the data beside the message
    TIMEOUT_NOW = 10  # leadership transfer: campaign now, ignoring leases
    READ_INDEX = 11  # follower -> leader: confirm leadership and tell me the commit index
    READ_INDEX_RESP = 12


def _int(v: Any, name: str, lo: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v >= 1 << 64:
        raise MalformedError(f"field {name!r}: expected an integer >= {lo}, got {v!r}")
    return v


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 256:
        raise MalformedError(f"field {name!r}: expected a non-empty node id string, got {v!r}")
    return v


def _bytes(v: Any, name: str) -> bytes:
    if not isinstance(v, (bytes, bytearray)):
        raise MalformedError(f"field {name!r}: expected bytes, got {type(v).__name__}")
    return bytes(v)


def _seq(v: Any, name: str) -> list | tuple:
    if not isinstance(v, (list, tuple)):
        raise MalformedError(f"field {name!r}: expected an array, got {type(v).__name__}")
    return v


def _enum(cls: type[enum.IntEnum], v: Any, name: str) -> Any:
    # A dict lookup: cls(v) goes through EnumType.__call__, a few % of a busy node's CPU (once per message and entry).
    member = cls._value2member_map_.get(_int(v, name))
    if member is None:
        raise MalformedError(f"field {name!r}: unknown {cls.__name__} {v!r}")
    return member


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + 24

    def to_wire(self) -> list:
        return [self.index, self.term, int(self.type), self.data]

    @staticmethod
    def from_wire(v: Any) -> "Entry":
        v = _seq(v, "entry")
        if len(v) != 4:
            raise MalformedError("field 'entry': expected [index, term, type, data]")
        return Entry(_int(v[0], "entry.index", 1), _int(v[1], "entry.term", 1),
                     _enum(EntryType, v[2], "entry.type"), _bytes(v[3], "entry.data"))


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: NodeId | None = None
    commit: int = 0

    def to_wire(self) -> list:
        return [self.term, self.vote, self.commit]

    @staticmethod
    def from_wire(v: Any) -> "HardState":
        v = _seq(v, "hard_state")
        if len(v) != 3:
            raise MalformedError("field 'hard_state': expected [term, vote, commit]")
        vote = None if v[1] is None else _str(v[1], "hard_state.vote")
        return HardState(_int(v[0], "hard_state.term"), vote, _int(v[2], "hard_state.commit"))


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[NodeId, ...] = ()
    learners: tuple[NodeId, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "voters", tuple(sorted(set(self.voters))))
        object.__setattr__(self, "learners", tuple(sorted(set(self.learners) - set(self.voters))))

    def members(self) -> tuple[NodeId, ...]:
        return self.voters + self.learners

    def to_wire(self) -> list:
        return [list(self.voters), list(self.learners)]

    @staticmethod
    def from_wire(v: Any) -> "ConfState":
        v = _seq(v, "conf_state")
        if len(v) != 2:
            raise MalformedError("field 'conf_state': expected [voters, learners]")
        voters = tuple(_str(x, "conf_state.voters") for x in _seq(v[0], "conf_state.voters"))
        learners = tuple(_str(x, "conf_state.learners") for x in _seq(v[1], "conf_state.learners"))
        return ConfState(voters, learners)


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node: NodeId
    # Opaque to Raft: e.g. the control-channel address the rest of the cluster should dial.
    context: bytes = b""

    def to_wire(self) -> list:
        return [int(self.type), self.node, self.context]

    @staticmethod
    def from_wire(v: Any) -> "ConfChange":
        v = _seq(v, "conf_change")
        if len(v) != 3:
            raise MalformedError("field 'conf_change': expected [type, node, context]")
        return ConfChange(_enum(ConfChangeType, v[0], "conf_change.type"), _str(v[1], "conf_change.node"),
                          _bytes(v[2], "conf_change.context"))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)

    def to_wire(self) -> list:
        return [self.index, self.term, self.conf.to_wire()]

    @staticmethod
    def from_wire(v: Any) -> "SnapshotMeta":
        v = _seq(v, "snapshot")
        if len(v) != 3:
            raise MalformedError("field 'snapshot': expected [index, term, conf]")
        return SnapshotMeta(_int(v[0], "snapshot.index"), _int(v[1], "snapshot.term"),
                            ConfState.from_wire(v[2]))


@dataclass(frozen=True, slots=True)
class Message:
    type: MsgType
    frm: NodeId
    to: NodeId
    term: int
    log_term: int = 0  # APPEND: term of entry `index`; votes: candidate's last log term; rejects: hint term
    index: int = 0  # APPEND: index preceding entries; *_RESP: last index matched; votes: last log index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # APPEND_RESP reject: follower's best guess of where the logs may agree
    snapshot: SnapshotMeta | None = None
    context: bytes = b""  # read-round id, read request ctx, or b"transfer" on forced votes

    def to_wire(self) -> list:
        return [int(self.type), self.frm, self.to, self.term, self.log_term, self.index,
                [e.to_wire() for e in self.entries], self.commit, self.reject, self.reject_hint,
                None if self.snapshot is None else self.snapshot.to_wire(), self.context]

    @staticmethod
    def from_wire(v: Any) -> "Message":
        v = _seq(v, "message")
        if len(v) != 12:
            raise MalformedError("field 'message': expected 12 fields")
        if not isinstance(v[8], bool):
            raise MalformedError(f"field 'reject': expected a boolean, got {v[8]!r}")
        entries = tuple(Entry.from_wire(e) for e in _seq(v[6], "entries"))
        for a, b in zip(entries, entries[1:]):
            if b.index != a.index + 1:
                raise MalformedError("field 'entries': indexes are not consecutive")
        return Message(_enum(MsgType, v[0], "type"), _str(v[1], "frm"), _str(v[2], "to"), _int(v[3], "term"),
                       _int(v[4], "log_term"), _int(v[5], "index"), entries, _int(v[7], "commit"), v[8],
                       _int(v[9], "reject_hint"), None if v[10] is None else SnapshotMeta.from_wire(v[10]),
                       _bytes(v[11], "context"))


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local applied index reaches ``index``."""
    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: NodeId | None
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of work handed from the core to its driver.

    The driver must, in this order:
      0. send ``early_messages`` (a leader's replication traffic: it may go out while the leader's own write is
         in progress, Raft thesis section 10.2.1; the leader counts itself only once its write is durable);
      1. if ``snapshot`` is set, install that snapshot's data into the state machine and record it in storage;
      2. persist ``entries`` (replacing any stored entries from ``entries[0].index`` on) and ``hard_state`` in ONE
         durable transaction;
      3. send ``messages`` (they may depend on step 2 being durable);
      4. apply ``committed`` in order (CONF_CHANGE entries included: the core applies those itself on advance);
      5. call ``advance(ready)``.
    """
    soft_state: SoftState | None = None  # set when leader or role changed
    hard_state: HardState | None = None  # set when it must be persisted
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    messages: list[Message] = field(default_factory=list)
    early_messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)

    def empty(self) -> bool:
        return (self.soft_state is None and self.hard_state is None and not self.entries and self.snapshot is None
                and not self.messages and not self.early_messages and not self.committed and not self.read_states)
