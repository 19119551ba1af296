"""raft.db: the Raft journal (LogStore + StableStore in hashicorp/raft terms) in ONE LMDB environment.

Layout (two named sub-databases, ``max_dbs=2``):

* ``log``  key: 8-byte big-endian u64 index (so LMDB's byte order is index order), value: msgpack
  ``[term, type, data, crc]``; the index is the key and is not repeated in the value. ``crc`` is the CRC32C
  (Castagnoli, as in etcd's WAL) of ``index (8 bytes BE) || term (8 bytes BE) || type (1 byte) || data``: a bit
  flip in an entry, or an entry's value copied under another index key, is caught. Every read that decodes an
  entry (``entries()``, ``term()``, the log bounds at open, the term checks of snapshot/compaction) verifies it
  and raises StorageError ("entry N: checksum mismatch ...") instead of returning damaged data.
* ``meta`` ``format`` -> ``[FORMAT_MAGIC, FORMAT_VERSION]`` (written when the file is created; version 2 added
  the per-entry CRC, a version-1 file is refused),
  ``compacted`` -> ``[index, term]`` of the last entry removed by compaction (``[0, 0]`` at first),
  ``hard_state``, ``conf``, ``snapshot`` -> the ``to_wire`` forms of HardState, ConfState and SnapshotMeta.

LMDB flags, chosen deliberately:

* ``sync=True, metasync=True``: a commit writes the data pages and fsyncs them, then writes the meta page and
  fsyncs again, so ``save()`` returns only once the transaction survives power loss. ``metasync=False`` would
  keep the file consistent but could silently roll back the last acknowledged write (a lost vote or entry
  breaks Raft). ``sync=False`` (MDB_NOSYNC) exists only so benchmarks can measure the cost of fsync.
* ``writemap=False``: pages are written with pwrite() from private buffers and the map is read-only, so a
  stray write faults instead of corrupting the journal; it also means the file is never pre-extended to
  ``map_size``, which lets open detect a truncated file (pages beyond EOF would otherwise be a SIGBUS later).
  ``meminit=True`` keeps stale heap bytes out of those buffers.
* ``lock=True``: LMDB's writer mutex and reader table stay on (other processes, e.g. an inspecting tool, may
  read safely); py-lmdb refuses a second open of the same files in one process, which LMDB forbids.
* ``readahead=False``: the log is read at random indexes, readahead would only evict useful pages.
* ``map_size`` is address space, not disk; when it is exhausted a save fails with StorageError.

A new raft.db is built under a temporary name and hard-linked into place, so a file at the path always carries a
format record: an empty, foreign or damaged file is refused with StorageError and never reset or re-created.
Writes are serialized by a lock; one save() is one LMDB write transaction (group commit).
"""
from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import crc32c
import lmdb
import msgpack

from hactl._fs import fsync_dir
from hactl._lmdb import usage as lmdb_usage

from .metrics_hooks import DurationHistogram, clock
from .types import ConfState, Entry, EntryType, HardState, MalformedError, SnapshotMeta

FORMAT_MAGIC = "hactl-raft-journal"
FORMAT_VERSION = 2  # 2: [term, type, data, crc] log values (1 had no crc)

_LOG_DB = b"log"
_META_DB = b"meta"
_K_FORMAT = b"format"
_K_COMPACTED = b"compacted"
_K_HARD_STATE = b"hard_state"
_K_CONF = b"conf"
_K_SNAPSHOT = b"snapshot"

_U64 = struct.Struct(">Q")
_pack_crc_header = struct.Struct(">QQB").pack  # index, term, type: the CRC input in front of data
_crc32c = crc32c.crc32c
_MAX_U64 = (1 << 64) - 1
_FILE_MODE = 0o600  # the journal holds the cluster's whole model: owner only
_ENTRY_TYPES = frozenset(int(t) for t in EntryType)


class StorageError(Exception):
    """raft.db cannot be opened, read or written as asked; the message names the file and the problem."""


class CompactedError(StorageError):
    """The requested entries were removed by compaction (the caller must use the snapshot instead)."""


@dataclass(frozen=True, slots=True)
class RaftState:
    """Everything a restarting node needs from raft.db."""
    hard_state: HardState
    conf: ConfState  # membership as of the snapshot marker (or bootstrap); later CONF_CHANGE entries are in the log
    snapshot: SnapshotMeta  # newest snapshot marker, index 0 if none
    first_index: int
    last_index: int
    log_start_term: int  # term of entry first_index - 1 (the compaction point)


