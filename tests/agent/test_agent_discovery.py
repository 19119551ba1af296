"""Finding the agent socket: --socket, --data, $HACTL_AGENT_SOCKET, then the controllers running on this host.

The /proc scan is tested against a fake proc root (deterministic: other tests may run real controllers on this
host at the same time) and once against the real /proc with a process that looks like a controller.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hactl.agent.client import DiscoveryError, find_socket, parse_controller_cmdline, running_controllers
from hactl.cli import main

NOENV: dict[str, str] = {}


def write_config(path: Path, node_id: str, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"id": node_id, "data_dir": f"data-{node_id}", **extra}
    path.write_text(yaml.safe_dump(doc))
    return path


class FakeProc:
    """A directory laid out like /proc: <pid>/cmdline, <pid>/cwd, <pid>/ns/mnt."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "self").mkdir()
        (root / "self" / "ns").mkdir()
        os.symlink("mnt:[4026531840]", root / "self" / "ns" / "mnt")

    def add(self, pid: int, argv: list[str], cwd: Path | None = None, ns: str | None = None) -> None:
        d = self.root / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        if cwd is not None:
            os.symlink(cwd, d / "cwd")
        if ns is not None:
            (d / "ns").mkdir()
            os.symlink(ns, d / "ns" / "mnt")

    @property
    def path(self) -> str:
        return str(self.root)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


# ------------------------------------------------------------------------------------------ precedence

def test_precedence(tmp_path: Path, proc: FakeProc):
    cfg = write_config(tmp_path / "etc" / "c1.yaml", "c1")
    proc.add(100, ["hactl", "controller", "run", "--config", str(cfg)])
    env = {"HACTL_AGENT_SOCKET": "/env/agent.sock"}
    assert find_socket("/s/agent.sock", "/d", env, proc.path) == "/s/agent.sock"
    assert find_socket(None, "/d", env, proc.path) == "/d/agent.sock"
    assert find_socket(None, None, env, proc.path) == "/env/agent.sock"
    assert find_socket(None, None, {"HACTL_AGENT_SOCKET": ""}, proc.path) == str(tmp_path / "etc" / "data-c1" /
                                                                                "agent.sock")
    assert find_socket(None, None, NOENV, proc.path) == str(tmp_path / "etc" / "data-c1" / "agent.sock")


