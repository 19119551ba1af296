"""A real AgentServer on a real unix socket: every command, access control, stale sockets, bad frames, timeouts."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_helpers import FakeHandle, ServerThread
from hactl.agent import client as C
from hactl.agent import protocol as P
from hactl.agent.handle import AgentError
from hactl.agent.server import AgentServer, AgentServerError


@pytest.fixture
def handle(tmp_path: Path) -> FakeHandle:
    return FakeHandle(tmp_path)


@pytest.fixture
def srv(handle: FakeHandle, tmp_path: Path):
    s = ServerThread(handle, tmp_path / "agent.sock")
    yield s
    s.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    s = ServerThread(FakeHandle(d), d / "agent.sock")
    yield s
    s.close()


def call(srv: ServerThread, cmd: str, args=None, timeout=None):
    return asyncio.run(C.call(srv.server.path, cmd, args, timeout))


def raw_exchange(path: str, data: bytes, *, read: bool = True) -> list[dict]:
    """Send raw bytes; return every reply frame until the server closes the connection."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and hung up before reading everything: its reply is still readable
    buf = b""
    while read:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    out = []
    while len(buf) >= 4:
        n = int.from_bytes(buf[:4], "big")
        out.append(msgpack.unpackb(buf[4:4 + n], raw=False))
        buf = buf[4 + n:]
    return out


# ------------------------------------------------------------------------------------------ every command

def test_every_command(srv: ServerThread, handle: FakeHandle, tmp_path: Path):
    st = call(srv, "status")
    assert st == {"id": "ctrl1", "role": "leader", "term": 7, "leader": "ctrl1", "commit": 42, "applied": 42,
                  "version": "0.1.0"}
    rows = call(srv, "cluster.list")
    assert [r["id"] for r in rows] == ["ctrl1", "ctrl2", "ctrl3"]
    assert rows[2] == {"id": "ctrl3", "address": "127.0.0.1:6264", "role": "voter", "leader": False,
                       "connected": False, "last_contact": 12.5, "match": 40, "version": "0.1.0"}

    handle.reachable["127.0.0.1:6265"] = "ctrl4"
    assert call(srv, "cluster.add", {"address": "127.0.0.1:6265", "learner": True}) == {"id": "ctrl4",
                                                                                         "role": "learner"}
    assert handle.calls[-1] == ("cluster_add", ("127.0.0.1:6265", True, 120.0))  # the command's default timeout
    assert {r["id"]: r["role"] for r in call(srv, "cluster.list")}["ctrl4"] == "learner"

    assert call(srv, "cluster.remove", {"id": "ctrl4"}, timeout=9) == {"id": "ctrl4"}
    assert handle.calls[-1] == ("cluster_remove", ("ctrl4", 9.0))  # the client's timeout reaches the handle
    assert call(srv, "cluster.transfer", {"id": "ctrl2"}) == {"leader": "ctrl2"}
    assert call(srv, "cluster.transfer", {}) == {"leader": "ctrl1"}  # no id: the handle picks

    snap = call(srv, "snapshot_db", {"path": None})
    p = Path(snap["path"])
    assert p.parent == tmp_path and p.name.startswith("ctrl-") and p.name.endswith("-42.db")
    assert Path(snap["path"] + ".sha256").read_text().split()[0] == snap["sha256"]
    assert snap["size"] == p.stat().st_size
    out = tmp_path / "mine.db"
    assert call(srv, "snapshot_db", {"path": str(out)})["path"] == str(out)

    res = call(srv, "restore", {"path": str(out)})
    assert res == {"index": 43, "timeline_id": "tl-2", "networks": 2, "members": 5}
    assert handle.restarted


