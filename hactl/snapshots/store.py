"""The snapshot store: <data>/snapshots/<index>-<term>/{ctrl.db, meta.json}.

A snapshot is a compacted, consistent copy of ctrl.db at an applied index plus meta.json
{format, index, term, conf, cluster_id, timeline_id, sha256, size, created}. Every snapshot is first written
under a dot-named staging directory, fsynced, then renamed into place and the parent fsynced, so a crash leaves
either the whole snapshot or a staging directory that the next start removes.

Streaming: ``open_chunks`` yields only the ctrl.db bytes; the meta travels separately (``info.to_meta()``) and
is what the receiving side passes to ``receiver()``, which checks size and sha256 before installing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from hactl._fs import file_sha256, fsync_dir
from hactl.fsm.machine import StateMachine

log = logging.getLogger("hactl.snapshots")

DATA_FILE = "ctrl.db"
META_FILE = "meta.json"
META_FORMAT = 1
_NAME = re.compile(r"^([0-9]+)-([0-9]+)$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_STAGING_PREFIXES = (".tmp-", ".recv-", ".trash-")
_COPY_CHUNK = 1 << 20


class SnapshotError(RuntimeError):
    """A snapshot is missing, corrupt or unusable; the message names the file."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    index: int
    term: int
    conf: Any  # the membership at ``index`` (Membership.to_plain()), None if the copy held none
    cluster_id: str
    timeline_id: str
    sha256: str  # of ctrl.db
    size: int  # of ctrl.db, bytes
    created: float  # seconds since the epoch, the caller's clock
    path: Path | None = None  # the snapshot directory, once stored

    @property
    def name(self) -> str:
        return f"{self.index}-{self.term}"

    @property
    def data_path(self) -> Path:
        if self.path is None:
            raise SnapshotError(f"snapshot {self.name} is not stored")
        return self.path / DATA_FILE

    def to_meta(self) -> dict[str, Any]:
        return {"format": META_FORMAT, "index": self.index, "term": self.term, "conf": self.conf,
                "cluster_id": self.cluster_id, "timeline_id": self.timeline_id, "sha256": self.sha256,
                "size": self.size, "created": self.created}

    @staticmethod
    def from_meta(meta: Any, path: Path | None = None, *, where: str = "meta") -> "SnapshotInfo":
        """Validate a meta dict (from meta.json or from a peer)."""
        if not isinstance(meta, dict):
            raise SnapshotError(f"{where}: expected a JSON object")
        if meta.get("format") != META_FORMAT:
            raise SnapshotError(f"{where}: format {meta.get('format')!r}, this version reads {META_FORMAT}")

        def need(key: str, ok: Callable[[Any], bool], what: str) -> Any:
            v = meta.get(key)
            if not ok(v):
                raise SnapshotError(f"{where}: field {key!r} must be {what}, got {v!r}")
            return v

        def nat(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        return SnapshotInfo(
            index=need("index", nat, "an integer >= 0"),
            term=need("term", nat, "an integer >= 0"),
            conf=_plain(meta.get("conf"), where),
            cluster_id=need("cluster_id", lambda v: isinstance(v, str), "a string"),
            timeline_id=need("timeline_id", lambda v: isinstance(v, str), "a string"),
            sha256=need("sha256", lambda v: isinstance(v, str) and bool(_SHA.match(v)), "64 lowercase hex digits"),
            size=need("size", nat, "an integer >= 0"),
            created=float(need("created", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                               "a number")),
            path=path)


class SnapshotStore:
    def __init__(self, dir: str | os.PathLike[str], *, retain: int = 5, readonly: bool = False) -> None:
        """readonly=True (inspection while a controller may run): no directory created, no staging leftovers
        removed, and create/receive/prune refused."""
        if retain < 1:
            raise ValueError("retain must be at least 1")
        self.dir = Path(dir)
        self.retain = retain
        self.readonly = readonly
        if readonly:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in self.dir.iterdir():  # leftovers of a crash mid-create/receive/replace
            if p.name.startswith(_STAGING_PREFIXES):
                log.warning("removing incomplete snapshot staging directory %s", p)
                shutil.rmtree(p, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- create

    def create(self, machine: StateMachine, *, cluster_id: str, timeline_id: str, created: float) -> SnapshotInfo:
        """Snapshot ``machine`` at whatever index it has applied when the copy starts (applies may continue).

        meta.json's ``conf`` is the membership the copy itself holds (read in the copy's own transaction), so it
        is the membership at exactly the snapshot's index.
        """
        self._writable()
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.dir))
        try:
            data = staging / DATA_FILE
            fd = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                index, term, membership = machine.copy_consistent(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            sha, size = file_sha256(data)
            conf = None if membership is None else membership.to_plain()
            info = SnapshotInfo(index, term, _plain(conf, data), cluster_id, timeline_id, sha, size, float(created))
            _write_json(staging / META_FILE, info.to_meta())
            fsync_dir(staging)
            stored = self._install(staging, info)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.prune()
        log.info("snapshot %s created (%d bytes)", stored.name, stored.size)
        return stored

    def _writable(self) -> None:
        if self.readonly:
            raise SnapshotError(f"{self.dir}: snapshot store opened read-only")

    def _install(self, staging: Path, info: SnapshotInfo) -> SnapshotInfo:
        """Rename a complete staging directory to <index>-<term>; an existing valid one of that name wins."""
        target = self.dir / info.name
        if target.exists():
            try:
                existing = self.load(target.name)
                self.verify(existing)
                shutil.rmtree(staging, ignore_errors=True)
                return existing
            except SnapshotError as e:
                log.warning("replacing corrupt snapshot %s: %s", target, e)
                trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=self.dir))
                os.replace(target, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, target)
        fsync_dir(self.dir)
        return SnapshotInfo(**{**_fields(info), "path": target})

    # ------------------------------------------------------------------------------------------ list/verify

    def names(self) -> list[str]:
        """Every snapshot directory name, valid or not, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m[1]), int(m[2]), p.name) for p in self.dir.iterdir()
                 if p.is_dir() and (m := _NAME.match(p.name))]
        return [name for _, _, name in sorted(found)]

    def list(self) -> list[SnapshotInfo]:
        """Snapshots whose meta.json reads, oldest first (contents unverified; see verify/newest_valid)."""
        out = []
        for name in self.names():
            try:
                out.append(self.load(name))
            except SnapshotError as e:
                log.warning("skipping snapshot %s: %s", name, e)
        return out

    def load(self, name: str) -> SnapshotInfo:
        """The SnapshotInfo of snapshot directory ``name`` from its meta.json (contents unverified)."""
        return _read_meta(self.dir / name)

    def verify(self, info: SnapshotInfo) -> None:
        """Raise SnapshotError naming the file unless meta.json and ctrl.db are intact."""
        if info.path is None:
            raise SnapshotError(f"snapshot {info.name} is not stored")
        stored = _read_meta(info.path)
        if _fields(stored) != _fields(info):
            raise SnapshotError(f"{info.path / META_FILE}: differs from the snapshot expected")
        data = info.data_path
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            raise SnapshotError(f"{data}: missing") from None
        if size != info.size:
            raise SnapshotError(f"{data}: {size} bytes, meta.json says {info.size} (truncated?)")
        sha, _ = file_sha256(data)
        if sha != info.sha256:
            raise SnapshotError(f"{data}: sha256 {sha} does not match meta.json ({info.sha256})")

    def newest_valid(self) -> SnapshotInfo | None:
        """The newest snapshot that verifies; corrupt ones are skipped with a warning."""
        for name in reversed(self.names()):
            try:
                info = self.load(name)
                self.verify(info)
                return info
            except SnapshotError as e:
                log.warning("snapshot %s is unusable, trying an older one: %s", name, e)
        return None

    def prune(self) -> None:
        """Keep the newest ``retain`` snapshot directories."""
        self._writable()
        names = self.names()
        for name in names[:max(0, len(names) - self.retain)]:
            shutil.rmtree(self.dir / name, ignore_errors=True)
            log.info("pruned snapshot %s", name)
        fsync_dir(self.dir)

    # ------------------------------------------------------------------------------------------ transfer

    def open_chunks(self, info: SnapshotInfo, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """ctrl.db's bytes in chunks; raises SnapshotError at the end if they do not match meta (the sender
        must then abort the transfer: the receiver would refuse it anyway)."""
        h = hashlib.sha256()
        n = 0
        with open(info.data_path, "rb") as f:
            while chunk := f.read(chunk_size):
                h.update(chunk)
                n += len(chunk)
                yield chunk
        if n != info.size or h.hexdigest() != info.sha256:
            raise SnapshotError(f"{info.data_path}: changed or corrupt while streaming")

    def receiver(self, meta: dict[str, Any]) -> "SnapshotReceiver":
        self._writable()
        return SnapshotReceiver(self, SnapshotInfo.from_meta(meta, where="received snapshot meta"))

    def restore_to(self, info: SnapshotInfo, ctrl_db_path: str | os.PathLike[str]) -> None:
        """Copy the snapshot's ctrl.db over ``ctrl_db_path`` atomically (nothing may have it open), checking
        the bytes copied against meta's sha256."""
        dest = Path(ctrl_db_path)
        tmp = dest.with_name(dest.name + ".restoring")
        h = hashlib.sha256()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the signing key
            with open(info.data_path, "rb") as src, open(fd, "wb") as out:
                while chunk := src.read(_COPY_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != info.sha256:
                raise SnapshotError(f"{info.data_path}: sha256 changed while restoring")
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        Path(f"{dest}-lock").unlink(missing_ok=True)  # LMDB's lock file belongs to the file just replaced
        fsync_dir(dest.parent)


class SnapshotReceiver:
    """Receives one snapshot in chunks into a staging directory; ``finish`` verifies and installs it."""

    def __init__(self, store: SnapshotStore, info: SnapshotInfo) -> None:
        self.store = store
        self.info = info
        self.staging = Path(tempfile.mkdtemp(prefix=".recv-", dir=store.dir))
        self._file = open(os.open(self.staging / DATA_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        self._hash = hashlib.sha256()
        self._written = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        if self._done:
            raise SnapshotError(f"snapshot {self.info.name}: receiver already finished or aborted")
        if self._written + len(chunk) > self.info.size:
            self.abort()
            raise SnapshotError(f"snapshot {self.info.name}: more than the {self.info.size} bytes announced")
        self._file.write(chunk)
        self._hash.update(chunk)
        self._written += len(chunk)

    def finish(self) -> SnapshotInfo:
        if self._done:
            raise SnapshotError(f"snapshot {self.info.name}: receiver already finished or aborted")
        try:
            if self._written != self.info.size:
                raise SnapshotError(f"snapshot {self.info.name}: received {self._written} of "
                                    f"{self.info.size} bytes")
            if self._hash.hexdigest() != self.info.sha256:
                raise SnapshotError(f"snapshot {self.info.name}: sha256 of the received data does not match")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            _write_json(self.staging / META_FILE, self.info.to_meta())
            fsync_dir(self.staging)
            stored = self.store._install(self.staging, self.info)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.store.prune()
        return stored

    def abort(self) -> None:
        self._done = True
        self._file.close()
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "SnapshotReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


# --------------------------------------------------------------------------------------------------- helpers

def _read_meta(path: Path) -> SnapshotInfo:
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"{meta_path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SnapshotError(f"{meta_path}: unreadable: {e}") from None
    info = SnapshotInfo.from_meta(meta, path, where=str(meta_path))
    if info.name != path.name:
        raise SnapshotError(f"{meta_path}: describes {info.name}, the directory is {path.name}")
    return info


def _fields(info: SnapshotInfo) -> dict[str, Any]:
    return {"index": info.index, "term": info.term, "conf": info.conf, "cluster_id": info.cluster_id,
            "timeline_id": info.timeline_id, "sha256": info.sha256, "size": info.size, "created": info.created}


def _plain(value: Any, where: Any) -> Any:
    """``value`` as JSON will give it back (tuples become lists), so stored and in-memory metas compare equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"{where}: conf is not JSON-serialisable ({e}); it must be plain data") from None


def _write_json(path: Path, value: Any) -> None:
    try:
        text = json.dumps(value, sort_keys=True, indent=2)
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"{path}: meta is not JSON-serialisable ({e}); conf must be plain data") from None
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
