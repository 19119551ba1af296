"""The agent wire protocol: framing limits and strict request validation."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from hactl.agent import protocol as P


def parse(obj):
    return P.parse_request(obj)


def err(obj) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as ei:
        P.parse_request(obj)
    return ei.value


def test_make_and_parse_every_command_with_defaults():
    assert parse(P.make_request("status")) == P.Request("status", {}, 10.0)
    assert parse(P.make_request("cluster.list")) == P.Request("cluster.list", {}, 10.0)
    r = parse(P.make_request("cluster.add", {"address": "10.0.0.4:6262"}))
    assert r.args == {"address": "10.0.0.4:6262", "learner": False} and r.timeout == 120.0
    assert parse(P.make_request("cluster.add", {"address": "h:1", "learner": True}, 5)).args["learner"] is True
    assert parse(P.make_request("cluster.remove", {"id": "ctrl3"})).args == {"id": "ctrl3"}
    assert parse(P.make_request("cluster.transfer")).args == {"id": None}
    assert parse(P.make_request("cluster.transfer", {"id": "ctrl2"})).args == {"id": "ctrl2"}
    assert parse(P.make_request("snapshot_db")).args == {"path": None}
    assert parse(P.make_request("snapshot_db", {"path": "/x/y.db"})).args == {"path": "/x/y.db"}
    r = parse(P.make_request("restore", {"path": "/x/y.db"}, 7.5))
    assert r.args == {"path": "/x/y.db"} and r.timeout == 7.5
    assert parse({"v": 1, "cmd": "status"}).args == {}  # args may be left out


@pytest.mark.parametrize("obj, code, needle", [
    ({"v": 2, "cmd": "status"}, P.E_UNSUPPORTED_VERSION, "version 2"),
    ({"v": True, "cmd": "status"}, P.E_UNSUPPORTED_VERSION, "version True"),
    ({"cmd": "status"}, P.E_UNSUPPORTED_VERSION, "version None"),
    ({"v": 1}, P.E_BAD_REQUEST, "cmd"),
    ({"v": 1, "cmd": "cluster.nuke"}, P.E_UNKNOWN_COMMAND, "cluster.nuke"),
    ({"v": 1, "cmd": "status", "extra": 1}, P.E_BAD_REQUEST, "'extra'"),
    ({"v": 1, "cmd": "status", "args": [1]}, P.E_BAD_REQUEST, "args: expected a map"),
    ({"v": 1, "cmd": "status", "args": {"x": 1}}, P.E_BAD_REQUEST, "args.x: unknown argument"),
    ({"v": 1, "cmd": "cluster.add", "args": {}}, P.E_BAD_REQUEST, "cluster.add: args.address: required string"),
    ({"v": 1, "cmd": "cluster.add", "args": {"address": 6262}}, P.E_BAD_REQUEST, "args.address: expected string"),
    ({"v": 1, "cmd": "cluster.add", "args": {"address": "nohost"}}, P.E_BAD_REQUEST, "args.address: expected host:port"),
    ({"v": 1, "cmd": "cluster.add", "args": {"address": "h:1", "learner": 1}}, P.E_BAD_REQUEST,
     "args.learner: expected boolean"),
    ({"v": 1, "cmd": "cluster.remove", "args": {}}, P.E_BAD_REQUEST, "args.id: required"),
    ({"v": 1, "cmd": "cluster.remove", "args": {"id": "a b"}}, P.E_BAD_REQUEST, "args.id: 'a b' is not a valid"),
    ({"v": 1, "cmd": "cluster.transfer", "args": {"id": 3}}, P.E_BAD_REQUEST, "args.id: expected string or nil"),
    ({"v": 1, "cmd": "restore", "args": {}}, P.E_BAD_REQUEST, "restore: args.path: required"),
    ({"v": 1, "cmd": "restore", "args": {"path": "rel/x.db"}}, P.E_BAD_REQUEST, "args.path: must be an absolute"),
    ({"v": 1, "cmd": "snapshot_db", "args": {"path": "x.db"}}, P.E_BAD_REQUEST, "args.path: must be an absolute"),
    ({"v": 1, "cmd": "status", "timeout": 0}, P.E_BAD_REQUEST, "timeout"),
    ({"v": 1, "cmd": "status", "timeout": True}, P.E_BAD_REQUEST, "timeout"),
    ({"v": 1, "cmd": "status", "timeout": "5"}, P.E_BAD_REQUEST, "timeout"),
    ({"v": 1, "cmd": "status", "timeout": 1e9}, P.E_BAD_REQUEST, "timeout"),
])
def test_bad_requests_are_refused_naming_the_problem(obj, code, needle):
    e = err(obj)
    assert e.code == code
    assert needle in e.message


def test_frame_limits_and_decoding():
    frame = P.encode_frame({"a": 1})
    assert frame[:4] == len(frame[4:]).to_bytes(4, "big")
    assert P.decode_body(frame[4:]) == {"a": 1}
    with pytest.raises(P.FrameTooLarge):
        P.encode_frame({"x": "y" * 100}, max_frame=50)
    with pytest.raises(P.ProtocolError) as ei:
        P.decode_body(b"\xc1")  # never used in msgpack
    assert ei.value.code == P.E_MALFORMED
    with pytest.raises(P.ProtocolError, match="expected a msgpack map"):
        P.decode_body(msgpack.packb([1, 2]))
    with pytest.raises(P.ProtocolError):
        P.decode_body(msgpack.packb({1: 2}))  # non-string keys
    with pytest.raises(P.ProtocolError):
        P.decode_body(msgpack.packb({"a": 1}) + b"\x00")  # trailing data
    with pytest.raises(P.ProtocolError):
        P.encode_frame({"x": object()})


def _read(data: bytes, **kw):
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await P.read_frame(r, **kw)
    return asyncio.run(go())


def test_read_frame():
    assert _read(P.encode_frame({"ok": True})) == {"ok": True}
    assert _read(b"") is None  # clean EOF
    with pytest.raises(P.ProtocolError, match="header"):
        _read(b"\x00\x00")
    with pytest.raises(P.FrameTooLarge):
        _read((P.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(P.ProtocolError, match="empty"):
        _read(b"\x00\x00\x00\x00")
    with pytest.raises(P.ProtocolError, match="closed inside a frame"):
        _read(b"\x00\x00\x00\x10abc")


def test_parse_reply():
    assert P.parse_reply(P.ok_reply([1])).result == [1]
    r = P.parse_reply(P.error_reply("x", "y"))
    assert (r.ok, r.error, r.message) == (False, "x", "y")
    with pytest.raises(P.ProtocolError):
        P.parse_reply({"result": 1})
