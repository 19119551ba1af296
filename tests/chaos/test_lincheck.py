"""Tests of the linearizability checker (tests/chaos/lincheck.py) and its models: it must reject known
non-linearizable histories (hand-written, and generated histories broken on purpose), accept tricky linearizable
ones, and accept every history produced by simulating a linearizable object.

``random_history`` (also used by bench/lincheck.py) simulates such an object with its own small reference
implementation (not tests/chaos/models.py, so a model bug cannot hide behind itself): each operation gets a
linearization point inside its [call, return] interval (an unknown-outcome one: any time after its call, or never;
a failed one: never), the operations are applied in that order and the outputs recorded.
"""
from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

from tests.chaos.lincheck import (CheckResult, HistoryError, Operation, _search, check_operations, format_result,
                                  load_history, prepare_partition, write_history)
from tests.chaos.models import UNKNOWN, MemberRecord, Register

REPO = Path(__file__).resolve().parents[2]
DEFAULT_KEYS = ("register:a", "register:b", "counter:c", "member:8056c2e21c000001:a1b2c3d4e5", "network-set")
PREEXISTING_NETWORK = "ffffffffff000000"  # made outside the history: list answers show it, the model ignores it


# ------------------------------------------------------------------------------------------------ generator


class _Reference:
    """The objects of DEFAULT_KEYS-style keys, as plain Python (an independent sequential implementation)."""

    def __init__(self) -> None:
        self.registers: dict[str, Any] = defaultdict(lambda: None)
        self.counters: dict[str, int] = defaultdict(int)
        self.members: dict[str, dict[str, Any] | None] = defaultdict(lambda: None)
        self.networks: dict[str, set[str]] = defaultdict(lambda: {PREEXISTING_NETWORK})

    def apply(self, key: str, op: str, inp: Any) -> Any:
        kind = key.split(":", 1)[0]
        return getattr(self, f"_{kind.replace('-', '_')}")(key, op, inp)

    def _register(self, key: str, op: str, inp: Any) -> Any:
        if op == "write":
            self.registers[key] = inp
            return None
        if op == "read":
            return self.registers[key]
        hit = self.registers[key] == inp[0]
        if hit:
            self.registers[key] = inp[1]
        return hit

    def _counter(self, key: str, op: str, inp: Any) -> Any:
        if op == "incr":
            self.counters[key] += inp
        return self.counters[key]

    def _member(self, key: str, op: str, inp: Any) -> Any:
        rec = self.members[key]
        if op == "delete":
            self.members[key] = None
            return None
        if op == "read":
            return None if rec is None else {"fields": dict(rec["fields"]), "revision": rec["revision"]}
        if rec is None:
            fields = {"name": "", "authorized": False, "ipAssignments": []}
            fields.update(inp)
            self.members[key] = {"fields": fields, "revision": 1}
            return 1
        if any(rec["fields"].get(k) != v for k, v in inp.items()):
            rec["fields"].update(inp)
            rec["revision"] += 1
        return rec["revision"]

    def _network_set(self, key: str, op: str, inp: Any) -> Any:
        nets = self.networks[key]
        if op == "create":
            nets.add(inp)
        elif op == "delete":
            nets.discard(inp)
        elif op == "read":
            return inp in nets
        else:
            return sorted(nets)
        return None


def _random_op(rng: random.Random, key: str, fresh: Iterator[int], seen: dict[str, list[Any]]) -> tuple[str, Any]:
    """An operation name and input for ``key``; written values are unique (``fresh``)."""
    kind = key.split(":", 1)[0]
    past = seen[key]
    r = rng.random()
    if kind == "register":
        if r < 0.4:
            return "read", None
        if r < 0.85 or not past:
            past.append(f"v{next(fresh)}")
            return "write", past[-1]
        new = f"v{next(fresh)}"
        expected = rng.choice(past[-3:] + [None])
        past.append(new)
        return "cas", [expected, new]
    if kind == "counter":
        return ("read", None) if r < 0.4 else ("incr", rng.randint(1, 3))
    if kind == "member":
        if r < 0.4:
            return "read", None
        if r < 0.45:
            return "delete", None
        fields: dict[str, Any] = {"authorized": rng.random() < 0.5}
        if rng.random() < 0.7:
            fields["name"] = f"n{next(fresh)}"
        return ("create" if r < 0.55 else "update"), fields
    if r < 0.3:
        return "list", None
    if r < 0.5:
        return "read", rng.choice(past) if past and rng.random() < 0.8 else f"{next(fresh):016x}"
    if past and r < 0.6:
        return "create", rng.choice(past)  # (again: succeeds, changes nothing)
    past.append(f"{next(fresh):016x}")
    return "create", past[-1]


