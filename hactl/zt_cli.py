"""`hactl zt ...`: ZeroTier-side tooling.

    hactl zt planet --check FILE [--moon] [--id ID] [--validate-identities]
        Say what a planet or moon file is (type, id, timestamp, roots with addresses and endpoints) and list every
        problem. Exit 0 if ZeroTier clients can use it (warnings allowed), 1 if not, 2 for a usage error (no
        such file). --moon: the file must be a moon; --id: it must have this world id (decimal or 0x hex).

    hactl zt planet [--moon] PATH
        Write the running cluster's planet (or the same roots as a moon) to PATH: not yet (it needs the API's
        GET /planet).
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


def _planet(args: argparse.Namespace) -> int:
    if args.check:
        if args.path:
            print("hactl zt planet: give either --check FILE or PATH", file=sys.stderr)
            return EXIT_USAGE
        code, text = planet_check(args.check, moon=args.moon, expect_id=args.id,
                                  validate_identities=args.validate_identities)
        print(text, file=sys.stdout if code != EXIT_USAGE else sys.stderr)
        return code
    print("hactl zt planet PATH: writing the running cluster's planet is not available yet (it needs the API's "
          "GET /planet); use --check FILE to inspect a planet or moon file", file=sys.stderr)
    return EXIT_USAGE


def add_zt_commands(sub: Any) -> None:
    zt = sub.add_parser("zt", help="ZeroTier tooling (planets and moons)").add_subparsers(dest="sub", required=True)
    p = zt.add_parser("planet", help="check a planet or moon file (--check FILE)",
                      description="Check a ZeroTier planet or moon file: what it is and every problem. Exit 0 if "
                                  "usable, 1 if not.")
    p.add_argument("path", nargs="?", help="where to write the cluster's planet (not available yet)")
    p.add_argument("--check", metavar="FILE", help="inspect FILE instead")
    p.add_argument("--moon", action="store_true", help="a moon (type 127) rather than a planet")
    p.add_argument("--id", type=_world_id, help="the world id the file must have (decimal or 0x hex)")
    p.add_argument("--validate-identities", action="store_true",
                   help="also check each root's address against its key (the memory-hard hash)")
    p.set_defaults(func=_planet)
