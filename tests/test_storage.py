"""raft.db (hactl/raft/storage.py) against a real LMDB in tmp_path: no mocks."""
from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import crc32c
import lmdb
import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hactl.raft.storage import (FORMAT_MAGIC, FORMAT_VERSION, CompactedError, RaftStorage, StorageError,
                                decode_index, encode_index)
from hactl.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta

REPO = Path(__file__).resolve().parent.parent
CONF3 = ConfState(("a", "b", "c"))


def crc(index: int, term: int, type_: int, data: bytes) -> int:
    """The documented entry checksum, computed independently of storage.py (one call over the whole input)."""
    return crc32c.crc32c(struct.pack(">QQB", index, term, type_) + data)


def ents(lo: int, hi: int, term: int, tag: str = "") -> list[Entry]:
    """Entries [lo, hi] of one term; data names index, term and tag so any mix-up is visible."""
    return [Entry(i, term, EntryType.NORMAL, f"{i}:{term}{tag}".encode()) for i in range(lo, hi + 1)]


def dump(s: RaftStorage) -> tuple[Any, ...]:
    """Everything observable through the API, for before/after comparisons."""
    state = s.load()
    return state, s.entries(state.first_index, state.last_index + 1), [
        s.term(i) for i in range(max(0, state.first_index - 2), state.last_index + 3)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "raft.db"


# ------------------------------------------------------------------------------------------ round trip


def test_new_journal_is_empty_and_well_formed(db: Path) -> None:
    with RaftStorage(db) as s:
        assert s.path == str(db)
        state = s.load()
        assert state.hard_state == HardState() and state.conf == ConfState() and state.snapshot == SnapshotMeta()
        assert (state.first_index, state.last_index, state.log_start_term) == (1, 0, 0)
        assert s.first_index() == 1 and s.last_index() == 0
        assert s.term(0) == 0 and s.term(1) is None
        assert s.entries(1, 10) == []
    assert sorted(p.name for p in db.parent.iterdir()) == ["raft.db", "raft.db-lock"]  # no temp leftovers
    assert db.stat().st_mode & 0o777 == 0o600
    # The on-disk layout is the documented one.
    env = lmdb.open(str(db), subdir=False, max_dbs=2, readonly=True, lock=False)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            assert msgpack.unpackb(txn.get(b"format", db=meta)) == [FORMAT_MAGIC, FORMAT_VERSION]
            assert msgpack.unpackb(txn.get(b"compacted", db=meta)) == [0, 0]
    finally:
        env.close()


def test_round_trip_and_reopen(db: Path) -> None:
    log = [Entry(1, 1, EntryType.NORMAL, b""),
           Entry(2, 1, EntryType.CONF_CHANGE, b"\x00\x01cc"),
           Entry(3, 2, EntryType.NORMAL, bytes(range(256))),
           Entry(4, 2, EntryType.NORMAL, b"x" * 100_000)]
    hs = HardState(term=2, vote="b", commit=3)
    with RaftStorage(db) as s:
        s.bootstrap(CONF3)
        s.save(HardState(1, "a", 0), log[:2])
        s.save(hs, log[2:], conf=ConfState(("a", "b"), ("c",)))
        s.set_snapshot(SnapshotMeta(2, 1, ConfState(("a", "b", "c"))))
        before = dump(s)
        assert before[1] == log
        assert s.load().hard_state == hs
        assert s.load().snapshot == SnapshotMeta(2, 1, CONF3)
        assert s.load().conf == CONF3  # the snapshot marker carries the membership as of its index
        assert [s.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 2, None]
    with RaftStorage(db) as s:
        assert dump(s) == before
        assert s.entries(1, 5) == log
        assert all(type(e.type) is EntryType for e in s.entries(1, 5))


def test_log_layout_on_disk(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, [Entry(1, 7, EntryType.CONF_CHANGE, b"abc")])
    env = lmdb.open(str(db), subdir=False, max_dbs=2, readonly=True, lock=False)
    try:
        log = env.open_db(b"log", create=False)
        with env.begin() as txn:
            items = list(txn.cursor(db=log))
    finally:
        env.close()
    assert items == [(b"\x00" * 7 + b"\x01", msgpack.packb([7, 1, b"abc", crc(1, 7, 1, b"abc")], use_bin_type=True))]
    # The checksum input is index || term || type || data, big-endian, as documented.
    assert crc(1, 7, 1, b"abc") == crc32c.crc32c(bytes.fromhex("0000000000000001" "0000000000000007" "01") + b"abc")
    assert encode_index(258) == b"\x00\x00\x00\x00\x00\x00\x01\x02" and decode_index(encode_index(258)) == 258


def test_entries_max_bytes_returns_at_least_one(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, [Entry(i, 1, data=b"d" * 10) for i in range(1, 11)])  # size() == 34 each
        assert len(s.entries(1, 11, max_bytes=1)) == 1
        assert len(s.entries(1, 11, max_bytes=68)) == 2
        assert len(s.entries(1, 11, max_bytes=101)) == 2
        assert len(s.entries(3, 11, max_bytes=10_000)) == 8
        assert [e.index for e in s.entries(4, 7)] == [4, 5, 6]
        assert [e.index for e in s.entries(9, 100)] == [9, 10]  # past the end: simply absent
        assert s.entries(11, 20) == [] and s.entries(5, 5) == []
        with pytest.raises(CompactedError):
            s.entries(0, 3)


# --------------------------------------------------------------------------- truncation and compaction


def test_suffix_truncation_on_conflict(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(1, "a", 0), ents(1, 10, 1))
        s.save(HardState(2, "b", 5), ents(6, 7, 2, "new"))
        assert s.last_index() == 7
        assert s.entries(1, 20) == ents(1, 5, 1) + ents(6, 7, 2, "new")
        assert [s.term(i) for i in range(6, 11)] == [2, 2, None, None, None]
    with RaftStorage(db) as s:
        assert s.last_index() == 7 and s.entries(1, 20) == ents(1, 5, 1) + ents(6, 7, 2, "new")
    with RaftStorage(db.parent / "other.db") as s:
        s.save(None, ents(1, 10, 1))
        s.save(None, ents(1, 2, 3))  # rewriting the very first entry replaces the whole log
        assert s.entries(1, 20) == ents(1, 2, 3) and s.last_index() == 2


def test_prefix_compaction_keeps_term_of_compaction_point(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, ents(1, 5, 1) + ents(6, 10, 2))
        with pytest.raises(StorageError, match="snapshot"):
            s.compact(3)  # no snapshot covers it yet
        s.set_snapshot(SnapshotMeta(8, 2, CONF3))
        s.compact(6)
        assert (s.first_index(), s.last_index()) == (7, 10)
        assert s.term(6) == 2 and s.term(5) is None and s.term(7) == 2
        assert s.load().log_start_term == 2
        with pytest.raises(CompactedError):
            s.entries(6, 8)
        assert s.entries(7, 11) == ents(7, 10, 2)
        s.compact(4)  # already compacted: a no-op
        assert s.first_index() == 7
        with pytest.raises(StorageError, match="snapshot is at 8"):
            s.compact(9)
        s.compact(8)
        assert s.term(8) == 2 and s.first_index() == 9
    with RaftStorage(db) as s:
        st = s.load()
        assert (st.first_index, st.last_index, st.log_start_term) == (9, 10, 2)
        assert s.term(8) == 2 and s.term(7) is None
        assert s.entries(9, 11) == ents(9, 10, 2)


def test_compact_whole_log_then_append(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, ents(1, 4, 3))
        s.set_snapshot(SnapshotMeta(4, 3))
        s.compact(4)
        assert (s.first_index(), s.last_index(), s.term(4)) == (5, 4, 3)
        with pytest.raises(StorageError, match="snapshot is at 4"):
            s.compact(5)
        s.save(None, ents(5, 6, 3))
        assert s.entries(5, 7) == ents(5, 6, 3)


def test_save_snapshot_with_matching_term_keeps_the_rest_of_the_log(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(2, "a", 4), ents(1, 5, 1) + ents(6, 10, 2))
        snap = SnapshotMeta(7, 2, ConfState(("a", "b")))
        s.save(HardState(2, "a", 7), [], snapshot=snap)
        st = s.load()
        assert (st.first_index, st.last_index, st.log_start_term) == (8, 10, 2)
        assert st.snapshot == snap and st.conf == snap.conf and st.hard_state.commit == 7
        assert s.entries(8, 11) == ents(8, 10, 2)
        assert s.term(7) == 2 and s.term(6) is None
    with RaftStorage(db) as s:
        assert s.load() == st and s.entries(8, 11) == ents(8, 10, 2)


def test_save_snapshot_with_other_term_drops_the_whole_log(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(2, "a", 4), ents(1, 5, 1) + ents(6, 10, 2))
        snap = SnapshotMeta(8, 3, CONF3)
        # The snapshot and the entries that follow it arrive in one save.
        s.save(HardState(3, None, 8), ents(9, 9, 3), snapshot=snap)
        st = s.load()
        assert (st.first_index, st.last_index, st.log_start_term) == (9, 9, 3)
        assert s.entries(9, 20) == ents(9, 9, 3)
        assert s.term(8) == 3 and s.term(7) is None and s.term(10) is None
    with RaftStorage(db) as s:
        assert s.load() == st


def test_save_snapshot_beyond_the_log(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, ents(1, 3, 1))
        s.save(HardState(4, None, 50), [], snapshot=SnapshotMeta(50, 4, CONF3))
        assert (s.first_index(), s.last_index(), s.term(50)) == (51, 50, 4)
        assert s.entries(51, 60) == []
        with pytest.raises(StorageError, match="gap"):
            s.save(None, ents(52, 52, 4))
        s.save(None, ents(51, 52, 4))
        assert s.entries(51, 60) == ents(51, 52, 4)
        with pytest.raises(StorageError, match="older"):
            s.save(None, [], snapshot=SnapshotMeta(49, 4))


# ------------------------------------------------------------------------------------- rejected writes


@pytest.mark.parametrize("start", [0, 1, 2, 5, 13, 14])
def test_append_with_gap_or_before_first_index_changes_nothing(db: Path, start: int) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(1, "a", 0), ents(1, 10, 1))
        s.set_snapshot(SnapshotMeta(5, 1))
        s.compact(5)  # first_index 6, last_index 10: valid starts are 6..11
        before = dump(s)
        bad = [Entry(start + i, 9, data=b"bad") for i in range(2)] if start else [Entry(0, 9)]
        with pytest.raises(StorageError) as info:
            s.save(HardState(9, "z", 7), bad, conf=CONF3)
        assert str(db) in str(info.value)
        assert dump(s) == before
    with RaftStorage(db) as s:
        assert dump(s) == before  # nothing reached the disk either


