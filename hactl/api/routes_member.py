"""Members: /controller/network/{nwid}/member[/{address}] and /unstable/controller/network/{nwid}/member.

Listings stream from the fsm's iterators (a network may hold a million members); counts come from the fsm's
per-network counters. Each answer is read in one read transaction (access.snapshot), so the network's
existence, its counts and its members are of one state.
"""
from __future__ import annotations

from aiohttp import web

from hactl.api.access import snapshot, submit
from hactl.api.errors import dumps, json_response, not_found
from hactl.api.inputs import path_address, path_nwid, read_body
from hactl.api.routes_network import NWID
from hactl.api.schemas import ref
from hactl.api.spec import Param, Route, post_and_put
from hactl.api.streaming import stream_json
from hactl.fsm import commands as C
from hactl.fsm.machine import Reader

ADDRESS = Param("address", "member address: 10 hex digits, any case; 0000000000 and ff........ are reserved",
                {"type": "string", "pattern": "^[0-9a-fA-F]{10}$"})


def _require_network(model: Reader, nwid: str) -> None:
    if model.get_network(nwid) is None:
        raise not_found(f"network {nwid} not found", "nwid")


# --------------------------------------------------------------------------------------------- handlers

async def list_members(request: web.Request) -> web.StreamResponse:
    """{address: revision, ...}"""
    nwid = path_nwid(request)
    async with snapshot(request, streamed=True) as model:
        _require_network(model, nwid)

        def encode(member: tuple[str, int]) -> str:
            return f'"{member[0]}":{member[1]}'

        return await stream_json(request, "{", model.iter_member_revisions(nwid), encode, lambda: "}")


async def get_member(request: web.Request) -> web.Response:
    nwid, address = path_nwid(request), path_address(request)
    async with snapshot(request) as model:
        member = model.get_member(nwid, address)
        if member is None:
            _require_network(model, nwid)  # say which of the two is missing
            raise not_found(f"member {address} of network {nwid} not found", "address")
    return json_response(member)


async def post_member(request: web.Request) -> web.Response:
    """Create or update (the member need never have joined); 404 if the network does not exist (decided by
    apply, atomically with the write). ``authorized`` changes set lastAuthorized/DeauthorizedTime there too."""
    nwid, address = path_nwid(request), path_address(request)
    body = await read_body(request)
    return await submit(request, lambda rid, t: C.build_member_update(rid, t, nwid, address, body))


async def delete_member(request: web.Request) -> web.Response:
    nwid, address = path_nwid(request), path_address(request)
    return await submit(request, lambda rid, t: C.build_member_delete(rid, t, nwid, address))


async def unstable_members(request: web.Request) -> web.StreamResponse:
    nwid = path_nwid(request)
    async with snapshot(request, streamed=True) as model:
        _require_network(model, nwid)
        total, authorized = model.counts(nwid)
        return await stream_json(
            request, '{"data":[', model.iter_members(nwid), dumps,
            lambda: '],"meta":' + dumps({"totalCount": total, "authorizedCount": authorized}) + "}")


# ----------------------------------------------------------------------------------------------- routes

_MEMBER = "/controller/network/{nwid}/member/{address}"

ROUTES: list[Route] = [
    Route("GET", "/controller/network/{nwid}/member", list_members, "listMembers",
          "The network's members as {address: revision}", ref("MemberRevisions"), params=(NWID,), read=True,
          errors=(400, 404, 429), tags=("member",)),
    Route("GET", _MEMBER, get_member, "getMember", "One member", ref("Member"), params=(NWID, ADDRESS),
          read=True, errors=(400, 404), tags=("member",)),
    *post_and_put(Route(
        "POST", _MEMBER, post_member, "postMember",
        "Create or update a member (it need never have joined); 404 if the network does not exist",
        ref("Member"), params=(NWID, ADDRESS), write=True, body=ref("MemberInput"), errors=(400, 404, 409, 413),
        tags=("member",))),
    Route("DELETE", _MEMBER, delete_member, "deleteMember", "Delete a member; returns the deleted member",
          ref("Member"), params=(NWID, ADDRESS), write=True, errors=(400, 404), tags=("member",)),
    Route("GET", "/unstable/controller/network/{nwid}/member", unstable_members, "listMembersUnstable",
          "The network's members in full, with counts", ref("UnstableMembers"), params=(NWID,), read=True,
          errors=(400, 404, 429), tags=("member",)),
]
