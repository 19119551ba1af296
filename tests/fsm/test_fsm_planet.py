"""The cluster's own planet in the state machine: planet key and world id at init (or planet.init), root records
(zt.root, dropped with their node), planet.set's acceptance rules, restore, and determinism."""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from hactl.fsm import commands as C
from hactl.fsm.coerce import ValidationError
from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import StateMachine
from hactl.fsm.result import ErrorCode, Result
from hactl.zt import crypto
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.planet import desired_roots, next_world
from hactl.zt.world import ZEROTIER_PLANET_ID, Root, World, WorldType
from tests.fsm.test_fsm_machine import fails, ok

WORLD_ID = 0x5EED0000C0FFEE01


def keypair(name: str) -> tuple[bytes, bytes]:
    private = hashlib.sha512(f"planet key {name}".encode()).digest()
    return crypto.public_from_private(private), private


PUB, PRIV = keypair("cluster")
OTHER_PUB, OTHER_PRIV = keypair("other")


def root_identity(n: int) -> Identity:
    """A public identity under address n (not derived from its key: apply never runs the memory-hard hash)."""
    private = hashlib.sha512(f"root {n}".encode()).digest()
    return Identity(n, crypto.public_from_private(private))


def root(n: int, *endpoints: str) -> Root:
    return Root(root_identity(n), tuple(InetAddress.from_str(e) for e in endpoints or (f"192.0.2.{n}/9993",)))


def world(ts: int, roots: list[Root] | None = None, *, wid: int = WORLD_ID, names: bytes = PUB,
          sign: bytes = PRIV, wtype: WorldType = WorldType.PLANET) -> bytes:
    return World.make(wtype, wid, ts, names, roots if roots is not None else [root(1)], sign).encode()


def with_roots(data: bytes, extra: list[Root]) -> bytes:
    """A world's bytes with ``extra`` roots appended (past the limit World refuses to build)."""
    count = data[177]
    out = bytearray(data)
    out[177] = count + len(extra)
    for r in extra:
        out += r.identity.to_bytes() + bytes([len(r.stable_endpoints)]) + b"".join(e.encode() for e in
                                                                                     r.stable_endpoints)
    return bytes(out)




@pytest.fixture
def pdrv(raw: Any) -> Any:
    """A driver on a machine initialised with a planet key."""
    ok(raw.init(planet_key=PRIV, world_id=WORLD_ID))
    return raw


def set_planet(d: Any, data: bytes) -> Result:
    return d.apply(C.encode(C.PlanetSet(request_id=d.rid(), time=d.tick(), world=data)))


def zt_root(d: Any, node: str, n: int, endpoints: list[str] | None = None) -> Result:
    return d.apply(C.build_zt_root(d.rid(), d.tick(), node, str(root_identity(n)),
                                   endpoints if endpoints is not None else [f"192.0.2.{n}/9993"]))


# ------------------------------------------------------------------------------------- key and world id

def test_init_carries_the_planet_key_and_world_id(pdrv: Any) -> None:
    m = pdrv.m
    assert m.planet_key() == (WORLD_ID, PUB, PRIV)
    assert m.planet_info() == {"world_id": WORLD_ID, "public_key": PUB.hex()}
    assert m.planet() is None and m.root_records() == {}
    info = m.cluster_info()
    assert PRIV.hex() not in str(info) and "planet_key" not in info  # the secret stays out of cluster info
    assert check_machine(m) == []


