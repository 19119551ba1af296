"""The control channel: PKI, the one TLS listener (length-prefixed frames over mutual TLS), the peer mesh, Raft over it, and forwarding calls.

Depends on hactl.raft (types only); nothing here imports fsm, api or agent.
"""
from .errors import ConnectionLost, HandshakeError, PeerUnavailable, RemoteError, TransportError
from .frames import DEFAULT_MAX_FRAME, PROTOCOL_VERSION, FrameError
from .mesh import Mesh, MeshOptions, PeerInfo, RouterInfo
from .pki import Identity, PkiError, add_pki_commands, init_ca, issue, load_identity, load_identity_dir, spiffe_id
from .raft_transport import RaftTransport
from .snapshot_stream import BytesSource, FileSource, SnapshotSink, SnapshotSource

__all__ = [
    "BytesSource", "ConnectionLost", "DEFAULT_MAX_FRAME", "FileSource", "FrameError", "HandshakeError", "Identity",
    "Mesh", "MeshOptions", "PROTOCOL_VERSION", "PeerInfo", "PeerUnavailable", "PkiError", "RaftTransport",
    "RemoteError", "RouterInfo", "SnapshotSink", "SnapshotSource", "TransportError", "add_pki_commands", "init_ca",
    "issue", "load_identity", "load_identity_dir", "spiffe_id",
]