def test_relative_socket_and_data_are_made_absolute(tmp_path: Path, proc: FakeProc, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_socket("a.sock", None, NOENV, proc.path) == str(tmp_path / "a.sock")
    assert find_socket(None, "d", NOENV, proc.path) == str(tmp_path / "d" / "agent.sock")


def test_data_dir_finds_a_moved_socket_through_the_running_controller(tmp_path: Path, proc: FakeProc):
    cfg = write_config(tmp_path / "c2.yaml", "c2", agent={"socket": str(tmp_path / "run" / "c2.sock")})
    proc.add(200, ["/usr/bin/python3", "/venv/bin/hactl", "controller", "run", "--config", str(cfg)])
    assert find_socket(None, str(tmp_path / "data-c2"), NOENV, proc.path) == str(tmp_path / "run" / "c2.sock")
    (tmp_path / "data-c3").mkdir()  # no controller for it: the default name, for the connect error to mention
    assert find_socket(None, str(tmp_path / "data-c3"), NOENV, proc.path) == str(tmp_path / "data-c3" /
                                                                                 "agent.sock")


# ------------------------------------------------------------------------------------------ the /proc scan

def test_zero_found(proc: FakeProc):
    proc.add(10, ["/sbin/init"])
    proc.add(11, ["python3", "-m", "http.server"])
    proc.add(12, ["vim", "controller", "run"])  # the words alone are not enough
    with pytest.raises(DiscoveryError, match="no running controller found on this host; use --socket"):
        find_socket(None, None, NOENV, proc.path)


def test_several_found_are_listed(tmp_path: Path, proc: FakeProc):
    c1 = write_config(tmp_path / "c1.yaml", "c1")
    c2 = write_config(tmp_path / "c2.yaml", "c2")
    proc.add(301, ["hactl", "controller", "run", "--config", str(c1)])
    proc.add(302, ["/usr/bin/python3", "-m", "hactl.cli", "controller", "run", "--config=" + str(c2)])
    with pytest.raises(DiscoveryError) as ei:
        find_socket(None, None, NOENV, proc.path)
    msg = str(ei.value)
    assert msg.startswith("2 controllers run on this host; choose one with --socket PATH or --data DIR:")
    assert f"pid 301: c1 {tmp_path}/data-c1/agent.sock" in msg
    assert f"pid 302: c2 {tmp_path}/data-c2/agent.sock" in msg


def test_cmdline_overrides_and_relative_paths(tmp_path: Path, proc: FakeProc):
    """--id and --data override the config as they did for the controller; a relative --config is relative to
    the process's working directory, a relative --data to the config's directory (as hactl.config.load does)."""
    write_config(tmp_path / "conf" / "cluster.yaml", "base")
    proc.add(400, ["hactl", "controller", "run", "--config", "conf/cluster.yaml", "--id", "n7", "--data", "d7"],
             cwd=tmp_path)
    [f] = running_controllers(proc.path)
    assert (f.pids, f.id, f.socket) == ((400,), "n7", str(tmp_path / "conf" / "d7" / "agent.sock"))


def test_problems_are_reported_not_fatal(tmp_path: Path, proc: FakeProc):
    proc.add(500, ["hactl", "controller", "run", "--config", "rel.yaml"])  # no readable cwd
    proc.add(501, ["hactl", "controller", "run", "--config", str(tmp_path / "missing.yaml")])
    found = {f.pids[0]: f for f in running_controllers(proc.path)}
    assert "working directory is not readable" in found[500].problem
    assert "file not found" in found[501].problem
    with pytest.raises(DiscoveryError) as ei:
        find_socket(None, None, NOENV, proc.path)
    assert "pid 500:" in str(ei.value) and "pid 501:" in str(ei.value)
    (tmp_path / "proc" / "500").rename(tmp_path / "proc" / "x500")
    with pytest.raises(DiscoveryError, match="found a controller but not its agent socket"):
        find_socket(None, None, NOENV, proc.path)


def test_wrappers_collapse_and_other_containers_are_ignored(tmp_path: Path, proc: FakeProc):
    cfg = write_config(tmp_path / "c1.yaml", "c1")
    proc.add(600, ["sudo", "-u", "hactl", "hactl", "controller", "run", "--config", str(cfg)])
    proc.add(601, ["/usr/bin/python3", "/usr/local/bin/hactl", "controller", "run", "--config", str(cfg)])
    proc.add(602, ["hactl", "controller", "run", "--config", str(cfg)], ns="mnt:[4026532999]")  # a container
    [f] = running_controllers(proc.path)
    assert f.pids == (600, 601) and f.id == "c1"
    assert find_socket(None, None, NOENV, proc.path) == str(tmp_path / "data-c1" / "agent.sock")


@pytest.mark.parametrize("argv, expect", [
    (["hactl", "controller", "run", "--config", "a.yaml"], {"config": "a.yaml", "id": None, "data": None}),
    (["python3", "-m", "hactl.cli", "controller", "run", "--config", "a", "--id", "x", "--data=/d"],
     {"config": "a", "id": "x", "data": "/d"}),
    (["python3", "-mhactl.cli", "controller", "run", "--config=a"], {"config": "a", "id": None, "data": None}),
    (["/opt/venv/bin/hactl", "--version", "controller", "run"], {"config": None, "id": None, "data": None}),
    (["hactl", "agent", "cluster", "list"], None),
    (["hactl", "controller"], None),
    (["python3", "controller", "run"], None),
    ([], None),
])
def test_parse_controller_cmdline(argv, expect):
    assert parse_controller_cmdline(argv) == expect


def test_the_real_proc(tmp_path: Path):
    """A process whose command line reads `... hactl controller run --config X` is found in the real /proc."""
    cfg = write_config(tmp_path / "real.yaml", "realnode")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "hactl", "controller", "run",
                          "--config", str(cfg)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [f for f in running_controllers() if p.pid in f.pids]
            if found:
                break
            time.sleep(0.05)
        assert found and found[0].id == "realnode"
        assert found[0].socket == str(tmp_path / "data-realnode" / "agent.sock")
    finally:
        p.kill()
        p.wait()


def test_cli_exit_code_2_when_nothing_is_found(capsys, monkeypatch):
    import hactl.agent.client as C
    monkeypatch.delenv("HACTL_AGENT_SOCKET", raising=False)
    monkeypatch.setattr(C, "running_controllers", lambda proc_root="/proc": [])
    assert main(["agent", "cluster", "list"]) == 2
    assert capsys.readouterr().err == ("hactl agent: no_socket: no running controller found on this host; use "
                                       "--socket PATH or --data DIR (or set HACTL_AGENT_SOCKET)\n")
