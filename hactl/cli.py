"""The `hactl` command."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from hactl import __version__

SWITCH_INTERVAL_S = 0.0005


def _setup_logging(level: str, fmt: str = "text", node_id: str | None = None) -> None:
    from hactl import logs
    logs.setup(level, fmt, node_id)


def _controller_run(args: argparse.Namespace) -> int:
    from hactl.config import ConfigError, load
    from hactl.events.setup import EventSinkError
    from hactl.server.controller import EXIT_CONFIG, Controller, StartupError
    from hactl.raft.storage import StorageError
    from hactl.snapshots.store import SnapshotError
    try:
        cfg = load(args.config, overrides={"id": args.id, "data_dir": args.data})
    except ConfigError as e:
        print(f"hactl: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(cfg.log.level, cfg.log.format, cfg.id)
    # The raft I/O thread (fsync, apply) and the event loop share the GIL. A thread returning from an fsync waits
    # for the switch interval (5 ms by default) while the loop runs Python: a raft.db append took 5.6 ms (p50) with
    # a busy loop, 0.9 ms at 0.5 ms (bench/gil.py), for a few more GIL hand-overs; writes at 64 clients +15%.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        return asyncio.run(Controller(cfg).run())
    except (StartupError, StorageError, SnapshotError, EventSinkError) as e:
        logging.getLogger("hactl").error("cannot start: %s", e)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def _applied_index(path: Path) -> int:
    """What ctrl.db has applied (0 if it is missing or unreadable: then only raft.db's word counts)."""
    from hactl.fsm.machine import StateMachine
    if not path.exists():
        return 0
    try:
        m = StateMachine(path, readonly=True)
    except Exception:  # a damaged ctrl.db is rebuilt at start; here it only fails to vouch for more entries
        return 0
    try:
        return m.applied()[0]
    finally:
        m.close()


def _cluster_recover(args: argparse.Namespace) -> int:
    from hactl.raft.recover import RecoverError, recover
    from hactl.raft.storage import StorageError
    try:
        out = recover(args.data, _applied_index(Path(args.data) / "ctrl.db"))
    except (RecoverError, StorageError) as e:
        print(f"hactl cluster recover: {e}", file=sys.stderr)
        return 1
    removed = ", ".join(out["removed"]) or "nobody"
    print(f"{out['id']} is now the only member (removed: {removed}; "
          f"{out['dropped_uncommitted']} uncommitted entries dropped). Start it, then add new members with "
          "`hactl agent cluster add ADDR`.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hactl", description="highly available network controller")
    ap.add_argument("--version", action="version", version=f"hactl {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    ctl = sub.add_parser("controller", help="run a controller").add_subparsers(dest="sub", required=True)
    run = ctl.add_parser("run", help="run one controller process in the foreground")
    run.add_argument("--config", required=True, help="path to cluster.yaml")
    run.add_argument("--id", help="override the config's id")
    run.add_argument("--data", help="override the config's data_dir")
    run.set_defaults(func=_controller_run)

    from hactl.transport.pki import add_pki_commands
    add_pki_commands(sub)
    from hactl.snapshots.inspect import add_db_commands
    add_db_commands(sub)
    cl = sub.add_parser("cluster", help="offline cluster operations").add_subparsers(dest="sub", required=True)
    rec = cl.add_parser("recover", help="after a permanent loss of quorum: make this stopped node the only member")
    rec.add_argument("--data", required=True, help="the stopped controller's data directory")
    rec.set_defaults(func=_cluster_recover)
    from hactl.agent.cli import add_agent_commands
    add_agent_commands(sub)
    from hactl.dev.cluster import add_dev_commands
    add_dev_commands(sub)
    from hactl.zt_cli import add_zt_commands
    add_zt_commands(sub)
    from hactl.events.tail import add_events_commands
    add_events_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
