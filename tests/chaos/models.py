"""Sequential specifications (models) for the linearizability checker in tests/chaos/lincheck.py.

A model is a small class:

  prepare(op, input, output) -> (input, output)   validate one operation and convert its input/output into the
                                                  hashable form step() compares (canonical JSON strings, bitsets);
                                                  raises ModelInputError(field, message) on a malformed operation.
                                                  ``output is UNKNOWN`` (a failed or unknown-outcome operation:
                                                  its output is ignored) is passed through unchecked. The checker
                                                  prepares EVERY operation of a partition, failed ones included,
                                                  before calling init(): models that compare only what the history
                                                  mentions (MemberRecord's fields, NetworkSet's ids) learn that
                                                  universe here, so a failed write's value is still checked.
  init() -> state                                 the initial state: immutable and hashable (tuples, ints, str).
  step(state, op, input, output) -> (ok, state')  apply one operation with prepared input/output; ok is False when
                                                  the output is impossible in ``state``. ``output is UNKNOWN`` for an
                                                  operation whose outcome is unknown: it is applied and any output
                                                  accepted (not applying it is the checker's business: it may leave
                                                  it for the very end, see lincheck.py).
  removable(ops) -> set of indexes                unknown-outcome operations whose effect nothing can observe (left
                                                  out of the search: see Model.removable). Default: none.
  describe_op(op, input, output) / describe_state(state) -> str   for error messages (prepared values).
  READ_ONLY: op names that never change the state (an unknown-outcome read constrains nothing and is dropped).

Model selection (``model_for``): an operation's optional "model" field, else the partition key's prefix before
the first ":" (the whole key if it has none):

  register:<k>      Register       write(value), read() -> value (null initially), cas([expected, new]) -> bool
  counter:<k>       Counter        incr(n) -> new value or null (n null means 1), read() -> value (0 initially)
  member:<nwid>:<a> MemberRecord   create(fields)/update(fields) -> revision, read() -> {"fields", "revision"}|null,
                                   delete()
  network-set[:<x>] NetworkSet     create(nwid), delete(nwid), list() -> [nwid...], read(nwid) -> bool
  network:<nwid>    NetworkSet     the same model, one network per partition (no list there, naturally)
"""
from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Hashable, Iterable, NamedTuple, Sequence

State = Hashable


class _Unknown:
    """The output of an operation whose outcome is unknown (timeout, 504, connection lost)."""
    _instance: ClassVar[_Unknown | None] = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


class ModelInputError(ValueError):
    """A malformed operation for its model: ``field`` names the history field at fault (op, input, output)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class PreparedOp(NamedTuple):
    """One searchable operation of a partition, as the checker hands it to ``Model.removable``."""
    op: str
    input: Any
    output: Any          # UNKNOWN for an unknown-outcome operation
    unknown: bool
    call: float
    ret: float           # math.inf for an unknown-outcome operation


def canon(value: Any) -> str:
    """Canonical JSON text of a value: hashable, and equal exactly when the JSON values are equal."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ModelInputError("input", f"not a JSON value: {e}") from None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_op(op: str, allowed: Iterable[str], model: str) -> None:
    if op not in allowed:
        raise ModelInputError("op", f"{model} has no operation {op!r} (expected one of {', '.join(sorted(allowed))})")


class Model:
    """Base class: the interface above with generic describe helpers."""
    name: ClassVar[str] = "model"
    OPS: ClassVar[frozenset[str]] = frozenset()
    READ_ONLY: ClassVar[frozenset[str]] = frozenset()

    def prepare(self, op: str, input: Any, output: Any) -> tuple[Any, Any]:
        """Validate and convert; ``output is UNKNOWN`` (an unknown-outcome operation) is kept as it is."""
        _check_op(op, self.OPS, self.name)
        prepared_in = self.prepare_input(op, input)
        return prepared_in, output if output is UNKNOWN else self.prepare_output(op, output)

    def prepare_input(self, op: str, input: Any) -> Any:
        raise NotImplementedError

    def prepare_output(self, op: str, output: Any) -> Any:
        raise NotImplementedError

    def removable(self, ops: Sequence[PreparedOp]) -> set[int]:
        """Indexes of unknown-outcome operations the search may leave out: those whose effect nothing in the
        history can observe, so any linearization that applies one stays valid without it. Unknown operations
        make the search exponential in how many are pending at once (each may or may not be applied at every
        dead end), so dropping the unobservable ones is what keeps histories full of timeouts checkable. The
        default leaves every operation in."""
        return set()

    def init(self) -> State:
        raise NotImplementedError

    def step(self, state: State, op: str, input: Any, output: Any) -> tuple[bool, State]:
        raise NotImplementedError

    def describe_op(self, op: str, input: Any, output: Any) -> str:
        shown_in = "" if input is None else _show(input)
        return f"{op}({shown_in}) -> {'?' if output is UNKNOWN else _show(output)}"

    def describe_state(self, state: State) -> str:
        return _show(state)


