"""hactl/zt/planet.py (choosing roots, the next planet, checking a world) and `hactl zt planet --check`."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.cli import main
from hactl.zt import crypto
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.planet import check_world, desired_roots, inspect_world, next_world
from hactl.zt.world import ZEROTIER_PLANET, Root, World, WorldType, zerotier_planet
from hactl.zt_cli import planet_check

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORLD_ID = 0x1234_5678_9ABC_DEF0


def keypair(name: str) -> tuple[bytes, bytes]:
    private = hashlib.sha512(f"planet key {name}".encode()).digest()
    return crypto.public_from_private(private), private


PUB, PRIV = keypair("cluster")
OTHER_PUB, OTHER_PRIV = keypair("other")


def ident(n: int) -> Identity:
    private = hashlib.sha512(f"root {n}".encode()).digest()
    return Identity(n, crypto.public_from_private(private))


def record(n: int, *endpoints: str) -> dict[str, Any]:
    return {"identity": str(ident(n)), "endpoints": list(endpoints) if endpoints else [f"192.0.2.{n}/9993"]}


def root(n: int, *endpoints: str) -> Root:
    return Root(ident(n), tuple(InetAddress.from_str(e) for e in endpoints or (f"192.0.2.{n}/9993",)))


# ----------------------------------------------------------------------------------------- desired_roots

def test_desired_roots_takes_at_most_four_voters_with_endpoints_by_node_id() -> None:
    records = {f"n{i}": record(i) for i in range(1, 7)}
    records["n2"] = record(2, *())  # (has one)
    records["n3"] = {"identity": str(ident(3)), "endpoints": []}  # no endpoint: not a root
    roots = desired_roots(records, ["n6", "n5", "n4", "n3", "n2", "n1", "n9"])  # n9: no record
    assert [r.identity.address for r in roots] == [1, 2, 4, 5]
    assert desired_roots(records, ["n1", "n2"], limit=1) == [root(1)]
    assert desired_roots(records, ["n1"], limit=9) == [root(1)]  # (never more than ZeroTier's 4)
    assert desired_roots({}, ["n1"]) == [] and desired_roots(records, []) == []
    assert all(not r.identity.has_private for r in roots)


def test_desired_roots_keeps_the_roots_the_current_planet_lists() -> None:
    records = {f"n{i}": record(i) for i in range(1, 6)}
    current = World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(2), root(3), root(4), root(5)], PRIV)
    # n1 joins later (or comes back): it sorts first, but the four working roots stay.
    assert [r.identity.address for r in desired_roots(records, list(records), current=current)] == [2, 3, 4, 5]
    del records["n3"]
    assert [r.identity.address for r in desired_roots(records, list(records), current=current)] == [1, 2, 4, 5]


def test_desired_roots_skips_records_that_do_not_parse() -> None:
    records = {"n1": {"identity": "junk", "endpoints": ["192.0.2.1/9993"]}, "n2": {"identity": str(ident(2))},
               "n3": record(3, "not-an-endpoint"), "n4": record(4)}
    assert desired_roots(records, list(records)) == [root(4)]


node_ids = st.lists(st.sampled_from([f"n{i}" for i in range(1, 9)]), unique=True, max_size=8)
records_st = st.dictionaries(
    st.sampled_from([f"n{i}" for i in range(1, 9)]),
    st.tuples(st.integers(1, 8), st.lists(st.sampled_from(["192.0.2.1/9993", "2001:db8::1/9993",
                                                           "198.51.100.7/443"]), max_size=3)),
).map(lambda d: {k: record(n, *eps) if eps else {"identity": str(ident(n)), "endpoints": []}
                 for k, (n, eps) in d.items()})


@PROPS
@given(records=records_st, voters=node_ids, perm=st.randoms(use_true_random=False))
def test_desired_roots_is_deterministic_and_bounded(records: dict[str, Any], voters: list[str], perm: Any) -> None:
    shuffled = list(voters)
    perm.shuffle(shuffled)
    items = list(records.items())
    perm.shuffle(items)
    a = desired_roots(records, voters)
    assert a == desired_roots(dict(items), shuffled)  # order of the inputs does not matter
    assert len(a) <= 4 and all(r.stable_endpoints for r in a)
    eligible = sorted(v for v in set(voters) if v in records and records[v]["endpoints"])
    assert [str(r.identity) for r in a] == [records[v]["identity"] for v in eligible[:4]]


# -------------------------------------------------------------------------------------------- next_world

def test_next_world_first_then_nothing_then_newer() -> None:
    w1 = next_world(None, [root(1)], WORLD_ID, PUB, PRIV, 1000)
    assert w1 is not None and w1.timestamp == 1000 and w1.type == WorldType.PLANET and w1.id == WORLD_ID
    assert w1.verify(PUB) and w1.updates_must_be_signed_by == PUB
    assert next_world(w1, [root(1)], WORLD_ID, PUB, PRIV, 5000) is None
    w2 = next_world(w1, [root(1, "203.0.113.1/9993")], WORLD_ID, PUB, PRIV, 10)
    assert w2 is not None and w2.timestamp == 1001 and w1.should_be_replaced_by(w2)
    assert next_world(w2, [], WORLD_ID, PUB, PRIV, 9999) is None  # no roots: keep the current planet
    assert next_world(None, [], WORLD_ID, PUB, PRIV, 9999) is None


def test_next_world_refuses_what_clients_would_ignore() -> None:
    w = next_world(None, [root(1)], WORLD_ID, PUB, PRIV, 1000)
    with pytest.raises(ValueError, match="at most 4"):
        next_world(w, [root(i) for i in range(1, 6)], WORLD_ID, PUB, PRIV, 2000)
    with pytest.raises(ValueError, match="another signing key"):
        next_world(w, [root(2)], WORLD_ID, OTHER_PUB, OTHER_PRIV, 2000)
    with pytest.raises(ValueError, match="is not planet"):
        next_world(w, [root(2)], WORLD_ID + 1, PUB, PRIV, 2000)
    with pytest.raises(ValueError, match="is not planet"):
        next_world(zerotier_planet(), [root(2)], WORLD_ID, PUB, PRIV, 2000)


roots_st = st.lists(st.tuples(st.integers(1, 9), st.lists(st.sampled_from(
    ["192.0.2.1/9993", "2001:db8::1/9993", "198.51.100.7/443", "203.0.113.9/9993"]), min_size=1, max_size=3,
    unique=True)), max_size=4, unique_by=lambda t: t[0]).map(lambda xs: [root(n, *eps) for n, eps in xs])


@PROPS
@given(steps=st.lists(st.tuples(roots_st, st.integers(0, 1 << 45)), min_size=1, max_size=6))
def test_next_world_chain_is_always_accepted_by_a_client(steps: list[tuple[list[Root], int]]) -> None:
    """Whatever roots and clocks come, every planet it makes has <= 4 roots, is strictly newer than the one
    before, verifies with the previous planet's key, and a client holding the previous one accepts it."""
    current: World | None = None
    for roots, now in steps:
        nxt = next_world(current, roots, WORLD_ID, PUB, PRIV, now)
        if nxt is None:
            assert not roots or (current is not None and tuple(current.roots) == tuple(roots))
            continue
        assert len(nxt.roots) <= 4 and nxt.roots == tuple(roots)
        assert World.decode(nxt.encode()) == nxt
        if current is not None:
            assert nxt.timestamp > current.timestamp and nxt.verify(current.updates_must_be_signed_by)
            assert current.should_be_replaced_by(nxt)
        else:
            assert nxt.timestamp == now and nxt.verify(PUB)
        assert check_world(nxt.encode(), WORLD_ID) == []
        current = nxt