@pytest.mark.parametrize("bad", [
    [Entry(1, 1), Entry(3, 1)],  # not consecutive
    [Entry(1, 0)],  # term 0
    [Entry(1, 1, data="text")],  # type: ignore[arg-type]
    [Entry(1, 1, type=7)],  # type: ignore[arg-type]
    [Entry(1, True)],  # type: ignore[arg-type]
    [(1, 1, 0, b"")],  # type: ignore[list-item]
])
def test_invalid_entries_are_rejected(db: Path, bad: list[Entry]) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(1, "a", 0), [])
        before = dump(s)
        with pytest.raises(StorageError, match="invalid entries"):
            s.save(HardState(2, "a", 0), bad)
        assert dump(s) == before


def test_invalid_records_are_rejected_before_they_reach_disk(db: Path) -> None:
    with RaftStorage(db) as s:
        with pytest.raises(StorageError, match="hard state"):
            s.save(HardState(1, "", 0), [])  # a vote that would not decode at the next open
        with pytest.raises(StorageError, match="conf state"):
            s.save(None, [], conf=ConfState(("",)))
        with pytest.raises(StorageError, match="hard state"):
            s.save("not a hard state", [])  # type: ignore[arg-type]
        assert s.load().hard_state == HardState()
    RaftStorage(db).close()


