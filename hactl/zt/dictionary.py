"""ZeroTier's Dictionary: the key=value text blob that carries network configs and config requests.

Format [Dictionary.hpp]: entries `key=value` separated by one LF, no trailing separator. Values are raw bytes
(binary included) with five escapes so that a value can never end an entry early: NUL -> `\\0`, CR -> `\\r`,
LF -> `\\n`, `\\` -> `\\\\`, `=` -> `\\e`. On read, `\\` followed by r/n/0/e is the escaped byte and followed by
anything else is that byte; an unescaped CR, LF or NUL ends the value, and a NUL ends the whole dictionary (the
reference keeps it NUL-terminated in a fixed buffer). Lookups are exact key matches and the first entry wins.

Integers are lowercase hex text; the reference writes 16 zero-padded digits for a uint64.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hactl.zt.errors import ProtocolError

# The reference's capacity for a network config is a sizeof sum in the hundreds of KB (brief 5.11, not computed
# exactly). 64 KiB is far below that, so anything we write fits a member's buffer, and far above any config a
# controller sends, so it bounds what we accept from the network without refusing real input.
MAX_SIZE = 65536

_ESCAPE = {0: b"\\0", 13: b"\\r", 10: b"\\n", 92: b"\\\\", 61: b"\\e"}
_UNESCAPE = {ord("0"): 0, ord("r"): 13, ord("n"): 10, ord("e"): 61}
_BAD_KEY_BYTES = frozenset(b"\x00\r\n=")


def escape(value: bytes) -> bytes:
    # bytes.replace runs in C; the backslash goes first so the escapes added after it are not escaped again.
    out = bytes(value).replace(b"\\", b"\\\\")
    for raw, esc in ((b"\x00", b"\\0"), (b"\r", b"\\r"), (b"\n", b"\\n"), (b"=", b"\\e")):
        out = out.replace(raw, esc)
    return out


def unescape(raw: bytes) -> bytes:
    """Decode one value's escapes (raw holds no CR/LF/NUL: those end a value before this is called)."""
    if b"\\" not in raw:
        return bytes(raw)
    out = bytearray()
    esc = False
    for b in raw:
        if esc:
            out.append(_UNESCAPE.get(b, b))
            esc = False
        elif b == 92:
            esc = True
        else:
            out.append(b)
    # A lone trailing backslash is dropped, as the reference's reader does.
    return bytes(out)


@dataclass
class Dictionary:
    """Entries in insertion order; keys are ASCII text, values bytes."""
    entries: list[tuple[str, bytes]] = field(default_factory=list)

    # --- building -----------------------------------------------------------------------------------------

    def add(self, key: str, value: bytes | str) -> None:
        kb = key.encode("ascii")
        if not kb or any(b in _BAD_KEY_BYTES for b in kb):
            raise ValueError(f"invalid dictionary key {key!r}")
        self.entries.append((key, value.encode() if isinstance(value, str) else bytes(value)))

    def add_u64(self, key: str, value: int) -> None:
        """uint64 as the reference writes it: 16 lowercase hex digits."""
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{key}={value} does not fit in 64 bits")
        self.add(key, f"{value:016x}")

    def add_bool(self, key: str, value: bool) -> None:
        self.add(key, "1" if value else "0")

    # --- reading ------------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.entries)

    def keys(self) -> list[str]:
        return [k for k, _ in self.entries]

    def get_str(self, key: str, default: str = "") -> str:
        v = self.get(key)
        return default if v is None else v.decode("utf-8", "replace")

    def get_int(self, key: str, default: int = 0) -> int:
        """Hex integer. Like strtoull, leading hex digits count and the rest is ignored; no digits is 0."""
        v = self.get(key)
        if v is None:
            return default
        digits = 0
        n = 0
        for b in v:
            c = chr(b).lower()
            if c not in "0123456789abcdef":
                break
            n = n * 16 + int(c, 16)
            digits += 1
            if digits > 16:
                raise ProtocolError(f"dictionary value {key!r} is too long for a 64-bit integer")
        return n

    def get_bool(self, key: str, default: bool = False) -> bool:
        v = self.get(key)
        if not v:
            return default
        return v[:1] in (b"1", b"t", b"T")

    # --- wire form ----------------------------------------------------------------------------------------

    def encode(self, max_size: int = MAX_SIZE) -> bytes:
        """The blob without the in-memory NUL terminator (config chunks carry it without one)."""
        out = b"\n".join(k.encode("latin-1") + b"=" + escape(v) for k, v in self.entries)
        # The reference refuses an add that would leave no room for the terminating NUL.
        if len(out) >= max_size:
            raise ProtocolError(f"dictionary of {len(out)} bytes exceeds the {max_size}-byte capacity")
        return out

    @classmethod
    def parse(cls, data: bytes, max_size: int = MAX_SIZE) -> Dictionary:
        if len(data) >= max_size:
            raise ProtocolError(f"dictionary of {len(data)} bytes exceeds the {max_size}-byte capacity")
        end = data.find(b"\x00")
        if end >= 0:
            data = data[:end]
        entries: list[tuple[str, bytes]] = []
        # CR and LF both end an entry on read; lines without '=' are not entries.
        for line in data.replace(b"\r", b"\n").split(b"\n"):
            eq = line.find(b"=")
            if eq < 0:
                continue
            entries.append((line[:eq].decode("latin-1"), unescape(line[eq + 1:])))
        return cls(entries)
