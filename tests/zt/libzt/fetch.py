"""Get libzt 1.8.4 (the real ZeroTier 1.8 core with a userspace IP stack) ready for ctypes, once per machine.

Its only wheel on PyPI is for CPython 3.9, but its C API (zts_*) loads into this Python once `shim.cpp` (built
here with g++) supplies the four symbols the wheel leaves undefined. `ensure()` downloads the wheel with the
venv's pip into `.venv/libzt-cache/`, unpacks its shared object and builds the shim; it is idempotent and
serialised with a file lock, and does nothing (no network) when both files are already there.

    python tests/zt/libzt/fetch.py      # prints the two paths
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

LIBZT_VERSION = "1.8.4"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CACHE = REPO / ".venv" / "libzt-cache"
SHIM_SRC = HERE / "shim.cpp"
SO_NAME = "_libzt.cpython-39-x86_64-linux-gnu.so"


class LibztUnavailable(RuntimeError):
    """libzt cannot be had on this machine; the message says which step failed and why."""


@dataclass(frozen=True)
class Libzt:
    shim: Path    # load first, RTLD_GLOBAL
    lib: Path     # the wheel's _libzt...so


def _run(cmd: list[str], what: str) -> None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LibztUnavailable(f"libzt: {what} failed: {e}") from e
    if p.returncode != 0:
        raise LibztUnavailable(f"libzt: {what} failed (exit {p.returncode}): {' '.join(cmd)}\n"
                               f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def _pip() -> list[str]:
    venv_py = REPO / ".venv" / "bin" / "python"
    return [str(venv_py if venv_py.exists() else Path(sys.executable)), "-m", "pip"]


def ensure(cache: Path = CACHE) -> Libzt:
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / SO_NAME
    src_hash = hashlib.sha256(SHIM_SRC.read_bytes()).hexdigest()[:16]
    shim = cache / f"shim-{src_hash}.so"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not lib.exists():
            wheels = sorted(cache.glob(f"libzt-{LIBZT_VERSION}-*.whl"))
            if not wheels:
                _run(_pip() + ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.9",
                               "--platform", "manylinux2010_x86_64", "-d", str(cache), f"libzt=={LIBZT_VERSION}"],
                     f"pip download libzt=={LIBZT_VERSION} (PyPI must be reachable the first time)")
                wheels = sorted(cache.glob(f"libzt-{LIBZT_VERSION}-*.whl"))
            if not wheels:
                raise LibztUnavailable(f"libzt: pip reported success but no libzt-{LIBZT_VERSION} wheel in {cache}")
            with zipfile.ZipFile(wheels[0]) as z:
                tmp = lib.with_suffix(".tmp")
                tmp.write_bytes(z.read(f"libzt/{SO_NAME}"))
                os.replace(tmp, lib)
        if not shim.exists():
            tmp = shim.with_suffix(".tmp")
            _run(["g++", "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SHIM_SRC)], "building the libzt shim with g++")
            os.replace(tmp, shim)
    return Libzt(shim=shim, lib=lib)


if __name__ == "__main__":
    got = ensure()
    print(got.shim)
    print(got.lib)