# ------------------------------------------------------------------------------------------- check_world

def five_roots(wtype: WorldType = WorldType.PLANET) -> bytes:
    data = bytearray(World.make(wtype, WORLD_ID, 1, PUB, [root(i) for i in range(1, 5)], PRIV).encode())
    extra = root(5)
    data[177] = 5
    tail = b"" if wtype == WorldType.PLANET else bytes(data[-2:])
    if tail:
        del data[-2:]
    data += extra.identity.to_bytes() + b"\x01" + extra.stable_endpoints[0].encode() + tail
    return bytes(data)


def test_check_world_of_zerotiers_planet() -> None:
    assert check_world(ZEROTIER_PLANET) == []
    assert check_world(ZEROTIER_PLANET, 149604618) == []
    assert "expected" in check_world(ZEROTIER_PLANET, WORLD_ID)[0]
    rep = inspect_world(ZEROTIER_PLANET, validate_identities=True)
    assert rep.usable and rep.world == zerotier_planet()


@pytest.mark.parametrize("data,text", [
    (ZEROTIER_PLANET[:300], "not decodable as a ZeroTier world at byte 276 of 300"),
    (ZEROTIER_PLANET[:100], "at byte 81"),
    (b"", "at byte 0"),
    (ZEROTIER_PLANET + b"\x00", "unexpected bytes"),
    (five_roots(), "ZeroTier clients silently ignore a planet with more than 4 roots"),
    (b"\x02" + ZEROTIER_PLANET[1:], "unknown world type 2"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [], PRIV).encode(), "no roots"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [Root(ident(1))], PRIV).encode(), "has no endpoints"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(1, "0.0.0.0/9993")], PRIV).encode(), "unspecified"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(1, "192.0.2.1/0")], PRIV).encode(), "port 0"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(1), root(1)], PRIV).encode(), "listed twice"),
    (World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(1)], OTHER_PRIV).encode(), "bad signature"),
    (World.make(WorldType.NULL, WORLD_ID, 1, PUB, [root(1)], PRIV).encode(), "null"),
    (World.make(WorldType.PLANET, 0, 1, PUB, [root(1)], PRIV).encode(), "world id 0"),
])
def test_check_world_problems(data: bytes, text: str) -> None:
    problems = check_world(data)
    assert any(text in p and not p.startswith("warning") for p in problems), problems