def _show(v: Any) -> str:
    """Prepared values are mostly canonical JSON strings already: print those as they are."""
    if isinstance(v, str):
        return _short(v)
    if isinstance(v, (frozenset, set)):
        return _short("{" + ", ".join(sorted(map(str, v))) + "}")
    return _short(repr(v))


# ------------------------------------------------------------------------------------------------ Register


class Register(Model):
    """A single value. State: the canonical JSON of the current value ("null" initially)."""
    name = "register"
    OPS = frozenset({"write", "read", "cas"})
    READ_ONLY = frozenset({"read"})

    def prepare_input(self, op: str, input: Any) -> Any:
        if op == "write":
            return canon(input)
        if op == "read":
            return None
        if isinstance(input, dict) and set(input) == {"expected", "new"}:
            return canon(input["expected"]), canon(input["new"])
        if isinstance(input, list) and len(input) == 2:
            return canon(input[0]), canon(input[1])
        raise ModelInputError("input", 'cas input must be [expected, new] or {"expected": .., "new": ..}')

    def prepare_output(self, op: str, output: Any) -> Any:
        if op == "write":
            return None  # (ignored)
        if op == "read":
            return canon(output)
        if output is not None and not isinstance(output, bool):
            raise ModelInputError("output", f"cas output must be true or false, not {output!r}")
        return output

    def removable(self, ops: Sequence[PreparedOp]) -> set[int]:
        """An unknown write (or cas, by its new value) of a value u that no ok read answers and no cas expects,
        while no ok cas answering false returns after its call. Why that is sound: take a linearization applying
        it at point p, and remove it. Until the next write the state was u and becomes the previous value v.
        In that interval there is no ok read (it would answer u), no ok cas answering true (it would expect u),
        no ok cas answering false (excluded), no successful unknown cas (it would expect u); an unknown cas that
        failed there moves to the very end (allowed: its return is +infinity), where it changes nothing anyone
        sees. From the next write on both states are equal. (Values written are unique within a history.)"""
        observed = {o.output for o in ops if o.op == "read" and not o.unknown}
        observed.update(o.input[0] for o in ops if o.op == "cas")
        false_cas = [o.ret for o in ops if o.op == "cas" and not o.unknown and o.output is False]
        last_false_cas = max(false_cas, default=-math.inf)
        return {i for i, o in enumerate(ops)
                if o.unknown and o.op in ("write", "cas") and last_false_cas < o.call
                and (o.input if o.op == "write" else o.input[1]) not in observed}

    def init(self) -> State:
        return "null"

    def step(self, state: State, op: str, input: Any, output: Any) -> tuple[bool, State]:
        if op == "read":
            return output is UNKNOWN or output == state, state
        if op == "write":
            return True, input
        expected, new = input
        hit = state == expected
        if output is UNKNOWN or output is None:
            return True, new if hit else state
        return output == hit, new if hit else state

    def describe_op(self, op: str, input: Any, output: Any) -> str:
        if op == "cas":
            return f"cas({input[0]}, {input[1]}) -> {'?' if output is UNKNOWN else output}"
        if op == "write":
            return f"write({_short(input)})"
        return super().describe_op(op, input, output)


# ------------------------------------------------------------------------------------------------ Counter


class Counter(Model):
    """An integer from 0. incr(n) answers the new value (null when the server did not say); read() the value."""
    name = "counter"
    OPS = frozenset({"incr", "read"})
    READ_ONLY = frozenset({"read"})

    def prepare_input(self, op: str, input: Any) -> Any:
        if op == "read":
            return None
        n = 1 if input is None else input
        if not _is_int(n):
            raise ModelInputError("input", f"incr input must be an integer or null, not {input!r}")
        return n

    def prepare_output(self, op: str, output: Any) -> Any:
        if op == "incr" and output is not None and not _is_int(output):
            raise ModelInputError("output", f"incr output must be an integer or null, not {output!r}")
        if op == "read" and not _is_int(output):
            raise ModelInputError("output", f"counter read output must be an integer, not {output!r}")
        return output

    def init(self) -> State:
        return 0

    def step(self, state: State, op: str, input: Any, output: Any) -> tuple[bool, State]:
        if op == "read":
            return output is UNKNOWN or output == state, state
        new = state + input  # type: ignore[operator]
        return output is UNKNOWN or output is None or output == new, new


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------------------ MemberRecord

