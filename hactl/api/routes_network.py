"""Networks: /controller/network[/{nwid}] and /unstable/controller/network."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from hactl.api.access import read_model, snapshot, submit
from hactl.api.context import context
from hactl.api.errors import bad_request, json_response, not_found, dumps
from hactl.api.inputs import path_nwid, read_body
from hactl.api.schemas import ref
from hactl.api.spec import Param, Route, post_and_put
from hactl.api.streaming import stream_json
from hactl.fsm import commands as C
from hactl.fsm.validate import check_network_id

NWID = Param("nwid", "network id: 16 hex digits, any case", {"type": "string", "pattern": "^[0-9a-fA-F]{16}$"})
CTRL = Param("ctrl", "this controller's 10-hex address, any case (followed by six underscores)",
             {"type": "string", "pattern": "^[0-9a-fA-F]{10}$"})


def _controller_address(request: web.Request) -> str | None:
    """The cluster's controller address from ctrl.db (None before initialisation). Changed only by a restore,
    so the local copy is good enough for the early prefix check; apply checks again."""
    info = context(request).cluster.machine().cluster_info()
    return None if info is None else str(info["address"])


# --------------------------------------------------------------------------------------------- handlers

async def list_networks(request: web.Request) -> web.Response:
    machine = await read_model(request)
    return json_response(machine.list_networks())


async def create_network(request: web.Request) -> web.Response:
    """POST /controller/network: a random free id under this controller (the fsm probes from a random start,
    so a taken id is retried deterministically on every node)."""
    body = await read_body(request)
    return await submit(request, lambda rid, t: C.build_network_create(rid, t, body))


async def create_network_under(request: web.Request) -> web.Response:
    """POST /controller/network/{ctrl}______: the same, after checking the prefix is this controller."""
    ctrl = request.match_info["ctrl"].lower()
    body = await read_body(request)
    address = _controller_address(request)
    if address is not None and ctrl != address:
        raise bad_request("nwid", f"{ctrl} is not this controller's address ({address})")
    return await submit(request, lambda rid, t: C.build_network_create(rid, t, body))


async def get_network(request: web.Request) -> web.Response:
    nwid = path_nwid(request)
    machine = await read_model(request)
    network = machine.get_network(nwid)
    if network is None:
        raise not_found(f"network {nwid} not found", "nwid")
    return json_response(network)


async def post_network(request: web.Request) -> web.Response:
    """Create or update; the whole network comes back."""
    nwid = path_nwid(request)
    body = await read_body(request)
    address = _controller_address(request)
    if address is not None:  # a network elsewhere, or n == 0: 400 now rather than a failed entry in the log
        check_network_id(int(nwid, 16), int(address, 16), "nwid")
    return await submit(request, lambda rid, t: C.build_network_update(rid, t, nwid, body))


async def delete_network(request: web.Request) -> web.Response:
    """Deletes the network and (in the same entry) all its members; returns the deleted network."""
    nwid = path_nwid(request)
    return await submit(request, lambda rid, t: C.build_network_delete(rid, t, nwid))


async def unstable_networks(request: web.Request) -> web.StreamResponse:
    """Every network with its member counts (the fsm's per-network counters: no member is read), all from one
    read transaction: the count, the networks and their counters are of one state."""
    async with snapshot(request, streamed=True) as model:
        count = model.network_count()

        def encode(network: dict[str, Any]) -> str:
            total, authorized = model.counts(network["id"])
            return dumps({**network, "meta": {"totalMemberCount": total, "authorizedMemberCount": authorized}})

        return await stream_json(request, '{"data":[', model.iter_networks(), encode,
                                 lambda: ']' + ',"meta":' + dumps({"networkCount": count}) + '}')


# ----------------------------------------------------------------------------------------------- routes

_NET_ERRORS = (400, 413)

ROUTES: list[Route] = [
    Route("GET", "/controller/network", list_networks, "listNetworks", "Ids of all networks", ref("NetworkIds"),
          read=True, tags=("network",)),
    *post_and_put(Route(
        "POST", "/controller/network", create_network, "createNetwork",
        "Create a network with a random id under this controller", ref("Network"), write=True,
        body=ref("NetworkInput"), errors=_NET_ERRORS, tags=("network",))),
    # Registered before /controller/network/{nwid}, which would match the same path.
    *post_and_put(Route(
        "POST", "/controller/network/{ctrl:[0-9a-fA-F]{10}}______", create_network_under, "createNetworkUnder",
        "Create a network with a random id (400 if {ctrl} is not this controller)", ref("Network"),
        params=(CTRL,), write=True, body=ref("NetworkInput"), errors=_NET_ERRORS, tags=("network",))),
    Route("GET", "/controller/network/{nwid}", get_network, "getNetwork", "One network", ref("Network"),
          params=(NWID,), read=True, errors=(400, 404), tags=("network",)),
    *post_and_put(Route(
        "POST", "/controller/network/{nwid}", post_network, "postNetwork",
        "Create or update a network; returns the whole network", ref("Network"), params=(NWID,), write=True,
        body=ref("NetworkInput"), errors=_NET_ERRORS, tags=("network",))),
    Route("DELETE", "/controller/network/{nwid}", delete_network, "deleteNetwork",
          "Delete a network and all its members; returns the deleted network", ref("Network"), params=(NWID,),
          write=True, errors=(400, 404), tags=("network",)),
    Route("GET", "/unstable/controller/network", unstable_networks, "listNetworksUnstable",
          "All networks with member counts", ref("UnstableNetworks"), read=True, errors=(429,), tags=("network",)),
]
