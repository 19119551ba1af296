"""The one exception type the ZeroTier codec raises for bad input.

Every byte that reaches hactl/zt/ from the network is untrusted. Parsers raise ProtocolError (a ValueError)
with a message naming what is wrong, and nothing else: callers drop the datagram and count the reason, so an
IndexError or struct.error escaping a parser would be a bug (the fuzz tests in tests/zt/ hunt for those).
"""
from __future__ import annotations


class ProtocolError(ValueError):
    """Input from the network is malformed, fails authentication or exceeds a bound."""