def test_check_world_warnings_do_not_make_it_unusable() -> None:
    data = World.make(WorldType.PLANET, WORLD_ID, 1, PUB, [root(1, "127.0.0.1/9993", "10.1.2.3/9993",
                                                               "fd00::1/9993")], PRIV).encode()
    rep = inspect_world(data)
    assert rep.usable and len(rep.warnings) == 3
    assert all(p.startswith("warning: ") for p in check_world(data))
    assert any("loopback" in w for w in rep.warnings) and any("private" in w for w in rep.warnings)


def test_check_world_of_a_moon() -> None:
    moon = zerotier_planet().as_moon(PRIV, world_id=None)  # id: its first root's address
    assert moon.type == WorldType.MOON
    # Signed with our key but naming ZeroTier's: its own key does not verify it, a key given does.
    assert any("bad signature" in p for p in check_world(moon.encode()))
    assert inspect_world(moon.encode(), signer=PUB).usable
    mine = World.make(WorldType.MOON, 1, 1, PUB, [root(1)], PRIV).encode()
    assert check_world(mine) == []
    assert inspect_world(mine, expect_type=WorldType.PLANET).errors == ["this is a moon, not a planet"]
    assert any("first root's address" in w for w in inspect_world(
        World.make(WorldType.MOON, 77, 1, PUB, [root(1)], PRIV).encode()).warnings)


@PROPS
@given(data=st.binary(max_size=700) | st.integers(0, 569).map(lambda n: ZEROTIER_PLANET[:n]))
def test_check_world_never_raises(data: bytes) -> None:
    problems = check_world(data)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


# ----------------------------------------------------------------------------------------------- the CLI

