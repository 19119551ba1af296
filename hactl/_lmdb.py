"""LMDB facts shared by raft.db (hactl/raft/storage.py) and ctrl.db (hactl/fsm/machine.py)."""
from __future__ import annotations

from typing import Any, Iterable

import lmdb


def usage(env: lmdb.Environment, dbs: Iterable[Any]) -> tuple[int, int]:
    """(bytes of live data, map size): the pages the main database and ``dbs`` use now. Unlike the file size, which
    never shrinks, this goes down when data is deleted (freed pages are reused before the file grows), so it tells
    how close the next write is to MDB_MAP_FULL."""
    with env.begin() as txn:
        stats = [env.stat(), *(txn.stat(db) for db in dbs)]
    pages = sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)
    map_size: int = env.info()["map_size"]
    return pages * stats[0]["psize"], map_size
