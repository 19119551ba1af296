"""Linearizability checker for histories of client operations (chaos tests against a real cluster).

    python -m tests.chaos.lincheck HISTORY.jsonl [--timeout S] [--max-steps N] [--failures-only]

Exit status: 0 linearizable, 1 not linearizable, 2 bad input (the error names the file, line and field),
3 inconclusive (a partition exceeded its time or step budget: never a pass).

History format: JSON lines, one operation per line (blank lines ignored, extra fields ignored):

    {"id": 17, "client": 3, "key": "member:8056c2e21c000001:a1b2c3d4e5", "op": "update",
     "input": {"name": "n-17"}, "output": 4, "call": 12.503, "return": 12.511, "status": "ok"}

  id       int, unique in the history
  client   int or str: who issued it (informational; a client's operations need not be sequential)
  key      str: the object operated on. The history is partitioned by key (P-compositionality: a history is
           linearizable iff each key's sub-history is) and each partition is checked on its own.
  op       str: the operation, one of the partition model's (tests/chaos/models.py)
  input    any JSON (optional, default null): the operation's argument
  output   any JSON or null (optional, default null): what the server answered (used when status is "ok")
  call     number: monotonic seconds when the request was sent
  return   number or null: monotonic seconds when the answer arrived (required, >= call, when status is "ok")
  status   "ok"      a success answer; output is what the server said
           "fail"    a definite failure (HTTP 503/429/4xx): it never took effect, and the checker drops it (its
                     input still counts as written, so if it did take effect, a later read shows a value nobody
                     else wrote and the history is rejected: written values must be unique within a history)
           "unknown" outcome unknown (HTTP 504, timeout, connection lost): it may have taken effect at any point
                     after its call, or never; return is treated as +infinity and output ignored
  model    str (optional): the partition's model, overriding the key convention below; the same in a partition

Model selection: the "model" field if present, else the key's prefix before the first ":" (the whole key if it
has none): "register:<k>" Register, "counter:<k>" Counter, "member:<nwid>:<address>" MemberRecord,
"network-set" or "network-set:<name>" NetworkSet, "network:<nwid>" NetworkSet for that one network.
See tests/chaos/models.py for each model's operations.

Algorithm: Wing & Gong's search with Lowe's improvements, as in Porcupine: the call and return events of a
partition, sorted by time, form a doubly linked list; the search repeatedly linearizes a pending operation whose
call precedes the first pending return (lifting its two events out of the list) if the model accepts its output,
and backtracks (explicit stack, no recursion) when it reaches a return it could not get past. A memo cache of
(bitset of linearized operations, model state) prunes configurations already explored. Equal timestamps count
as concurrent (calls sort before returns at the same time), the rule that never rejects an honest history.
Unknown-outcome operations (return +infinity) are kept in a second list and tried only after the ordinary
candidates, so a search through a history full of timeouts follows the common path first. Because each of them
may or may not be applied at every dead end, they are what makes a search expensive; three measures keep that in
check: (1) unknown reads, and unknown writes the model shows nobody can observe (Model.removable), are left out;
(2) the memo skips a configuration when one with the same linearized operations and state but a subset of its
applied unknown operations was seen (see _search); (3) the search first allows 1, then 2 unknown operations in a
row, then any number (BLOCK_CAPS). Still, a hot key with many concurrent clients and many unknown operations on a
model whose every write is observable (a counter, a member's revision) can exceed the budget: "inconclusive".
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from tests.chaos.models import UNKNOWN, Model, ModelInputError, PreparedOp, model_for

STATUSES = ("ok", "fail", "unknown")
DEFAULT_TIMEOUT = 60.0          # seconds per partition before its result is "unknown"
DEFAULT_MAX_STEPS = 50_000_000  # search steps per partition, likewise
# The search first allows 1, then 2 unknown-outcome operations in a row, then any number: every pending unknown
# operation may be applied at every dead end, and trying all their subsets there is exponential, while honest
# histories almost never need more than one or two in a row. A capped search that finds a linearization is a
# pass; one that fails only proves something if the cap never kept a candidate out (else the next cap runs).
BLOCK_CAPS: tuple[int | None, ...] = (1, 2, None)
PREFIX_SHOWN = 12               # operations of the longest linearizable prefix printed on failure


@dataclass
class Operation:
    """One client operation (a history line). ``ret`` is the JSON "return" (a Python keyword)."""
    id: int
    client: int | str
    key: str
    op: str
    input: Any = None
    output: Any = None
    call: float = 0.0
    ret: float | None = None
    status: str = "ok"
    model: str | None = None
    line: int | None = None  # where it came from (error messages); None for operations built in Python

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "client": self.client, "key": self.key, "op": self.op,
                             "input": self.input, "output": self.output, "call": self.call, "return": self.ret,
                             "status": self.status}
        if self.model is not None:
            d["model"] = self.model
        return d


class HistoryError(ValueError):
    """Bad input: which file (or "<history>"), line (or operation position, 1-based) and field."""

    def __init__(self, source: str, line: int, field: str | None, message: str) -> None:
        where = f"{source}:{line}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.field = source, line, field


@dataclass
class Explanation:
    """Why a partition is not linearizable, at the deepest point the search reached."""
    prefix: list[Operation]          # the longest linearizable prefix found, in linearization order
    state: str                       # the model state after it
    blocking: Operation              # the pending operation whose return the search could not get past
    stuck: list[Operation]           # every operation pending at that point (could not be linearized next)
    reasons: dict[int, str]          # op id -> why it could not go next (model rejects it / leads to a dead end)
    describe: dict[int, str]         # op id -> the model's rendering of the operation


@dataclass
class PartitionResult:
    key: str
    model: str
    ok: bool | None                  # None: budget exceeded, inconclusive
    operations: int                  # operations searched (after dropping failed ones and unknown reads)
    failed_dropped: int
    unknown: int                     # unknown-outcome operations searched
    removed: int                     # unknown-outcome writes left out as unobservable (models.py removable)
    steps: int
    seconds: float
    reason: str = ""                 # for ok None: which budget ran out
    explanation: Explanation | None = None


@dataclass
class CheckResult:
    ok: bool | None                  # False if any partition fails, else None if any is inconclusive, else True
    partitions: list[PartitionResult]
    seconds: float
    operations: int = 0

    @property
    def failures(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.ok is False]

    @property
    def inconclusive(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.ok is None]


# ------------------------------------------------------------------------------------------------ loading


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_operation(op: Operation, source: str, line: int) -> None:
    """Field-level checks of one operation; raises HistoryError naming the field."""
    def bad(fld: str, msg: str) -> HistoryError:
        return HistoryError(source, line, fld, msg)
    if not isinstance(op.id, int) or isinstance(op.id, bool):
        raise bad("id", f"must be an integer, not {op.id!r}")
    if not isinstance(op.client, (int, str)) or isinstance(op.client, bool):
        raise bad("client", f"must be an integer or a string, not {op.client!r}")
    if not isinstance(op.key, str) or not op.key:
        raise bad("key", f"must be a non-empty string, not {op.key!r}")
    if not isinstance(op.op, str) or not op.op:
        raise bad("op", f"must be a non-empty string, not {op.op!r}")
    if op.status not in STATUSES:
        raise bad("status", f"must be one of {', '.join(STATUSES)}, not {op.status!r}")
    if not _is_number(op.call):
        raise bad("call", f"must be a finite number, not {op.call!r}")
    if op.ret is not None and not _is_number(op.ret):
        raise bad("return", f"must be a finite number or null, not {op.ret!r}")
    if op.status == "ok" and op.ret is None:
        raise bad("return", "is required when status is \"ok\"")
    if op.status != "unknown" and op.ret is not None and op.ret < op.call:
        raise bad("return", f"{op.ret} is before call {op.call}")
    if op.model is not None and not isinstance(op.model, str):
        raise bad("model", f"must be a string, not {op.model!r}")


_REQUIRED = ("id", "client", "key", "op", "call", "return", "status")


def parse_line(text: str, source: str, line: int) -> Operation:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise HistoryError(source, line, None, f"not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise HistoryError(source, line, None, "a line must be a JSON object")
    for name in _REQUIRED:
        if name not in d:
            raise HistoryError(source, line, name, "is missing")
    op = Operation(id=d["id"], client=d["client"], key=d["key"], op=d["op"], input=d.get("input"),
                   output=d.get("output"), call=d["call"], ret=d["return"], status=d["status"],
                   model=d.get("model"), line=line)
    validate_operation(op, source, line)
    return op


def load_history(path: str | Path) -> list[Operation]:
    """Read a JSON-lines history; raises HistoryError (file, line, field) on the first bad line."""
    source = str(path)
    ops: list[Operation] = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if text.strip():
                    ops.append(parse_line(text, source, n))
    except OSError as e:
        raise HistoryError(source, 0, None, f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise HistoryError(source, 0, None, f"not UTF-8 text: {e}") from None
    return ops


def write_history(ops: Iterable[Operation], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps(op.to_json()) + "\n")


def _where(op: Operation, position: int) -> int:
    return op.line if op.line is not None else position


def partition(ops: Sequence[Operation], source: str = "<history>") -> dict[str, list[Operation]]:
    """Group by key after validating each operation and the ids' uniqueness."""
    parts: dict[str, list[Operation]] = defaultdict(list)
    seen: set[int] = set()
    for pos, op in enumerate(ops, 1):
        line = _where(op, pos)
        if op.line is None:
            validate_operation(op, source, line)
        if op.id in seen:
            raise HistoryError(source, line, "id", f"duplicate id {op.id}")
        seen.add(op.id)
        parts[op.key].append(op)
    return dict(parts)


