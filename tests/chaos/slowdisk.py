"""Builds and drives slowdisk.c, the LD_PRELOAD library that makes fsync and friends slow on demand.

    so = build()                                       # compiled once per source version, cached under build/
    ctl = SlowDisk(tmp / "slowdisk-ctrl1")             # its control file (0: no delay)
    env = ctl.env(so)                                  # LD_PRELOAD + HACTL_SLOWDISK_FILE for the process
    ctl.set(100)                                       # every fsync now sleeps 100 ms first (seen within ~50 ms)
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("slowdisk.c")
CACHE = Path(__file__).resolve().parents[2] / "build" / "chaos"  # build/ is ignored by git


def build(cache: Path = CACHE) -> Path:
    """The compiled library for the current source (built on first use; concurrent builders each write a temp
    file and rename it into place, so nobody loads a half-written one)."""
    src = SOURCE.read_bytes()
    out = cache / f"slowdisk-{hashlib.sha256(src).hexdigest()[:12]}.so"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
    os.close(fd)
    try:
        p = subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-Wall", "-o", tmp, str(SOURCE), "-ldl"],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE} failed: {p.stderr}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class SlowDisk:
    """One process's control file: the fsync delay in milliseconds it reads (absent or 0: none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ms = 0
        self.set(0)

    def env(self, so: Path) -> dict[str, str]:
        return {"LD_PRELOAD": str(so), "HACTL_SLOWDISK_FILE": str(self.path)}

    def set(self, ms: int) -> None:
        """Atomically (rename): the library never reads a half-written number."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{int(ms)}\n")
        os.replace(tmp, self.path)
        self.ms = int(ms)
