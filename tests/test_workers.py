"""API worker processes (hactl/workers): real controller and worker processes, real sockets, real ctrl.db.

A node with `workers: 2` answers from three processes on one port (X-Hactl-Worker: 0 the node, 1..2 its
workers); writes taken by a worker are applied by the node and read back from any process; the node's error
answers (503/504) come through a worker unchanged; a killed worker is restarted and a killed node takes its
workers with it.
"""
from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from hactl.agent.protocol import ProtocolError, encode_frame, read_frame
from hactl.api.cluster import ClusterUnavailable, NoSpace, OutcomeUnknown, Overloaded
from hactl.config import MAX_WORKERS, Config, ConfigError, default_workers, load
from hactl.fsm.result import ErrorCode, Result
from hactl.workers import messages as M
from hactl.workers.header import HEADER
from hactl.workers.supervisor import WorkerSupervisor
from tests.proc_cluster import ProcCluster, poll

WORKER = HEADER.lower()


def _net(ctrl: str) -> str:
    return f"/controller/network/{ctrl}______"


def _alive(pid: int) -> bool:
    """Running (a zombie, waiting for whoever adopted it to reap it, has stopped serving: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _workers(c: ProcCluster, nid: str) -> dict[str, Any]:
    st = c.status(nid)
    return st["cluster"]["workers"] if st else {}


def _wait_workers(c: ProcCluster, nid: str, running: int) -> dict[str, Any]:
    return c.wait(lambda: (w := _workers(c, nid)).get("running") == running and w, 60,
                  f"{nid}: {running} API workers running")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    """One node with two API workers, shared by the tests that leave it running."""
    c = ProcCluster(tmp_path_factory.mktemp("workers"), 1, config={"workers": 2})
    c.start_all()
    try:
        c.wait_ready()
        _wait_workers(c, "ctrl1", 2)
        yield c
    finally:
        c.close()


def test_reads_come_from_several_processes_and_node_state_from_the_node(node: ProcCluster) -> None:
    c = node
    served: dict[str, int] = {}
    for _ in range(60):  # one connection each: the kernel spreads connections, not requests
        code, body, headers = c.request("ctrl1", "GET", "/controller/network?consistency=local")
        assert code == 200 and isinstance(body, list)
        served[headers[WORKER]] = served.get(headers[WORKER], 0) + 1
    assert len(served) >= 2 and set(served) <= {"0", "1", "2"}, served
    with ThreadPoolExecutor(16) as pool:  # linearizable reads at once: the workers share their barrier calls
        lin = list(pool.map(lambda _: c.request("ctrl1", "GET", "/controller/network"), range(64)))
    assert {code for code, _, _ in lin} == {200} and {h[WORKER] for _, _, h in lin} - {"0"}
    # Node state is the node's, whichever process took the connection: its bytes, its X-Hactl-Worker.
    for path in ("/status", "/health", "/readyz", "/livez", "/metrics"):
        for _ in range(6):
            code, _, headers = c.request("ctrl1", "GET", path)
            assert code == 200 and headers[WORKER] == "0", (path, headers)
    code, body, _ = c.request("ctrl1", "GET", "/health", auth=False)
    assert body["workers"] == {"configured": 2, "running": 2}
    # The same refusal from every process: 401 {} without a token, the same 404 body for a missing network.
    answers = set()
    for _ in range(30):
        code, body, headers = c.request("ctrl1", "GET", "/controller/network/aaaaaaaaaaaaaaaa", auth=False)
        assert (code, body) == (401, {})
        code, body, headers = c.request("ctrl1", "GET", "/controller/network/aaaaaaaaaaaaaaaa")
        answers.add((code, repr(body)))
    assert len(answers) == 1 and next(iter(answers))[0] == 404, answers
    sock = Path(c.specs["ctrl1"].data_dir) / "api.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600


def test_writes_through_workers_are_read_back_from_every_process(node: ProcCluster) -> None:
    c = node
    ctrl = c.status("ctrl1")["address"]
    written_by: set[str] = set()
    read_across = 0
    for i in range(40):
        code, net, headers = c.request("ctrl1", "POST", _net(ctrl), {"name": f"w{i}"},
                                       headers={"Idempotency-Key": uuid.uuid4().hex})
        assert code == 200, net
        written_by.add(headers[WORKER])
        # Read-your-writes across processes: a local read (no barrier) on a fresh connection, whichever process.
        code, got, rheaders = c.request("ctrl1", "GET", f"/controller/network/{net['id']}?consistency=local")
        assert code == 200 and got["name"] == f"w{i}", (headers, rheaders, got)
        read_across += rheaders[WORKER] != headers[WORKER]
        code, got, _ = c.request("ctrl1", "GET", f"/controller/network/{net['id']}")  # linearizable: a barrier
        assert code == 200 and got["name"] == f"w{i}"
        if written_by - {"0"} and read_across >= 3:
            break
    assert written_by - {"0"}, f"no write was taken by a worker: {written_by}"
    assert read_across >= 3
    # An idempotent retry through any process answers with the first outcome (the node's request log).
    key = uuid.uuid4().hex
    outcomes = {repr(c.request("ctrl1", "POST", _net(ctrl), {"name": "once"}, headers={"Idempotency-Key": key})[:2])
                for _ in range(8)}
    assert len(outcomes) == 1, outcomes


def test_events_stream_from_the_node_through_any_process(node: ProcCluster) -> None:
    c = node
    ctrl = c.status("ctrl1")["address"]
    streams = []
    try:
        for _ in range(6):  # one connection each: some are taken by workers, which stream the node's events
            conn = http.client.HTTPConnection("127.0.0.1", c.port("ctrl1"), timeout=10)
            conn.request("GET", "/events?namespace=entityChange", headers={"X-ZT1-Auth": c.token})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
            streams.append((conn, resp))
        code, net = c.write("ctrl1", "POST", _net(ctrl), {"name": "streamed"})
        assert code == 200
        for _, resp in streams:
            while not (line := resp.fp.readline()).startswith(b"data:"):
                assert line, "the stream ended"
            assert net["id"] in line.decode()
    finally:
        for conn, _ in streams:
            conn.close()


def test_a_killed_worker_is_restarted_and_reported(node: ProcCluster) -> None:
    c = node
    before = _workers(c, "ctrl1")
    victim = before["pids"]["1"]
    os.kill(victim, signal.SIGKILL)
    # (a status request the dying worker had taken fails: _workers says {} then, and the wait goes on)
    c.wait(lambda: (w := _workers(c, "ctrl1")) and (w["running"] == 1 or w["pids"].get("1") != victim),
           30, "the supervisor to notice the dead worker")
    after = _wait_workers(c, "ctrl1", 2)
    assert after["pids"]["1"] != victim and after["restarts"] >= before["restarts"] + 1
    line = "API worker 1 (pid %d) was killed by signal 9" % victim
    c.wait(lambda: line in c.log("ctrl1"), 10, f"the log line {line!r}")  # (on failure: the whole log)
    for _ in range(20):  # and the port keeps answering meanwhile and after
        assert c.request("ctrl1", "GET", "/controller/network?consistency=local")[0] == 200


def test_a_killed_node_takes_its_workers_and_a_restart_brings_new_ones(tmp_path: Path) -> None:
    c = ProcCluster(tmp_path, 1, config={"workers": 2})
    try:
        c.start_all()
        c.wait_ready()
        pids = list(_wait_workers(c, "ctrl1", 2)["pids"].values())
        c.kill("ctrl1")
        poll(lambda: not any(_alive(p) for p in pids), 10, "the workers to exit with their node")
        with pytest.raises(ConnectionRefusedError):  # nobody serves the port (nor an old ctrl.db) any more
            c.request("ctrl1", "GET", "/health", auth=False, timeout=2)
        c.start("ctrl1")
        c.wait_ready()
        fresh = list(_wait_workers(c, "ctrl1", 2)["pids"].values())
        assert not set(fresh) & set(pids)
    finally:
        c.close()


def test_after_a_restore_no_process_serves_the_replaced_ctrl_db(tmp_path: Path) -> None:
    """A restore makes the node restart (exit code 3) on a new ctrl.db: its workers go with it, and the new ones
    serve the new file (every process answers with the backup's content)."""
    c = ProcCluster(tmp_path, 1, config={"workers": 2})
    try:
        c.start_all()
        ctrl = c.wait_ready()
        pids = list(_wait_workers(c, "ctrl1", 2)["pids"].values())
        assert c.write("ctrl1", "POST", _net(ctrl), {"name": "kept"})[0] == 200
        backup = tmp_path / "backup.db"
        assert _agent(c, "controller", "snapshot-db", str(backup)) == 0
        assert c.write("ctrl1", "POST", _net(ctrl), {"name": "undone"})[0] == 200
        assert _agent(c, "cluster", "restore-from-db", str(backup)) == 0
        c.wait(lambda: c.restarts["ctrl1"] >= 1, 60, "the node to restart")
        poll(lambda: not any(_alive(p) for p in pids), 10, "the old workers to exit")
        c.wait_ready(timeout=60)
        _wait_workers(c, "ctrl1", 2)
        served = set()
        for _ in range(30):
            code, ids, headers = c.request("ctrl1", "GET", "/controller/network?consistency=local")
            assert code == 200 and len(ids) == 1, (headers, ids)
            served.add(headers[WORKER])
        assert served - {"0"}
    finally:
        c.close()


def _agent(c: ProcCluster, *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "hactl.cli", "agent", "--socket", str(c.specs["ctrl1"].agent_socket),
                           *args], capture_output=True, timeout=120).returncode


