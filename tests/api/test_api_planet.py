"""GET /planet against a real controller: the cluster's own planet as ZeroTier clients store it, and as a moon;
no token; 404 before there is one. The CLI (`hactl zt planet PATH --api ...`) fetches and checks it."""
from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
from pathlib import Path

from api_helpers import ApiEnv

from hactl.fsm.commands import build_planet_set
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress
from hactl.zt.planet import next_world
from hactl.zt.world import Root, World, WorldType


async def raw_get(env: ApiEnv, path: str) -> tuple[int, str, bytes]:
    assert env.session is not None
    async with env.session.get(path) as r:  # no token
        return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_planet_is_served_without_a_token_as_a_planet_and_as_a_moon(env: ApiEnv, tmp_path: Path) -> None:
    status, ctype, body = await raw_get(env, "/planet")
    assert status == 404 and ctype.startswith("application/json") and b"no planet yet" in body
    machine = env.controller.model.machine
    world_id, pub, priv = machine.planet_key()
    root = Identity.generate().public_only()
    world = next_world(None, [Root(root, (InetAddress(ipaddress.ip_address("203.0.113.7"), 9993),))],
                       world_id, pub, priv, env.controller.now_ms())
    assert world is not None
    result = await env.controller.submit(build_planet_set("planet-1", env.controller.now_ms(), world.encode()),
                                         "planet-1")
    assert result.ok, result

    status, ctype, body = await raw_get(env, "/planet")
    assert status == 200 and ctype == "application/octet-stream" and body == machine.planet()
    served = World.decode(body)
    assert served.type == WorldType.PLANET and served.id == world_id and served.verify(pub)
    assert [r.identity for r in served.roots] == [root]

    status, ctype, body = await raw_get(env, "/planet?form=moon")
    moon = World.decode(body)
    assert status == 200 and moon.type == WorldType.MOON and moon.verify(pub)
    assert moon.roots == served.roots and moon.id == root.address
    status, _, body = await raw_get(env, "/planet?form=bogus")
    assert status == 400 and b'"field": "form"' in body.replace(b'":"', b'": "')

    # The CLI writes what a client stores, after checking it.
    out = tmp_path / "out"
    out.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    url = f"http://127.0.0.1:{env.server.port}"
    for extra, name in (([], "planet"), (["--moon"], f"{root.address:016x}.moon")):
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hactl.cli", "zt", "planet",
                                                        *extra, str(out), "--api", url, "--token-file",
                                                        str(token_file)], capture_output=True, text=True,
                                       timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert World.decode((out / name).read_bytes()).verify(pub)
