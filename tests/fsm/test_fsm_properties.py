"""Property tests (hypothesis) of the state machine over random command streams:

- two fresh machines fed the same stream (batched differently) produce identical dumps and results;
- a snapshot taken part-way, then the rest of the journal replayed over it, equals a full replay;
- re-sending commands with their request ids equals sending them once;
- (the planet's commands among them: zt.root records, planet.set with colliding timestamps and wrong signers);
- the validator is idempotent and never fails with anything but a ValidationError.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.fsm import commands as C
from hactl.fsm.coerce import ValidationError
from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import StateMachine
from hactl.fsm.model import NETWORK_N_MAX
from hactl.fsm.result import Result
from hactl.fsm.validate import validate_member_changes, validate_network_changes
from hactl.snapshots.rebuild import rebuild_ctrl_db
from hactl.snapshots.store import SnapshotStore
from hactl.zt import crypto
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.world import Root, World, WorldType
from tests.identities import bound_key

CONTROLLER = "0a0b0c0d0e"
Entry = tuple[int, int, bytes]
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------- strategies

N = st.sampled_from([1, 2, 3, NETWORK_N_MAX])  # few networks, so commands collide on them
ADDRESS = st.sampled_from([f"{a:010x}" for a in (1, 2, 3, 0xABC, 0xABC + 253, 0xFE)])
IP = st.sampled_from(["10.0.0.2", "10.0.0.3", "10.0.0.219", "10.0.0.220", "fd00::1", "192.168.0.1"])
POOLS = [{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "10.0.0.254"},
         {"ipRangeStart": "10.0.0.2", "ipRangeEnd": "10.0.0.4"}]

member_body = st.fixed_dictionaries({}, optional={
    "authorized": st.sampled_from([True, False, "true", 0]),
    "name": st.sampled_from(["", "a", "b"]),
    "noAutoAssignIps": st.booleans(),
    "activeBridge": st.booleans(),
    "ipAssignments": st.lists(IP, max_size=3),
    "tags": st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)).map(list), max_size=3),
    "capabilities": st.lists(st.integers(0, 5), max_size=3),
})
network_body = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["", "x", "y"]),
    "private": st.booleans(),
    "mtu": st.integers(0, 20000),
    "v4AssignMode": st.sampled_from(["zt", {"zt": False}, {"zt": True}]),
    "ipAssignmentPools": st.lists(st.sampled_from(POOLS), max_size=2),
    "routes": st.sampled_from([[], [{"target": "10.0.0.0/24"}], [{"target": "10.0.0.0/8", "via": "10.0.0.1"}]]),
    "rules": st.sampled_from([[{"type": "ACTION_DROP"}],
                              [{"type": "MATCH_ETHERTYPE", "etherType": 2048, "not": True},
                               {"type": "ACTION_ACCEPT"}]]),
})
op = st.one_of(
    st.tuples(st.just("network.create"), N, network_body),
    st.tuples(st.just("network.update"), N, network_body),
    st.tuples(st.just("network.delete"), N),
    st.tuples(st.just("member.update"), N, ADDRESS, member_body),
    st.tuples(st.just("member.update"), N, ADDRESS, member_body),  # (weighted: the common write)
    st.tuples(st.just("member.create"), N, ADDRESS, member_body),
    st.tuples(st.just("member.authorize"), N, ADDRESS, st.booleans()),
    st.tuples(st.just("member.request"), N, ADDRESS, st.integers(0, 5), st.integers(-1, 2)),
    st.tuples(st.just("member.delete"), N, ADDRESS),
    st.tuples(st.just("noop")),
    st.tuples(st.just("empty")),
    st.tuples(st.just("garbage"), st.binary(max_size=12)),
    st.tuples(st.just("invalid")),
    st.tuples(st.just("resend"), st.integers(0, 10_000)),
    st.tuples(st.just("zt.root"), st.sampled_from(["n1", "n2", "n3"]), st.integers(1, 4), st.integers(0, 2)),
    st.tuples(st.just("planet.set"), st.integers(0, 6), st.lists(st.integers(1, 5), min_size=1, max_size=4,
                                                                 unique=True), st.booleans()),
)
ops = st.lists(op, min_size=20, max_size=80)


WORLD_ID = 0xC1A55E7
PLANET_PRIV, OTHER_PRIV = (hashlib.sha512(f"planet {k}".encode()).digest() for k in ("ours", "other"))
PLANET_PUB = crypto.public_from_private(PLANET_PRIV)


def _root(n: int) -> Root:
    public = crypto.public_from_private(hashlib.sha512(f"root {n}".encode()).digest())
    return Root(Identity(n, public), (InetAddress.from_str(f"192.0.2.{n}/9993"),))


def nwid(n: int) -> str:
    return f"{CONTROLLER}{n:06x}"


def to_entries(stream: list[tuple[Any, ...]]) -> list[Entry]:
    """What proposers would have put in the journal for these operations (request ids unique, except resends)."""
    sent: list[bytes] = []
    for i, o in enumerate(stream):
        rid, t = f"r{i}", 1_700_000_000_000 + 1000 * i
        kind = o[0]
        if kind == "network.create":
            data = C.build_network_create(rid, t, o[2], start=o[1])
        elif kind == "network.update":
            data = C.build_network_update(rid, t, nwid(o[1]), o[2])
        elif kind == "network.delete":
            data = C.build_network_delete(rid, t, nwid(o[1]))
        elif kind == "member.update":
            data = C.build_member_update(rid, t, nwid(o[1]), o[2], o[3])
        elif kind == "member.create":
            data = C.build_member_create(rid, t, nwid(o[1]), o[2], o[3])
        elif kind == "member.authorize":
            data = C.build_member_authorize(rid, t, nwid(o[1]), o[2], o[3])
        elif kind == "member.request":  # mostly one key per address; sometimes another (a conflict)
            identity = f"{o[2]}:0:{o[3] // 5:0128x}"
            data = C.build_member_request(rid, t, nwid(o[1]), o[2], identity, vMajor=o[4])
        elif kind == "member.delete":
            data = C.build_member_delete(rid, t, nwid(o[1]), o[2])
        elif kind == "noop":
            data = C.build_noop(rid, t)
        elif kind == "empty":
            data = b""
        elif kind == "garbage":
            data = o[1]
        elif kind == "zt.root":
            data = C.build_zt_root(rid, t, o[1], _root(o[2]).identity.to_string(),
                                   [f"192.0.2.{o[2]}/{9993 + o[3]}"] if o[3] < 2 else [])
        elif kind == "planet.set":  # timestamps collide (refused unless newer); sometimes a wrong signer
            world = World.make(WorldType.PLANET, WORLD_ID, o[1], PLANET_PUB, [_root(n) for n in o[2]],
                               PLANET_PRIV if o[3] else OTHER_PRIV)
            data = C.build_planet_set(rid, t, world.encode())
        elif kind == "invalid":  # a proposer that skipped validation
            data = C.encode(C.NetworkUpdate(request_id=rid, time=t, nwid=nwid(1), changes={"mtu": "x"}))
        else:
            data = sent[o[1] % len(sent)] if sent else b""
        sent.append(data)
    init = C.build_cluster_init("init", 1, cluster_id="c", timeline_id="t", address=CONTROLLER,
                                signing_key=bound_key(CONTROLLER), token_hash="h", planet_key=PLANET_PRIV,
                                world_id=WORLD_ID)
    return [(i + 1, 1 + i // 25, d) for i, d in enumerate([init, *sent])]


def batches(entries: list[Entry], cuts: list[int]) -> Iterator[list[Entry]]:
    points = sorted({c % (len(entries) + 1) for c in cuts} | {0, len(entries)})
    for a, b in zip(points, points[1:]):
        yield entries[a:b]


def run(path: Path, entries: list[Entry], cuts: list[int]) -> tuple[list[Result | None], StateMachine]:
    m = StateMachine(path)
    results: list[Result | None] = []
    for b in batches(entries, cuts):
        results += m.apply_batch(b)
    return results, m


def state(m: StateMachine) -> tuple[Any, ...]:
    nets = m.list_networks()
    return (list(m.iter_model()), m.applied(), m.cluster_info(), m.network_count(),
            [m.counts(n) for n in nets], [m.list_members(n) for n in nets], m.planet(), m.planet_key(),
            m.root_records())


# ------------------------------------------------------------------------------------------ properties

@PROPS
@given(ops, st.lists(st.integers(0, 100), max_size=6), st.lists(st.integers(0, 100), max_size=6))
def test_same_stream_same_state(stream: list[tuple[Any, ...]], cuts_a: list[int], cuts_b: list[int]) -> None:
    entries = to_entries(stream)
    with tempfile.TemporaryDirectory() as d:
        ra, a = run(Path(d) / "a.db", entries, cuts_a)
        rb, b = run(Path(d) / "b.db", entries, cuts_b)
        try:
            assert ra == rb
            assert state(a) == state(b)
            assert check_machine(a) == [] and check_machine(b) == []
            assert all(r is None or isinstance(r, Result) for r in ra)
        finally:
            a.close()
            b.close()


@PROPS
@given(ops, st.integers(0, 10_000), st.integers(0, 10))
def test_snapshot_then_replay_equals_full_replay(stream: list[tuple[Any, ...]], at: int, lost: int) -> None:
    entries = to_entries(stream)
    k = at % (len(entries) + 1)
    with tempfile.TemporaryDirectory() as d:
        ref_results, ref = run(Path(d) / "ref.db", entries, [])
        node = Path(d) / "node"
        node.mkdir()
        store = SnapshotStore(node / "snapshots")
        m = StateMachine(node / "ctrl.db")
        m.apply_batch(entries[:k])
        info = store.create(m, cluster_id="c", timeline_id="t", created=0.0)
        assert info.index == (entries[k - 1][0] if k else 0)
        m.apply_batch(entries[k:k + lost])  # applied after the snapshot, then the process dies
        m.close()
        rebuilt, _ = rebuild_ctrl_db(node, store, lambda m: (e for e in entries if e[0] > m.applied()[0]),
                                     batch_entries=4)
        try:
            assert state(rebuilt) == state(ref)
            assert check_machine(rebuilt) == []
        finally:
            rebuilt.close()
            ref.close()


@PROPS
@given(ops, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), min_size=1, max_size=10))
def test_resending_with_the_same_request_id_equals_sending_once(stream: list[tuple[Any, ...]],
                                                                resends: list[tuple[int, int]]) -> None:
    base = [d for _, _, d in to_entries(stream)]
    with_dups = list(base)
    for which, where in resends:
        data = base[which % len(base)]
        at = with_dups.index(data)
        with_dups.insert(at + 1 + where % (len(with_dups) - at), data)  # somewhere after the original
    once = [(i + 1, 1, d) for i, d in enumerate(base)]
    twice = [(i + 1, 1, d) for i, d in enumerate(with_dups)]
    with tempfile.TemporaryDirectory() as d:
        r1, a = run(Path(d) / "a.db", once, [])
        r2, b = run(Path(d) / "b.db", twice, [7, 19])
        try:
            assert list(a.iter_model()) == list(b.iter_model())
            assert a.cluster_info() == b.cluster_info()
            first: dict[bytes, Result | None] = {}
            for data, r in zip(base, r1):
                first.setdefault(data, r)
            for data, r in zip(with_dups, r2):
                if r is not None:
                    assert r == first[data]  # a resend answers with the first result
            assert check_machine(b) == []
        finally:
            a.close()
            b.close()


# ------------------------------------------------------------------------------------------ validator

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["10.0.0.1", "fd00::1", "10.0.0.0/8", "zt", "true", "0", "1500", "ACTION_DROP"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["target", "via", "type", "id", "default", "rules", "zt", "ipRangeStart", "ipRangeEnd",
                         "etherType", "not", "or", "domain", "servers", "x"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "private", "enableBroadcast", "v4AssignMode", "v6AssignMode",
                                        "mtu", "multicastLimit", "routes", "ipAssignmentPools", "rules",
                                        "capabilities", "tags", "dns", "authorized", "activeBridge",
                                        "noAutoAssignIps", "ipAssignments", "id"]), json_values, max_size=5))
def test_validator_is_idempotent_and_only_raises_validation_errors(body: dict[str, Any]) -> None:
    for validate in (validate_network_changes, validate_member_changes):
        try:
            once = validate(body)
        except ValidationError as e:
            assert e.message
            continue
        assert validate(once) == once