def test_a_legacy_init_without_planet_key_applies_and_planet_init_completes_it(raw: Any) -> None:
    fails(raw.apply(C.build_planet_init(raw.rid(), raw.tick(), PRIV, WORLD_ID)), ErrorCode.NOT_INITIALIZED)
    ok(raw.init())  # an old proposer's cluster.init: no planet fields on the wire at all
    assert raw.m.planet_key() is None and raw.m.planet_info() is None
    fails(set_planet(raw, world(1000)), ErrorCode.NOT_INITIALIZED, "world")
    assert ok(raw.apply(C.build_planet_init(raw.rid(), raw.tick(), PRIV, WORLD_ID))) == {
        "world_id": WORLD_ID, "public_key": PUB.hex()}
    fails(raw.apply(C.build_planet_init(raw.rid(), raw.tick(), OTHER_PRIV, WORLD_ID + 1)),
          ErrorCode.ALREADY_INITIALIZED, "planet_key")
    assert raw.m.planet_key() == (WORLD_ID, PUB, PRIV)
    ok(set_planet(raw, world(1000)))


def test_old_cluster_init_bytes_are_unchanged() -> None:
    """Without planet fields, cluster.init encodes exactly as before (no nil keys on the wire)."""
    cmd = C.ClusterInit(request_id="r", time=1, cluster_id="c", timeline_id="t", address="0102030405",
                        signing_key=b"k", token_hash="h")
    assert set(msgpack.unpackb(C.encode(cmd))) == {"v", "type", "request_id", "time", "cluster_id", "timeline_id",
                                                  "address", "signing_key", "token_hash"}


