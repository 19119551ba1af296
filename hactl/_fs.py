"""Durable file operations shared by every layer: fsync a directory, write a file atomically, hash a file.

A file that must survive a crash is written under a temporary name, fsynced, renamed (or linked) into place,
and its directory fsynced: a reader then sees the old file or the whole new one, never a torn one.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

_CHUNK = 1 << 20


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory entries of ``path`` (a new, renamed or removed file) survive power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600, *,
                 overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, durably; never visible half-written or with a looser mode.

    overwrite=False: an existing ``path`` raises FileExistsError (checked atomically with link(), so two writers
    racing for a new file cannot both win)."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError if path exists: no check-then-write race
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n