def test_commit_beyond_the_log_is_rejected(db: Path) -> None:
    with RaftStorage(db) as s:
        with pytest.raises(StorageError, match="commit index 4"):
            s.save(HardState(1, "a", 4), ents(1, 3, 1))
        assert s.last_index() == 0
        s.save(HardState(1, "a", 3), ents(1, 3, 1))
        # Truncating below the stored commit index would lose committed entries.
        with pytest.raises(StorageError, match="committed"):
            s.save(None, ents(2, 2, 2))
        assert s.entries(1, 4) == ents(1, 3, 1)


def test_entries_covered_by_the_snapshot_are_not_rewritten(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, ents(1, 10, 1))
        s.set_snapshot(SnapshotMeta(8, 1))
        before = dump(s)
        with pytest.raises(StorageError, match="covered by the snapshot"):
            s.save(None, ents(8, 9, 2))
        assert dump(s) == before
        s.save(None, ents(9, 9, 2))
        assert [s.term(i) for i in (8, 9, 10)] == [1, 2, None]


def test_set_snapshot_must_match_the_log(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(None, ents(1, 5, 1) + ents(6, 8, 2))
        with pytest.raises(StorageError, match="term"):
            s.set_snapshot(SnapshotMeta(6, 1))
        with pytest.raises(StorageError, match="beyond the log"):
            s.set_snapshot(SnapshotMeta(9, 2))
        s.set_snapshot(SnapshotMeta(6, 2, CONF3))
        with pytest.raises(StorageError, match="older"):
            s.set_snapshot(SnapshotMeta(5, 1))
        assert s.load().snapshot == SnapshotMeta(6, 2, CONF3)
        assert (s.first_index(), s.last_index()) == (1, 8)  # the log is untouched


def test_bootstrap_only_on_an_empty_journal(db: Path) -> None:
    with RaftStorage(db) as s:
        with pytest.raises(StorageError, match="voter"):
            s.bootstrap(ConfState())
        s.bootstrap(CONF3)
        assert s.load().conf == CONF3
        with pytest.raises(StorageError, match="not empty"):
            s.bootstrap(ConfState(("x",)))
    with RaftStorage(db) as s:
        assert s.load().conf == CONF3
    other = db.parent / "other.db"
    with RaftStorage(other) as s:
        s.save(HardState(1, None, 0), [])
        with pytest.raises(StorageError, match="not empty"):
            s.bootstrap(CONF3)


def test_closed_and_double_open(db: Path) -> None:
    s = RaftStorage(db)
    s.save(None, ents(1, 2, 1))
    with pytest.raises(StorageError) as info:
        RaftStorage(db)  # LMDB forbids a second environment on the same files in one process
    assert str(db) in str(info.value)
    assert s.entries(1, 3) == ents(1, 2, 1)  # the first handle still works
    s.close()
    s.close()
    for call in (s.load, s.last_index, s.first_index, lambda: s.term(1), lambda: s.entries(1, 2),
                 lambda: s.save(None, ents(3, 3, 1)), lambda: s.compact(1), lambda: s.bootstrap(CONF3),
                 lambda: s.set_snapshot(SnapshotMeta(1, 1))):
        with pytest.raises(StorageError, match="closed"):
            call()
    with RaftStorage(db) as s2:
        assert s2.last_index() == 2


def test_missing_directory_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "raft.db"
    with pytest.raises(StorageError) as info:
        RaftStorage(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "nope").exists()


def test_sync_false_still_persists_across_reopen(db: Path) -> None:
    with RaftStorage(db, sync=False) as s:
        s.save(HardState(1, "a", 2), ents(1, 3, 1))
    with RaftStorage(db) as s:
        assert s.entries(1, 4) == ents(1, 3, 1) and s.load().hard_state == HardState(1, "a", 2)


# ------------------------------------------------------------------------------- damaged / foreign files


def _plain_lmdb(path: Path, fill: Any) -> None:
    env = lmdb.open(str(path), subdir=False, max_dbs=4, map_size=1 << 24)
    try:
        fill(env)
    finally:
        env.close()


def _put_main(env: lmdb.Environment) -> None:
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
        txn.put(b"meta", b"a plain key, not a sub-database")


def _meta_without_format(env: lmdb.Environment) -> None:
    meta = env.open_db(b"meta")
    env.open_db(b"log")
    with env.begin(write=True) as txn:
        txn.put(b"hard_state", msgpack.packb([1, None, 0]), db=meta)


def _empty_env(env: lmdb.Environment) -> None:
    pass


def _good_journal(path: Path, n: int = 3000) -> None:
    with RaftStorage(path) as s:
        s.bootstrap(CONF3)
        for lo in range(1, n + 1, 100):
            s.save(HardState(1, "a", lo - 1), [Entry(i, 1, data=os.urandom(200)) for i in range(lo, lo + 100)])


def _rewrite(path: Path, edit: Any) -> None:
    env = lmdb.open(str(path), subdir=False, max_dbs=2)
    try:
        log, meta = env.open_db(b"log"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            edit(txn, log, meta)
    finally:
        env.close()


DAMAGES: dict[str, Any] = {
    "random bytes": lambda p: p.write_bytes(random.Random(1).randbytes(50_000)),
    "empty file": lambda p: p.write_bytes(b""),
    "text file": lambda p: p.write_text("hello, I am not a database\n" * 300),
    "plain LMDB, other keys": lambda p: _plain_lmdb(p, _put_main),
    "plain LMDB, empty": lambda p: _plain_lmdb(p, _empty_env),
    "LMDB with sub-databases, no format record": lambda p: _plain_lmdb(p, _meta_without_format),
    "format version bumped": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(b"format", msgpack.packb([FORMAT_MAGIC, FORMAT_VERSION + 1]), db=meta))),
    "other magic": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(b"format", msgpack.packb(["someone-else", 1]), db=meta))),
    "format record is garbage": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(b"format", b"\xc1\xc1", db=meta))),
    "truncated to half": lambda p: (_good_journal(p), os.truncate(p, p.stat().st_size // 2)),
    "hard state does not decode": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(b"hard_state", msgpack.packb([1, 5, 0]), db=meta))),
    "entry does not decode": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(encode_index(200), msgpack.packb([0, 0, b""]), db=log))),
    "entry with a valid checksum but term 0": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(encode_index(200), msgpack.packb([0, 0, b"", crc(200, 0, 0, b"")]), db=log))),
    "last entry's data altered (checksum)": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(encode_index(200), _altered(t.get(encode_index(200), db=log)), db=log))),
    "first entry's data altered (checksum)": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(encode_index(1), _altered(t.get(encode_index(1), db=log)), db=log))),
    "format version 1 (entries without checksum)": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: (t.put(b"format", msgpack.packb([FORMAT_MAGIC, 1]), db=meta), [
            t.put(k, msgpack.packb(msgpack.unpackb(v)[:3]), db=log) for k, v in list(t.cursor(db=log))]))),
    "hole in the log": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.delete(encode_index(100), db=log))),
    "log does not start after the compaction point": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.delete(encode_index(1), db=log))),
    "commit beyond the log": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.put(b"hard_state", msgpack.packb([1, "a", 500]), db=meta))),
    "no compaction record": lambda p: (_good_journal(p, 200), _rewrite(
        p, lambda t, log, meta: t.delete(b"compacted", db=meta))),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_or_foreign_file_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "raft.db"
    DAMAGES[damage](path)
    original = path.read_bytes()
    for _ in range(2):  # refusing twice proves the first attempt did not "repair" anything
        with pytest.raises(StorageError) as info:
            RaftStorage(path)
        assert str(path) in str(info.value)
        assert path.read_bytes() == original
    if damage.startswith("format version"):
        assert "unsupported raft.db format version" in str(info.value)
    if "(checksum)" in damage:
        assert "checksum mismatch" in str(info.value)
    if damage.startswith(("random", "plain", "LMDB with", "empty", "text")):
        assert "not a hactl raft journal" in str(info.value)
    if damage == "truncated to half":
        assert "truncated" in str(info.value)