# ------------------------------------------------------------------------------------------------ the search


class _Node:
    """An event of the linked list. kind 0: call of an operation with a return; 1: its return; 2: call of an
    unknown-outcome operation (second list, no return). For calls, ``step`` is the bound model step and
    inp/out the prepared input/output."""
    __slots__ = ("kind", "pos", "idx", "bit", "match", "prev", "next", "op", "inp", "out")

    def __init__(self, kind: int, pos: int, idx: int) -> None:
        self.kind, self.pos, self.idx, self.bit = kind, pos, idx, 1 << idx
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None
        self.op: str = ""
        self.inp: Any = None
        self.out: Any = None


@dataclass
class _Prepared:
    """A partition ready to search: operations (index = bit), their prepared input/output, the model."""
    key: str
    model: Model
    ops: list[Operation]
    inputs: list[Any]
    outputs: list[Any]
    unknown: list[bool]
    failed_dropped: int
    removed: int = 0  # unknown-outcome operations left out as unobservable (Model.removable)


def prepare_partition(key: str, ops: Sequence[Operation], source: str = "<history>",
                      positions: dict[int, int] | None = None) -> _Prepared:
    """Choose the model, prepare every operation (failed ones too: see models.py), keep the searchable ones."""
    explicit = {op.model for op in ops}
    if len(explicit) > 1:
        names = sorted(str(m) for m in explicit)
        raise HistoryError(source, _where(ops[0], 0), "model", f"key {key!r} has several models: {names}")
    first = ops[0]
    try:
        model = model_for(key, first.model)()
    except ModelInputError as e:
        raise HistoryError(source, _where(first, (positions or {}).get(first.id, 0)), e.field, str(e)) from None
    kept: list[Operation] = []
    inputs: list[Any] = []
    outputs: list[Any] = []
    unknown: list[bool] = []
    dropped = 0
    for op in ops:
        out = op.output if op.status == "ok" else UNKNOWN  # (a failed or unknown operation's output is ignored)
        try:
            inp, out = model.prepare(op.op, op.input, out)
        except ModelInputError as e:
            line = _where(op, (positions or {}).get(op.id, 0))
            raise HistoryError(source, line, e.field, f"{model.name} {op.op}: {e}") from None
        if op.status == "fail":
            dropped += 1  # (never took effect)
            continue
        if op.status == "unknown" and op.op in model.READ_ONLY:
            continue  # an unknown read changes nothing and its output is ignored: it constrains nothing
        kept.append(op)
        inputs.append(inp)
        outputs.append(out)
        unknown.append(op.status == "unknown")
    return _drop_removable(_Prepared(key, model, kept, inputs, outputs, unknown, dropped))


