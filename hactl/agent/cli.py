"""`hactl agent ...`: operator commands sent to a local controller over its agent socket.

Exit codes: 0 done; 1 the command failed (the controller refused it, it timed out, the socket did not answer);
2 usage error or no socket to talk to (nothing was sent).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from hactl.agent import protocol as P
from hactl.agent.client import E_NO_SOCKET, AgentClientError, DiscoveryError, call, find_socket

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Leaf:
    cmd: str  # the protocol command
    args: Callable[[argparse.Namespace], dict[str, Any]]
    render: Callable[[Any, argparse.Namespace], str]  # (result, the command line's arguments)


# ---------------------------------------------------------------------------------------------- rendering

def _ago(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.1f}s ago" if v < 120 else f"{v / 60:.0f}m ago"
    return str(v)


def _yes(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [headers, *rows]]
    return "\n".join(lines)


def render_list(rows: Any, a: argparse.Namespace | None = None) -> str:
    if not isinstance(rows, list):
        return json.dumps(rows, default=_json_default)
    headers = ["ID", "ADDRESS", "ROLE", "LEADER", "CONNECTED", "LAST CONTACT", "MATCH", "VERSION", "CERTIFICATES"]
    out = []
    for r in rows:
        r = r if isinstance(r, dict) else {"id": r}
        out.append([_dash(r.get("id")), _dash(r.get("address")), _dash(r.get("role")),
                    "*" if r.get("leader") else "", _yes(r.get("connected")), _ago(r.get("last_contact")),
                    _dash(r.get("match")), _dash(r.get("version")), ",".join(r.get("certificates") or []) or "-"])
    return table(headers, out)


def render_status(st: Any, a: argparse.Namespace | None = None) -> str:
    if not isinstance(st, dict):
        return str(st)
    order = ["id", "role", "term", "leader", "commit", "applied", "version"]
    keys = [k for k in order if k in st] + sorted((k for k in st if k not in order), key=str)
    width = max((len(str(k)) for k in keys), default=0) + 1

    def value(v: Any) -> str:
        return json.dumps(v, default=_json_default) if isinstance(v, (dict, list)) else _dash(v)
    return "\n".join(f"{(str(k) + ':').ljust(width)} {value(st[k])}" for k in keys)


def render_add(r: Any, a: argparse.Namespace) -> str:
    r = r if isinstance(r, dict) else {}
    return f"added {r.get('id', '?')} ({a.address}) as {r.get('role', '?')}"


def render_remove(r: Any, a: argparse.Namespace) -> str:
    return f"removed {a.id} from the cluster"


def render_revoke(r: Any, a: argparse.Namespace) -> str:
    serials = ", ".join(r.get("revoked", [])) if isinstance(r, dict) else ""
    return f"revoked the certificate(s) of {a.id}: {serials}"


def render_transfer(r: Any, a: argparse.Namespace) -> str:
    leader = r.get("leader") if isinstance(r, dict) else None
    return f"leadership transferred to {leader}" if leader else "leadership transferred"


def render_snapshot(r: Any, a: argparse.Namespace) -> str:
    if not isinstance(r, dict):
        return str(r)
    size = r.get("size")
    size_s = "? bytes"
    if isinstance(size, int):
        size_s = f"{size} bytes" if size < 1 << 20 else f"{size} bytes = {size / (1 << 20):.1f} MiB"
    return (f"wrote {r.get('path')} ({size_s}, raft index {r.get('index')})\n"
            f"sha256 {r.get('sha256')}  (also in {r.get('path')}.sha256)")


def render_restore(r: Any, a: argparse.Namespace) -> str:
    if not isinstance(r, dict):
        return str(r)
    return (f"restored at raft index {r.get('index')} (timeline {r.get('timeline_id')}): "
            f"{r.get('networks')} networks, {r.get('members')} members; "
            f"every controller now restarts with it (exit code 3)")


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    return str(o)


# ---------------------------------------------------------------------------------------------- running

def _abs(path: str) -> str:
    # The controller's working directory is not ours: send what the operator meant.
    return os.path.abspath(os.path.expanduser(path))


def _run(args: argparse.Namespace) -> int:
    leaf: Leaf = args.agent_leaf
    if getattr(args, "socket", None) and getattr(args, "data", None):
        print("hactl agent: give --socket or --data, not both", file=sys.stderr)
        return EXIT_USAGE
    try:
        req_args = leaf.args(args)
    except _UsageError as e:
        return _fail(args, "usage", str(e), EXIT_USAGE)
    try:
        path = find_socket(args.socket, args.data)
    except DiscoveryError as e:
        return _fail(args, E_NO_SOCKET, str(e), EXIT_USAGE)
    try:
        result = asyncio.run(call(path, leaf.cmd, req_args, args.timeout))
    except AgentClientError as e:
        return _fail(args, e.code, e.message, EXIT_USAGE if e.code == E_NO_SOCKET else EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", "interrupted; the command may still complete on the controller",
                     EXIT_FAILED)
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    else:
        print(leaf.render(result, args))
    return EXIT_OK


def _fail(args: argparse.Namespace, code: str, message: str, exit_code: int) -> int:
    print(f"hactl agent: {code}: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": code, "message": message}))
    return exit_code


class _UsageError(Exception):
    pass


def _restore_args(a: argparse.Namespace) -> dict[str, Any]:
    path = _abs(a.path)
    if not os.path.isfile(path):
        raise _UsageError(f"{path}: no such file")
    return {"path": path}


def _positive_seconds(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {v!r}") from None
    if not 0 < f <= P.MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be in (0, {P.MAX_TIMEOUT:g}] seconds")
    return f


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """The connection options, accepted both before and after the subcommand (`hactl agent --json cluster list`
    and `hactl agent cluster list --json`). On the leaves they default to SUPPRESS so they never overwrite a
    value given earlier on the line."""
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--socket", metavar="PATH", default=d(None), help="the controller's agent socket")
    g.add_argument("--data", metavar="DIR", default=d(None), help="the controller's data directory "
                                                                  "(its socket is DIR/agent.sock)")
    parser.add_argument("--json", action="store_true", default=d(False), help="print the raw result as JSON")
    parser.add_argument("--timeout", metavar="S", type=_positive_seconds, default=d(None),
                        help="seconds to wait for the controller (default: per command)")


def add_agent_commands(subparsers: Any) -> None:
    agent = subparsers.add_parser(
        "agent", help="operator commands for a local controller (over its agent socket)",
        description="Talk to a controller on this host over its agent socket. Socket: --socket, --data, "
                    "$HACTL_AGENT_SOCKET, or the only controller running here. Exit codes: 0 ok, 1 the command "
                    "failed, 2 usage error or no socket.")
    _common(agent, top=True)
    groups = agent.add_subparsers(dest="agent_group", required=True, metavar="{cluster,controller,status}")

    def leaf(parent: Any, name: str, help_: str, lf: Leaf) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        _common(p, top=False)
        p.set_defaults(func=_run, agent_leaf=lf)
        return p

    leaf(groups, "status", "this controller's id, role, term, leader, commit and applied index",
         Leaf("status", lambda a: {}, render_status))

    cluster = groups.add_parser("cluster", help="cluster membership and restore").add_subparsers(
        dest="agent_sub", required=True)
    leaf(cluster, "list", "the members: voter or learner, leader, connected, last contact, match index, version",
         Leaf("cluster.list", lambda a: {}, render_list))
    p = leaf(cluster, "add", "add the controller listening at ADDR (a learner first, then a voter once caught up)",
             Leaf("cluster.add", lambda a: {"address": a.address, "learner": a.learner}, render_add))
    p.add_argument("address", metavar="ADDR", help="its control-channel address, host:port")
    p.add_argument("--learner", action="store_true", help="keep it a non-voting learner")
    p = leaf(cluster, "remove", "remove member ID from the cluster",
             Leaf("cluster.remove", lambda a: {"id": a.id}, render_remove))
    p.add_argument("id", metavar="ID")
    p = leaf(cluster, "revoke", "deny member ID's certificate on the control channel for good (removal does it "
                                "too); its connections are closed",
             Leaf("cluster.revoke", lambda a: {"id": a.id, "serial": a.serial}, render_revoke))
    p.add_argument("id", metavar="ID")
    p.add_argument("--serial", default=None, help="revoke only this certificate serial (hex); default: every "
                                                 "certificate recorded for ID")
    p = leaf(cluster, "transfer-leadership", "hand leadership to ID (default: the most up-to-date voter)",
             Leaf("cluster.transfer", lambda a: {"id": a.id}, render_transfer))
    p.add_argument("id", metavar="ID", nargs="?", default=None)
    p = leaf(cluster, "restore-from-db", "replace the whole model with a ctrl.db copy (through Raft; every "
                                         "controller restarts with it)",
             Leaf("restore", _restore_args, render_restore))
    p.add_argument("path", metavar="PATH", help="a ctrl.db copy, e.g. from `controller snapshot-db`")

    controller = groups.add_parser("controller", help="this controller").add_subparsers(
        dest="agent_sub", required=True)
    p = leaf(controller, "snapshot-db", "write a consistent hot copy of ctrl.db plus PATH.sha256 (default: "
                                        "ctrl-<date>-<time>-<raft index>.db in the data directory)",
             Leaf("snapshot_db", lambda a: {"path": _abs(a.path) if a.path else None}, render_snapshot))
    p.add_argument("path", metavar="PATH", nargs="?", default=None)