def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(["zt", "planet", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_check_zerotiers_planet(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "planet"
    f.write_bytes(ZEROTIER_PLANET)
    code, out, _ = run(capsys, "--check", str(f))
    assert code == 0
    assert "planet 149604618 (0000000008eac90a)" in out and "timestamp 1644592324813" in out
    assert "cafe9efeb9  104.194.8.134/9993, 2605:9880:200:1200:30:571:e34:51/9993" in out
    assert "4 roots" in out and "ZeroTier's built-in planet" in out and out.strip().endswith("usable")
    code, out, _ = run(capsys, "--check", str(f), "--id", "0x8eac90a", "--validate-identities")
    assert code == 0
    code, out, _ = run(capsys, "--check", str(f), "--id", "1")
    assert code == 1 and "expected 1" in out


def test_cli_check_truncated(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "planet"
    f.write_bytes(ZEROTIER_PLANET[:300])
    code, out, _ = run(capsys, "--check", str(f))
    assert code == 1 and "problem: not decodable" in out and "byte 276" in out and "NOT usable" in out


def test_cli_check_five_roots(tmp_path: Path, capsys: Any) -> None:
    f = tmp_path / "planet"
    f.write_bytes(five_roots())
    code, out, _ = run(capsys, "--check", str(f))
    assert code == 1 and "more than 4 roots" in out


def test_cli_check_moon(tmp_path: Path, capsys: Any) -> None:
    moon = World.make(WorldType.MOON, 1, 5, PUB, [root(1, "198.51.100.1/9993")], PRIV)
    f = tmp_path / f"{1:016x}.moon"
    f.write_bytes(moon.encode())
    code, out, _ = run(capsys, "--check", str(f))
    assert code == 0 and "moon 1 (0000000000000001)" in out and "0000000001  198.51.100.1/9993" in out
    code, out, _ = run(capsys, "--check", str(f), "--moon")
    assert code == 0
    wrong = tmp_path / "x.moon"
    wrong.write_bytes(moon.encode())
    code, out, _ = run(capsys, "--check", str(wrong), "--moon")
    assert code == 0 and "warning: ZeroTier loads moons from moons.d/0000000000000001.moon" in out
    planet = tmp_path / "planet"
    planet.write_bytes(ZEROTIER_PLANET)
    code, out, _ = run(capsys, "--check", str(planet), "--moon")
    assert code == 1 and "this is a planet, not a moon" in out


def test_cli_usage(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(capsys, "--check", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err
    code, _, err = run(capsys, str(tmp_path / "out"))
    assert code == 2 and "--api URL" in err
    assert planet_check(str(tmp_path / "missing"))[0] == 2


class _Api:
    """A stand-in for the cluster API's GET /planet: serves ``bodies[path]`` to requests with the token."""

    def __init__(self, bodies: dict[str, tuple[int, str, bytes]]) -> None:
        import http.server
        import threading
        api = self
        self.bodies = bodies
        self.seen: list[tuple[str, str | None]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                api.seen.append((self.path, self.headers.get("X-ZT1-Auth")))
                if self.headers.get("X-ZT1-Auth") != "sekrit":
                    status, ctype, body = 401, "text/plain", b"no"
                else:
                    status, ctype, body = api.bodies.get(self.path, (404, "text/plain", b"none"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Any:
    ours = World.make(WorldType.PLANET, WORLD_ID, 5, PUB, [root(1), root(2)], PRIV)
    moon = World.make(WorldType.MOON, 1, 5, PUB, [root(1), root(2)], PRIV)
    a = _Api({"/planet": (200, "application/octet-stream", ours.encode()),
              "/planet?form=moon": (200, "application/json", ('{"world": "%s"}' % moon.encode().hex()).encode())})
    a.ours, a.moon = ours, moon  # type: ignore[attr-defined]
    yield a
    a.close()


def test_cli_writes_the_clusters_planet_and_moon(tmp_path: Path, capsys: Any, api: Any) -> None:
    token = tmp_path / "api-token"
    token.write_text("sekrit\n")
    out_file = tmp_path / "planet.out"
    code, out, err = run(capsys, str(out_file), "--api", api.url, "--token-file", str(token))
    assert code == 0, err
    assert out_file.read_bytes() == api.ours.encode() and f"planet {WORLD_ID}" in out and "written to" in out
    assert api.seen[-1] == ("/planet", "sekrit")
    code, out, err = run(capsys, str(tmp_path), "--moon", "--api", api.url + "/", "--token-file", str(token))
    assert code == 0, err
    assert (tmp_path / f"{1:016x}.moon").read_bytes() == api.moon.encode() and "moons.d" in out
    assert api.seen[-1][0] == "/planet?form=moon"
    assert run(capsys, "--check", str(tmp_path / f"{1:016x}.moon"), "--moon")[0] == 0


def test_cli_fetch_failures_write_nothing(tmp_path: Path, capsys: Any, api: Any) -> None:
    token = tmp_path / "api-token"
    token.write_text("wrong")
    target = tmp_path / "planet.out"
    code, _, err = run(capsys, str(target), "--api", api.url, "--token-file", str(token))
    assert code == 1 and "401" in err and not target.exists()
    token.write_text("sekrit")
    api.bodies["/planet"] = (404, "text/plain", b"")
    code, _, err = run(capsys, str(target), "--api", api.url, "--token-file", str(token))
    assert code == 1 and "no planet yet" in err and not target.exists()
    api.bodies["/planet"] = (200, "application/octet-stream", five_roots())
    code, _, err = run(capsys, str(target), "--api", api.url, "--token-file", str(token))
    assert code == 1 and "more than 4 roots" in err and "nothing written" in err and not target.exists()
    api.bodies["/planet"] = (200, "application/octet-stream", api.moon.encode())  # a moon where a planet is due
    code, _, err = run(capsys, str(target), "--api", api.url, "--token-file", str(token))
    assert code == 1 and "not a planet" in err and not target.exists()
    code, _, err = run(capsys, str(target), "--api", "http://127.0.0.1:1", "--token-file", str(token))
    assert code == 1 and not target.exists()
    code, _, err = run(capsys, str(target), "--api", api.url, "--token-file", str(tmp_path / "none"))
    assert code == 2