def _drop_removable(p: _Prepared) -> _Prepared:
    """Leave out the unknown-outcome operations the model shows unobservable (see Model.removable)."""
    if not any(p.unknown):
        return p
    views = [PreparedOp(op.op, p.inputs[i], p.outputs[i], p.unknown[i], op.call,
                        math.inf if p.unknown[i] else op.ret)  # type: ignore[arg-type]
             for i, op in enumerate(p.ops)]
    gone = p.model.removable(views)
    if not gone:
        return p
    keep = [i for i in range(len(p.ops)) if i not in gone]
    return _Prepared(p.key, p.model, [p.ops[i] for i in keep], [p.inputs[i] for i in keep],
                     [p.outputs[i] for i in keep], [p.unknown[i] for i in keep], p.failed_dropped, len(gone))


def _build_lists(p: _Prepared) -> tuple[_Node, _Node, _Node]:
    """(head of the call/return list, head of the unknown-call list, end sentinel of the unknown list).

    Why unknown operations need no return event: an unknown operation may have taken effect at any point after its
    call, or never. Giving it return = +infinity (Porcupine's treatment of Jepsen's :info operations) lets the
    search place it anywhere after its call; and placing it after every operation that returned is the same as it
    never happening within the checked window, so a write that never happened is never required to be
    linearized before operations that returned. The search therefore ends when every operation WITH a return is
    linearized, whatever unknown ones are left (they go at the very end).
    """
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(p.ops):
        events.append((op.call, 0, i))  # (kind 0 sorts before 1: equal times are concurrent)
        if not p.unknown[i]:
            events.append((op.ret, 1, i))  # type: ignore[arg-type]
    events.sort()
    head, uhead = _Node(1, -1, 0), _Node(2, -1, 0)
    uend = _Node(2, len(events) + 1, 0)  # (pos beyond every return: ends a scan of the unknown list)
    calls: dict[int, _Node] = {}
    tail, utail = head, uhead
    for pos, (_, kind, i) in enumerate(events):
        if kind == 1:
            node = _Node(1, pos, i)
            calls[i].match = node
            tail.next, node.prev, tail = node, tail, node
            continue
        node = _Node(2 if p.unknown[i] else 0, pos, i)
        node.op, node.inp, node.out = p.ops[i].op, p.inputs[i], p.outputs[i]
        if p.unknown[i]:
            utail.next, node.prev, utail = node, utail, node
        else:
            calls[i] = node
            tail.next, node.prev, tail = node, tail, node
    utail.next, uend.prev = uend, utail
    return head, uhead, uend


