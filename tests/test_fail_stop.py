"""Fail-stop with a real full disk: a controller whose data directory runs out of space exits non-zero instead of
lingering half-alive, `hactl dev up` (the supervisor) restarts it, and once space is back it rejoins and catches up.

ctrl2's data directory is a small tmpfs this test mounts (root is needed for that, as for the network namespaces
of other tests) and fills with a file, so the next raft.db write fails with ENOSPC: a real storage error, not an
injected one. The NOSPACE alarm normally refuses writes long before a disk is full (tests/test_storage_alarm.py);
here ctrl2's alarm threshold is lowered so that the disk fills first and the last line of defence is exercised."""
from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.proc_cluster import free_port_block
from tests.test_dev_up import api, pid_alive, wait


def fill(path: Path) -> None:
    """Write zeros into `path` until the file system is full."""
    block = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    with open(path, "ab", buffering=0) as f:  # and the last partial block
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def test_a_node_whose_disk_fills_exits_non_zero_is_restarted_and_rejoins(tmp_path: Path) -> None:
    data = tmp_path / "data"
    mnt = data / "ctrl2"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)], check=True)
    log_path = tmp_path / "dev-up.log"
    proc = None
    try:
        base = free_port_block(6)
        args = ["--data", str(data), "--base-port", str(base)]
        subprocess.run([sys.executable, "-m", "hactl.cli", "dev", "init", *args], check=True, capture_output=True)
        cfg = data / "config" / "ctrl2.yaml"
        doc = yaml.safe_load(cfg.read_text())
        doc["storage"] = {"alarm_min_free_bytes": 1 << 20}
        cfg.write_text(yaml.safe_dump(doc))
        log = open(log_path, "wb")
        proc = subprocess.Popen([sys.executable, "-m", "hactl.cli", "dev", "up", *args], stdout=log,
                                stderr=subprocess.STDOUT)
        state_file = data / "dev-cluster.json"

        def nodes() -> dict:
            return {n["id"]: n for n in json.loads(state_file.read_text())["nodes"]}
        wait(lambda: all(n["pid"] for n in nodes().values()), 30, "dev-cluster.json")
        token = Path(json.loads(state_file.read_text())["token_file"]).read_text().strip()
        urls = {k: n["api_url"] for k, n in nodes().items()}
        addr = wait(lambda: api(urls["ctrl1"] + "/status", token)[1]["address"], 30, "the cluster to initialise")
        wait(lambda: api(urls["ctrl2"] + "/health", token)[0] == 200, 30, "ctrl2 healthy")
        first_pid = nodes()["ctrl2"]["pid"]

        filler = mnt / "filler"
        fill(filler)
        # Writes through the other nodes make ctrl2 persist entries it now has no room for.
        names = []
        for i in range(200):
            name = f"while-full-{i}"
            code, _ = api(f"{urls['ctrl1']}/controller/network/{addr}______", token, "POST", {"name": name})
            if code == 200:
                names.append(name)
            if nodes()["ctrl2"]["pid"] != first_pid or b"ctrl2 exits with code 1" in log_path.read_bytes():
                break
        text = wait(lambda: (lambda t: t if "ctrl2 exits with code 1" in t else None)(
            log_path.read_text(errors="replace")), 30, "ctrl2 to exit with code 1")
        assert "No space left on device" in text
        # It does not linger: the process is gone, and the supervisor restarts it (a new pid).
        wait(lambda: not pid_alive(first_pid), 30, "the failed ctrl2 process to be gone")
        wait(lambda: nodes()["ctrl2"]["pid"] not in (None, first_pid), 60, "the supervisor to restart ctrl2")
        assert "ctrl2 exited with code 1" in log_path.read_text(errors="replace")
        # Space comes back; it rejoins and catches up.
        filler.unlink()
        code, net = api(f"{urls['ctrl3']}/controller/network/{addr}______", token, "POST", {"name": "after"})
        assert code == 200
        wait(lambda: api(urls["ctrl2"] + "/health", token)[0] == 200, 90, "ctrl2 healthy again")
        wait(lambda: api(f"{urls['ctrl2']}/controller/network/{net['id']}", token)[0] == 200, 30,
             "ctrl2 to serve the write made after it came back")
        code, ids = api(f"{urls['ctrl2']}/controller/network?consistency=local", token)
        assert code == 200 and net["id"] in ids
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