@pytest.mark.parametrize("kw,field", [
    ({"planet_key": PRIV}, "world_id"),
    ({"world_id": WORLD_ID}, "planet_key"),
    ({"planet_key": PRIV[:32], "world_id": WORLD_ID}, "planet_key"),
    ({"planet_key": PRIV, "world_id": 0}, "world_id"),
    ({"planet_key": PRIV, "world_id": ZEROTIER_PLANET_ID}, "world_id"),
    ({"planet_key": PRIV, "world_id": 1 << 64}, "world_id"),
])
def test_bad_planet_fields_are_refused_by_builder_and_apply(raw: Any, kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        C.build_planet_init("r", 1, kw.get("planet_key"), kw.get("world_id"))  # type: ignore[arg-type]
    assert e.value.field == field
    if kw.get("world_id", 0) >= 1 << 64:
        return  # (msgpack cannot carry it)
    from tests.fsm.conftest import SIGNING_KEY
    cmd = C.ClusterInit(request_id=raw.rid(), time=raw.tick(), cluster_id="c", timeline_id="t",
                        address="a1b2c3d4e5", signing_key=SIGNING_KEY, token_hash="h", **kw)
    fails(raw.apply(C.encode(cmd)), ErrorCode.INVALID, field)
    assert raw.m.cluster_info() is None  # the whole init rolled back


def test_new_planet_key_and_world_id() -> None:
    pub, priv = C.new_planet_key()
    assert len(pub) == len(priv) == 64 and crypto.public_from_private(priv) == pub
    assert C.new_planet_key() != (pub, priv)
    ids = {C.new_world_id() for _ in range(50)}
    assert len(ids) == 50 and all(0 < i < 1 << 64 and i != ZEROTIER_PLANET_ID for i in ids)


# ----------------------------------------------------------------------------------------------- planet.set

def test_first_planet_then_updates(pdrv: Any) -> None:
    first = world(1000, [root(1), root(2)])
    assert ok(set_planet(pdrv, first)) == {"world_id": WORLD_ID, "timestamp": 1000,
                                           "roots": ["0000000001", "0000000002"], "changed": True}
    assert pdrv.m.planet() == first
    assert ok(set_planet(pdrv, first))["changed"] is False  # the same bytes again (another leader's retry)
    second = world(2000, [root(1), root(3)])
    ok(set_planet(pdrv, second))
    assert pdrv.m.planet() == second and World.decode(pdrv.m.planet()).should_be_replaced_by(World.decode(second)) \
        is False
    assert World.decode(first).should_be_replaced_by(World.decode(second))  # what a client does
    assert check_machine(pdrv.m) == []


@pytest.mark.parametrize("data,code,field,text", [
    (world(500), ErrorCode.CONFLICT, "world", "not newer"),  # older than the current (1000)
    (world(1000, [root(2)]), ErrorCode.CONFLICT, "world", "not newer"),  # as old, other roots
    (world(2000, sign=OTHER_PRIV), ErrorCode.INVALID, "world", "signature"),
    (world(2000, wid=WORLD_ID + 1), ErrorCode.INVALID, "world", "planet id"),
    (world(2000, names=OTHER_PUB), ErrorCode.INVALID, "world", "signer of the next update"),
    (world(2000, wtype=WorldType.MOON), ErrorCode.INVALID, "world", "moon"),
    (world(2000, []), ErrorCode.INVALID, "world", "without roots"),
    (world(2000, [Root(root_identity(1), ())]), ErrorCode.INVALID, "world.roots[0]", "endpoint"),
    (world(2000, [root(1), root(1)]), ErrorCode.INVALID, "world", "twice"),
    (with_roots(world(2000, [root(1), root(2), root(3), root(4)]), [root(5)]), ErrorCode.INVALID, "world",
     "5 roots"),
    (world(2000)[:-3], ErrorCode.INVALID, "world", "truncated"),
    (world(2000) + b"\x00", ErrorCode.INVALID, "world", "unexpected bytes"),
])
def test_planet_set_acceptance_rules(pdrv: Any, data: bytes, code: ErrorCode, field: str, text: str) -> None:
    current = world(1000)
    ok(set_planet(pdrv, current))
    r = fails(set_planet(pdrv, data), code, field)
    assert text in (r.message or ""), r
    assert pdrv.m.planet() == current


def test_the_first_planet_must_be_signed_by_the_cluster_key(pdrv: Any) -> None:
    fails(set_planet(pdrv, world(1000, sign=OTHER_PRIV)), ErrorCode.INVALID, "world")
    fails(set_planet(pdrv, world(1000, names=OTHER_PUB, sign=OTHER_PRIV)), ErrorCode.INVALID, "world")
    assert pdrv.m.planet() is None


def test_planet_set_builder_checks_what_needs_no_state() -> None:
    assert C.decode(C.build_planet_set("r", 1, world(5))).world == world(5)
    for bad, field in [(world(5, wtype=WorldType.MOON), "world"), (b"xx", "world"),
                       (with_roots(world(5, [root(1), root(2), root(3), root(4)]), [root(5)]), "world")]:
        with pytest.raises(ValidationError) as e:
            C.build_planet_set("r", 1, bad)
        assert e.value.field == field


def test_planet_commands_need_an_initialised_cluster(raw: Any) -> None:
    fails(set_planet(raw, world(1000)), ErrorCode.NOT_INITIALIZED)


# --------------------------------------------------------------------------------------------- zt.root

def test_root_records_are_stored_replaced_and_unchanged_writes_nothing(pdrv: Any) -> None:
    pdrv.membership(("n1", "n2"))
    v = ok(zt_root(pdrv, "n1", 1, ["192.0.2.1/9993", "2001:db8::1/9993", "192.0.2.1/9993"]))
    assert v == {"node": "n1", "identity": str(root_identity(1)), "endpoints": ["192.0.2.1/9993",
                                                                                 "2001:db8::1/9993"], "changed": True}
    env, dbs = pdrv.m.tables()
    with env.begin() as txn:
        before = txn.get(b"roots", db=dbs["meta"])
    assert ok(zt_root(pdrv, "n1", 1, ["192.0.2.1/9993", "2001:db8::1/9993"]))["changed"] is False
    with env.begin() as txn:
        assert txn.get(b"roots", db=dbs["meta"]) == before
    ok(zt_root(pdrv, "n2", 2))
    ok(zt_root(pdrv, "n1", 1, ["198.51.100.1/9993"]))
    assert pdrv.m.root_records() == {
        "n1": {"identity": str(root_identity(1)), "endpoints": ["198.51.100.1/9993"]},
        "n2": {"identity": str(root_identity(2)), "endpoints": ["192.0.2.2/9993"]}}
    assert list(pdrv.m.root_records()) == ["n1", "n2"]
    ok(zt_root(pdrv, "n2", 2, []))  # no endpoints: a record, but no root of the planet (desired_roots)
    assert pdrv.m.root_records()["n2"]["endpoints"] == []


@pytest.mark.parametrize("endpoints,field", [
    (["127.0.0.1/9993"], "endpoints[0]"),
    (["192.0.2.1/9993", "::1/9993"], "endpoints[1]"),
    (["0.0.0.0/9993"], "endpoints[0]"),
    (["224.0.0.1/9993"], "endpoints[0]"),
    (["fe80::1/9993"], "endpoints[0]"),
    (["192.0.2.1/0"], "endpoints[0]"),
    (["192.0.2.1:9993"], "endpoints[0]"),
    (["[2001:db8::1]/9993"], "endpoints[0]"),
    ([f"192.0.2.{i}/9993" for i in range(1, 34)], "endpoints"),
])
def test_bad_endpoints_are_refused(pdrv: Any, endpoints: list[str], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        C.build_zt_root("r", 1, "n1", str(root_identity(1)), endpoints)
    assert e.value.field == field
    cmd = C.ZtRoot(request_id=pdrv.rid(), time=pdrv.tick(), node="n1", identity=str(root_identity(1)),
                   endpoints=endpoints)
    fails(pdrv.apply(C.encode(cmd)), ErrorCode.INVALID, field)
    assert pdrv.m.root_records() == {}


def test_root_identity_must_be_public_and_unique(pdrv: Any) -> None:
    secret = Identity(1, crypto.public_from_private(b"\x01" * 64), b"\x01" * 64).to_string(include_private=True)
    cmd = C.ZtRoot(request_id=pdrv.rid(), time=pdrv.tick(), node="n1", identity=secret, endpoints=[])
    fails(pdrv.apply(C.encode(cmd)), ErrorCode.INVALID, "identity")
    ok(zt_root(pdrv, "n1", 1))
    fails(zt_root(pdrv, "n2", 1), ErrorCode.CONFLICT, "identity")


def test_root_records_follow_the_membership(pdrv: Any) -> None:
    pdrv.membership(("n1", "n2", "n3"))
    for i, n in enumerate(("n1", "n2", "n3"), 1):
        ok(zt_root(pdrv, n, i))
    pdrv.membership(("n1", "n3"))  # n2 removed: its record goes in the same transaction
    assert list(pdrv.m.root_records()) == ["n1", "n3"]
    fails(zt_root(pdrv, "n2", 2), ErrorCode.NOT_FOUND, "node")  # a record in flight from a removed node
    pdrv.membership(("n1",), ("n4",))
    ok(zt_root(pdrv, "n4", 4))  # learners may record theirs (they are roots once voters)
    assert list(pdrv.m.root_records()) == ["n1", "n4"]


# --------------------------------------------------------------------------------- leader loop, end to end

def test_planet_follows_the_cluster(pdrv: Any) -> None:
    """What the leader does (hactl/zt/planet.py): records + voters -> desired roots -> next world -> planet.set.
    Every planet is accepted by a client holding the previous one."""
    m = pdrv.m
    voters = ["n1", "n2", "n3", "n4", "n5"]
    pdrv.membership(tuple(voters))
    held: World | None = None  # what a client holds

    def step(now: int) -> World | None:
        wid, pub, priv = m.planet_key()
        current = None if m.planet() is None else World.decode(m.planet())
        roots = desired_roots(m.root_records(), m.membership().voters, current=current)
        nxt = next_world(current, roots, wid, pub, priv, now)
        if nxt is not None:
            ok(pdrv.apply(C.build_planet_set(pdrv.rid(), pdrv.tick(), nxt.encode())))
        return nxt

    assert step(10) is None  # no records yet: nothing to publish
    for i, n in enumerate(voters, 1):
        ok(zt_root(pdrv, n, i))
    w1 = step(10)
    assert w1 is not None and [r.identity.address for r in w1.roots] == [1, 2, 3, 4]
    held = w1
    assert step(11) is None
    pdrv.membership(("n1", "n3", "n4", "n5"))  # n2 leaves: n5 takes its place
    w2 = step(5)  # (a clock behind the planet's timestamp: still strictly newer)
    assert w2 is not None and [r.identity.address for r in w2.roots] == [1, 3, 4, 5] and w2.timestamp == 11
    assert held.should_be_replaced_by(w2)
    held = w2
    ok(zt_root(pdrv, "n3", 3, ["203.0.113.3/9993"]))  # an endpoint moves
    w3 = step(20_000)
    assert w3 is not None and held.should_be_replaced_by(w3) and w3.timestamp == 20_000
    assert m.planet() == w3.encode()
    assert check_machine(m) == []


# ------------------------------------------------------------------------------------------------- restore

def restore(target: Any, source: StateMachine, **planet: Any) -> list[Result]:
    from tests.fsm.test_fsm_restore import NEW_KEY
    return [target.apply(b) for b in C.build_restore(
        list(source.iter_networks()), list(source.iter_all_members()), request_id=target.rid(),
        time=target.tick(), restore_id="r1", timeline_id="timeline-2", address="a1b2c3d4e5", signing_key=NEW_KEY,
        **planet)]


def backup_planet(m: StateMachine) -> dict[str, Any]:
    key = m.planet_key()
    return {} if key is None else {"planet_key": key[2], "world_id": key[0], "planet": m.planet()}


def test_restore_of_the_same_planet_keeps_the_newer_world(pdrv: Any, make_driver: Any) -> None:
    ok(set_planet(pdrv, world(1000)))
    backup = make_driver("backup.db")
    ok(backup.init(planet_key=PRIV, world_id=WORLD_ID))
    ok(set_planet(backup, world(500, [root(7)])))
    assert all(r.ok for r in restore(pdrv, backup.m, **backup_planet(backup.m)))
    assert pdrv.m.planet() == world(1000) and pdrv.m.planet_key() == (WORLD_ID, PUB, PRIV)
    ok(set_planet(backup, world(3000, [root(7)])))
    assert all(r.ok for r in restore(pdrv, backup.m, **backup_planet(backup.m)))
    assert pdrv.m.planet() == world(3000, [root(7)])  # newer: the backup's world (same key signs both)
    assert check_machine(pdrv.m) == []


def test_restore_of_another_planet_adopts_its_key_and_world(pdrv: Any, make_driver: Any) -> None:
    pdrv.membership(("n1",))
    ok(zt_root(pdrv, "n1", 1))
    ok(set_planet(pdrv, world(1000)))
    backup = make_driver("backup.db")
    ok(backup.init(planet_key=OTHER_PRIV, world_id=WORLD_ID + 5))
    theirs = world(900, [root(8)], wid=WORLD_ID + 5, names=OTHER_PUB, sign=OTHER_PRIV)
    ok(set_planet(backup, theirs))
    assert all(r.ok for r in restore(pdrv, backup.m, **backup_planet(backup.m)))
    assert pdrv.m.planet_key() == (WORLD_ID + 5, OTHER_PUB, OTHER_PRIV) and pdrv.m.planet() == theirs
    assert list(pdrv.m.root_records()) == ["n1"]  # the running cluster's roots stay
    # The next planet is signed with the adopted key, and the backup's clients accept it.
    nxt = next_world(World.decode(theirs), desired_roots(pdrv.m.root_records(), ["n1"]), WORLD_ID + 5, OTHER_PUB,
                     OTHER_PRIV, 950)
    assert nxt is not None and World.decode(theirs).should_be_replaced_by(nxt)
    ok(set_planet(pdrv, nxt.encode()))
    assert check_machine(pdrv.m) == []


def test_restore_of_a_backup_without_planet_keeps_the_cluster_planet(pdrv: Any, make_driver: Any) -> None:
    ok(set_planet(pdrv, world(1000)))
    backup = make_driver("backup.db")
    ok(backup.init())
    assert all(r.ok for r in restore(pdrv, backup.m, **backup_planet(backup.m)))
    assert pdrv.m.planet() == world(1000) and pdrv.m.planet_key() == (WORLD_ID, PUB, PRIV)


def test_restore_begin_refuses_a_planet_that_is_not_the_backups(pdrv: Any) -> None:
    with pytest.raises(ValidationError) as e:
        list(restore(pdrv, pdrv.m, planet=world(1)))
    assert e.value.field == "planet"
    cmd = C.RestoreBegin(request_id=pdrv.rid(), time=pdrv.tick(), restore_id="x", timeline_id="t",
                         address="a1b2c3d4e5", signing_key=__import__("tests.fsm.conftest").fsm.conftest.SIGNING_KEY,
                         token_hash=None, planet_key=PRIV, world_id=WORLD_ID, planet=world(1, wid=WORLD_ID + 1))
    fails(pdrv.apply(C.encode(cmd)), ErrorCode.INVALID, "planet")


# -------------------------------------------------------------------------------------------- determinism

def dump(m: StateMachine) -> dict[str, list[tuple[bytes, bytes]]]:
    env, dbs = m.tables()
    with env.begin() as txn:
        return {name: list(txn.cursor(db=db)) for name, db in dbs.items()}


def test_replaying_the_same_entries_gives_identical_state(make_driver: Any) -> None:
    a = make_driver("a.db")
    entries: list[Any] = []
    from hactl.fsm.membership import Membership
    from tests.fsm.conftest import SIGNING_KEY
    t = 1_700_000_000_000
    entries.append(C.build_cluster_init("init", t, cluster_id="c", timeline_id="t", address="a1b2c3d4e5",
                                        signing_key=SIGNING_KEY, token_hash="h", planet_key=PRIV,
                                        world_id=WORLD_ID))
    entries.append(Membership(("n1", "n2", "n3")))
    for i, n in enumerate(("n3", "n1", "n2"), 1):  # recorded in another order than node ids
        entries.append(C.build_zt_root(f"root-{n}", t + i, n, str(root_identity(i)), [f"192.0.2.{i}/9993"]))
    entries.append(C.build_planet_set("p1", t + 10, world(t + 10, [root(1), root(2), root(3)])))
    entries.append(Membership(("n1", "n3")))
    entries.append(C.build_planet_set("p2", t + 20, world(t + 20, [root(2), root(3)])))
    entries.append(C.build_planet_set("p3", t + 30, world(t + 5, [root(3)])))  # refused: older
    numbered = [(i, 1, e) for i, e in enumerate(entries, 1)]
    results_a = a.m.apply_batch(numbered)
    b = make_driver("b.db")
    results_b = [b.m.apply_batch([e])[0] for e in numbered]  # batched differently
    assert results_a == results_b
    assert not results_a[-1].ok
    assert dump(a.m) == dump(b.m)
    assert a.m.root_records() == b.m.root_records() and list(a.m.root_records()) == ["n1", "n3"]
    assert a.m.planet() == world(t + 20, [root(2), root(3)])


def test_fsck_checks_the_planet(pdrv: Any) -> None:
    pdrv.membership(("n1",))
    ok(zt_root(pdrv, "n1", 1))
    ok(set_planet(pdrv, world(1000)))
    assert check_machine(pdrv.m) == []
    env, dbs = pdrv.m.tables()
    with env.begin(write=True) as txn:
        txn.put(b"planet", world(2000, sign=OTHER_PRIV), db=dbs["meta"])
        txn.put(b"roots", msgpack.packb({"n1": {"identity": str(root_identity(1)), "endpoints": ["127.0.0.1/1"]}}),
                db=dbs["meta"])
    problems = check_machine(pdrv.m)
    assert any("signature" in p for p in problems) and any("root record of n1" in p for p in problems), problems
