"""Operator commands through the agent socket, against three (or four) real controller processes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hactl.dev.cluster import TRUST_DOMAIN, render_config
from hactl.transport.pki import issue
from tests.proc_cluster import ProcCluster, free_port_block
from tests.test_cluster_processes import member_addr, net_path


def agent(c: ProcCluster, nid: str, *args: str, timeout: float = 120) -> tuple[int, object, str]:
    out = subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--socket", str(c.specs[nid].agent_socket),
                          "--json", *args], capture_output=True, text=True, timeout=timeout)
    try:
        body = json.loads(out.stdout) if out.stdout.strip() else None
    except ValueError:
        body = out.stdout
    return out.returncode, body, out.stderr


def dump_dir(data_dir: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hactl.cli", "db", "dump", "--data", str(data_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def dump_file(db: Path, scratch: Path) -> str:
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, scratch / "ctrl.db")
    return dump_dir(scratch)



def fill(c: ProcCluster, ctrl: str, name: str, members: int) -> str:
    _, net = c.write(c.ids[0], "POST", net_path(ctrl), {"name": name})
    for i in range(members):
        code, _ = c.write(c.ids[i % 3], "POST", f"/controller/network/{net['id']}/member/{member_addr(i)}",
                          {"authorized": i % 2 == 0, "name": f"m{i}"})
        assert code == 200
    return net["id"]


def test_snapshot_db_then_restore_brings_every_node_back_to_the_backup(cluster, tmp_path: Path) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    fill(c, ctrl, "before-backup", 30)
    follower = next(n for n in c.ids if c.status(n)["cluster"]["role"] == "follower")
    code, snap, err = agent(c, follower, "controller", "snapshot-db")
    assert code == 0, err
    backup = Path(snap["path"])
    assert backup.parent == c.specs[follower].data_dir and backup.name.startswith("ctrl-")
    assert Path(f"{backup}.sha256").read_text().split()[0] == snap["sha256"]
    expected = dump_file(backup, tmp_path / "scratch")
    assert "before-backup" in expected
    fill(c, ctrl, "after-backup", 10)  # more writes the restore must undo
    restarts_before = dict(c.restarts)
    code, res, err = agent(c, c.ids[0], "cluster", "restore-from-db", str(backup), timeout=300)
    assert code == 0, err
    assert res["networks"] == 1 and res["members"] == 30
    c.wait(lambda: all(c.restarts[n] > restarts_before[n] for n in c.ids), 60, "every controller to restart")
    c.wait_ready(timeout=60)
    for nid in c.ids:  # exactly the backup's content on every node
        c.wait(lambda: dump_dir(c.specs[nid].data_dir) == expected, 30, f"{nid} to serve the restored model")
    code, ids, _ = c.request(c.ids[1], "GET", "/controller/network")
    assert code == 200 and len(ids) == 1
    code, net = c.write(c.ids[2], "POST", net_path(ctrl), {"name": "after-restore"})  # and accepts writes
    assert code == 200
    time.sleep(2)  # a restarted node must not apply the restore a second time
    for nid in c.ids:
        _, ids, _ = c.request(nid, "GET", "/controller/network")
        assert len(ids) == 2


def test_truncated_or_foreign_backup_is_refused_and_nothing_changes(cluster, tmp_path: Path) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    fill(c, ctrl, "keep", 5)
    code, snap, err = agent(c, c.ids[0], "controller", "snapshot-db", str(tmp_path / "good.db"))
    assert code == 0, err
    before = dump_dir(c.specs[c.ids[1]].data_dir)
    truncated = tmp_path / "truncated.db"
    data = Path(snap["path"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    shutil.copyfile(f"{snap['path']}.sha256", f"{truncated}.sha256")
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(os.urandom(64 << 10))
    raft_db = c.specs[c.ids[0]].data_dir / "raft.db"  # an LMDB file, but not a ctrl.db
    for bad, words, exit_code in ((truncated, "sha256", 1), (foreign, "not", 1), (raft_db, "not", 1),
                                  (tmp_path / "missing.db", "no such file", 2)):  # the client checks that one
        code, _, err = agent(c, c.ids[1], "cluster", "restore-from-db", str(bad))
        assert code == exit_code and words in err, (bad, err)
    assert all(c.restarts[n] == 0 for n in c.ids)
    assert dump_dir(c.specs[c.ids[1]].data_dir) == before


def test_add_learner_promote_remove_and_transfer_with_writes_flowing(cluster, tmp_path: Path) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    _, net = c.write(c.ids[0], "POST", net_path(ctrl), {"name": "membership"})
    acked: set[str] = set()
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            addr = member_addr(i, salt=7)
            live = [n for n in c.ids if n in c.procs]
            try:
                code, _ = c.write(live[i % len(live)], "POST", f"/controller/network/{net['id']}/member/{addr}",
                                  {}, timeout=20)
            except (AssertionError, OSError):
                continue
            if code == 200:
                acked.add(addr)

    t = threading.Thread(target=writer)
    t.start()
    try:
        # a 4th controller with an empty data dir and no initial cluster waits to be added
        base = free_port_block(2)
        pki_dir = c.root / "pki" / "ctrl4"
        issue(c.root / "pki" / "ca", pki_dir, kind="controller", node_id="ctrl4", trust_domain=TRUST_DOMAIN)
        cfg = c.root / "config" / "ctrl4.yaml"
        cfg.write_text(render_config("ctrl4", data_dir="../ctrl4", initial_cluster={},
                                     control_listen=f"127.0.0.1:{base + 1}", control_advertise=f"127.0.0.1:{base + 1}",
                                     api_listen=f"127.0.0.1:{base}", token_file="../api-token",
                                     pki_dir="../pki/ctrl4", log_level="info"))
        from hactl.dev.cluster import NodeSpec
        c.specs["ctrl4"] = NodeSpec("ctrl4", cfg, c.root / "ctrl4", f"http://127.0.0.1:{base}",
                                    f"127.0.0.1:{base + 1}", c.root / "ctrl4" / "agent.sock")
        c.ids.append("ctrl4")
        c.restarts["ctrl4"] = 0
        c.start("ctrl4")
        c.wait(lambda: c.specs["ctrl4"].agent_socket.exists(), 30, "ctrl4 to listen")  # after its control port
        follower = next(n for n in c.ids[:3] if c.status(n)["cluster"]["role"] == "follower")
        code, res, err = agent(c, follower, "cluster", "add", f"127.0.0.1:{base + 1}", "--learner")
        assert code == 0, err
        assert res["id"] == "ctrl4" and res["role"] == "learner"
        code, rows, _ = agent(c, c.ids[0], "cluster", "list")
        assert {r["id"]: r["role"] for r in rows}["ctrl4"] == "learner"
        code, res, err = agent(c, c.ids[0], "cluster", "add", f"127.0.0.1:{base + 1}")  # promote once caught up
        assert code == 0 and res["role"] == "voter", err
        leader = c.leader()
        victim = next(n for n in c.ids[:3] if n != leader)
        code, res, err = agent(c, leader, "cluster", "remove", victim)
        assert code == 0, err
        c.stop(victim)
        # ctrl4 lists what it has applied: the removal reaches it a moment after the leader answered.
        want = sorted(n for n in c.ids if n != victim)
        def listed() -> list | None:
            rows = agent(c, "ctrl4", "cluster", "list")[1]
            return rows if isinstance(rows, list) and sorted(r["id"] for r in rows) == want else None
        rows = c.wait(listed, 10, f"ctrl4 to list {want}")
        assert all(r["role"] == "voter" for r in rows) and sum(r["leader"] for r in rows) == 1
        # Seconds since the last frame from each connected peer (keepalives come every few seconds).
        assert all(0 <= r["last_contact"] < 15 for r in rows if r["connected"]), rows
        code, res, err = agent(c, leader, "cluster", "transfer-leadership", "ctrl4")
        assert code == 0 and res["leader"] == "ctrl4", err
        c.wait(lambda: c.status("ctrl4")["cluster"]["role"] == "leader", 10, "ctrl4 to lead")
        n_before = len(acked)
        c.wait(lambda: len(acked) > n_before + 5, 20, "writes to keep flowing after the transfer")
    finally:
        stop.set()
        t.join()
    live = [n for n in c.ids if n in c.procs]
    views = [set(c.request(n, "GET", f"/controller/network/{net['id']}/member")[1]) for n in live]
    assert all(v == views[0] for v in views) and acked <= views[0]


def test_cluster_recover_brings_a_lone_survivor_back(cluster) -> None:
    c: ProcCluster = cluster()
    ctrl = c.wait_ready()
    net = fill(c, ctrl, "survives", 5)
    survivor = c.ids[0]
    # A write is acknowledged once a majority has it, so the survivor-to-be may lack the last one: the scenario
    # is a survivor that had everything, so wait for that before the disaster.
    c.wait_caught_up()
    for nid in c.ids:
        c.kill(nid)  # two of them are gone for good
    out = subprocess.run([sys.executable, "-m", "hactl.cli", "cluster", "recover", "--data",
                          str(c.specs[survivor].data_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "only member" in out.stdout
    c.start(survivor)
    c.wait(lambda: (c.status(survivor) or {}).get("cluster", {}).get("role") == "leader", 30,
           "the survivor to lead alone")
    code, members, _ = c.request(survivor, "GET", f"/controller/network/{net}/member")
    assert code == 200 and len(members) == 5
    code, _ = c.write(survivor, "POST", f"/controller/network/{net}/member/{member_addr(99)}", {})
    assert code == 200
    assert c.status(survivor)["cluster"]["voters"] == [survivor]
    running = subprocess.run([sys.executable, "-m", "hactl.cli", "cluster", "recover", "--data",
                              str(c.specs[survivor].data_dir)], capture_output=True, text=True, timeout=60)
    assert running.returncode == 1 and "running" in running.stderr  # refuses while the controller runs


def test_agent_socket_is_owner_only(cluster) -> None:
    c: ProcCluster = cluster()
    c.wait_ready()
    sock = c.specs[c.ids[0]].agent_socket
    c.wait(lambda: sock.exists(), 10, "the agent socket")
    mode = stat.S_IMODE(os.stat(sock).st_mode)
    assert mode == 0o600, oct(mode)
    code, st_, err = agent(c, c.ids[0], "status")
    assert code == 0 and st_["id"] == c.ids[0], err
    pid = os.fork()
    if pid == 0:  # child: become `nobody` and try to connect
        code = 0
        try:
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
        except PermissionError:
            code = 13
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 13, "another user could connect to the agent socket"
