"""One controller process for bench/netconf.py: what `hactl controller run --config FILE` runs, with three
bench-only differences, all stated by the bench in its output:

  * the ZeroTier endpoint binds the loopback address given with --zt-bind (the config loader refuses loopback
    binds because real ZeroTier nodes never use loopback paths; the bench's members are our own codec on this
    machine, and a loopback bind exposes nothing beyond it). The file is loaded and validated as usual with
    zerotier.bind empty, then the bind is set;
  * --limits '{"request_interval_ms": 10, ...}' overrides fields of the ZeroTier node's Limits (hactl.zt.node);
  * SIGUSR1 starts a cProfile of the event-loop thread (where datagrams are received and answered), SIGUSR2
    stops it and writes the stats to --profile-out.
It also writes the controller identity (public) to --identity-out once the endpoint serves: the bench's members
need its public key, which the API does not show.

    python bench/netconf_node.py --config CFG --zt-bind 127.0.0.1:PORT --zt-planet FILE [--limits JSON]
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hactl.config import load  # noqa: E402
from hactl.server import zerotier  # noqa: E402
from hactl.server.controller import Controller  # noqa: E402
from hactl.zt.node import Limits, Node  # noqa: E402


def patch_limits(overrides: dict[str, Any]) -> None:
    """ZeroTierService builds its Node with the default Limits; this makes it use ours."""
    limits = Limits(**overrides)

    class BenchNode(Node):
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw.setdefault("limits", limits)
            super().__init__(*args, **kw)

    zerotier.Node = BenchNode  # type: ignore[misc]


def install_profiler(out: str) -> None:
    prof: list[cProfile.Profile] = []

    def start(*_: Any) -> None:
        if not prof:
            prof.append(cProfile.Profile())
            prof[0].enable()

    def stop(*_: Any) -> None:
        if prof:
            p = prof.pop()
            p.disable()
            p.dump_stats(out)
            Path(out + ".done").touch()

    # Python runs these handlers in the main thread, which is the event loop's: the profile covers that thread.
    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--zt-bind", required=True, help="host:port of the UDP endpoint (loopback allowed)")
    ap.add_argument("--zt-planet", default="", help="planet file (default: ZeroTier's)")
    ap.add_argument("--limits", default="{}", help="JSON object of hactl.zt.node.Limits fields to override")
    ap.add_argument("--profile-out", default="", help="where SIGUSR2 writes the profile started by SIGUSR1")
    ap.add_argument("--identity-out", default="", help="file for the controller identity (public), once serving")
    args = ap.parse_args()
    cfg = load(args.config, overrides={"zerotier.bind": ""})
    cfg.zerotier.bind = args.zt_bind
    cfg.zerotier.planet = str(Path(args.zt_planet).resolve()) if args.zt_planet else ""
    overrides = json.loads(args.limits)
    if overrides:
        patch_limits(overrides)
    if args.profile_out:
        install_profiler(args.profile_out)
    logging.basicConfig(level=getattr(logging, cfg.log.level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(Controller(cfg), args.identity_out))


async def run(c: Controller, identity_out: str) -> int:
    async def publish() -> None:
        while (c.zerotier is None or c.zerotier.identity is None or c.zerotier.endpoint is None
               or not c.zerotier.endpoint.local_address[1]):
            await asyncio.sleep(0.05)
        tmp = Path(identity_out + ".tmp")
        tmp.write_text(str(c.zerotier.identity.public_only()) + "\n")
        tmp.rename(identity_out)

    task = asyncio.create_task(publish()) if identity_out else None
    try:
        return await c.run()
    finally:
        if task is not None:
            task.cancel()


if __name__ == "__main__":
    sys.exit(main())