def test_a_copy_of_a_good_journal_opens(tmp_path: Path) -> None:
    # The control for the damage cases: the same recipe without the damage is accepted.
    _good_journal(tmp_path / "a.db")
    shutil.copyfile(tmp_path / "a.db", tmp_path / "b.db")
    with RaftStorage(tmp_path / "b.db") as s:
        st = s.load()
        assert (st.first_index, st.last_index, st.conf) == (1, 3000, CONF3)
        assert len(s.entries(1, 3001)) == 3000


# ------------------------------------------------------------------------------- per-entry checksums


def _altered(raw: bytes) -> bytes:
    """The stored value with one byte of its data flipped and the old crc kept."""
    term, type_, data, stored = msgpack.unpackb(raw)
    return msgpack.packb([term, type_, bytes([data[0] ^ 0x01]) + data[1:], stored], use_bin_type=True)


def test_flipped_byte_in_entry_data_is_caught_on_read(db: Path) -> None:
    with RaftStorage(db) as s:
        s.save(HardState(1, "a", 20), ents(1, 30, 1))
    # Entry 17 is neither end of the log, so open does not decode it; every read of it must check it.
    _rewrite(db, lambda t, log, meta: t.put(encode_index(17), _altered(t.get(encode_index(17), db=log)), db=log))
    with RaftStorage(db) as s:
        assert s.entries(1, 17) == ents(1, 16, 1)  # the intact entries before it still read
        assert s.entries(18, 31) == ents(18, 30, 1)
        assert s.term(16) == 1 and s.term(18) == 1
        for read in (lambda: s.entries(10, 20), lambda: s.entries(17, 18), lambda: s.entries(1, 31, max_bytes=10**6),
                     lambda: s.term(17), lambda: s.set_snapshot(SnapshotMeta(17, 1))):
            with pytest.raises(StorageError) as info:
                read()
            msg = str(info.value)
            assert str(db) in msg and "entry 17: checksum mismatch (stored 0x" in msg and ", computed 0x" in msg
        assert s.entries(18, 31) == ents(18, 30, 1)  # a refused read changes nothing