@dataclass
class _Planned:
    op: Operation
    point: float | None  # linearization point; None: never takes effect


def random_history(rng: random.Random, n_ops: int, clients: int = 5, keys: tuple[str, ...] = DEFAULT_KEYS,
                   p_unknown: float = 0.05, p_fail: float = 0.05, mean_gap: float = 0.5,
                   mean_duration: float = 1.0) -> list[Operation]:
    """A linearizable history of ``n_ops`` operations by ``clients`` sequential clients (concurrent with each
    other) over ``keys``. Unknown-outcome operations take effect half the time, at any point after their call
    (possibly after the client went on); failed ones never."""
    clock = [rng.uniform(0, mean_gap) for _ in range(clients)]
    fresh = itertools.count()
    seen: dict[str, list[Any]] = defaultdict(list)
    planned: list[_Planned] = []
    for i in range(n_ops):
        c = rng.randrange(clients)
        call = clock[c] + rng.uniform(0, 2 * mean_gap)  # (bounded: hypothesis's randoms try extremes)
        ret = call + rng.uniform(0, 2 * mean_duration)
        clock[c] = ret
        key = rng.choice(keys)
        name, inp = _random_op(rng, key, fresh, seen)
        r = rng.random()
        status = "unknown" if r < p_unknown else "fail" if r < p_unknown + p_fail else "ok"
        point: float | None = None
        if status == "ok":
            point = rng.uniform(call, ret)
        elif status == "unknown" and rng.random() < 0.5:
            point = call + rng.uniform(0, 6 * mean_duration)
        op = Operation(id=i, client=c, key=key, op=name, input=inp, output=None, call=call,
                       ret=None if status == "unknown" else ret, status=status)
        planned.append(_Planned(op, point))
    ref = _Reference()
    for p in sorted((p for p in planned if p.point is not None), key=lambda p: p.point):  # type: ignore[arg-type]
        out = ref.apply(p.op.key, p.op.op, p.op.input)
        if p.op.status == "ok":
            # (sometimes the server does not say the counter's new value: null is allowed)
            p.op.output = None if p.op.op == "incr" and rng.random() < 0.1 else out
    return [p.op for p in planned]


# ------------------------------------------------------------------------------------------------ helpers


def O(id: int, key: str, op: str, input: Any = None, output: Any = None, call: float = 0.0,
      ret: float | None = None, status: str = "ok", client: int | str = 0) -> Operation:
    return Operation(id=id, client=client, key=key, op=op, input=input, output=output, call=call,
                     ret=ret, status=status)


def check(ops: list[Operation]) -> CheckResult:
    res = check_operations(ops)
    assert res.ok is not None, format_result(res)
    return res


def assert_linearizable(ops: list[Operation]) -> None:
    res = check(ops)
    assert res.ok is True, format_result(res)


def assert_rejected(ops: list[Operation]) -> CheckResult:
    res = check(ops)
    assert res.ok is False, format_result(res)
    text = format_result(res)
    assert "longest linearizable prefix" in text
    return res


R, C, M, N = "register:x", "counter:x", "member:8056c2e21c000001:a1b2c3d4e5", "network-set"


# ------------------------------------------------------------------------------------------------ must reject


def test_stale_read_after_completed_write() -> None:
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, ret=3),
                     O(3, R, "read", output="a", call=4, ret=5)])
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "read", output=None, call=2, ret=3)])


def test_read_of_a_value_only_a_failed_write_wrote() -> None:
    """The "503 applied" case: the write answered a definite failure, yet a later read sees its value."""
    res = assert_rejected([O(1, R, "write", "a", call=0, ret=1, status="fail"),
                           O(2, R, "read", output="a", call=2, ret=3)])
    assert res.partitions[0].failed_dropped == 1


