"""Exceptions raised by the control channel to its users."""
from __future__ import annotations


class TransportError(Exception):
    """Base class of control-channel errors."""


class PeerUnavailable(TransportError):
    """No usable connection to ``peer`` (not connected, or its send queue is full)."""

    def __init__(self, peer: str, reason: str = "no connection to this peer"):
        super().__init__(f"peer {peer} unavailable: {reason}")
        self.peer = peer
        self.reason = reason


class ConnectionLost(PeerUnavailable):
    """The connection closed while a call was outstanding: the peer may or may not have processed it."""


class RemoteError(TransportError):
    """The peer's handler failed; ``code`` is machine-readable (e.g. ``not_leader``), ``message`` is for humans."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class HandshakeError(TransportError):
    """A dial or an accepted connection failed its hello; the message is the actionable reason."""


class DuplicateConnection(HandshakeError):
    """The peer already has a connection with us that wins the tie-break; nothing is wrong."""
