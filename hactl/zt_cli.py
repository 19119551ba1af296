"""`hactl zt ...`: ZeroTier-side tooling.

    hactl zt planet --check FILE [--moon] [--id ID] [--validate-identities]
        Say what a planet or moon file is (type, id, timestamp, roots with addresses and endpoints) and list every
        problem. Exit 0 if ZeroTier clients can use it (warnings allowed), 1 if not, 2 for a usage error (no
        such file). --moon: the file must be a moon; --id: it must have this world id (decimal or 0x hex).

    hactl zt planet [--moon] PATH --api URL --token-file FILE [--cacert FILE]
        Fetch the running cluster's planet (--moon: the same roots as a moon) from its management API and write it
        to PATH (a directory: PATH/planet, or PATH/<16-hex id>.moon as moons.d wants), after the same checks as
        --check: nothing is written unless clients can use it. The API contract this assumes (the server side
        adds it): GET URL/planet (URL/planet?form=moon for the moon) with the API token, answering the serialized
        world as application/octet-stream (a JSON body {"world": "<hex>"} is accepted too); 404: no planet yet.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_UNUSABLE, EXIT_USAGE = 0, 1, 2


def _world_id(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a world id: {text!r}") from None
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError("a world id is unsigned 64-bit")
    return v


def planet_check(path: str, *, moon: bool = False, expect_id: int | None = None,
                 validate_identities: bool = False) -> tuple[int, str]:
    """(exit code, report text) of ``hactl zt planet --check path``."""
    from hactl.zt.planet import describe_world, inspect_world
    from hactl.zt.world import ZEROTIER_PLANET, WorldType
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        return EXIT_USAGE, f"hactl zt planet: {path}: {e.strerror or e}"
    rep = inspect_world(data, expect_id, expect_type=WorldType.MOON if moon else None,
                        validate_identities=validate_identities)
    lines = [f"{path}: {len(data)} bytes"]
    if rep.world is not None:
        lines += describe_world(rep.world)
        if data == ZEROTIER_PLANET:
            lines.append("(this is ZeroTier's built-in planet)")
        w = rep.world
        if w.type == WorldType.MOON and path.endswith(".moon") and not path.endswith(f"{w.id:016x}.moon"):
            rep.warnings.append(f"ZeroTier loads moons from moons.d/{w.id:016x}.moon")
    for p in rep.problems():
        lines.append(f"problem: {p}" if not p.startswith("warning: ") else p)
    lines.append("usable" if rep.usable else "NOT usable")
    return (EXIT_OK if rep.usable else EXIT_UNUSABLE), "\n".join(lines)


class FetchError(Exception):
    def __init__(self, message: str, code: int = EXIT_UNUSABLE) -> None:
        super().__init__(message)
        self.code = code


def fetch_world(api: str, token: str, *, moon: bool = False, cacert: str | None = None,
                timeout: float = 10.0) -> bytes:
    """The serialized planet (or moon) from a cluster's management API (see the module docstring)."""
    import json
    import ssl
    import urllib.error
    import urllib.request
    url = api.rstrip("/") + "/planet" + ("?form=moon" if moon else "")
    req = urllib.request.Request(url, headers={"X-ZT1-Auth": token, "Accept": "application/octet-stream"})
    ctx = ssl.create_default_context(cafile=cacert) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            body: bytes = resp.read(1 << 20)
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise FetchError(f"{url}: the cluster has no planet yet (404)") from None
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from None
    if "json" in ctype or body[:1] == b"{":
        try:
            doc = json.loads(body)
            return bytes.fromhex(next(doc[k] for k in ("world", "moon", "planet") if isinstance(doc.get(k), str)))
        except (ValueError, StopIteration, AttributeError):
            raise FetchError(f"{url}: a JSON answer without the world in hex") from None
    return body


def planet_fetch(path: str, api: str, token_file: str, *, moon: bool = False,
                 cacert: str | None = None) -> tuple[int, str]:
    """(exit code, report text) of ``hactl zt planet [--moon] PATH --api URL --token-file FILE``."""
    import os

    from hactl._fs import atomic_write
    from hactl.zt.planet import describe_world, inspect_world
    from hactl.zt.world import WorldType
    try:
        token = open(token_file, encoding="utf-8").read().strip()
    except OSError as e:
        return EXIT_USAGE, f"hactl zt planet: {token_file}: {e.strerror or e}"
    try:
        data = fetch_world(api, token, moon=moon, cacert=cacert)
    except FetchError as e:
        return e.code, f"hactl zt planet: {e}"
    rep = inspect_world(data, expect_type=WorldType.MOON if moon else WorldType.PLANET)
    lines = [] if rep.world is None else describe_world(rep.world)
    lines += [f"problem: {p}" if not p.startswith("warning: ") else p for p in rep.problems()]
    if not rep.usable or rep.world is None:
        return EXIT_UNUSABLE, "\n".join(lines + ["NOT usable: nothing written"])
    target = path
    if os.path.isdir(path):
        target = os.path.join(path, f"{rep.world.id:016x}.moon" if moon else "planet")
    try:
        atomic_write(target, data, 0o644)
    except OSError as e:
        return EXIT_USAGE, f"hactl zt planet: {target}: {e.strerror or e}"
    hint = (f"install it as moons.d/{rep.world.id:016x}.moon in a ZeroTier node's home" if moon else
            "install it as `planet` in a ZeroTier node's home (restart the node)")
    return EXIT_OK, "\n".join(lines + [f"written to {target}: {hint}"])


def _planet(args: argparse.Namespace) -> int:
    if args.check:
        if args.path:
            print("hactl zt planet: give either --check FILE or PATH", file=sys.stderr)
            return EXIT_USAGE
        code, text = planet_check(args.check, moon=args.moon, expect_id=args.id,
                                  validate_identities=args.validate_identities)
        print(text, file=sys.stdout if code != EXIT_USAGE else sys.stderr)
        return code
    if not args.path or not args.api or not args.token_file:
        print("hactl zt planet: give --check FILE, or PATH with --api URL and --token-file FILE", file=sys.stderr)
        return EXIT_USAGE
    code, text = planet_fetch(args.path, args.api, args.token_file, moon=args.moon, cacert=args.cacert)
    print(text, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


def add_zt_commands(sub: Any) -> None:
    zt = sub.add_parser("zt", help="ZeroTier tooling (planets and moons)").add_subparsers(dest="sub", required=True)
    p = zt.add_parser("planet", help="write the cluster's planet (or moon) file, or check one (--check FILE)",
                      description="Write the running cluster's planet or moon file for ZeroTier nodes, or check "
                                  "one: what it is and every problem. Exit 0 if usable, 1 if not, 2 usage.")
    p.add_argument("path", nargs="?", help="where to write the cluster's planet (a directory: PATH/planet or "
                                           "PATH/<id>.moon)")
    p.add_argument("--api", metavar="URL", help="the cluster's management API, e.g. http://10.0.0.1:9993")
    p.add_argument("--token-file", metavar="FILE", help="the API token (the cluster's api-token file)")
    p.add_argument("--cacert", metavar="FILE", help="CA certificate(s) for an https API")
    p.add_argument("--check", metavar="FILE", help="inspect FILE instead")
    p.add_argument("--moon", action="store_true", help="a moon (type 127) rather than a planet")
    p.add_argument("--id", type=_world_id, help="the world id the file must have (decimal or 0x hex)")
    p.add_argument("--validate-identities", action="store_true",
                   help="also check each root's address against its key (the memory-hard hash)")
    p.set_defaults(func=_planet)