class _Budget(Exception):
    """Raised inside the search when a partition's time or step budget is spent."""

    def __init__(self, what: str, steps: int) -> None:
        super().__init__(what)
        self.steps = steps


@dataclass
class _Deepest:
    """The deepest dead end seen: the linearized prefix (op indexes), the state, the stopping return."""
    prefix: list[int] = field(default_factory=list)
    state: Hashable = None
    stop: int = -1
    pending: list[int] = field(default_factory=list)
    depth: int = -1


def _search(p: _Prepared, deadline: float, max_steps: int, block_cap: int | None,
            steps: int = 0) -> tuple[bool, int, _Deepest, bool]:
    """Lowe's linearizability search over one partition: (linearizable, steps so far, deepest dead end, capped).

    ``block_cap``: at most that many unknown-outcome operations in a row (None: no limit). ``capped`` is True if
    the cap ever kept a candidate out: then a failure proves nothing and the caller searches again with a larger
    cap. A success is always a valid linearization.

    The memo cache maps (linearized operations with a return, state) to the sets of unknown-outcome operations
    applied on the configurations already reached with them. A configuration is skipped when one reached before
    had the same known set and state and a SUBSET of its applied unknowns: every way to finish from it also
    finishes from that one (the same remaining known operations, with more unknown ones still optional), which was
    explored (failed) or is an ancestor still being explored. With no unknown operations that is Lowe's cache
    exactly. It is what stops the search from re-exploring the rest of the history once for every subset of
    pending unknown writes applied early and then overwritten.
    """
    head, uhead, uend = _build_lists(p)
    step: Callable[[Any, str, Any, Any], tuple[bool, Any]] = p.model.step
    state = p.model.init()
    lin = 0                                        # bitset of linearized operations that have a return
    app = 0                                        # bitset of unknown-outcome operations applied
    stack: list[tuple[_Node, Any, _Node, int]] = []  # (linearized call, state before, stop return, block)
    cache: dict[tuple[int, Any], Any] = {}         # (lin, state) -> app seen (an int, or a list of them)
    deepest = _Deepest()
    entry: _Node = head.next  # type: ignore[assignment]
    stop: _Node = head
    block = 0                                      # unknown-outcome operations linearized in a row at the top
    cap = len(p.ops) if block_cap is None else block_cap
    capped = False
    while head.next is not None:
        steps += 1
        if not steps & 0x3FF and (steps > max_steps or time.monotonic() > deadline):
            raise _Budget("steps" if steps > max_steps else "time", steps)
        kind = entry.kind
        if kind == 1:  # the first pending return: now try the unknown operations called before it
            stop = entry
            entry = uhead.next  # type: ignore[assignment]
            kind = 3 if entry.pos > stop.pos else 2
        elif kind == 2 and entry.pos > stop.pos:
            kind = 3
        if kind == 2 and block >= cap:
            kind, capped = 3, True
        if kind == 3:  # no candidate left at this depth: backtrack
            if len(stack) > deepest.depth:
                _record(deepest, stack, state, stop, head, uhead)
            if not stack:
                return False, steps, deepest, capped
            entry, state, stop, block = stack.pop()
            if entry.kind == 0:
                lin ^= entry.bit
            else:
                app ^= entry.bit
            _unlift(entry)
            entry = entry.next  # type: ignore[assignment]
            continue
        ok, new = step(state, entry.op, entry.inp, entry.out)
        if ok:
            if kind == 0:
                nlin, napp = lin | entry.bit, app
            else:
                nlin, napp = lin, app | entry.bit
            memo = (nlin, new)
            seen = cache.get(memo)
            if seen is None:
                cache[memo] = napp
                fresh = True
            elif type(seen) is int:
                fresh = seen & ~napp != 0  # (seen is not a subset of napp)
                if fresh:
                    cache[memo] = [seen, napp]
            else:
                fresh = all(a & ~napp for a in seen)
                if fresh:
                    seen.append(napp)
            if fresh:
                stack.append((entry, state, stop, block))
                state, lin, app = new, nlin, napp
                block = 0 if kind == 0 else block + 1
                _lift(entry)
                entry = head.next  # type: ignore[assignment]
                continue
        entry = entry.next  # type: ignore[assignment]
    return True, steps, deepest, capped


