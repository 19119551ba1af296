"""The agent socket's wire protocol: length-prefixed msgpack maps, one request then one reply.

Frame:   4-byte big-endian length, then that many bytes of msgpack (a map). At most MAX_FRAME bytes.
Request: {"v": 1, "cmd": "cluster.list", "args": {...}, "timeout": 10.0}   ("timeout" optional, seconds)
Reply:   {"ok": true, "result": ...}   or   {"ok": false, "error": "<code>", "message": "<for a human>"}

The client's timeout travels with the request so the server can give the controller the same budget and still
answer (with a "timeout" error) before the client gives up: an operator then learns the command timed out on the
controller side, which means its outcome may be unknown, rather than just "no answer".

Validation is strict (unknown keys, wrong types and missing required args are refused with a message naming the
arg): the socket is an operator's interface and a typo must not silently become a default.
"""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from hactl.config import NODE_ID_RE, ConfigError, parse_hostport
from hactl.fsm.coerce import ValidationError
from hactl.fsm.validate import parse_serial

VERSION = 1
MAX_FRAME = 1 << 20  # requests are tiny and replies are tables of a few members; 1 MiB is generous
HEADER = struct.Struct(">I")
MAX_TIMEOUT = 3600.0

# Error codes produced by the protocol layer itself (the controller's AgentError codes come on top).
E_BAD_REQUEST = "bad_request"
E_FRAME_TOO_LARGE = "frame_too_large"
E_MALFORMED = "malformed_frame"
E_UNSUPPORTED_VERSION = "unsupported_version"
E_UNKNOWN_COMMAND = "unknown_command"
E_TIMEOUT = "timeout"
E_INTERNAL = "internal"
E_PERMISSION = "permission_denied"
E_BUSY = "busy"
E_SHUTTING_DOWN = "shutting_down"


