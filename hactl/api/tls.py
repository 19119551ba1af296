"""HTTPS for the management API (config keys api.tls_cert and api.tls_key).

Every API request carries the token that grants full control of every network, and the answers carry member
data, so plain HTTP is only fit for a loopback listener; plain_http_warning() says so at start otherwise.
"""
from __future__ import annotations

import ipaddress
import ssl

from hactl.transport.pki import PkiError, load_cert_and_key


def server_ssl_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context for the API with this certificate (chain) and key.

    ValueError, naming the file, when a file is missing, unreadable, not PEM, an encrypted key (OpenSSL would
    prompt for its passphrase on the terminal of a daemon) or a key that is not the certificate's."""
    try:
        load_cert_and_key(cert_path, key_path)  # its errors name the file; OpenSSL's do not
    except PkiError as e:
        raise ValueError(str(e)) from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as e:  # e.g. a key type OpenSSL rejects, or a file replaced meanwhile
        raise ValueError(f"{cert_path} / {key_path}: cannot load the certificate and key: {e}") from None
    return ctx


def plain_http_warning(host: str) -> str | None:
    """The warning to log when the API serves plain HTTP on ``host``; None for a loopback address."""
    if host.strip("[]").lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a DNS name other than localhost: other machines may reach it
    return (f"the API serves plain HTTP on {host}, reachable from other machines: the API token (in every "
            "request) and the network model (networks, members, their addresses) travel in clear text; set "
            "api.tls_cert and api.tls_key, or listen on 127.0.0.1")
