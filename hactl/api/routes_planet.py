"""GET /planet: the cluster's own planet (or the same roots as a moon), for ZeroTier clients.

No token: a planet holds only public keys and addresses, and clients fetch it before they have anything else. It
is served from this node's applied state without a read barrier, so it is available without a leader too, which
is when a client that lost its roots needs it most; planets only move forward (a newer timestamp), so a client
holding a newer one than a lagging node serves simply ignores the older one.
"""
from __future__ import annotations

from aiohttp import web

from hactl.api.context import context
from hactl.api.errors import ApiError
from hactl.api.spec import Route
from hactl.zt.world import World

FORMS = ("planet", "moon")


async def get_planet(request: web.Request) -> web.Response:
    form = request.query.get("form", "planet")
    if form not in FORMS:
        raise ApiError(400, "INVALID", f"form must be one of {', '.join(FORMS)}, got {form!r}", "form")
    machine = context(request).cluster.machine()
    data = machine.planet()
    if data is None:
        raise ApiError(404, "NOT_FOUND", "the cluster has no planet yet: it is made once the nodes have reported "
                       "their root endpoints (zerotier.endpoints)")
    name = "planet"
    if form == "moon":
        key = machine.planet_key()
        if key is None:  # (a planet is only ever stored with its key)
            raise ApiError(404, "NOT_FOUND", "the cluster has no planet key")
        moon = World.decode(data).as_moon(key[2])
        data, name = moon.encode(), f"{moon.id:016x}.moon"
    return web.Response(body=data, content_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


ROUTES: list[Route] = [
    Route("GET", "/planet", get_planet, "getPlanet", "The cluster's planet (or moon), serialized",
          {"type": "string", "format": "binary"}, auth=False, errors=(400, 404), tags=("zerotier",),
          content_type="application/octet-stream",
          description="The signed World ZeroTier clients use as /var/lib/zerotier-one/planet (libzt: roots). "
                      "?form=moon: the same roots as a moon (moons.d/<id>.moon), for clients that keep ZeroTier's "
                      "planet and orbit the cluster. No token needed; served without a read barrier."),
]