def test_node_errors_come_through_a_worker_unchanged(tmp_path: Path) -> None:
    """No quorum: a write the leader proposed but cannot commit is 504 OUTCOME_UNKNOWN and a linearizable read
    503 CLUSTER_NO_LEADER, through the worker that took the connection as from the node."""
    c = ProcCluster(tmp_path, 3, config={"raft": {"apply_timeout_s": 2.0}},
                    node_config={n: {"workers": 2} for n in ("ctrl1", "ctrl2", "ctrl3")})
    try:
        c.start_all()
        ctrl = c.wait_ready()
        leader = c.leader()
        _wait_workers(c, leader, 2)
        for nid in c.ids:
            if nid != leader:
                c.signal(nid, signal.SIGSTOP)  # frozen, not gone: the leader cannot tell at once

        def attempt(i: int) -> tuple[int, Any, dict[str, str]]:
            return c.request(leader, "POST", _net(ctrl), {"name": f"lost{i}"}, timeout=30)
        with ThreadPoolExecutor(8) as pool:
            writes = list(pool.map(attempt, range(8)))
        by_worker = [(code, body, h) for code, body, h in writes if h[WORKER] != "0"]
        assert by_worker, "no write went through a worker"
        for code, body, headers in writes:
            assert (code, body["error"]) in ((504, "OUTCOME_UNKNOWN"), (503, "CLUSTER_NO_LEADER")), body
        assert any(code == 504 for code, _, _ in by_worker), by_worker
        reads = [c.request(leader, "GET", "/controller/network", timeout=30) for _ in range(6)]
        for code, body, headers in reads:
            assert code == 503 and body["error"] == "CLUSTER_NO_LEADER" and int(headers["retry-after"]) >= 1
        assert any(h[WORKER] != "0" for _, _, h in reads)
    finally:
        for nid in c.ids:
            if nid in c.procs:
                c.signal(nid, signal.SIGCONT)
        c.close()