def test_handle_errors_become_error_replies(srv: ServerThread, handle: FakeHandle, caplog):
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "cluster.remove", {"id": "ctrl9"})
    assert (ei.value.code, ei.value.message) == ("not_found", "ctrl9 is not a member")
    bad = handle.data_dir / "bad.db"
    bad.write_bytes(b"SQLite format 3\0")
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "restore", {"path": str(bad)})
    assert ei.value.code == "invalid_db" and not handle.restarted  # refused, nothing changed
    # Anything else is "internal", logged with its traceback, and the server keeps going.
    handle.fail_with = ZeroDivisionError("oops")
    with caplog.at_level(logging.ERROR, logger="hactl.agent"):
        with pytest.raises(C.AgentClientError) as ei:
            call(srv, "cluster.list")
        with pytest.raises(C.AgentClientError) as ei2:
            call(srv, "status")  # a synchronous handle method that raises
    assert ei.value.code == "internal" and "ZeroDivisionError: oops" in ei.value.message
    assert ei2.value.code == "internal"
    assert any(r.exc_info for r in caplog.records)
    handle.fail_with = None
    assert call(srv, "status")["id"] == "ctrl1"


def test_validation_errors_reach_the_client(srv: ServerThread):
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "cluster.add", {"address": "10.0.0.1"})
    assert ei.value.code == "bad_request" and "args.address" in ei.value.message
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "restore", {"path": "relative.db"})
    assert "absolute" in ei.value.message


# ------------------------------------------------------------------------------------------ the socket file