def test_lost_acknowledged_write() -> None:
    assert_rejected([O(1, R, "write", "old", call=0, ret=1), O(2, R, "write", "new", call=2, ret=3),
                     O(3, R, "read", output="old", call=4, ret=5, client=1),
                     O(4, R, "read", output="old", call=6, ret=7, client=2)])


def test_two_sequential_reads_going_backwards() -> None:
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, ret=10),
                     O(3, R, "read", output="b", call=3, ret=4, client=1),
                     O(4, R, "read", output="a", call=5, ret=6, client=1)])


def test_counter_incr_outputs_out_of_real_time_order() -> None:
    assert_rejected([O(1, C, "incr", 1, output=2, call=0, ret=1), O(2, C, "incr", 1, output=1, call=2, ret=3)])


def test_counter_read_after_incr_sees_old_value() -> None:
    assert_rejected([O(1, C, "incr", 5, output=5, call=0, ret=1), O(2, C, "read", output=0, call=2, ret=3)])


def test_revision_jumping_by_two_on_one_update() -> None:
    assert_rejected([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                     O(2, M, "update", {"name": "b"}, output=3, call=2, ret=3)])


def test_member_read_showing_revision_3_after_one_update() -> None:
    assert_rejected([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                     O(2, M, "update", {"name": "b"}, output=2, call=2, ret=3),
                     O(3, M, "read", output={"fields": {"name": "b"}, "revision": 3}, call=4, ret=5)])


def test_member_update_that_changes_nothing_must_keep_the_revision() -> None:
    assert_rejected([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                     O(2, M, "update", {"name": "a"}, output=2, call=2, ret=3)])
    assert_linearizable([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                         O(2, M, "update", {"name": "a", "authorized": False}, output=1, call=2, ret=3)])


def test_member_read_of_a_field_value_never_written() -> None:
    assert_rejected([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                     O(2, M, "update", {"name": "b"}, output=2, call=2, ret=3, status="fail"),
                     O(3, M, "read", output={"fields": {"name": "b"}, "revision": 2}, call=4, ret=5)])


def test_member_deleted_then_read_exists() -> None:
    assert_rejected([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1), O(2, M, "delete", call=2, ret=3),
                     O(3, M, "read", output={"fields": {"name": "a"}, "revision": 1}, call=4, ret=5)])


def test_network_created_then_missing_from_a_later_list() -> None:
    assert_rejected([O(1, N, "create", "8056c2e21c000001", call=0, ret=1),
                     O(2, N, "list", output=[PREEXISTING_NETWORK], call=2, ret=3)])
    assert_rejected([O(1, N, "create", "8056c2e21c000001", call=0, ret=1),
                     O(2, N, "read", "8056c2e21c000001", output=False, call=2, ret=3)])


def test_network_create_that_failed_shows_up() -> None:
    assert_rejected([O(1, N, "create", "8056c2e21c000001", call=0, ret=1, status="fail"),
                     O(2, N, "list", output=["8056c2e21c000001"], call=2, ret=3)])


def test_one_network_per_partition() -> None:
    """"network:<nwid>" keys: the NetworkSet model per network (a 200 never lost, a 503 never applied)."""
    k = "network:8056c2e21c000001"
    assert_linearizable([O(1, k, "create", "8056c2e21c000001", call=0, ret=1),
                         O(2, k, "read", "8056c2e21c000001", output=True, call=2, ret=3)])
    assert_rejected([O(1, k, "create", "8056c2e21c000001", call=0, ret=1, status="fail"),
                     O(2, k, "read", "8056c2e21c000001", output=True, call=2, ret=3)])


def test_cas_accepted_twice_for_the_same_expected_value() -> None:
    assert_rejected([O(1, R, "write", "a", call=0, ret=1),
                     O(2, R, "cas", ["a", "b"], output=True, call=2, ret=5, client=1),
                     O(3, R, "cas", ["a", "c"], output=True, call=2, ret=5, client=2)])


