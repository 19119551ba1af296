"""`hactl agent ...` against a real AgentServer: output (table, one line, --json), exit codes, path handling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_helpers import FakeHandle, ServerThread
from hactl.agent.client import ENV_SOCKET
from hactl.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def handle(tmp_path: Path) -> FakeHandle:
    return FakeHandle(tmp_path)


@pytest.fixture
def srv(handle: FakeHandle, tmp_path: Path, monkeypatch):
    monkeypatch.delenv(ENV_SOCKET, raising=False)
    s = ServerThread(handle, tmp_path / "agent.sock")
    yield s
    s.close()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cluster_list_table_and_json(srv: ServerThread, capsys):
    code, out, err = run(capsys, "agent", "--socket", srv.server.path, "cluster", "list")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE", "LEADER", "CONNECTED", "LAST", "CONTACT", "MATCH",
                                "VERSION", "CERTIFICATES"]
    assert lines[1].split() == ["ctrl1", "127.0.0.1:6262", "voter", "*", "yes", "-", "42", "0.1.0", "-"]
    assert lines[3].split() == ["ctrl3", "127.0.0.1:6264", "voter", "no", "12.5s", "ago", "40", "0.1.0", "-"]
    # Columns line up: every row's ADDRESS starts where the header's does.
    col = lines[0].index("ADDRESS")
    assert all(line[col:].startswith("127.0.0.1") for line in lines[1:])

    code, out, _ = run(capsys, "agent", "--json", "--socket", srv.server.path, "cluster", "list")
    rows = json.loads(out)
    assert code == 0 and rows[1]["id"] == "ctrl2" and rows[0]["leader"] is True and rows[0]["last_contact"] is None


def test_options_after_the_subcommand(srv: ServerThread, capsys):
    code, out, _ = run(capsys, "agent", "cluster", "list", "--socket", srv.server.path, "--json")
    assert code == 0 and len(json.loads(out)) == 3
    code, _, err = run(capsys, "agent", "--data", "/x", "status", "--socket", srv.server.path)
    assert code == 2 and "not both" in err


def test_add_remove_transfer(srv: ServerThread, handle: FakeHandle, capsys):
    handle.reachable["127.0.0.1:6265"] = "ctrl4"
    s = srv.server.path
    assert run(capsys, "agent", "--socket", s, "cluster", "add", "127.0.0.1:6265") == (
        0, "added ctrl4 (127.0.0.1:6265) as voter\n", "")
    assert handle.calls[-1] == ("cluster_add", ("127.0.0.1:6265", False, 120.0))
    assert run(capsys, "agent", "--socket", s, "cluster", "remove", "ctrl4") == (0, "removed ctrl4 from the cluster\n",
                                                                                  "")
    assert run(capsys, "agent", "--socket", s, "cluster", "add", "127.0.0.1:6265", "--learner", "--json")[:2] == (
        0, json.dumps({"id": "ctrl4", "role": "learner"}, indent=2) + "\n")
    assert run(capsys, "agent", "--socket", s, "--timeout", "7", "cluster", "transfer-leadership", "ctrl2") == (
        0, "leadership transferred to ctrl2\n", "")
    assert handle.calls[-1] == ("transfer_leadership", ("ctrl2", 7.0))
    assert run(capsys, "agent", "--socket", s, "cluster", "transfer-leadership")[1] == (
        "leadership transferred to ctrl1\n")
    assert handle.calls[-1][1][0] is None


def test_a_failed_command_exits_1_with_code_and_message(srv: ServerThread, capsys):
    s = srv.server.path
    code, out, err = run(capsys, "agent", "--socket", s, "cluster", "remove", "ctrl9")
    assert (code, out, err) == (1, "", "hactl agent: not_found: ctrl9 is not a member\n")
    code, out, err = run(capsys, "agent", "--socket", s, "--json", "cluster", "add", "10.9.9.9:1")
    assert code == 1 and json.loads(out) == {"ok": False, "error": "unreachable",
                                             "message": "cannot dial 10.9.9.9:1: connection refused"}
    code, _, err = run(capsys, "agent", "--socket", s, "cluster", "add", "no-port")
    assert code == 1 and err.startswith("hactl agent: bad_request: cluster.add: args.address: expected host:port")


def test_snapshot_db_default_and_relative_path(srv: ServerThread, handle: FakeHandle, tmp_path: Path, capsys,
                                               monkeypatch):
    code, out, _ = run(capsys, "agent", "--socket", srv.server.path, "controller", "snapshot-db")
    assert code == 0 and handle.calls[-1] == ("snapshot_db", (None,))
    first, second = out.splitlines()
    assert first.startswith(f"wrote {tmp_path}/ctrl-") and first.endswith("bytes, raft index 42)")
    assert second.startswith("sha256 ") and second.endswith(".db.sha256)")
    elsewhere = tmp_path / "ops"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = run(capsys, "agent", "--socket", srv.server.path, "--json", "controller", "snapshot-db",
                       "backup.db")
    result = json.loads(out)
    assert code == 0 and result["path"] == str(elsewhere / "backup.db")  # resolved here, not in the server's cwd
    assert (elsewhere / "backup.db.sha256").exists()


def test_restore_from_db(srv: ServerThread, handle: FakeHandle, tmp_path: Path, capsys, monkeypatch):
    s = srv.server.path
    monkeypatch.chdir(tmp_path)
    n = len(handle.calls)
    code, out, err = run(capsys, "agent", "--socket", s, "cluster", "restore-from-db", "missing.db")
    assert code == 2 and err == f"hactl agent: usage: {tmp_path}/missing.db: no such file\n"
    assert len(handle.calls) == n  # nothing was sent
    (tmp_path / "bad.db").write_bytes(b"not a database")
    code, out, err = run(capsys, "agent", "--socket", s, "cluster", "restore-from-db", "bad.db")
    assert code == 1 and "invalid_db" in err and not handle.restarted and handle.index == 42
    run(capsys, "agent", "--socket", s, "controller", "snapshot-db", "good.db")
    code, out, err = run(capsys, "agent", "--socket", s, "cluster", "restore-from-db", "good.db")
    assert code == 0, err
    assert out == ("restored at raft index 43 (timeline tl-2): 2 networks, 5 members; every controller now restarts "
                   "with it (exit code 3)\n")
    assert handle.calls[-1] == ("restore_from_db", (str(tmp_path / "good.db"), 300.0))


def test_status(srv: ServerThread, capsys):
    code, out, _ = run(capsys, "agent", "--socket", srv.server.path, "status")
    assert code == 0
    assert out.splitlines()[:3] == ["id:      ctrl1", "role:    leader", "term:    7"]


def test_socket_from_data_dir_and_environment(srv: ServerThread, tmp_path: Path, capsys, monkeypatch):
    assert run(capsys, "agent", "--data", str(tmp_path), "status")[0] == 0
    monkeypatch.setenv(ENV_SOCKET, srv.server.path)
    assert run(capsys, "agent", "status")[0] == 0
    code, _, err = run(capsys, "agent", "--data", str(tmp_path / "elsewhere"), "status")  # --data beats the env
    assert code == 2 and "elsewhere/agent.sock: no such socket" in err


def test_a_real_cli_process(srv: ServerThread):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(ENV_SOCKET, None)
    p = subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--socket", srv.server.path, "--json",
                        "cluster", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    assert [r["id"] for r in json.loads(p.stdout)] == ["ctrl1", "ctrl2", "ctrl3"]
    p = subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--socket", srv.server.path + ".nope",
                        "status"], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2 and "no such socket" in p.stderr
    p = subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "cluster", "remove"], capture_output=True,
                       text=True, env=env, timeout=30)
    assert p.returncode == 2 and "ID" in p.stderr  # argparse usage error
