"""How handlers reach the model: linearizable (or local) reads, and writes through the replicated log.

Reads: ``?consistency`` is checked first, then the read barrier (ReadIndex), then the local ctrl.db is read.
An answer made of several reads (a listing and its counts) makes them all in one read transaction (``snapshot``),
so it is one applied state even while entries are applied meanwhile.
Writes: the fsm builder validates (a ValidationError is a 400 and nothing is proposed), then ``submit``
replicates and returns the Result applied on this node. The controller's exceptions propagate to
errors.error_middleware, which owns their mapping (503/429/504).
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import AsyncIterator, Callable

from aiohttp import web

from hactl.api.auth import presented_tokens
from hactl.api.context import context
from hactl.api.errors import result_response
from hactl.api.inputs import request_fingerprint, request_id, wants_linearizable
from hactl.api.streaming import stream_slot
from hactl.fsm.commands import with_fingerprint, with_origin
from hactl.fsm.machine import Reader, StateMachine
from hactl.fsm.result import Result

Builder = Callable[[str, int], bytes]  # (request_id, time ms) -> encoded command


async def read_model(request: web.Request) -> StateMachine:
    linearizable = wants_linearizable(request)  # a bad ?consistency is 400 before any waiting
    cluster = context(request).cluster
    if linearizable:
        await cluster.read_barrier()
    return cluster.machine()


@contextlib.asynccontextmanager
async def snapshot(request: web.Request, *, streamed: bool = False) -> AsyncIterator[Reader]:
    """read_model, then one read transaction for the block. ``streamed``: the answer is streamed from it, so it
    first takes a stream slot (429 when all are taken, before the transaction is opened)."""
    machine = await read_model(request)
    with stream_slot(request) if streamed else contextlib.nullcontext(), machine.reader() as reader:
        yield reader


def request_origin(request: web.Request) -> dict[str, str]:
    """Who asked, for entityChange events: the node that took the request, the client's address, and the API
    token's id (the start of its SHA-256: names which token without revealing it)."""
    by = {"kind": "api", "node": context(request).cluster.node_id, "remote": str(request.remote or "")[:64]}
    for token in presented_tokens(request):
        by["token"] = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]
        break
    return by


async def submit(request: web.Request, build: Builder) -> web.Response:
    """Validate-and-encode with ``build``, replicate, answer with the Result. A command made under an
    Idempotency-Key carries the request's fingerprint, so reusing the key for another request is 422."""
    cluster = context(request).cluster
    rid = request_id(request)
    command = with_origin(with_fingerprint(build(rid, cluster.now_ms()), request_fingerprint(request)),
                          request_origin(request))
    result = await cluster.submit(command, rid)
    if not isinstance(result, Result):
        raise TypeError(f"Cluster.submit returned {type(result).__name__}, not a Result")
    return result_response(result)