def test_socket_is_mode_0600_and_removed_at_stop(handle: FakeHandle, tmp_path: Path):
    path = tmp_path / "agent.sock"
    s = ServerThread(handle, path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    s.close()
    assert not path.exists()


def test_stale_socket_is_replaced_but_a_live_one_refused(handle: FakeHandle, tmp_path: Path):
    path = tmp_path / "agent.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # a socket file nobody listens on: what a kill -9 leaves behind
    dead.close()
    s = ServerThread(handle, path)
    try:
        assert call(s, "status")["id"] == "ctrl1"

        async def second():
            await AgentServer(FakeHandle(tmp_path, node_id="ctrl2"), str(path)).start()
        with pytest.raises(AgentServerError, match=r"another controller \(ctrl1\) is serving .*agent.sock"):
            asyncio.run(second())
        assert call(s, "status")["id"] == "ctrl1"  # the live one is untouched
    finally:
        s.close()


def test_refuses_non_socket_and_missing_directory(handle: FakeHandle, tmp_path: Path):
    (tmp_path / "file").write_text("keep me")

    async def start(p):
        await AgentServer(handle, str(p)).start()
    with pytest.raises(AgentServerError, match="not a socket"):
        asyncio.run(start(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "keep me"
    with pytest.raises(AgentServerError, match="does not exist"):
        asyncio.run(start(tmp_path / "nope" / "agent.sock"))
    with pytest.raises(AgentServerError, match="too long"):
        asyncio.run(start(tmp_path / ("x" * 120)))


def test_stop_leaves_a_replaced_socket_alone(handle: FakeHandle, tmp_path: Path):
    path = tmp_path / "agent.sock"
    s = ServerThread(handle, path)
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    s.close()
    assert path.exists()
    other.close()


# ------------------------------------------------------------------------------------------ hostile input

def test_bad_frames_get_an_error_and_the_server_keeps_serving(srv: ServerThread):
    path = srv.server.path
    cases = [
        ((P.MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 100, P.E_FRAME_TOO_LARGE),
        ((0xFFFFFFFF).to_bytes(4, "big"), P.E_FRAME_TOO_LARGE),
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", P.E_MALFORMED),
        (P.encode_frame({"v": 1})[:4] + b"\x00" * (len(P.encode_frame({"v": 1})) - 4), P.E_MALFORMED),
        (len(msgpack.packb([1])).to_bytes(4, "big") + msgpack.packb([1]), P.E_MALFORMED),
        (b"\x00\x00\x00\x00", P.E_MALFORMED),
        (b"GET / HTTP/1.1\r\n\r\n", P.E_FRAME_TOO_LARGE),  # "GET " is a 1.2 GB length
    ]
    for data, code in cases:
        replies = raw_exchange(path, data)
        assert len(replies) == 1 and replies[0]["ok"] is False and replies[0]["error"] == code, (data, replies)
    raw_exchange(path, b"\x00\x00", read=False)  # hang up inside a header
    raw_exchange(path, b"\x00\x00\x00\x10abc", read=False)  # ... and inside a body
    assert call(srv, "status")["id"] == "ctrl1"


def test_a_bad_request_keeps_the_connection_open(srv: ServerThread):
    data = P.encode_frame({"v": 1, "cmd": "nope"}) + P.encode_frame(P.make_request("status"))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(srv.server.path)
    s.sendall(data)
    f = s.makefile("rb")
    replies = []
    for _ in range(2):
        n = int.from_bytes(f.read(4), "big")
        replies.append(msgpack.unpackb(f.read(n), raw=False))
    s.close()
    assert replies[0]["error"] == P.E_UNKNOWN_COMMAND
    assert replies[1]["ok"] and replies[1]["result"]["id"] == "ctrl1"


def test_idle_and_surplus_connections_are_closed(handle: FakeHandle, tmp_path: Path):
    s = ServerThread(handle, tmp_path / "agent.sock", idle_timeout=2.0, max_connections=1)  # room for a loaded CI box
    try:
        idle = socket.socket(socket.AF_UNIX)
        idle.settimeout(5)
        idle.connect(s.server.path)
        time.sleep(0.05)
        replies = raw_exchange(s.server.path, P.encode_frame(P.make_request("status")))
        assert replies[0]["error"] == P.E_BUSY
        with pytest.raises(C.AgentClientError) as ei:
            call(s, "status")
        assert ei.value.code == P.E_BUSY  # the client reports the server's reason, not a broken pipe
        assert idle.recv(10) == b""  # closed after idle_timeout
        idle.close()
        assert call(s, "status")["id"] == "ctrl1"
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ timeouts

def test_a_slow_handler_times_out_server_side(srv: ServerThread, handle: FakeHandle):
    handle.delay = 5.0
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "cluster.list", timeout=0.2)
    # The server's own answer (its wording), not the client giving up on a silent server.
    assert ei.value.code == "timeout" and "outcome is unknown" in ei.value.message
    handle.delay = 0
    assert call(srv, "status")["id"] == "ctrl1"


def test_the_client_gives_up_on_a_server_that_never_answers(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(C, "CLIENT_GRACE", 0.2)
    path = str(tmp_path / "mute.sock")
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(path)
    mute.listen(1)  # accepts (in the backlog) and never reads or answers
    try:
        with pytest.raises(C.AgentClientError) as ei:  # (the suite's timeout catches a client that hangs)
            asyncio.run(C.call(path, "status", timeout=0.2))
        assert ei.value.code == "timeout"
    finally:
        mute.close()


def test_client_errors_name_the_socket(tmp_path: Path):
    with pytest.raises(C.AgentClientError) as ei:
        asyncio.run(C.call(str(tmp_path / "none.sock"), "status"))
    assert ei.value.code == C.E_NO_SOCKET and "none.sock" in ei.value.message
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(C.AgentClientError) as ei:
        asyncio.run(C.call(str(tmp_path / "dead.sock"), "status"))
    assert ei.value.code == C.E_UNREACHABLE


def test_stop_lets_a_running_request_answer(handle: FakeHandle, tmp_path: Path):
    """A restore replies and then the controller stops: the operator must still get the reply."""
    s = ServerThread(handle, tmp_path / "agent.sock")
    handle.delay = 0.5
    with ThreadPoolExecutor(1) as pool:  # the client in its own thread and loop, like a separate process
        fut = pool.submit(asyncio.run, C.call(s.server.path, "cluster.list"))
        deadline = time.monotonic() + 5
        while not handle.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        s.close()  # stop(grace=2) while the request runs: the request still gets its answer
        assert [r["id"] for r in fut.result(5)] == ["ctrl1", "ctrl2", "ctrl3"]
    assert not Path(s.server.path).exists()


# ------------------------------------------------------------------------------------------ other users

NOBODY = 65534
CHILD = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except (BrokenPipeError, ConnectionResetError):
    pass  # refused and hung up before we spoke: the refusal is still there to read
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
print(data.hex())
"""


def _as_nobody(path: str) -> str:
    # The test interpreter may live under /root (unreadable to nobody): the child is stdlib-only on the system one.
    py = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if os.geteuid() != 0 or py is None:
        pytest.skip("needs root and a system python3 to run a client as another user")
    frame = P.encode_frame(P.make_request("status")).hex()
    out = subprocess.run([py, "-I", "-S", "-c", CHILD, path, frame], capture_output=True, text=True, timeout=20,
                         preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def open_dir():
    d = tempfile.mkdtemp(prefix="hactl-agent-")  # directly in /tmp: every parent is traversable by nobody
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_another_user_cannot_connect(open_dir: Path):
    s = ServerThread(FakeHandle(open_dir), open_dir / "agent.sock")
    try:
        assert _as_nobody(s.server.path) == "EACCES"  # the 0600 mode alone keeps them out
        # Belt and braces: even with the mode opened up, the peer uid check refuses them.
        os.chmod(s.server.path, 0o666)
        data = bytes.fromhex(_as_nobody(s.server.path))
        reply = msgpack.unpackb(data[4:], raw=False)
        assert reply == {"ok": False, "error": P.E_PERMISSION, "message": f"uid {NOBODY} may not use this socket"}
        assert call(s, "status")["id"] == "ctrl1"  # root still can
    finally:
        s.close()


def test_agent_error_codes_are_passed_through_verbatim(srv: ServerThread, handle: FakeHandle):
    handle.fail_with = AgentError("not_leader", "no leader: the cluster has no quorum")
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "cluster.transfer", {"id": "ctrl2"})
    assert (ei.value.code, ei.value.message) == ("not_leader", "no leader: the cluster has no quorum")


def test_a_result_that_cannot_be_encoded_is_an_internal_error(srv: ServerThread, handle: FakeHandle):
    handle.node_id = Path("/not/msgpack")  # type: ignore[assignment]  (a handle bug: a Path in the result)
    with pytest.raises(C.AgentClientError) as ei:
        call(srv, "status")
    assert ei.value.code == "internal" and "could not be sent" in ei.value.message
    handle.node_id = "ctrl1"
    assert call(srv, "status")["id"] == "ctrl1"


_scalar = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=8))
_value = st.recursive(_scalar, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8)
# Request-shaped maps reach deeper than random bytes. Paths are never writable ones: the fake handle would write
# a snapshot wherever it is told.
_request = st.fixed_dictionaries({}, optional={
    "v": st.just(1) | _value,
    "cmd": st.sampled_from(sorted(P.COMMANDS)) | _value,
    "args": st.dictionaries(st.sampled_from(["address", "learner", "id", "path"]) | st.text(max_size=4),
                            st.sampled_from(["/nonexistent-hactl-fuzz/x.db", "rel.db", "ctrl2", "h:1"]) | _value,
                            max_size=3),
    "timeout": st.floats(0.01, 1.0) | _value,
    "junk": _value,
})


@settings(max_examples=80, deadline=None)
@given(junk=st.one_of(
    st.binary(max_size=64),
    st.builds(lambda body: len(body).to_bytes(4, "big") + body, st.binary(min_size=1, max_size=64)),
    st.builds(lambda obj: P.encode_frame(obj), _request),
    st.builds(lambda obj: P.encode_frame(obj), st.dictionaries(st.text(max_size=8), _value, max_size=4)),
))
def test_fuzz_junk_never_hurts_the_server(fuzz_server: ServerThread, junk: bytes):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(fuzz_server.server.path)
    s.sendall(junk)
    s.shutdown(socket.SHUT_WR)  # then EOF: the server must answer or hang up, never hang
    while s.recv(65536):
        pass
    s.close()
    assert call(fuzz_server, "status")["id"] == "ctrl1"