def encode_index(index: int) -> bytes:
    """u64 log index -> LMDB key (big-endian, so byte order is numeric order)."""
    return _U64.pack(index)


def decode_index(key: bytes) -> int:
    """LMDB key -> u64 log index; MalformedError if it is not an 8-byte key."""
    if len(key) != 8:
        raise MalformedError(f"log key {bytes(key)!r}: expected 8 bytes")
    return _U64.unpack(key)[0]


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for garbage input
        raise MalformedError(f"{what}: not valid msgpack ({e})") from e


def _entry_crc(index: int, term: int, type_: int, data: bytes) -> int:
    """CRC32C of index (8 bytes BE) || term (8 bytes BE) || type (1 byte) || data; two C calls, no copy of data."""
    return _crc32c(data, _crc32c(_pack_crc_header(index, term, type_)))


def _encode_entry(e: Entry) -> bytes:
    # Hot path (save): _check_entry has already bounded index, term and type, so the header always packs.
    t = int(e.type)
    return _pack([e.term, t, e.data, _entry_crc(e.index, e.term, t, e.data)])


def _decode_entry(index: int, raw: bytes) -> Entry:
    """Decode the value stored under ``index`` and verify its CRC; MalformedError if damaged in any way."""
    v = _unpack(raw, f"log entry {index}")
    if not isinstance(v, list) or len(v) != 4:
        raise MalformedError(f"log entry {index}: expected [term, type, data, crc]")
    term, type_, data, stored = v
    # Only the shape the CRC input needs; Entry.from_wire below checks the values (term >= 1, known type).
    if (type(term) is not int or not 0 <= term <= _MAX_U64 or type(type_) is not int or not 0 <= type_ <= 0xFF
            or type(data) is not bytes or type(stored) is not int):
        raise MalformedError(f"log entry {index}: expected [term (u64), type (u8), data (bytes), crc (int)]")
    computed = _entry_crc(index, term, type_, data)
    if computed != stored:
        raise MalformedError(f"entry {index}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
    return Entry.from_wire([index, term, type_, data])


def _decode_compacted(raw: bytes) -> tuple[int, int]:
    v = _unpack(raw, "compaction point")
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= _MAX_U64 for x in v)):
        raise MalformedError(f"compaction point: expected [index, term], got {v!r}")
    return v[0], v[1]


def _check_entry(e: Any, index: int) -> None:
    # Cheap inline checks instead of a from_wire round trip: save() is the hot path. Whatever passes here must
    # decode at the next open, or the journal would become unreadable.
    if not isinstance(e, Entry):
        raise MalformedError(f"entry {index}: expected an Entry, got {type(e).__name__}")
    if type(e.index) is not int or e.index != index:
        raise MalformedError(f"entry indexes are not consecutive: expected {index}, got {e.index!r}")
    if type(e.term) is not int or not 1 <= e.term <= _MAX_U64:
        raise MalformedError(f"entry {index}: term must be an integer >= 1, got {e.term!r}")
    if isinstance(e.type, bool) or not isinstance(e.type, int) or e.type not in _ENTRY_TYPES:
        raise MalformedError(f"entry {index}: unknown entry type {e.type!r}")
    if not isinstance(e.data, (bytes, bytearray)):
        raise MalformedError(f"entry {index}: data must be bytes, got {type(e.data).__name__}")