def test_unknown_write_cannot_unhappen() -> None:
    """Once a read saw an unknown write's value, it took effect: a later read cannot see the value before it."""
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, status="unknown"),
                     O(3, R, "read", output="b", call=3, ret=4), O(4, R, "read", output="a", call=5, ret=6)])


def test_failure_explanation_names_the_operations() -> None:
    res = assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, ret=3),
                           O(3, R, "read", output="a", call=4, ret=5, client=7)])
    p = res.failures[0]
    e = p.explanation
    assert p.key == R and e is not None
    assert [op.id for op in e.prefix] == [1, 2]
    assert e.blocking.id == 3 and [op.id for op in e.stuck] == [3]
    assert "rejects" in e.reasons[3]
    text = format_result(res)
    assert "id=3 client=7 call=4.000000 return=5.000000" in text and 'read() -> "a"' in text


# ------------------------------------------------------------------------------------------------ must accept


def test_concurrent_write_and_read_see_either_value() -> None:
    for seen in ("a", "b"):
        assert_linearizable([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, ret=5),
                             O(3, R, "read", output=seen, call=3, ret=4, client=1)])


def test_read_sees_the_new_value_before_the_write_returns() -> None:
    assert_linearizable([O(1, R, "write", "a", call=0, ret=10), O(2, R, "read", output="a", call=1, ret=2, client=1),
                         O(3, R, "read", output="a", call=3, ret=4, client=2)])


def test_unknown_write_whose_value_appears_later() -> None:
    assert_linearizable([O(1, R, "write", "a", call=0, status="unknown"), O(2, R, "read", output=None, call=1, ret=2),
                         O(3, R, "read", output="a", call=50, ret=51)])


def test_unknown_write_whose_value_never_appears() -> None:
    assert_linearizable([O(1, R, "write", "z", call=0, ret=1), O(2, R, "write", "a", call=2, status="unknown"),
                         O(3, R, "read", output="z", call=3, ret=4), O(4, R, "read", output="z", call=60, ret=61)])


def test_unknown_write_observed_only_by_a_failed_cas_is_kept() -> None:
    """The unknown write of "b" is seen by nobody, but the cas failing shows it took effect: it must not be left out
    as unobservable."""
    assert_linearizable([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, status="unknown"),
                         O(3, R, "cas", ["a", "c"], output=False, call=3, ret=4)])
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=5, status="unknown"),
                     O(3, R, "cas", ["a", "c"], output=False, call=3, ret=4)])


def test_unobservable_unknown_writes_are_left_out() -> None:
    res = check([O(1, R, "write", "a", call=0, status="unknown"), O(2, R, "read", output=None, call=1, ret=2),
                 O(3, N, "create", "8056c2e21c000001", call=0, status="unknown"),
                 O(4, N, "list", output=[], call=1, ret=2)])
    assert res.ok is True and [p.removed for p in res.partitions] == [1, 1]


def test_several_unknown_operations_in_a_row() -> None:
    """Three unknown cas must all take effect, one after the other, between two reads: beyond the first capped
    searches (BLOCK_CAPS), so the complete search must run and find it."""
    assert_linearizable([O(1, R, "write", "a", call=0, ret=1), O(2, R, "cas", ["a", "b"], call=2, status="unknown"),
                         O(3, R, "cas", ["b", "c"], call=2, status="unknown"),
                         O(4, R, "cas", ["c", "d"], call=2, status="unknown"),
                         O(5, R, "read", output="a", call=2.5, ret=3), O(6, R, "read", output="d", call=5, ret=6)])
    assert_rejected([O(1, R, "write", "a", call=0, ret=1), O(2, R, "cas", ["a", "b"], call=2, status="unknown"),
                     O(3, R, "cas", ["b", "c"], call=2, status="unknown"),
                     O(4, R, "cas", ["c", "d"], call=2, status="unknown"),
                     O(5, R, "read", output="d", call=5, ret=6), O(6, R, "read", output="c", call=7, ret=8)])


