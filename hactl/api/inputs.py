"""Everything a request carries besides its token: path ids, the JSON body, Idempotency-Key, ?consistency.

Each parser either returns a canonical value or raises an error that names what was wrong (the path parameter,
``body``, the header or the query parameter), so handlers never see unchecked input.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hactl.api.context import context
from hactl.api.errors import ApiError, bad_request
from hactl.fsm.coerce import sub
from hactl.fsm.model import format_address, format_nwid
from hactl.fsm.validate import parse_address, parse_nwid

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_MAX = 128
# Client keys live in their own namespace of request ids, so a key can never alias an id another proposer
# chose (a fresh uuid4 below, the cluster's init, restore chunks) and replay that command's result.
IDEMPOTENCY_PREFIX = "key:"
CONSISTENCY_PARAM = "consistency"
CONSISTENCY_VALUES = ("linearizable", "local")
# What a request's fingerprint is made of (see request_fingerprint); the tag versions the construction.
FINGERPRINT_TAG = b"hactl idempotency fingerprint 1"
# The raw body as read_body received it, for the fingerprint. aiohttp >= 3.13 warns about str request keys; the
# oldest aiohttp we accept (3.9) has no RequestKey, and a str works there.
RAW_BODY: Any = web.RequestKey("hactl_raw_body", bytes) if hasattr(web, "RequestKey") else "hactl_raw_body"
MAX_JSON_DEPTH = 32  # the deepest real body (capabilities[i].rules[j]...) is ~5; bounds recursion later on
_READ_CHUNK = 64 << 10


# ---------------------------------------------------------------------------------------------- path ids

def path_nwid(request: web.Request, name: str = "nwid") -> str:
    """The {nwid} path parameter: 16 hex digits, any case -> canonical lowercase (else 400 naming it)."""
    return format_nwid(parse_nwid(request.match_info[name], name))


def path_address(request: web.Request, name: str = "address") -> str:
    """The {address} path parameter: 10 hex digits, not reserved -> canonical lowercase (else 400)."""
    return format_address(parse_address(request.match_info[name], name))


# ---------------------------------------------------------------------------------------------------- body

async def read_body(request: web.Request) -> Any:
    """The JSON body (an empty body counts as ``{}``), bounded by max_body_bytes: 413 when larger, whether or
    not Content-Length said so (chunked and compressed bodies are cut off as they are read, so a gzip bomb
    costs at most max_body_bytes)."""
    limit = context(request).max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    buf = bytearray()
    while True:
        try:
            chunk = await request.content.read(_READ_CHUNK)
        except (web.RequestPayloadError, HttpProcessingError) as e:  # bad chunking, undecodable gzip/deflate
            cause = e.__cause__ or e
            detail = getattr(cause, "message", None) or str(cause)
            raise bad_request(None, f"body could not be read (transfer or content encoding): "
                                    f"{_short(Exception(str(detail).strip()))}") from None
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise _too_large(limit)
    request[RAW_BODY] = bytes(buf)
    if not buf.strip():
        return {}  # `curl -X POST .../network/<ctrl>______` with no -d: create with defaults
    try:
        value = json.loads(bytes(buf), parse_constant=_reject_constant)
    except RecursionError:
        raise bad_request(None, "body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer beyond int's digit limit
        raise bad_request(None, f"body is not valid JSON: {_short(e)}") from None
    _check_structure(value)
    if not isinstance(value, dict):
        raise bad_request(None, f"body must be a JSON object, got {_json_type(value)}")
    return value


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "BODY_TOO_LARGE", f"request body exceeds {limit} bytes", "body")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _check_structure(value: Any) -> None:
    """Nesting depth (bounds any recursion later on) and text that is valid Unicode: JSON's \\ud800 escapes
    decode to lone surrogates, which no UTF-8 encoder (msgpack, LMDB keys) accepts. Iterative, since a
    recursive walk is what the depth limit guards against; the error names the field."""
    stack: list[tuple[Any, str | None, int]] = [(value, None, 1)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            _check_text(v, path)
        elif isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise bad_request(None, f"body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k, x in v.items():
                    sub_path = k if path is None else sub(path, k)
                    _check_text(k, sub_path)
                    if isinstance(x, (str, dict, list)):
                        stack.append((x, sub_path, depth + 1))
            else:
                stack.extend((x, sub(path or "body", i), depth + 1) for i, x in enumerate(v)
                             if isinstance(x, (str, dict, list)))


def _check_text(s: str, path: str | None) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(path, "text contains an unpaired UTF-16 surrogate (not valid Unicode)") from None


def _json_type(v: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _short(e: Exception) -> str:
    s = str(e)
    return s if len(s) <= 200 else s[:197] + "..."


# --------------------------------------------------------------------------------------- Idempotency-Key

def request_id(request: web.Request) -> str:
    """The request id a write is proposed under: from Idempotency-Key when given (so a retry applies once and
    answers with the first outcome), else fresh."""
    key = _idempotency_key(request)
    return uuid.uuid4().hex if key is None else IDEMPOTENCY_PREFIX + key


def request_fingerprint(request: web.Request) -> bytes | None:
    """With an Idempotency-Key, what binds the key to this request: SHA-256 over the method, the path as
    received (without the query string, which may carry ?auth=TOKEN and says nothing about the write) and the
    raw body. Each part is length-prefixed, so no two different requests hash the same bytes. A route that reads
    no body (DELETE) counts its body as empty: it has no effect. Without a key: None (every request is new)."""
    if _idempotency_key(request) is None:
        return None
    path = request.raw_path.partition("?")[0]
    h = hashlib.sha256(FINGERPRINT_TAG)
    for part in (request.method.encode(), path.encode("utf-8", "surrogatepass"), request.get(RAW_BODY, b"")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _idempotency_key(request: web.Request) -> str | None:
    """The Idempotency-Key header, checked (400 naming it), or None."""
    keys = request.headers.getall(IDEMPOTENCY_HEADER, [])
    if not keys:
        return None
    if len(keys) > 1:
        raise bad_request(IDEMPOTENCY_HEADER, "give the header once")
    key = keys[0]
    # Printable ASCII: HTTP headers carry no reliable charset, and the id must stay a short LMDB key.
    if not 1 <= len(key) <= IDEMPOTENCY_MAX or not (key.isascii() and key.isprintable()):
        raise bad_request(IDEMPOTENCY_HEADER,
                          f"expected 1..{IDEMPOTENCY_MAX} printable ASCII characters, got {len(key)} characters")
    return key


# ------------------------------------------------------------------------------------------ ?consistency

def wants_linearizable(request: web.Request) -> bool:
    """?consistency=linearizable (the default) or local; anything else is 400 naming the parameter."""
    values = set(request.query.getall(CONSISTENCY_PARAM, []))
    if not values:
        return True
    if len(values) > 1 or not values <= set(CONSISTENCY_VALUES):
        raise bad_request(CONSISTENCY_PARAM, f"expected one of {', '.join(CONSISTENCY_VALUES)}, "
                                             f"got {', '.join(sorted(values))[:100]}")
    return values != {"local"}