def test_entry_value_under_another_index_is_caught(db: Path) -> None:
    # Same term, same type: without the index in the checksum, entry 6 would read back as entry 5's data.
    with RaftStorage(db) as s:
        s.save(HardState(1, "a", 0), ents(1, 10, 1))
    _rewrite(db, lambda t, log, meta: t.put(encode_index(6), t.get(encode_index(5), db=log), db=log))
    with RaftStorage(db) as s:
        assert s.entries(1, 6) == ents(1, 5, 1)
        with pytest.raises(StorageError, match=r"entry 6: checksum mismatch"):
            s.entries(1, 11)
        with pytest.raises(StorageError, match=r"entry 6: checksum mismatch"):
            s.term(6)
    # At an end of the log the damage is found by open itself.
    _rewrite(db, lambda t, log, meta: t.put(encode_index(10), t.get(encode_index(9), db=log), db=log))
    with pytest.raises(StorageError) as info:
        RaftStorage(db)
    assert str(db) in str(info.value) and "entry 10: checksum mismatch" in str(info.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_bit_flip_in_an_entry_is_detected(data: st.DataObject) -> None:
    log = [Entry(i, data.draw(st.integers(1, 2**64 - 1) | st.integers(1, 300), label="term"),
                 data.draw(st.sampled_from(EntryType)), data.draw(st.binary(max_size=300), label="data"))
           for i in range(1, data.draw(st.integers(1, 6), label="n") + 1)]
    victim = data.draw(st.integers(1, len(log)), label="victim")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raft.db")
        with RaftStorage(path, sync=False) as s:
            s.save(None, log)
        env = lmdb.open(path, subdir=False, max_dbs=2)
        try:
            with env.begin(write=True) as txn:
                key, db = encode_index(victim), env.open_db(b"log", txn=txn)
                raw = bytearray(txn.get(key, db=db))
                bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
                raw[bit // 8] ^= 1 << (bit % 8)
                txn.put(key, bytes(raw), db=db)
        finally:
            env.close()
        try:
            with RaftStorage(path, sync=False) as s:
                got = s.entries(1, len(log) + 1)
                terms = [s.term(i) for i in range(1, len(log) + 1)]
        except StorageError as e:
            event("detected at open" if victim in (1, len(log)) else "detected on read")
            assert path in str(e) and f"entry {victim}" in str(e)
        else:
            event("flip did not change the decoded entry")
            assert got == log and terms == [x.term for x in log]  # never different data, silently


# ----------------------------------------------------------------------------------- crash (SIGKILL)


def _run_writer_and_kill(db: Path, seed: int, acks_wanted: int) -> list[tuple[int, int, int]]:
    """Start the writer, let it acknowledge some saves, SIGKILL it; return the states the journal may hold now:
    the last acknowledged (last, term, commit), and the save announced after it if there was one."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers_storage_crash.py"), str(db), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lines: list[bytes] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while sum(ln.startswith(b"ack ") for ln in lines) < acks_wanted:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read().decode() if proc.stderr else ''}"
            lines.append(line)
            if not line.startswith(b"ack "):
                continue
            assert time.monotonic() < deadline, "writer too slow"
        time.sleep(random.Random(seed).random() * 0.02)  # kill mid-save, not just between saves
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Not communicate(): it reads the raw pipe and would skip what readline() already buffered.
        assert proc.stdout is not None
        rest = proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL
    # Every complete line was printed after its save() returned; a torn last line is no acknowledgement.
    complete = [ln for ln in (b"".join(lines) + rest).split(b"\n")[:-1]]
    acks = [i for i, ln in enumerate(complete) if ln.startswith(b"ack ")]
    assert len(acks) >= acks_wanted
    states = [tuple(int(x) for x in complete[acks[-1]].split()[1:])]
    if len(complete) > acks[-1] + 1:
        states.append(tuple(int(x) for x in complete[acks[-1] + 1].split()[1:]))
    return states  # type: ignore[return-value]


def test_sigkill_loses_no_acknowledged_write(db: Path) -> None:
    RaftStorage(db).close()
    for round_, acks in enumerate((40, 5, 120, 1, 300, 17, 60, 2)):
        possible = _run_writer_and_kill(db, seed=round_, acks_wanted=acks)
        with RaftStorage(db) as s:  # recovers LMDB's lock file left by the killed writer
            st = s.load()
            found = (st.last_index, st.hard_state.term, st.hard_state.commit)
            assert found in possible, f"journal holds {found}; acknowledged/announced states: {possible}"
            assert st.hard_state.vote == "n1"
            log = s.entries(st.first_index, st.last_index + 1)
            assert [e.index for e in log] == list(range(st.first_index, st.last_index + 1))
            assert all(e.data == f"{e.index}:{e.term}".encode() for e in log)
            assert all(a.term <= b.term for a, b in zip(log, log[1:]))
            assert s.term(st.first_index - 1) == st.log_start_term
            assert st.snapshot.index >= st.first_index - 1


# ------------------------------------------------------------------------- property test against a model


class Model:
    """The obvious in-memory journal, written independently of storage.py."""

    def __init__(self) -> None:
        self.log: dict[int, Entry] = {}
        self.comp = (0, 0)
        self.snap = SnapshotMeta()
        self.hs = HardState()
        self.conf = ConfState()

    @property
    def first(self) -> int:
        return self.comp[0] + 1

    @property
    def last(self) -> int:
        return max(self.log, default=self.comp[0])

    def term(self, i: int) -> int | None:
        if i == self.comp[0]:
            return self.comp[1]
        return self.log[i].term if i in self.log else None

    def save(self, hs: HardState | None, entries: list[Entry], snapshot: SnapshotMeta | None) -> bool:
        """Apply like storage would; False (and no change) where storage must refuse."""
        log, comp, snap, conf = dict(self.log), self.comp, self.snap, self.conf
        if snapshot is not None:
            if snapshot.index < snap.index:
                return False
            if self.term(snapshot.index) == snapshot.term:
                log = {i: e for i, e in log.items() if i > snapshot.index}
            else:
                log = {}
            comp, snap, conf = (snapshot.index, snapshot.term), snapshot, snapshot.conf
        if entries:
            last = max(log, default=comp[0])
            if not max(comp[0], snap.index) + 1 <= entries[0].index <= last + 1:
                return False
            log = {i: e for i, e in log.items() if i < entries[0].index}
            log.update((e.index, e) for e in entries)
        new_hs = hs if hs is not None else self.hs
        if new_hs.commit > max(max(log, default=comp[0]), snap.index):
            return False
        self.log, self.comp, self.snap, self.conf, self.hs = log, comp, snap, conf, new_hs
        return True

    def compact(self, i: int) -> bool:
        if i <= self.comp[0]:
            return True
        if i > self.snap.index or i > self.last:
            return False
        self.comp = (i, self.log[i].term)
        self.log = {j: e for j, e in self.log.items() if j > i}
        return True

    def set_snapshot(self, meta: SnapshotMeta) -> bool:
        if meta.index < self.snap.index or meta.index > self.last or self.term(meta.index) != meta.term:
            return False
        self.snap, self.conf = meta, meta.conf
        return True


def check_same(s: RaftStorage, m: Model) -> None:
    assert (s.first_index(), s.last_index()) == (m.first, m.last)
    st = s.load()
    assert (st.first_index, st.last_index, st.log_start_term) == (m.first, m.last, m.comp[1])
    assert (st.hard_state, st.conf, st.snapshot) == (m.hs, m.conf, m.snap)
    for i in range(max(0, m.comp[0] - 2), m.last + 3):
        assert s.term(i) == m.term(i), i
    expected = [m.log[i] for i in range(m.first, m.last + 1)]
    assert s.entries(m.first, m.last + 1) == expected
    capped, size = [], 0  # the documented max_bytes rule: stop before exceeding, but at least one entry
    for e in expected:
        size += e.size()
        if capped and size > 60:
            break
        capped.append(e)
    assert s.entries(m.first, m.last + 1, max_bytes=60) == capped
    if m.comp[0] > 0:
        with pytest.raises(CompactedError):
            s.entries(m.comp[0], m.last + 1)


NODES = st.sampled_from(["a", "b", "c", "d"])
CONFS = st.builds(ConfState, st.lists(NODES, max_size=3).map(tuple), st.lists(NODES, max_size=2).map(tuple))


def draw_entries(data: st.DataObject, lo: int, max_n: int = 6) -> list[Entry]:
    n = data.draw(st.integers(0 if max_n == 0 else 1, max(max_n, 1)), label="n")
    return [Entry(lo + k, data.draw(st.integers(1, 5), label="term"), data.draw(st.sampled_from(EntryType)),
                  data.draw(st.binary(max_size=12))) for k in range(n)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_matches_model(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raft.db")
        s = RaftStorage(path, sync=False)  # semantics only; durability is the crash test's job
        m = Model()
        try:
            for _ in range(data.draw(st.integers(1, 30), label="ops")):
                op = data.draw(st.sampled_from(["append", "append", "append", "bad_append", "snapshot",
                                                "compact", "set_snapshot", "reopen"]), label="op")
                if op == "reopen":
                    s.close()
                    s = RaftStorage(path, sync=False)
                    check_same(s, m)
                    continue
                if op in ("append", "bad_append", "snapshot"):
                    snapshot = None
                    if op == "snapshot":
                        idx = data.draw(st.integers(max(0, m.snap.index - 1), m.last + 3), label="snap index")
                        t = m.term(idx)
                        term = data.draw(st.integers(1, 5) if t is None else st.sampled_from([t, t, t + 1]))
                        snapshot = SnapshotMeta(idx, term, data.draw(CONFS))
                        lo = idx + 1
                        entries = draw_entries(data, lo, max_n=data.draw(st.integers(0, 3)))
                    elif op == "append":
                        lo = data.draw(st.integers(max(m.comp[0], m.snap.index) + 1, m.last + 1), label="lo")
                        entries = draw_entries(data, lo)
                    else:
                        covered = max(m.comp[0], m.snap.index)
                        lo = data.draw(st.one_of(st.integers(m.last + 2, m.last + 5),
                                                 st.integers(1, covered) if covered else st.nothing()),
                                       label="bad lo")
                        entries = draw_entries(data, lo)
                    commit_max = max(lo - 1, snapshot.index if snapshot else 0)  # never above the new log
                    commits = st.integers(0, commit_max) | st.integers(0, m.last + len(entries) + 2)
                    hs = data.draw(st.none() | st.builds(HardState, st.integers(0, 6), st.none() | NODES, commits),
                                   label="hard state")
                    before = m.__dict__.copy()
                    ok = m.save(hs, entries, snapshot)
                    if op == "bad_append":
                        assert not ok and m.__dict__ == before
                    event(f"{op}: {'applied' if ok else 'refused'}")
                    if ok:
                        s.save(hs, entries, snapshot=snapshot)
                    else:
                        with pytest.raises(StorageError):
                            s.save(hs, entries, snapshot=snapshot)
                elif op == "compact":
                    top = min(m.snap.index, m.last)  # valid compaction targets are (comp, top]
                    i = data.draw(st.integers(m.comp[0] + 1, top) if top > m.comp[0] and data.draw(st.booleans())
                                  else st.integers(0, m.last + 1), label="compact")
                    event(f"compact: {'applied' if m.comp[0] < i <= min(m.snap.index, m.last) else 'other'}")
                    if m.compact(i):
                        s.compact(i)
                    else:
                        with pytest.raises(StorageError):
                            s.compact(i)
                else:
                    idx = data.draw(st.integers(max(0, m.snap.index - 1), m.last + 1), label="local snap")
                    t = m.term(idx)
                    meta = SnapshotMeta(idx, data.draw(st.integers(1, 5)) if t is None else
                                        data.draw(st.sampled_from([t, t, t + 1])), data.draw(CONFS))
                    ok = m.set_snapshot(meta)
                    event(f"set_snapshot: {'applied' if ok else 'refused'}")
                    if ok:
                        s.set_snapshot(meta)
                    else:
                        with pytest.raises(StorageError):
                            s.set_snapshot(meta)
                check_same(s, m)
            event(f"final log: {'compacted' if m.comp[0] else 'not compacted'}, "
                  f"{'empty' if not m.log else 'non-empty'}")
            s.close()
            s = RaftStorage(path, sync=False)
            check_same(s, m)
        finally:
            s.close()