def _lift(n: _Node) -> None:
    """Take a call (and its return, if any) out of its list."""
    n.prev.next = n.next  # type: ignore[union-attr]
    n.next.prev = n.prev  # type: ignore[union-attr]
    r = n.match
    if r is not None:
        r.prev.next = r.next  # type: ignore[union-attr]
        if r.next is not None:
            r.next.prev = r.prev


def _unlift(n: _Node) -> None:
    """Put back what _lift took out (in reverse order, so the neighbours are the ones it had)."""
    r = n.match
    if r is not None:
        r.prev.next = r  # type: ignore[union-attr]
        if r.next is not None:
            r.next.prev = r
    n.prev.next = n  # type: ignore[union-attr]
    n.next.prev = n  # type: ignore[union-attr]


def _record(d: _Deepest, stack: list[tuple[_Node, Any, _Node, int]], state: Any, stop: _Node, head: _Node,
            uhead: _Node) -> None:
    """Remember a dead end deeper than any before (copies only on a new maximum: cheap on passing runs)."""
    d.depth = len(stack)
    d.prefix = [n.idx for n, _, _, _ in stack]
    d.state, d.stop = state, stop.idx
    pending = []
    n = head.next
    while n is not None and n is not stop:
        if n.kind == 0:
            pending.append(n.idx)
        n = n.next
    n = uhead.next
    while n is not None and n.pos < stop.pos:
        pending.append(n.idx)
        n = n.next
    d.pending = pending


def _explain(p: _Prepared, d: _Deepest) -> Explanation:
    model = p.model
    describe: dict[int, str] = {}
    reasons: dict[int, str] = {}

    def desc(i: int) -> None:
        describe[p.ops[i].id] = model.describe_op(p.ops[i].op, p.inputs[i], p.outputs[i])
    for i in d.prefix:
        desc(i)
    for i in d.pending:
        desc(i)
        ok, _ = model.step(d.state, p.ops[i].op, p.inputs[i], p.outputs[i])
        reasons[p.ops[i].id] = ("leads to a dead end later" if ok else
                                f"the model rejects it in state {model.describe_state(d.state)}")
    return Explanation(prefix=[p.ops[i] for i in d.prefix], state=model.describe_state(d.state),
                       blocking=p.ops[d.stop], stuck=[p.ops[i] for i in d.pending], reasons=reasons,
                       describe=describe)


def check_partition(p: _Prepared, timeout: float = DEFAULT_TIMEOUT,
                    max_steps: int = DEFAULT_MAX_STEPS) -> PartitionResult:
    t0 = time.monotonic()
    res = PartitionResult(key=p.key, model=p.model.name, ok=True, operations=len(p.ops),
                          failed_dropped=p.failed_dropped, unknown=sum(p.unknown), removed=p.removed, steps=0,
                          seconds=0.0)
    if p.ops:
        try:
            for cap in BLOCK_CAPS if any(p.unknown) else (None,):
                ok, res.steps, deepest, capped = _search(p, t0 + timeout, max_steps, cap, res.steps)
                if ok or not capped:
                    break
                res.reason = f"no linearization with at most {cap} unknown-outcome operations in a row; "
            res.ok, res.reason = ok, ""
            if not ok:
                res.explanation = _explain(p, deepest)
        except _Budget as e:
            res.ok, res.steps = None, e.steps
            res.reason += f"{e} budget exceeded (limits {timeout:g} s, {max_steps} steps)"
    res.seconds = time.monotonic() - t0
    return res