class RaftStorage:
    """raft.db: log entries, hard state, membership and the snapshot marker. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, sync: bool = True, map_size: int = 1 << 34) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._sync = sync
        self._map_size = map_size
        self._lock = threading.RLock()
        self._env: lmdb.Environment | None = None
        self._broken: str | None = None  # set when a commit failed: the on-disk state is then unknown
        # In-memory mirror of the small records, updated only after a successful commit (single writer).
        self._comp_index = 0
        self._comp_term = 0
        self._last_index = 0
        self._hard_state: HardState | None = None
        self._conf: ConfState | None = None
        self._snapshot: SnapshotMeta | None = None
        # Durable commits (LMDB writes the pages, fsyncs, writes the meta page, fsyncs): the fsync latency
        # the Raft loop waits on, hactl_raft_fsync_duration_seconds.
        self.fsync_seconds = DurationHistogram()

        if not os.path.lexists(self._path):
            self._create()
        env = self._open_existing()
        try:
            self._log_db, self._meta_db = self._open_dbs(env)
            self._env = env
            self._load_and_validate()
        except BaseException:
            self._env = None
            env.close()
            raise

    # ----------------------------------------------------------------------------------------------- open

    def _error(self, what: str) -> StorageError:
        return StorageError(f"raft.db at {self._path}: {what}")

    def _env_kwargs(self) -> dict[str, Any]:
        return dict(subdir=False, map_size=self._map_size, max_dbs=2, sync=self._sync, metasync=True,
                    writemap=False, meminit=True, lock=True, readahead=False, mode=_FILE_MODE, create=False,
                    max_spare_txns=1)

    def _create(self) -> None:
        """Build an empty journal under a temporary name, then link it into place (atomic, never clobbers)."""
        directory = os.path.dirname(self._path)
        if not os.path.isdir(directory):
            raise self._error(f"directory {directory} does not exist")
        tmp = f"{self._path}.creating-{os.getpid()}"
        try:
            for leftover in (tmp, tmp + "-lock"):  # only a crashed earlier creation by a process with our pid
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            kwargs = self._env_kwargs()
            kwargs["sync"] = True  # creation is always durable, even for sync=False benchmarks
            env = lmdb.open(tmp, **kwargs)
            try:
                with env.begin(write=True) as txn:
                    meta = env.open_db(_META_DB, txn=txn, create=True)
                    env.open_db(_LOG_DB, txn=txn, create=True)
                    txn.put(_K_FORMAT, _pack([FORMAT_MAGIC, FORMAT_VERSION]), db=meta)
                    txn.put(_K_COMPACTED, _pack([0, 0]), db=meta)
            finally:
                env.close()
            try:
                os.link(tmp, self._path)
            except FileExistsError:
                pass  # another process created it meanwhile: open theirs
            except OSError:
                # A file system without hard links: rename is still atomic, only not clobber-proof.
                if not os.path.lexists(self._path):
                    os.rename(tmp, self._path)
            fsync_dir(directory)
        except lmdb.Error as e:
            raise self._error(f"cannot create: {e}") from e
        except OSError as e:
            raise self._error(f"cannot create: {e}") from e
        finally:
            for leftover in (tmp, tmp + "-lock"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass

    def _open_existing(self) -> lmdb.Environment:
        try:
            st = os.stat(self._path)
        except OSError as e:
            raise self._error(f"cannot open: {e}") from e
        if not stat.S_ISREG(st.st_mode):
            raise self._error("not a regular file")
        if st.st_size == 0:
            # LMDB would silently initialise an empty file; a journal is never empty (see _create).
            raise self._error("empty file, not a hactl raft journal (refusing to initialise it)")
        try:
            env = lmdb.open(self._path, **self._env_kwargs())
        except lmdb.InvalidError as e:
            raise self._error(f"not an LMDB file, not a hactl raft journal ({e})") from e
        except lmdb.Error as e:
            raise self._error(f"cannot open: {e}") from e
        try:
            # Every page the newest meta page refers to must lie inside the file: touching a page past EOF in the
            # map would kill the process with SIGBUS instead of raising.
            psize = env.stat()["psize"]
            last_pgno = env.info()["last_pgno"]
            size = os.stat(self._path).st_size
            if (last_pgno + 1) * psize > size:
                raise self._error(f"truncated: {size} bytes, but the last transaction uses "
                                  f"{(last_pgno + 1) * psize} bytes")
        except BaseException:
            env.close()
            raise
        return env

    def _open_dbs(self, env: lmdb.Environment) -> tuple[Any, Any]:
        # create=False: opening an existing file never writes to it (the internal transaction stays empty).
        try:
            meta = env.open_db(_META_DB, create=False)
            log = env.open_db(_LOG_DB, create=False)
        except (lmdb.NotFoundError, lmdb.IncompatibleError) as e:
            raise self._error("not a hactl raft journal (no format record)") from e
        except lmdb.Error as e:
            raise self._error(f"cannot open: {e}") from e
        return log, meta

    def _load_and_validate(self) -> None:
        env = self._require_env()
        try:
            with env.begin() as txn:
                fmt = txn.get(_K_FORMAT, db=self._meta_db)
                if fmt is None:
                    raise self._error("not a hactl raft journal (no format record)")
                try:
                    v = _unpack(fmt, "format record")
                except MalformedError as e:
                    raise self._error(f"not a hactl raft journal (unreadable format record: {e})") from e
                if not isinstance(v, list) or len(v) != 2 or v[0] != FORMAT_MAGIC:
                    raise self._error(f"not a hactl raft journal (format record {v!r})")
                if type(v[1]) is not int or v[1] != FORMAT_VERSION:
                    raise self._error(f"unsupported raft.db format version {v[1]!r} "
                                      f"(this build reads version {FORMAT_VERSION})")
                self._load_meta(txn)
                self._load_log_bounds(txn)
        except lmdb.Error as e:
            raise self._error(f"damaged: {e}") from e
        snap_index = self._snapshot.index if self._snapshot else 0
        if self._comp_index > snap_index:
            raise self._error(f"damaged: log compacted to {self._comp_index}, past the snapshot marker {snap_index}")
        if snap_index > self._last_index:
            raise self._error(f"damaged: snapshot marker {snap_index} is beyond the log (last index "
                              f"{self._last_index})")
        commit = self._hard_state.commit if self._hard_state else 0
        if commit > max(self._last_index, snap_index):
            raise self._error(f"damaged: commit index {commit} is beyond the log (last index {self._last_index}, "
                              f"snapshot {snap_index})")

    def _load_meta(self, txn: lmdb.Transaction) -> None:
        def record(key: bytes) -> bytes | None:
            return txn.get(key, db=self._meta_db)

        try:
            raw = record(_K_COMPACTED)
            if raw is None:
                raise self._error("damaged: no compaction record")
            self._comp_index, self._comp_term = _decode_compacted(raw)
            raw = record(_K_HARD_STATE)
            self._hard_state = None if raw is None else HardState.from_wire(_unpack(raw, "hard state"))
            raw = record(_K_CONF)
            self._conf = None if raw is None else ConfState.from_wire(_unpack(raw, "conf state"))
            raw = record(_K_SNAPSHOT)
            self._snapshot = None if raw is None else SnapshotMeta.from_wire(_unpack(raw, "snapshot marker"))
        except MalformedError as e:
            raise self._error(f"damaged record: {e}") from e

    def _load_log_bounds(self, txn: lmdb.Transaction) -> None:
        """Check the log's ends and that it has no holes (entry count == last - first + 1)."""
        count = txn.stat(self._log_db)["entries"]
        if count == 0:
            self._last_index = self._comp_index
            return
        cur = txn.cursor(db=self._log_db)
        try:
            cur.first()
            first = decode_index(cur.key())
            _decode_entry(first, cur.value())
            cur.last()
            last = decode_index(cur.key())
            _decode_entry(last, cur.value())
        except MalformedError as e:
            raise self._error(f"damaged log: {e}") from e
        if first != self._comp_index + 1:
            raise self._error(f"damaged log: first entry is {first}, expected {self._comp_index + 1} "
                              f"(compaction point {self._comp_index})")
        if count != last - first + 1:
            raise self._error(f"damaged log: {count} entries between {first} and {last} (holes)")
        self._last_index = last

    # ------------------------------------------------------------------------------------------- helpers

    def _require_env(self) -> lmdb.Environment:
        if self._broken is not None:
            raise self._error(f"unusable after a failed commit ({self._broken}); restart and reopen it")
        if self._env is None:
            raise self._error("closed")
        return self._env

    def _snap_index(self) -> int:
        return self._snapshot.index if self._snapshot else 0

    @contextlib.contextmanager
    def _write_txn(self, env: lmdb.Environment) -> Iterator[lmdb.Transaction]:
        """One write transaction: aborted on any error (LMDB's become StorageError naming the file), committed
        durably when the block ends normally."""
        txn = env.begin(write=True)
        try:
            yield txn
        except BaseException as e:
            txn.abort()
            if isinstance(e, lmdb.MapFullError):
                raise self._error(f"full: the log outgrew map_size={self._map_size}; compact it or raise "
                                  f"map_size") from e
            if isinstance(e, lmdb.Error):
                raise self._error(f"write failed: {e}") from e
            raise
        self._commit(txn)

    def _commit(self, txn: lmdb.Transaction) -> None:
        try:
            t0 = clock()
            txn.commit()
            self.fsync_seconds.observe(clock() - t0)
        except lmdb.Error as e:
            # After a failed commit (e.g. fsync EIO) nobody knows what reached the disk; retrying could
            # acknowledge data that is not durable, so refuse all further use of this handle.
            self._broken = str(e)
            raise self._error(f"commit failed: {e}") from e

    def _stored_term(self, txn: lmdb.Transaction, index: int, comp_index: int, comp_term: int,
                     last: int) -> int | None:
        if index == comp_index:
            return comp_term
        if index < comp_index or index > last:
            return None
        raw = txn.get(encode_index(index), db=self._log_db)
        if raw is None:
            raise self._error(f"damaged log: entry {index} is missing")
        try:
            return _decode_entry(index, raw).term
        except MalformedError as e:
            raise self._error(f"damaged log: {e}") from e

    @staticmethod
    def _delete_through(cur: lmdb.Cursor, index: int) -> None:
        """Delete every entry with index <= ``index`` (prefix compaction)."""
        bound = encode_index(index)
        if cur.first():
            while cur.key() and cur.key() <= bound:  # equal-length big-endian keys compare like integers
                cur.delete()

    def _validated(self, value: Any, cls: type, what: str) -> Any:
        # Round-trip through the wire form: a record that saves but does not decode would lock us out at open.
        if not isinstance(value, cls):
            raise self._error(f"{what}: expected {cls.__name__}, got {type(value).__name__}")
        try:
            return cls.from_wire(value.to_wire())  # type: ignore[attr-defined]
        except MalformedError as e:
            raise self._error(f"invalid {what}: {e}") from e

    # ------------------------------------------------------------------------------------------ reading

    @property
    def path(self) -> str:
        return self._path

    def load(self) -> RaftState:
        with self._lock:
            self._require_env()
            return RaftState(hard_state=self._hard_state or HardState(), conf=self._conf or ConfState(),
                             snapshot=self._snapshot or SnapshotMeta(), first_index=self._comp_index + 1,
                             last_index=self._last_index, log_start_term=self._comp_term)

    def usage(self) -> tuple[int, int]:
        """(bytes of live data, map size): the pages the log, the meta records and the main database use now.

        Unlike the file size, which never shrinks, live data goes down once compaction deletes entries, so it is
        what tells how close the next save is to MDB_MAP_FULL (freed pages are reused before the file grows).
        Safe from any thread; it waits for a save in progress (the lock), so call it off the event loop.
        """
        with self._lock:
            env = self._require_env()
            try:
                return lmdb_usage(env, (self._log_db, self._meta_db))
            except lmdb.Error as e:
                raise self._error(f"read failed: {e}") from e

    def first_index(self) -> int:
        with self._lock:
            self._require_env()
            return self._comp_index + 1

    def last_index(self) -> int:
        with self._lock:
            self._require_env()
            return self._last_index

    def term(self, index: int) -> int | None:
        """Term of entry ``index``; the compaction point's term for first_index - 1; None outside the log."""
        with self._lock:
            env = self._require_env()
            if index == self._comp_index:
                return self._comp_term
            if index < self._comp_index or index > self._last_index:
                return None
            try:
                with env.begin() as txn:
                    return self._stored_term(txn, index, self._comp_index, self._comp_term, self._last_index)
            except lmdb.Error as e:
                raise self._error(f"read failed: {e}") from e

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); stops before the entry that would take the total Entry.size() past ``max_bytes``,
        but returns at least one entry when the range is non-empty (the rule RaftLog.slice uses).

        ``lo < first_index()`` raises CompactedError; indexes past last_index() are simply absent.
        """
        with self._lock:
            env = self._require_env()
            if lo <= self._comp_index:
                raise CompactedError(f"raft.db at {self._path}: entries from {lo} requested, but the log is "
                                     f"compacted through {self._comp_index}")
            hi = min(hi, self._last_index + 1)
            if lo >= hi:
                return []
            out: list[Entry] = []
            size = 0
            expect = lo
            try:
                with env.begin() as txn:
                    cur = txn.cursor(db=self._log_db)
                    if cur.set_key(encode_index(lo)):
                        for key, raw in cur.iternext():
                            if key != encode_index(expect):
                                break  # a hole: reported below
                            e = _decode_entry(expect, raw)
                            size += e.size()
                            if out and max_bytes is not None and size > max_bytes:
                                return out
                            out.append(e)
                            expect += 1
                            if expect == hi:
                                return out
            except lmdb.Error as e:
                raise self._error(f"read failed: {e}") from e
            except MalformedError as e:
                raise self._error(f"damaged log: {e}") from e
            raise self._error(f"damaged log: entry {expect} is missing")

    # ------------------------------------------------------------------------------------------ writing

    def save(self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: SnapshotMeta | None = None,
             conf: ConfState | None = None) -> None:
        """Persist one Ready in ONE transaction, durable when this returns (sync=True).

        Order: snapshot marker (compacts the log to it; drops the whole log if the stored entry at its index has
        another term; its conf becomes ``conf``), then entries (replacing stored entries from entries[0].index
        on; entries[0].index must lie in (snapshot marker index, last_index + 1]), then hard_state, then conf.
        Raises StorageError and changes nothing if any part is invalid, including a commit index beyond the
        resulting log.
        """
        if hard_state is not None:
            hard_state = self._validated(hard_state, HardState, "hard state")
        if conf is not None:
            conf = self._validated(conf, ConfState, "conf state")
        if snapshot is not None:
            snapshot = self._validated(snapshot, SnapshotMeta, "snapshot marker")
        if entries:
            first = entries[0].index if isinstance(entries[0], Entry) else None
            try:
                if type(first) is not int or first < 1 or first + len(entries) - 1 > _MAX_U64:
                    raise MalformedError(f"entry index must be an integer in [1, 2**64), got {first!r}")
                for i, e in enumerate(entries):
                    _check_entry(e, first + i)
            except MalformedError as e:
                raise self._error(f"invalid entries: {e}") from e

        with self._lock:
            env = self._require_env()
            if hard_state is None and not entries and snapshot is None and conf is None:
                return  # an empty Ready: nothing to make durable
            comp_index, comp_term, last = self._comp_index, self._comp_term, self._last_index
            hs, cf, snap = self._hard_state, self._conf, self._snapshot
            with self._write_txn(env) as txn:
                cur = txn.cursor(db=self._log_db)
                if snapshot is not None:
                    snap_index = snap.index if snap else 0
                    if snapshot.index < snap_index:
                        raise self._error(f"snapshot {snapshot.index} is older than the recorded snapshot "
                                          f"{snap_index}")
                    stored = self._stored_term(txn, snapshot.index, comp_index, comp_term, last)
                    if stored == snapshot.term:
                        self._delete_through(cur, snapshot.index)
                    else:
                        # The log disagrees with (or ends before) the snapshot: none of it can be trusted.
                        txn.drop(self._log_db, delete=False)
                        last = snapshot.index
                    comp_index, comp_term, snap, cf = snapshot.index, snapshot.term, snapshot, snapshot.conf
                    txn.put(_K_COMPACTED, _pack([comp_index, comp_term]), db=self._meta_db)
                    txn.put(_K_SNAPSHOT, _pack(snapshot.to_wire()), db=self._meta_db)
                    txn.put(_K_CONF, _pack(cf.to_wire()), db=self._meta_db)
                if entries:
                    lo = entries[0].index
                    if lo <= comp_index:
                        raise self._error(f"cannot write entries from {lo}: the log is compacted through "
                                          f"{comp_index}")
                    if snap is not None and lo <= snap.index:
                        # Entries covered by a snapshot are committed: Raft never rewrites them.
                        raise self._error(f"cannot write entries from {lo}: entries up to {snap.index} are "
                                          f"covered by the snapshot")
                    if lo > last + 1:
                        raise self._error(f"cannot write entries from {lo}: the log ends at {last} (gap)")
                    if lo <= last and cur.set_range(encode_index(lo)):
                        while cur.delete():  # suffix truncation: a conflicting leader overrides these
                            pass
                    # Keys are now strictly above every stored key: MDB_APPEND skips the B-tree search.
                    _, added = cur.putmulti([(encode_index(e.index), _encode_entry(e)) for e in entries],
                                            append=True)
                    if added != len(entries):
                        raise self._error(f"internal error: wrote {added} of {len(entries)} entries")
                    last = entries[-1].index
                if hard_state is not None:
                    hs = hard_state
                    txn.put(_K_HARD_STATE, _pack(hs.to_wire()), db=self._meta_db)
                if conf is not None:
                    cf = conf
                    txn.put(_K_CONF, _pack(cf.to_wire()), db=self._meta_db)
                self._check_commit(hs, last, snap)
            self._comp_index, self._comp_term, self._last_index = comp_index, comp_term, last
            self._hard_state, self._conf, self._snapshot = hs, cf, snap

    def _check_commit(self, hs: HardState | None, last: int, snap: SnapshotMeta | None) -> None:
        # What open() would reject must never be written: committed entries are never truncated in Raft.
        commit = hs.commit if hs else 0
        top = max(last, snap.index if snap else 0)
        if commit > top:
            raise self._error(f"commit index {commit} would be beyond the log (last index {last}, snapshot "
                              f"{snap.index if snap else 0}): committed entries must not be removed")

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record a newer local snapshot marker (and its membership as ``conf``) without touching the log.

        The marker must describe an entry of the log or the compaction point: index in
        [current marker, last_index] and the same term as the stored entry.
        """
        meta = self._validated(meta, SnapshotMeta, "snapshot marker")
        with self._lock:
            env = self._require_env()
            snap_index = self._snap_index()
            if meta.index < snap_index:
                raise self._error(f"snapshot {meta.index} is older than the recorded snapshot {snap_index}")
            if meta.index > self._last_index:
                raise self._error(f"snapshot {meta.index} is beyond the log (last index {self._last_index}); "
                                  f"use save(snapshot=...) to install a received snapshot")
            with self._write_txn(env) as txn:
                stored = self._stored_term(txn, meta.index, self._comp_index, self._comp_term, self._last_index)
                if stored != meta.term:
                    raise self._error(f"snapshot {meta.index} has term {meta.term}, the log has term {stored}")
                txn.put(_K_SNAPSHOT, _pack(meta.to_wire()), db=self._meta_db)
                txn.put(_K_CONF, _pack(meta.conf.to_wire()), db=self._meta_db)
            self._snapshot, self._conf = meta, meta.conf

    def compact(self, index: int) -> None:
        """Delete entries <= ``index`` (which must be <= the snapshot marker and <= last_index).

        Compacting to or below the current compaction point is a no-op.
        """
        if type(index) is not int:
            raise self._error(f"compact: index must be an integer, got {index!r}")
        with self._lock:
            env = self._require_env()
            if index <= self._comp_index:
                return
            snap_index = self._snap_index()
            if index > snap_index:
                raise self._error(f"cannot compact through {index}: the newest snapshot is at {snap_index}")
            if index > self._last_index:
                raise self._error(f"cannot compact through {index}: the log ends at {self._last_index}")
            with self._write_txn(env) as txn:
                term = self._stored_term(txn, index, self._comp_index, self._comp_term, self._last_index)
                assert term is not None  # comp_index < index <= last
                self._delete_through(txn.cursor(db=self._log_db), index)
                txn.put(_K_COMPACTED, _pack([index, term]), db=self._meta_db)
            self._comp_index, self._comp_term = index, term

    def bootstrap(self, conf: ConfState) -> None:
        """Record the initial membership; only on an empty journal (no entries, state, membership or snapshot)."""
        conf = self._validated(conf, ConfState, "conf state")
        if not conf.voters:
            raise self._error("bootstrap: the initial membership needs at least one voter")
        with self._lock:
            env = self._require_env()
            if (self._last_index != 0 or self._comp_index != 0 or self._hard_state is not None
                    or self._conf is not None or self._snapshot is not None):
                raise self._error("bootstrap: the journal is not empty (already bootstrapped or joined)")
            with self._write_txn(env) as txn:
                txn.put(_K_CONF, _pack(conf.to_wire()), db=self._meta_db)
            self._conf = conf

    def close(self) -> None:
        """Close the environment; idempotent. Any later call raises StorageError."""
        with self._lock:
            env, self._env = self._env, None
            if env is not None:
                env.close()

    def __enter__(self) -> "RaftStorage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RaftStorage({self._path!r})"