# The server's values for a new member's fields (hactl/fsm/model.py member_defaults): a field the history writes
# but a create does not set starts at this value. Fields outside this table start "unset" (None in the state):
# any value read pins it, and an update setting it may or may not change it (either revision is accepted; with
# an unknown output it is assumed to change it, the one approximation this model makes).
ZT_MEMBER_DEFAULTS: dict[str, Any] = {
    "name": "", "authorized": False, "activeBridge": False, "noAutoAssignIps": False, "ipAssignments": [],
    "tags": [], "capabilities": [], "identity": "",
}


class MemberRecord(Model):
    """A ZeroTier member: the fields the history writes (a register each) and the record's revision.

    State: (field values as a tuple of canonical JSON in sorted field-name order, revision, exists). create and
    update are the same server request (POST upsert; two names for readability): an absent member is created
    with revision 1 (its other fields at their defaults), an existing one gets revision + 1 if at least one field
    changes and keeps its revision otherwise; both answer the revision. read() answers null for an absent member,
    else {"fields": {...}, "revision": n}: only fields the history ever writes (failed writes included) are
    compared, and only those present in the answer. delete() removes the member (a later create is revision 1).
    """
    name = "member"
    OPS = frozenset({"create", "update", "read", "delete"})
    READ_ONLY = frozenset({"read"})

    def __init__(self) -> None:
        self._universe: set[str] = set()
        self._names: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._initial: tuple[str | None, ...] = ()

    def prepare_input(self, op: str, input: Any) -> Any:
        if op not in ("create", "update"):
            return None
        if not isinstance(input, dict) or not all(isinstance(k, str) for k in input):
            raise ModelInputError("input", f"{op} input must be an object of fields, not {input!r}")
        self._universe.update(input)
        return {k: canon(v) for k, v in input.items()}

    def prepare_output(self, op: str, output: Any) -> Any:
        if op in ("create", "update"):
            if output is not None and not _is_int(output):
                raise ModelInputError("output", f"{op} output must be the revision (an integer) or null")
            return output
        if op == "delete" or output is None:
            return None
        if (not isinstance(output, dict) or not _is_int(output.get("revision"))
                or not isinstance(output.get("fields"), dict)):
            raise ModelInputError("output", 'member read output must be null or {"fields": {...}, "revision": int}')
        return output["revision"], {k: canon(v) for k, v in output["fields"].items()}

    def _freeze_universe(self) -> None:
        self._names = tuple(sorted(self._universe))
        self._index = {n: i for i, n in enumerate(self._names)}
        self._initial = tuple(canon(ZT_MEMBER_DEFAULTS[n]) if n in ZT_MEMBER_DEFAULTS else None
                              for n in self._names)

    def init(self) -> State:
        self._freeze_universe()
        return (self._initial, 0, False)

    def step(self, state: State, op: str, input: Any, output: Any) -> tuple[bool, State]:
        vals, rev, exists = state  # type: ignore[misc]
        if op == "read":
            return self._read(state, output)
        if op == "delete":
            return True, (self._initial, 0, False)
        if not exists:  # (create or update of an absent member: created)
            new = list(self._initial)
            for k, v in input.items():
                new[self._index[k]] = v
            return output is UNKNOWN or output is None or output == 1, (tuple(new), 1, True)
        new = list(vals)
        definite = maybe = False
        for k, v in input.items():
            i = self._index[k]
            cur = new[i]
            if cur is None:
                maybe = True  # (a field with no known default: its value may already be v)
            elif cur != v:
                definite = True
            new[i] = v
        if output is UNKNOWN or output is None:
            return True, (tuple(new), rev + 1 if definite or maybe else rev, True)
        if definite:
            return output == rev + 1, (tuple(new), rev + 1, True)
        if maybe and output == rev + 1:
            return True, (tuple(new), rev + 1, True)
        return output == rev, (tuple(new), rev, True)

    def _read(self, state: State, output: Any) -> tuple[bool, State]:
        vals, rev, exists = state  # type: ignore[misc]
        if output is UNKNOWN:
            return True, state
        if output is None:
            return not exists, state
        if not exists or output[0] != rev:
            return False, state
        seen = output[1]
        pinned: list[str | None] | None = None
        for name, i in self._index.items():
            got = seen.get(name)
            if got is None:
                continue  # (not in the answer: not compared)
            cur = vals[i]
            if cur is None:  # unset field: the server's value, whatever it is, from now on
                if pinned is None:
                    pinned = list(vals)
                pinned[i] = got
            elif cur != got:
                return False, state
        return True, state if pinned is None else (tuple(pinned), rev, True)

    def describe_op(self, op: str, input: Any, output: Any) -> str:
        out = "?" if output is UNKNOWN else output
        if op in ("create", "update"):
            fields = ", ".join(f"{k}={_short(v, 40)}" for k, v in sorted(input.items()))
            return f"{op}({fields}) -> revision {out}"
        if op == "read" and isinstance(output, tuple):
            fields = ", ".join(f"{k}={_short(output[1][k], 40)}" for k in self._names if k in output[1])
            return f"read() -> revision {output[0]} ({fields})"
        if op == "delete":
            return "delete()"
        return f"read() -> {'absent' if output is None else out}"

    def describe_state(self, state: State) -> str:
        vals, rev, exists = state  # type: ignore[misc]
        if not exists:
            return "absent"
        fields = ", ".join(f"{n}={'<unset>' if v is None else _short(v, 40)}" for n, v in zip(self._names, vals))
        return f"revision {rev} ({fields})"