def test_a_write_whose_node_stops_answering_is_outcome_unknown(tmp_path: Path) -> None:
    """Sent to the node, no answer: the worker cannot know whether it was applied, so 504, never 503."""
    c = ProcCluster(tmp_path, 1, config={"workers": 2, "raft": {"apply_timeout_s": 1.0}})
    try:
        c.start_all()
        ctrl = c.wait_ready()
        _wait_workers(c, "ctrl1", 2)
        c.signal("ctrl1", signal.SIGSTOP)  # its workers still accept connections and read ctrl.db

        def attempt(i: int) -> Any:  # the node's own connections wait in its backlog: they time out here
            try:
                return c.request("ctrl1", "POST", _net(ctrl), {"name": f"frozen{i}"}, timeout=9)
            except TimeoutError:
                return None
        with ThreadPoolExecutor(6) as pool:
            answered = [a for a in pool.map(attempt, range(6)) if a is not None]
        assert answered, "every connection went to the frozen node"
        for code, body, headers in answered:
            assert headers[WORKER] != "0" and code == 504 and body["error"] == "OUTCOME_UNKNOWN", body
    finally:
        if "ctrl1" in c.procs:
            c.signal("ctrl1", signal.SIGCONT)
        c.close()


# ---------------------------------------------------------------------------------------------- config, link


def _config(tmp_path: Path, workers: Any) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"id": "n1", "workers": workers}))
    return path


@pytest.mark.parametrize("bad", [-1, MAX_WORKERS + 1, "two", True, 1.5])
def test_config_workers_must_be_a_count(tmp_path: Path, bad: Any) -> None:
    path = _config(tmp_path, bad)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.file == str(path) and e.value.key == "workers"