@pytest.mark.parametrize("cap", [None, 1, 2])
def test_search_explores_fewer_unknowns_after_more_failed(cap: int | None) -> None:
    """The uncapped search first reaches (read c linearized, state c) having applied both unknown writes, and fails
    (b is needed later); the same configuration with only "c" applied must still be explored: the memo may skip
    a configuration only when one with a SUBSET of its unknowns was seen."""
    ops = [O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, status="unknown"),
           O(3, R, "write", "c", call=2, status="unknown"), O(4, R, "read", output="c", call=3, ret=4),
           O(5, R, "read", output="b", call=5, ret=6)]
    p = prepare_partition(R, ops)
    ok, _, _, _ = _search(p, time.monotonic() + 10, 10**6, cap)
    assert ok


def test_equal_timestamps_are_concurrent() -> None:
    assert_linearizable([O(1, R, "write", "a", call=0, ret=1), O(2, R, "read", output=None, call=1, ret=2)])


def test_unknown_cas_and_incr_either_applied_or_not() -> None:
    assert_linearizable([O(1, R, "write", "a", call=0, ret=1), O(2, R, "cas", ["a", "b"], call=2, status="unknown"),
                         O(3, R, "read", output="b", call=5, ret=6)])
    assert_linearizable([O(1, C, "incr", 2, call=0, status="unknown"), O(2, C, "incr", 1, output=1, call=1, ret=2),
                         O(3, C, "incr", 1, output=4, call=3, ret=4)])


def test_counter_incr_without_an_output() -> None:
    assert_linearizable([O(1, C, "incr", 2, output=None, call=0, ret=1), O(2, C, "read", output=2, call=2, ret=3)])


def test_member_fields_not_written_are_not_compared() -> None:
    """A read answers every field of the member; only those the history writes are compared. A field with no
    known default takes the value first read."""
    assert_linearizable([
        O(1, M, "create", {"name": "a", "x": 1}, output=1, call=0, ret=1),
        O(2, M, "update", {"weird": 5}, output=1, call=2, ret=3),
        O(3, M, "read", output={"fields": {"name": "a", "x": 1, "weird": 5, "vMajor": 1}, "revision": 1},
          call=4, ret=5)])
    assert_rejected([
        O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
        O(2, M, "update", {"name": "a", "weird": 5}, output=2, call=2, ret=3),
        O(3, M, "read", output={"fields": {"name": "a", "weird": 6}, "revision": 2}, call=4, ret=5)])


def test_member_recreated_after_delete_starts_at_revision_1() -> None:
    assert_linearizable([O(1, M, "create", {"name": "a"}, output=1, call=0, ret=1),
                         O(2, M, "update", {"name": "b"}, output=2, call=2, ret=3), O(3, M, "delete", call=4, ret=5),
                         O(4, M, "read", output=None, call=6, ret=7),
                         O(5, M, "update", {"name": "c"}, output=1, call=8, ret=9),
                         O(6, M, "read", output={"fields": {"name": "c", "authorized": False}, "revision": 1},
                           call=10, ret=11)])


def test_network_created_ok_and_listed() -> None:
    assert_linearizable([O(1, N, "create", "8056c2e21c000001", call=0, ret=1),
                         O(2, N, "create", "8056c2e21c000002", call=0.5, status="unknown"),
                         O(3, N, "list", output=["8056c2e21c000001", PREEXISTING_NETWORK], call=2, ret=3),
                         O(4, N, "list", output=["8056c2e21c000001", "8056c2e21c000002"], call=4, ret=5),
                         O(5, N, "read", "8056c2e21c000002", output=True, call=6, ret=7)])


def test_model_step_direct() -> None:
    reg = Register()
    inp, out = reg.prepare("read", None, "a")
    assert reg.step('"a"', "read", inp, out) == (True, '"a"')
    assert reg.step('"b"', "read", inp, UNKNOWN) == (True, '"b"')
    m = MemberRecord()
    ci, co = m.prepare("create", {"name": "a"}, 1)
    s0 = m.init()
    ok, s1 = m.step(s0, "create", ci, co)
    assert ok and "revision 1" in m.describe_state(s1)


def test_budget_exceeded_is_inconclusive_not_a_pass() -> None:
    ops = random_history(random.Random(3), 2000, keys=("register:hot",))
    res = check_operations(ops, max_steps=1)
    assert res.ok is None and res.inconclusive
    assert "inconclusive" in format_result(res)


