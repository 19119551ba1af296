"""`hactl db dump` and `hactl db check`: offline inspection of a data directory.

dump prints the model as JSON lines (networks by id, then members by (nwid, address), keys sorted), so two
nodes' dumps can be compared with diff. Every field printed is replicated state; nothing node-local exists in
the model. check verifies every snapshot (meta, size, sha256, applied index) and ctrl.db (a full consistency
check), and the newest valid snapshot likewise; it prints what is wrong and exits 1, or prints "ok" and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import lmdb

from hactl.fsm.fsck import check_machine
from hactl.fsm.machine import FormatError, StateMachine
from hactl.snapshots.rebuild import CTRL_DB
from hactl.snapshots.store import SnapshotError, SnapshotInfo, SnapshotStore

SNAPSHOTS = "snapshots"


def dump(data_dir: str | Path, out: TextIO) -> None:
    """Print <data_dir>/ctrl.db's model as JSON lines, from one consistent read transaction."""
    with StateMachine(Path(data_dir) / CTRL_DB, readonly=True) as m:
        for record in m.iter_model():
            out.write(json.dumps(record, sort_keys=True) + "\n")


def check(data_dir: str | Path) -> list[str]:
    """What is wrong with the snapshots and ctrl.db under ``data_dir`` (empty: nothing)."""
    data = Path(data_dir)
    if not data.is_dir():
        return [f"{data}: not a directory"]
    problems: list[str] = []
    store = SnapshotStore(data / SNAPSHOTS, readonly=True)
    newest_checked = False
    for name in reversed(store.names()):
        try:
            info = store.load(name)
            store.verify(info)
        except SnapshotError as e:
            problems.append(str(e))
            continue
        # Snapshot files are immutable: no lock file needed (and none is left in the snapshot directory).
        problems += _check_db(info.data_path, lock=False, expect=info, deep=not newest_checked)
        newest_checked = True
    if store.names() and not newest_checked:
        problems.append(f"{store.dir}: no valid snapshot; the node cannot start")
    ctrl = data / CTRL_DB
    if ctrl.exists():
        problems += _check_db(ctrl, lock=True, expect=None, deep=True)
    else:
        problems.append(f"{ctrl}: missing")
    return problems


def _check_db(path: Path, *, lock: bool, expect: SnapshotInfo | None, deep: bool) -> list[str]:
    try:
        with StateMachine(path, readonly=True, lock=lock) as m:
            problems = []
            if expect is not None and m.applied() != (expect.index, expect.term):
                problems.append(f"{path}: holds applied {m.applied()}, meta.json says "
                                f"{(expect.index, expect.term)}")
            if deep:
                problems += check_machine(m)
            return problems
    except (FormatError, FileNotFoundError, lmdb.Error, ValueError) as e:
        return [f"{path}: cannot be opened: {e}"]


# ------------------------------------------------------------------------------------------------------- CLI

def add_db_commands(subparsers: Any) -> None:
    """Register `db dump --data DIR` and `db check --data DIR`; each sets ``func(args) -> exit code``."""
    db = subparsers.add_parser("db", help="inspect ctrl.db and snapshots of a data directory")
    sub = db.add_subparsers(dest="db_command", required=True, metavar="{dump,check}")
    p = sub.add_parser("dump", help="print the model as JSON lines (networks, then members; stable order)")
    p.add_argument("--data", required=True, metavar="DIR", help="the controller's data directory")
    p.set_defaults(func=_run_dump)
    p = sub.add_parser("check", help="verify snapshots and ctrl.db; exit 1 naming what is wrong")
    p.add_argument("--data", required=True, metavar="DIR", help="the controller's data directory")
    p.set_defaults(func=_run_check)


def _run_dump(args: argparse.Namespace) -> int:
    try:
        dump(args.data, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `hactl db dump | head`
        return 0
    except (FileNotFoundError, FormatError, lmdb.Error) as e:
        print(f"hactl db dump: {e}", file=sys.stderr)
        return 1
    return 0


def _run_check(args: argparse.Namespace) -> int:
    problems = check(args.data)
    for p in problems:
        print(p)
    if problems:
        print(f"hactl db check: {len(problems)} problem(s) in {args.data}", file=sys.stderr)
        return 1
    print(f"ok: {args.data}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m hactl.snapshots.inspect db check --data DIR); cli.py registers the same."""
    parser = argparse.ArgumentParser(prog="hactl")
    add_db_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