# ------------------------------------------------------------------------------------------------ NetworkSet


class NetworkSet(Model):
    """The set of networks (ids). create(nwid) succeeds whether or not it existed (output ignored); delete(nwid)
    likewise; list() answers the ids (only ids the history mentions as an input are compared: networks made
    outside the history are ignored); read(nwid) answers whether it exists. State: an int, one bit per id the
    history mentions (set operations in C, whatever the number of networks)."""
    name = "network-set"
    OPS = frozenset({"create", "delete", "list", "read"})
    READ_ONLY = frozenset({"list", "read"})

    def __init__(self) -> None:
        self._bit: dict[str, int] = {}                # id -> its bit, for every id an input mentions
        self._masks: dict[frozenset[str], int] = {}   # list answer -> its bits (answers repeat: computed once)

    def prepare_input(self, op: str, input: Any) -> Any:
        if op == "list":
            return None
        if not isinstance(input, str):
            raise ModelInputError("input", f"{op} input must be a network id string, not {input!r}")
        self._bit.setdefault(input, 1 << len(self._bit))
        return input

    def prepare_output(self, op: str, output: Any) -> Any:
        if op == "list":
            if not isinstance(output, list) or not all(isinstance(x, str) for x in output):
                raise ModelInputError("output", "network list output must be a list of network ids")
            return frozenset(output)
        if op == "read":
            if not isinstance(output, bool):
                raise ModelInputError("output", "network read output must be true or false")
            return output
        return None  # (ignored)

    def removable(self, ops: Sequence[PreparedOp]) -> set[int]:
        """An unknown create of an id no ok answer shows (in a list, or a read answering true). Sound: remove it
        from a linearization that applies it; until the next create or delete of that id, the state loses the
        id; any ok list or read of it in that interval showed it (it existed), which none does; other ids are
        untouched; if it existed already the create changed nothing."""
        observed: set[str] = set()
        for o in ops:
            if o.unknown:
                continue
            if o.op == "list":
                observed.update(o.output)
            elif o.op == "read" and o.output:
                observed.add(o.input)
        return {i for i, o in enumerate(ops) if o.unknown and o.op == "create" and o.input not in observed}

    def init(self) -> State:
        return 0

    def _mask(self, ids: frozenset[str]) -> int:
        m = self._masks.get(ids)
        if m is None:
            m = self._masks[ids] = sum(self._bit[i] for i in ids if i in self._bit)  # (others: not compared)
        return m

    def step(self, state: State, op: str, input: Any, output: Any) -> tuple[bool, State]:
        s: int = state  # type: ignore[assignment]
        if op == "create":
            return True, s | self._bit[input]
        if op == "delete":
            return True, s & ~self._bit[input]
        if output is UNKNOWN:
            return True, s
        if op == "read":
            return output == bool(s & self._bit[input]), s
        return self._mask(output) == s, s

    def _ids(self, bits: int) -> frozenset[str]:
        return frozenset(i for i, b in self._bit.items() if bits & b)

    def describe_op(self, op: str, input: Any, output: Any) -> str:
        if op == "list" and output is not UNKNOWN:
            return f"list() -> {_show(self._ids(self._mask(output)))}"
        return super().describe_op(op, input, output)

    def describe_state(self, state: State) -> str:
        return _show(self._ids(state))  # type: ignore[arg-type]


MODELS: dict[str, type[Model]] = {m.name: m for m in (Register, Counter, MemberRecord, NetworkSet)}
MODELS["network"] = NetworkSet  # "network:<nwid>": one network per partition (create/read/delete of that id)


def model_for(key: str, explicit: str | None = None) -> type[Model]:
    """The model class of a partition: the explicit name if given, else the key's prefix (see the docstring)."""
    name = explicit if explicit is not None else key.split(":", 1)[0]
    try:
        return MODELS[name]
    except KeyError:
        raise ModelInputError("model" if explicit is not None else "key",
                              f"no model {name!r} (known: {', '.join(sorted(MODELS))}); name it with the key's "
                              f"prefix before ':' or a \"model\" field") from None