# ------------------------------------------------------------------------------------------------ generated


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), n=st.integers(1, 120), clients=st.integers(1, 6),
       p_unknown=st.sampled_from([0.0, 0.05, 0.2]), p_fail=st.sampled_from([0.0, 0.1]))
def test_generated_linearizable_histories_are_accepted(rng: random.Random, n: int, clients: int, p_unknown: float,
                                                       p_fail: float) -> None:
    ops = random_history(rng, n, clients=clients, p_unknown=p_unknown, p_fail=p_fail)
    assert_linearizable(ops)


def _ok_reads(ops: list[Operation], key_prefix: str) -> list[Operation]:
    return [o for o in ops if o.key.startswith(key_prefix) and o.op == "read" and o.status == "ok"]


def _overwritten_value(ops: list[Operation], read: Operation) -> Any:
    """A value written by w1 on the read's key such that a later w2 (called after w1 returned) returned before the
    read was called: in every linearization w1 < w2 < read, and values are unique, so the read cannot see it."""
    writes = [o for o in ops if o.key == read.key and o.op == "write" and o.status == "ok"]
    for w1 in writes:
        if any(w2.call > w1.ret and w2.ret < read.call for w2 in writes):  # type: ignore[operator]
            return w1.input
    return UNKNOWN


def _mutate(rng: random.Random, ops: list[Operation]) -> tuple[list[Operation], str]:
    """A copy of ``ops`` broken on purpose, and how. Each mutation alone makes it non-linearizable."""
    ops = [replace(o) for o in ops]
    choices: list[str] = []
    reads = _ok_reads(ops, "register:")
    if reads:
        choices.append("never-written")
        if any(_overwritten_value(ops, r) is not UNKNOWN for r in reads):
            choices.append("overwritten")
        failed = [o for o in ops if o.key.startswith("register:") and o.op == "write" and o.status == "fail"]
        if any(r.call > w.call and r.key == w.key for r in reads for w in failed):
            choices.append("failed-write-seen")
    if _ok_reads(ops, "counter:"):
        choices.append("counter-too-high")
    if [r for r in _ok_reads(ops, "member:") if r.output is not None]:
        choices.append("revision-too-high")
    if not choices:  # (too small a history: add the classic stale read at the end)
        end = max([o.ret or o.call for o in ops] + [0.0]) + 1
        ops += [O(10**6, R, "write", "p", call=end, ret=end + 1), O(10**6 + 1, R, "write", "q", call=end + 2,
                                                                      ret=end + 3),
                O(10**6 + 2, R, "read", output="p", call=end + 4, ret=end + 5)]
        return ops, "appended stale read"
    how = rng.choice(choices)
    if how == "never-written":
        rng.choice(reads).output = "never-written-value"
    elif how == "overwritten":
        r = rng.choice([r for r in reads if _overwritten_value(ops, r) is not UNKNOWN])
        r.output = _overwritten_value(ops, r)
    elif how == "failed-write-seen":
        r, w = rng.choice([(r, w) for r in reads for w in failed if r.call > w.call and r.key == w.key])
        r.output = w.input
    elif how == "counter-too-high":
        total = sum(o.input for o in ops if o.key.startswith("counter:") and o.op == "incr")
        rng.choice(_ok_reads(ops, "counter:")).output = total + 1
    else:
        bumps = sum(1 for o in ops if o.key.startswith("member:") and o.op in ("create", "update"))
        r = rng.choice([r for r in _ok_reads(ops, "member:") if r.output is not None])
        r.output = {"fields": r.output["fields"], "revision": bumps + 1}
    return ops, how


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), n=st.integers(10, 100), clients=st.integers(1, 5),
       p_unknown=st.sampled_from([0.0, 0.1]))
def test_broken_generated_histories_are_rejected(rng: random.Random, n: int, clients: int, p_unknown: float) -> None:
    ops = random_history(rng, n, clients=clients, p_unknown=p_unknown, p_fail=0.1)
    broken, how = _mutate(rng, ops)
    note(how)
    assert_rejected(broken)