class ProtocolError(Exception):
    """A request or reply that breaks the protocol; `code` is one of the E_* codes."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class FrameTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int):
        super().__init__(E_FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size


# ---------------------------------------------------------------------------------------------- framing

def encode_frame(obj: Any, max_frame: int = MAX_FRAME) -> bytes:
    try:
        body = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(E_INTERNAL, f"cannot encode as msgpack: {e}") from None
    if len(body) > max_frame:
        raise FrameTooLarge(len(body), max_frame)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        # raw=False: strings must be valid UTF-8; strict_map_key: only str/bytes keys. Ext types come back as
        # inert ExtType values that validation refuses; nothing here can run code (no pickle).
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input (ExtraData, ValueError, ...)
        raise ProtocolError(E_MALFORMED, f"not a msgpack document: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_MALFORMED, f"expected a msgpack map, got {type(obj).__name__}")
    return obj


async def read_frame(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME, *,
                     header_timeout: float | None = None, body_timeout: float | None = None) -> dict[str, Any] | None:
    """The next frame's map, or None on a clean end of stream (EOF exactly between frames).

    No header within `header_timeout`: asyncio.TimeoutError (an idle connection, for the caller to close). A body
    that starts but does not finish within `body_timeout` is a malformed frame (a stuck or hostile writer)."""
    try:
        head = await asyncio.wait_for(reader.readexactly(HEADER.size), header_timeout)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError(E_MALFORMED, "connection closed inside a frame header") from None
    (size,) = HEADER.unpack(head)
    if size > max_frame:
        raise FrameTooLarge(size, max_frame)
    if size == 0:
        raise ProtocolError(E_MALFORMED, "empty frame")
    try:
        body = await asyncio.wait_for(reader.readexactly(size), body_timeout)
    except asyncio.IncompleteReadError:
        raise ProtocolError(E_MALFORMED, f"connection closed inside a frame of {size} bytes") from None
    except asyncio.TimeoutError:
        raise ProtocolError(E_MALFORMED, f"a frame of {size} bytes did not arrive within {body_timeout} s") from None
    return decode_body(body)


# ---------------------------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class Arg:
    kind: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # returns a problem description, or None when fine
    describe: str = ""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Arg] = field(default_factory=dict)
    default_timeout: float = 10.0


def _check_address(v: str) -> str | None:
    try:
        parse_hostport(v, "agent", "address")
    except ConfigError:
        return f"expected host:port, got {v!r}"
    return None


def _check_node_id(v: str) -> str | None:
    return None if NODE_ID_RE.match(v) else f"{v!r} is not a valid node id ([A-Za-z0-9._-], 1-64 characters)"


def _check_abs_path(v: str) -> str | None:
    # The controller's working directory is not the operator's: the client resolves paths, the server insists.
    if not v.startswith("/"):
        return f"must be an absolute path, got {v!r}"
    if "\0" in v:
        return "must not contain NUL"
    return None


def _check_serial(v: Any) -> str | None:
    if v is None:
        return None
    try:
        parse_serial(v)
    except ValidationError as e:
        return f"{e.message}, got {v!r}"
    return None


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("status"),
    Command("cluster.list"),
    Command("cluster.add", {
        "address": Arg(str, required=True, check=_check_address, describe="host:port"),
        "learner": Arg(bool, default=False)}, default_timeout=120.0),
    Command("cluster.remove", {"id": Arg(str, required=True, check=_check_node_id)}, default_timeout=60.0),
    Command("cluster.revoke", {"id": Arg(str, required=True, check=_check_node_id),
                               "serial": Arg((str, type(None)), default=None, check=_check_serial)},
            default_timeout=60.0),
    Command("cluster.transfer", {"id": Arg((str, type(None)), default=None, check=_check_node_id)},
            default_timeout=60.0),
    Command("snapshot_db", {"path": Arg((str, type(None)), default=None, check=_check_abs_path)},
            default_timeout=300.0),
    Command("restore", {"path": Arg(str, required=True, check=_check_abs_path)}, default_timeout=300.0),
)}


@dataclass(frozen=True)
class Request:
    cmd: str
    args: dict[str, Any]
    timeout: float


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "nil"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _isinstance(v: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:  # bool is an int subclass; never accept True as a number
        return False
    return isinstance(v, kinds)


def make_request(cmd: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"v": VERSION, "cmd": cmd, "args": dict(args or {})}
    if timeout is not None:
        req["timeout"] = float(timeout)
    return req


def parse_request(obj: dict[str, Any]) -> Request:
    """Validate a decoded request map; raises ProtocolError naming the offending key."""
    unknown = sorted(set(obj) - {"v", "cmd", "args", "timeout"}, key=str)
    if unknown:
        raise ProtocolError(E_BAD_REQUEST, f"unknown request key {unknown[0]!r}")
    v = obj.get("v")
    if v != VERSION or isinstance(v, bool):
        raise ProtocolError(E_UNSUPPORTED_VERSION, f"protocol version {v!r} is not supported (this controller "
                                                   f"speaks version {VERSION})")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(E_BAD_REQUEST, "cmd: required string")
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise ProtocolError(E_UNKNOWN_COMMAND, f"unknown command {cmd!r} (known: {', '.join(sorted(COMMANDS))})")
    raw_args = obj.get("args", {})
    if raw_args is None:
        raw_args = {}
    if not isinstance(raw_args, dict):
        raise ProtocolError(E_BAD_REQUEST, f"{cmd}: args: expected a map, got {type(raw_args).__name__}")
    unknown = sorted(set(raw_args) - set(spec.args), key=str)
    if unknown:
        known = ", ".join(sorted(spec.args)) or "none"
        raise ProtocolError(E_BAD_REQUEST, f"{cmd}: args.{unknown[0]}: unknown argument (known: {known})")
    args: dict[str, Any] = {}
    for name, a in spec.args.items():
        if name not in raw_args:
            if a.required:
                what = f" ({a.describe})" if a.describe else ""
                raise ProtocolError(E_BAD_REQUEST, f"{cmd}: args.{name}: required {_type_name(a.kind)}{what}")
            args[name] = a.default
            continue
        value = raw_args[name]
        if not _isinstance(value, a.kind):
            raise ProtocolError(E_BAD_REQUEST, f"{cmd}: args.{name}: expected {_type_name(a.kind)}, "
                                               f"got {type(value).__name__}")
        if value is not None and a.check is not None:
            problem = a.check(value)
            if problem:
                raise ProtocolError(E_BAD_REQUEST, f"{cmd}: args.{name}: {problem}")
        args[name] = value
    timeout = obj.get("timeout", spec.default_timeout)
    if timeout is None:
        timeout = spec.default_timeout
    if not _isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ProtocolError(E_BAD_REQUEST, f"timeout: expected a number of seconds in (0, {MAX_TIMEOUT:g}], "
                                           f"got {timeout!r}")
    return Request(cmd, args, float(timeout))


# ---------------------------------------------------------------------------------------------- replies

def ok_reply(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


@dataclass(frozen=True)
class Reply:
    ok: bool
    result: Any = None
    error: str = ""
    message: str = ""


def parse_reply(obj: dict[str, Any]) -> Reply:
    ok = obj.get("ok")
    if ok is True:
        return Reply(True, result=obj.get("result"))
    if ok is False:
        code, message = obj.get("error"), obj.get("message")
        return Reply(False, error=code if isinstance(code, str) else "unknown",
                     message=message if isinstance(message, str) else repr(message))
    raise ProtocolError(E_MALFORMED, f"reply without a boolean 'ok': {obj!r:.200}")
