"""Bounded LZ4 block decompression of packet payloads.

Nodes LZ4-compress several verbs (config requests, MULTICAST_LIKE, credentials); a controller only has to
decompress. The output limit is the reason this module exists: a few hundred compressed bytes can claim
megabytes, so decompression is refused as soon as the output would exceed the limit (by default what fits in
a maximal ZeroTier packet after its header, the same bound the reference uses).
"""
from __future__ import annotations

import ctypes

from hactl.zt import _native
from hactl.zt.errors import ProtocolError

MAX_PACKET_LENGTH = 10_024  # 7 fragments x 1432 bytes: the largest packet a node reassembles
HEADER_SIZE = 28
DEFAULT_LIMIT = MAX_PACKET_LENGTH - HEADER_SIZE


def lz4_decompress(data: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """Decompress one LZ4 block (no frame, no size prefix). ProtocolError if it is malformed, empty, or would
    decompress to more than limit bytes."""
    if not data:
        raise ProtocolError("compressed payload is empty")
    if len(data) > MAX_PACKET_LENGTH:
        raise ProtocolError(f"compressed payload of {len(data)} bytes exceeds {MAX_PACKET_LENGTH}")
    out = ctypes.create_string_buffer(limit)
    # LZ4_decompress_safe never writes past `limit` and never reads past `len(data)`; it returns a negative
    # number for both malformed input and output that would not fit, which we cannot tell apart.
    n = _native.lz4.LZ4_decompress_safe(bytes(data), out, len(data), limit)
    if n <= 0:
        raise ProtocolError(f"LZ4 payload is malformed or decompresses to more than {limit} bytes")
    return out.raw[:n]