def test_a_2000_operation_history_over_several_keys_completes() -> None:
    keys = tuple(f"register:{i}" for i in range(4)) + ("counter:a", "counter:b", "network-set") + tuple(
        f"member:8056c2e21c000001:{i:010x}" for i in range(3))
    ops = random_history(random.Random(2000), 2000, clients=8, keys=keys, p_unknown=0.03, p_fail=0.03)
    res = check_operations(ops)
    assert res.ok is True, format_result(res)
    assert len(res.partitions) == len(keys) and res.operations == 2000


# ------------------------------------------------------------------------------------------------ history files


def run_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.chaos.lincheck", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_codes_and_messages(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    write_history(random_history(random.Random(7), 300), good)
    assert [o.to_json() for o in load_history(good)] == [json.loads(line) for line in good.read_text().splitlines()]
    r = run_cli(good)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LINEARIZABLE" in r.stdout and "register:a" in r.stdout

    bad = tmp_path / "stale.jsonl"
    write_history([O(1, R, "write", "a", call=0, ret=1), O(2, R, "write", "b", call=2, ret=3),
                   O(3, R, "read", output="a", call=4, ret=5)], bad)
    r = run_cli(bad)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT LINEARIZABLE" in r.stdout and "longest linearizable prefix found: 2 of 3" in r.stdout
    assert "id=3 client=0 call=4.000000 return=5.000000" in r.stdout

    malformed = tmp_path / "malformed.jsonl"
    lines = [json.dumps(O(1, R, "write", "a", call=0, ret=1).to_json()), "",
             json.dumps(O(2, R, "read", output="a", call=2, ret=3).to_json()).replace('"call": 2', '"call": "x"')]
    malformed.write_text("\n".join(lines) + "\n")
    r = run_cli(malformed)
    assert r.returncode == 2
    assert f"{malformed}:3: field 'call'" in r.stderr

    r = run_cli(tmp_path / "missing.jsonl")
    assert r.returncode == 2 and "missing.jsonl" in r.stderr


@pytest.mark.parametrize("line, field", [
    ('{"id": 1, "client": 0, "key": "register:x", "op": "read", "call": 0, "status": "ok"}', "return"),
    ('{"id": 1, "client": 0, "key": "register:x", "op": "read", "call": 0, "return": 1, "status": "done"}',
     "status"),
    ('{"id": 1, "client": 0, "key": "register:x", "op": "read", "call": 2, "return": 1, "status": "ok"}',
     "return"),
    ('{"id": 1, "client": 0, "key": "register:x", "op": "push", "call": 0, "return": 1, "status": "ok"}', "op"),
    ('{"id": 1, "client": 0, "key": "nosuch:x", "op": "read", "call": 0, "return": 1, "status": "ok"}', "key"),
    ('{"id": 1, "client": 0, "key": "counter:x", "op": "read", "output": "7", "call": 0, "return": 1, '
     '"status": "ok"}', "output"),
    ('{"id": "1", "client": 0, "key": "register:x", "op": "read", "call": 0, "return": 1, "status": "ok"}', "id"),
    ('{"id": 1, "client": 0, "key": "register:x", "op": "read", "call": 0, "return": null, "status": "ok"}',
     "return"),
])
def test_bad_lines_name_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    p = tmp_path / "h.jsonl"
    p.write_text('{"id": 0, "client": 0, "key": "register:x", "op": "write", "input": 1, "call": 0, "return": 1, '
                 '"status": "ok"}\n' + line + "\n")
    with pytest.raises(HistoryError) as e:
        check_operations(load_history(p), source=str(p))
    assert e.value.line == 2 and e.value.field == field, str(e.value)
    assert str(e.value).startswith(f"{p}:2: field '{field}'")


def test_duplicate_ids_and_api_operations_are_validated() -> None:
    with pytest.raises(HistoryError, match="field 'id': duplicate id 1"):
        check_operations([O(1, R, "write", "a", call=0, ret=1), O(1, R, "read", output="a", call=2, ret=3)])
    with pytest.raises(HistoryError, match=r"<history>:2: field 'call'"):
        check_operations([O(1, R, "write", "a", call=0, ret=1), O(2, R, "read", call=float("nan"), ret=3)])