def test_config_workers_defaults_to_the_core_count(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("id: n1\n")
    assert load(path).api_workers == default_workers() == min(os.cpu_count() or 1, MAX_WORKERS)
    assert load(_config(tmp_path, None)).api_workers == default_workers()  # `workers:` left empty
    assert load(_config(tmp_path, 0)).api_workers == 0


@pytest.mark.parametrize("error", [ClusterUnavailable("no leader", retry_after=3), NoSpace("full"),
                                   Overloaded("queue full"), OutcomeUnknown("write x: lost")])
def test_node_exceptions_travel_with_their_class_text_and_retry_after(error: Exception) -> None:
    reply = M.parse_to_worker(M.Reply.failure(7, error).to_wire())
    assert isinstance(reply, M.Reply) and reply.id == 7
    with pytest.raises(type(error)) as raised:
        reply.outcome()
    assert type(raised.value) is type(error) and str(raised.value) == str(error)
    if isinstance(error, ClusterUnavailable):
        assert raised.value.retry_after == 3


def test_results_travel_and_unexpected_errors_stay_500s() -> None:
    result = Result.failure(ErrorCode.CONFLICT, "taken", "ipAssignments")
    reply = M.parse_to_worker(M.Reply(3, result=result).to_wire())
    assert isinstance(reply, M.Reply) and reply.outcome() == result
    with pytest.raises(M.NodeError):
        M.parse_to_worker(M.Reply.failure(4, KeyError("bug")).to_wire()).outcome()


@pytest.mark.parametrize("bad", [{"t": "submit", "id": 1, "rid": "r", "command": "not bytes"},
                                 {"t": "submit", "id": -1, "rid": "r", "command": b"x"},
                                 {"t": "submit", "id": 1, "rid": "", "command": b"x"},
                                 {"t": "submit", "id": True, "rid": "r", "command": b"x"},
                                 {"t": "barrier"}, {"t": "ready", "pid": "1"}, {"t": "exec"}, {}])
def test_the_node_refuses_malformed_worker_messages(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        M.parse_to_node(bad)


class _Node:
    """The node's side of the calls a link carries (Controller.submit/read_barrier): answers, recorded."""

    def __init__(self) -> None:
        self.submitted: list[tuple[bytes, str]] = []

    def machine(self) -> None:
        return None

    async def submit(self, command: bytes, request_id: str) -> Result:
        self.submitted.append((command, request_id))
        return Result.success({"rid": request_id})

    async def read_barrier(self) -> None:
        raise ClusterUnavailable("no leader", retry_after=4)


def test_the_node_answers_bad_calls_and_drops_a_garbled_link(tmp_path: Path) -> None:
    """What a worker sends cannot disturb the node: a bad call gets an error reply, a garbled frame ends that
    link (the worker is then restarted), valid calls are the node's own."""
    node = _Node()
    supervisor = WorkerSupervisor(node, Config(id="n1", data_dir=str(tmp_path), workers=1), "127.0.0.1", 1)
    slot = supervisor._slots[0]

    async def scenario() -> list[Any]:
        ours, theirs = socket.socketpair()
        node_reader, node_writer = await asyncio.open_connection(sock=ours)
        reader, writer = await asyncio.open_connection(sock=theirs)
        serving = asyncio.create_task(supervisor._serve_link(slot, node_reader, node_writer))
        for msg in ({"t": "submit", "id": 1, "rid": "", "command": b"x"}, M.Submit(2, "r2", b"cmd").to_wire(),
                    M.Barrier(3).to_wire(), M.Ready(99).to_wire()):
            writer.write(encode_frame(msg))
        replies = [M.parse_to_worker(await read_frame(reader)) for _ in range(3)]
        assert slot.ready
        writer.write(b"\x00\x00\x00\x05junk!")  # not msgpack: the link is dropped, nothing else happens
        await asyncio.wait_for(serving, 5)
        node_writer.close()
        writer.close()
        return replies

    replies = {r.id: r for r in asyncio.run(scenario())}
    assert replies[1].error == "bad_request" and "rid" in replies[1].message
    assert replies[2].outcome() == Result.success({"rid": "r2"}) and node.submitted == [(b"cmd", "r2")]
    with pytest.raises(ClusterUnavailable) as e:
        replies[3].outcome()
    assert e.value.retry_after == 4
