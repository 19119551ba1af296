"""Who is on the other end of a connection: the checks behind the hello exchange.

The server learns the dialer's identity from mutual TLS (the verified client certificate). The answering
controller proves its identity in its hello as well (the channel began on gRPC, whose Python client showed
nothing of the server's certificate, and the hello keeps that proof independent of the TLS name checks): it sends
its certificate and signs a transcript containing the dialer's nonce and the dialer's *TLS-authenticated* id. A
relay holding some other cluster certificate cannot obtain that signature, because the real server would see the
relay's certificate, not the dialer's.
"""
from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import HandshakeError
from .frames import PROTOCOL_VERSION, Hello, packb
from .pki import PkiError, spiffe_id, verify_issued_by

MIN_PROTOCOL_VERSION = 3  # older versions spoke gRPC: they cannot even reach a hello
_CONTEXT = b"hactl/control-hello/v1\x00"


def hello_transcript(cluster_id: str, server_id: str, server_incarnation: str, client_id: str,
                     nonce: bytes) -> bytes:
    return _CONTEXT + packb([cluster_id, server_id, server_incarnation, client_id, nonce])


def sign(private_key: Any, data: bytes) -> bytes:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise TypeError(f"unsupported key type {type(private_key).__name__}")


def _verify(public_key: Any, sig: bytes, data: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(sig, data)
    else:
        raise InvalidSignature(f"unsupported key type {type(public_key).__name__}")


def check_controller_hello(hello: Hello, cert_spiffe: tuple[str, str, str] | None, *, my_id: str,
                           cluster_id: str, trust_domain: str) -> str:
    """Server side: the dialer's hello against its TLS certificate. Returns the peer id or raises
    HandshakeError with the reason to log and to send back."""
    claimed = hello.id
    if not claimed:
        raise HandshakeError("controller hello without an id")
    if cert_spiffe is None:
        raise HandshakeError(f"hello says controller {claimed} but the certificate has no spiffe:// URI SAN "
                             f"(issue it with `hactl pki issue --kind controller --id {claimed}`)")
    td, kind, cid = cert_spiffe
    if td != trust_domain:
        raise HandshakeError(f"hello says controller {claimed} but the certificate is for trust domain {td!r}, "
                             f"this cluster uses {trust_domain!r}")
    if kind != "controller":
        raise HandshakeError(f"hello says controller {claimed} but the certificate is for a {kind} ({cid})")
    if cid != claimed:
        raise HandshakeError(f"hello says controller {claimed} but certificate is for {cid}")
    if hello.cluster_id != cluster_id:
        raise HandshakeError(f"controller {claimed} belongs to cluster {hello.cluster_id!r}, this is cluster "
                             f"{cluster_id!r} (check cluster_id in its configuration)")
    if claimed == my_id:
        raise HandshakeError(f"controller {claimed} has this node's own id (two nodes configured with one id?)")
    if hello.version < MIN_PROTOCOL_VERSION:
        raise HandshakeError(f"controller {claimed} speaks control protocol {hello.version}, "
                             f"this node needs >= {MIN_PROTOCOL_VERSION}")
    if hello.nonce is None or len(hello.nonce) < 16:
        raise HandshakeError(f"controller {claimed} sent no nonce in its hello")
    return claimed


def check_server_hello(hello: Hello, *, expected_id: str, my_id: str, cluster_id: str, trust_domain: str,
                       nonce: bytes, ca_cert: x509.Certificate) -> None:
    """Dialer side: is the answering server the controller we meant to dial? Raises HandshakeError."""
    if hello.type != "controller":
        raise HandshakeError(f"the server answered as a {hello.type}, not a controller")
    if hello.cluster_id != cluster_id:
        raise HandshakeError(f"the server belongs to cluster {hello.cluster_id!r}, this is cluster {cluster_id!r}")
    if hello.cert is None or hello.sig is None:
        raise HandshakeError("the server's hello carries no certificate/signature")
    try:
        cert = x509.load_pem_x509_certificate(hello.cert)
        verify_issued_by(cert, ca_cert)
    except (ValueError, PkiError) as e:
        raise HandshakeError(f"the server's certificate is not valid for this cluster: {e}") from None
    sid = spiffe_id(cert)
    if sid is None:
        raise HandshakeError("the server's certificate has no spiffe:// URI SAN")
    if sid[0] != trust_domain or sid[1] != "controller":
        raise HandshakeError(f"the server's certificate is for spiffe://{sid[0]}/{sid[1]}/{sid[2]}, "
                             f"expected a controller in trust domain {trust_domain!r}")
    if sid[2] != expected_id:
        raise HandshakeError(f"dialed controller {expected_id} but the server's certificate is for {sid[2]} "
                             "(check the peer addresses)")
    if hello.id != expected_id:
        raise HandshakeError(f"dialed controller {expected_id} but the server says it is {hello.id}")
    try:
        _verify(cert.public_key(), hello.sig,
                hello_transcript(cluster_id, expected_id, hello.incarnation, my_id, nonce))
    except InvalidSignature:
        raise HandshakeError(f"controller {expected_id}'s hello signature does not verify "
                             "(a relay or a key that does not match its certificate)") from None
    if hello.version < MIN_PROTOCOL_VERSION:
        raise HandshakeError(f"controller {expected_id} speaks control protocol {hello.version}, "
                             f"this node needs >= {MIN_PROTOCOL_VERSION}")


__all__ = ["PROTOCOL_VERSION", "MIN_PROTOCOL_VERSION", "hello_transcript", "sign", "check_controller_hello",
           "check_server_hello"]