def check_operations(ops: Sequence[Operation], timeout: float = DEFAULT_TIMEOUT,
                     max_steps: int = DEFAULT_MAX_STEPS, source: str = "<history>") -> CheckResult:
    """Check a history given as Operation objects (raises HistoryError on bad input, before any search)."""
    t0 = time.monotonic()
    positions = {op.id: _where(op, n) for n, op in enumerate(ops, 1)}
    parts = partition(ops, source)
    prepared = [prepare_partition(k, v, source, positions) for k, v in sorted(parts.items())]
    results = [check_partition(p, timeout, max_steps) for p in prepared]
    if any(r.ok is False for r in results):
        ok: bool | None = False
    elif any(r.ok is None for r in results):
        ok = None
    else:
        ok = True
    return CheckResult(ok=ok, partitions=results, seconds=time.monotonic() - t0, operations=len(ops))


def check_file(path: str | Path, timeout: float = DEFAULT_TIMEOUT,
               max_steps: int = DEFAULT_MAX_STEPS) -> CheckResult:
    return check_operations(load_history(path), timeout, max_steps, str(path))


# ------------------------------------------------------------------------------------------------ reporting


def _fmt_time(t: float | None) -> str:
    return "inf" if t is None else f"{t:.6f}"


def _fmt_op(op: Operation, describe: dict[int, str]) -> str:
    ret = "unknown (inf)" if op.status == "unknown" else _fmt_time(op.ret)
    return (f"id={op.id} client={op.client} call={_fmt_time(op.call)} return={ret}  "
            f"{describe.get(op.id, op.op)}  [input={json.dumps(op.input)} output="
            f"{'ignored' if op.status == 'unknown' else json.dumps(op.output)}]")


def format_partition(r: PartitionResult) -> str:
    verdict = {True: "ok          ", False: "NOT LINEARIZABLE", None: "UNKNOWN     "}[r.ok]
    line = (f"{verdict} {r.key}  model={r.model} ops={r.operations} unknown={r.unknown} "
            f"unobservable={r.removed} failed_dropped={r.failed_dropped} steps={r.steps} {r.seconds:.3f}s")
    if r.ok is None:
        line += f"  {r.reason}: inconclusive, not a pass"
    return line


def format_explanation(r: PartitionResult) -> str:
    e = r.explanation
    assert e is not None
    out = [f"partition {r.key!r} (model {r.model}) is not linearizable.",
           f"  longest linearizable prefix found: {len(e.prefix)} of {r.operations} operations"]
    shown = e.prefix[-PREFIX_SHOWN:]
    if len(e.prefix) > len(shown):
        out.append(f"    ... {len(e.prefix) - len(shown)} earlier operations")
    out += [f"    {_fmt_op(op, e.describe)}" for op in shown]
    out.append(f"  state after the prefix: {e.state}")
    b = e.blocking
    out.append(f"  operation {b.id} (returned at {_fmt_time(b.ret)}) cannot be linearized after this prefix, and "
               f"no pending operation can go first; pending then:")
    for op in e.stuck:
        out.append(f"    {_fmt_op(op, e.describe)}")
        out.append(f"        -> {e.reasons.get(op.id, '')}")
    return "\n".join(out)


def format_result(res: CheckResult, failures_only: bool = False) -> str:
    lines = [format_partition(r) for r in res.partitions if not failures_only or r.ok is not True]
    for r in res.failures:
        lines += ["", format_explanation(r)]
    verdict = {True: "LINEARIZABLE", False: "NOT LINEARIZABLE", None: "INCONCLUSIVE"}[res.ok]
    lines.append(f"{verdict}: {res.operations} operations, {len(res.partitions)} partitions "
                 f"({len(res.failures)} not linearizable, {len(res.inconclusive)} inconclusive), "
                 f"{res.seconds:.3f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos.lincheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("history", help="JSON-lines history file")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per partition")
    ap.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS, help="search steps per partition")
    ap.add_argument("--failures-only", action="store_true", help="print only partitions that are not ok")
    args = ap.parse_args(argv)
    try:
        res = check_file(args.history, args.timeout, args.max_steps)
    except HistoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_result(res, args.failures_only))
    return {True: 0, False: 1, None: 3}[res.ok]


if __name__ == "__main__":
    sys.exit(main())
