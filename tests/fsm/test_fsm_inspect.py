"""`hactl db dump` and `hactl db check`."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hactl.fsm import commands as C
from hactl.fsm import layout as L
from hactl.fsm.machine import StateMachine
from hactl.snapshots.inspect import add_db_commands, check, dump, main
from hactl.snapshots.store import SnapshotStore


@pytest.fixture
def node(tmp_path: Path, make_driver: Any) -> Any:
    """A data directory with ctrl.db (a small model) and two snapshots."""
    drv = make_driver("ctrl.db")
    assert drv.init().ok
    b = drv.nwid({**drv.pool_net, "name": "b"}, start=20)
    a = drv.nwid({"name": "a"}, start=10)
    for addr in ["0000000030", "0000000010", "0000000020"]:
        assert drv.member(b, addr, {"authorized": True}).ok
    assert drv.member(a, "0000000005", {"tags": [[1, 2]]}).ok
    store = SnapshotStore(tmp_path / "snapshots")
    store.create(drv.m, cluster_id="c", timeline_id="t", created=1.0)
    assert drv.member(a, "0000000006").ok
    store.create(drv.m, cluster_id="c", timeline_id="t", created=2.0)
    drv.store = store
    drv.m.close()  # LMDB forbids opening one file twice in a process: inspection runs as its own process
    return drv


def lines(data_dir: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    dump(data_dir, out)
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_dump_prints_networks_then_members_in_stable_order(node: Any, tmp_path: Path) -> None:
    recs = lines(tmp_path)
    keys = [(r["objtype"], r.get("nwid"), r["id"]) for r in recs]
    a, b = "a1b2c3d4e500000a", "a1b2c3d4e5000014"
    assert keys == [("network", a, a), ("network", b, b), ("member", a, "0000000005"),
                    ("member", a, "0000000006"), ("member", b, "0000000010"), ("member", b, "0000000020"),
                    ("member", b, "0000000030")]
    out = io.StringIO()
    dump(tmp_path, out)
    first = out.getvalue().splitlines()[0]
    assert first == json.dumps(json.loads(first), sort_keys=True)  # keys sorted on every line
    assert recs[4]["ipAssignments"] and recs[2]["tags"] == [[1, 2]]
    assert all("signing_key" not in r and "token_hash" not in r for r in recs)


def test_dump_runs_beside_a_live_writer_and_refuses_missing_db(node: Any, tmp_path: Path) -> None:
    with StateMachine(tmp_path / "ctrl.db") as live:  # a controller holding ctrl.db open for writing
        live.apply(live.applied()[0] + 1, 1, C.build_member_update("late", 1, "a1b2c3d4e500000a", "0000000007", {}))
        out = subprocess.run([sys.executable, "-m", "hactl.snapshots.inspect", "db", "dump", "--data",
                              str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert len(out.splitlines()) == 8 and '"id": "0000000007"' in out
    with pytest.raises(FileNotFoundError):
        dump(tmp_path / "nowhere", io.StringIO())


def test_check_passes_on_a_healthy_directory(node: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path) == []
    assert main(["db", "check", "--data", str(tmp_path)]) == 0
    assert "ok" in capsys.readouterr().out
    assert not list(tmp_path.glob("snapshots/*/ctrl.db-lock"))  # inspection left nothing in snapshots


def test_check_names_a_corrupt_snapshot(node: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = node.store.list()[-1]
    data = bytearray(newest.data_path.read_bytes())
    data[-10] ^= 0xFF
    newest.data_path.write_bytes(bytes(data))
    problems = check(tmp_path)
    assert len(problems) == 1 and str(newest.data_path) in problems[0] and "sha256" in problems[0]
    assert main(["db", "check", "--data", str(tmp_path)]) == 1
    assert str(newest.data_path) in capsys.readouterr().out


def test_check_reports_no_valid_snapshot_and_missing_ctrl_db(tmp_path: Path) -> None:
    (tmp_path / "snapshots" / "5-1").mkdir(parents=True)
    problems = check(tmp_path)
    assert any("5-1/meta.json: missing" in p for p in problems)
    assert any("no valid snapshot" in p for p in problems)
    assert any(p.endswith("ctrl.db: missing") for p in problems)
    assert check(tmp_path / "absent") == [f"{tmp_path / 'absent'}: not a directory"]


def test_check_finds_inconsistent_indexes(node: Any, tmp_path: Path) -> None:
    nwid = 0xA1B2C3D4E5000014
    with StateMachine(tmp_path / "ctrl.db") as m:
        env, db = m.tables()
        member = m.get_member("a1b2c3d4e5000014", "0000000020")
        assert member is not None
        with env.begin(write=True) as txn:  # damage: wrong counts, a dangling and a missing address entry
            txn.put(L.network_key(nwid), L.pack_counts(9, 9), db=db["netstat"])
            txn.put(L.ip_key(nwid, "10.9.9.9"), L.address_bytes(0x10), db=db["ips"])
            txn.delete(L.ip_key(nwid, member["ipAssignments"][0]), db=db["ips"])
    problems = check(tmp_path)
    text = "\n".join(problems)
    assert "counts say [9, 9]" in text
    assert "10.9.9.9" in text
    assert f"{member['ipAssignments'][0]} is missing from the address index" in text
    assert all(p.startswith(str(tmp_path / "ctrl.db")) for p in problems)


def test_check_finds_a_snapshot_whose_contents_disagree_with_meta(node: Any, tmp_path: Path) -> None:
    info = node.store.list()[-1]
    with StateMachine(info.data_path, lock=False) as m:  # rewrite the copy, then fix meta's checksum
        m.apply(info.index + 1, info.term, C.build_noop("late", 1))
    meta = info.to_meta()
    data = info.data_path.read_bytes()
    meta.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (info.path / "meta.json").write_text(json.dumps(meta))  # type: ignore[operator]
    problems = check(tmp_path)
    assert len(problems) == 1 and "holds applied" in problems[0]


def test_cli_registration(node: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="hactl")
    add_db_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["db", "dump", "--data", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["db", "dump"])  # --data is required
    assert main(["db", "dump", "--data", str(tmp_path / "nope")]) == 1
    assert "hactl db dump" in capsys.readouterr().err
