"""The cluster PKI: one CA per cluster, one leaf certificate per controller or router.

Identities follow SPIFFE: every leaf carries the URI SAN ``spiffe://<trust-domain>/<kind>/<id>``; the control
channel authorises peers by that URI, never by hostnames. Keys are EC P-256 because every TLS stack (OpenSSL,
BoringSSL, Go's) accepts it, which is not true of Ed25519 certificates.

Files (a node's ``pki/`` directory holds the last three)::

    <ca-dir>/ca.key   CA private key, 0600 (keep it offline once the nodes are issued)
    <ca-dir>/ca.crt   CA certificate, 0644
    <out>/node.key    leaf private key, 0600
    <out>/node.crt    leaf certificate, 0644
    <out>/ca.crt      copy of the CA certificate the node trusts

Every file is written atomically (hactl._fs.atomic_write: temp file with its final mode, fsync, rename, fsync of
the directory), so a crash never leaves a half-written key or a key with loose permissions.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hactl._fs import atomic_write

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"

Kind = Literal["controller", "router"]
KINDS: tuple[str, ...] = ("controller", "router")

_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# SPIFFE trust domains: lowercase letters, digits, dots, dashes and underscores.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")


class PkiError(Exception):
    """A PKI operation that cannot proceed; the message says what to do about it."""


# ---------------------------------------------------------------------------------------------- validation

def validate_node_id(node_id: str) -> str:
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id) or node_id in (".", ".."):
        raise PkiError(f"invalid node id {node_id!r}: use 1-64 characters from A-Z a-z 0-9 . _ -")
    return node_id


def validate_trust_domain(td: str) -> str:
    if not isinstance(td, str) or not _TRUST_DOMAIN_RE.fullmatch(td):
        raise PkiError(f"invalid trust domain {td!r}: use 1-255 characters from a-z 0-9 . _ - "
                       "(e.g. 'hactl.example.org')")
    return td


def validate_kind(kind: str) -> str:
    if kind not in KINDS:
        raise PkiError(f"invalid kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def spiffe_uri(trust_domain: str, kind: str, node_id: str) -> str:
    return f"spiffe://{trust_domain}/{kind}/{node_id}"


# ---------------------------------------------------------------------------------------------- file helpers

def _mkdir_private(d: Path) -> None:
    """Create ``d`` (and parents) 0700; an existing directory keeps its mode (it may be shared on purpose)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            continue
        os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask; be exact


def write_file_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``; the file is never visible half-written or with a
    looser mode. With ``overwrite=False`` an existing file is an error (checked atomically via link())."""
    try:
        atomic_write(path, data, mode, overwrite=overwrite)
    except FileExistsError:
        if overwrite:
            raise  # not the existing target: atomic_write only raises it for that when overwrite=False
        raise PkiError(f"refusing to overwrite existing file {path}") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found: {path}") from None
    except OSError as e:
        raise PkiError(f"cannot read {what} {path}: {e.strerror}") from None


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# ---------------------------------------------------------------------------------------------- CA

def init_ca(dir: str | os.PathLike, trust_domain: str, *, days: int = 3650) -> tuple[Path, Path]:
    """Create the cluster CA in ``dir``; returns (cert_path, key_path). Never overwrites an existing CA."""
    validate_trust_domain(trust_domain)
    if days <= 0:
        raise PkiError(f"--days must be positive, got {days}")
    d = Path(dir)
    cert_path, key_path = d / CA_CERT, d / CA_KEY
    for p in (key_path, cert_path):
        if p.exists():
            raise PkiError(f"refusing to overwrite the existing CA: {p} exists "
                           "(issue node certificates from it, or choose another --dir)")
    _mkdir_private(d)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hactl"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"hactl CA {trust_domain}")])
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))  # tolerate small clock skew between nodes
            .not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # The trust domain travels with the CA so `issue` can refuse a mismatched --trust-domain.
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
            .sign(key, hashes.SHA256()))
    # Key first: a CA certificate without its key would block a retry for no benefit.
    write_file_atomic(key_path, _key_pem(key), 0o600, overwrite=False)
    try:
        write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=False)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return cert_path, key_path


def ca_trust_domain(ca_cert: x509.Certificate) -> str | None:
    try:
        san = ca_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):].rstrip("/") or None
    return None


# ---------------------------------------------------------------------------------------------- leaves

def issue(ca_dir: str | os.PathLike, out_dir: str | os.PathLike, *, kind: Kind, node_id: str, trust_domain: str,
          dns: Iterable[str] = (), ips: Iterable[str] = (), days: int = 825, local: bool | None = None,
          overwrite: bool = False) -> tuple[Path, Path]:
    """Issue a leaf certificate for ``kind``/``node_id``; returns (cert_path, key_path) in ``out_dir``.

    ``local`` adds the SANs localhost and 127.0.0.1 (default: on for controllers, off for routers). The CA
    certificate is copied to ``out_dir/ca.crt`` so the directory is a complete node identity.
    """
    validate_kind(kind)
    validate_node_id(node_id)
    validate_trust_domain(trust_domain)
    if days <= 0:
        raise PkiError(f"--days must be positive, got {days}")
    ca_dir, out = Path(ca_dir), Path(out_dir)
    ca_pem = _read(ca_dir / CA_CERT, "CA certificate")
    ca_cert = _load_cert(ca_pem, ca_dir / CA_CERT)
    ca_key = _load_key(_read(ca_dir / CA_KEY, "CA key"), ca_dir / CA_KEY)
    if ca_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PkiError(f"{ca_dir / CA_KEY} is not the key of {ca_dir / CA_CERT}")
    ca_td = ca_trust_domain(ca_cert)
    if ca_td is not None and ca_td != trust_domain:
        raise PkiError(f"trust domain {trust_domain!r} does not match the CA's trust domain {ca_td!r} "
                       f"({ca_dir / CA_CERT})")

    if local is None:
        local = kind == "controller"
    dns_names = list(dict.fromkeys([*(["localhost"] if local else []), *dns]))
    ip_list: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in [*(["127.0.0.1"] if local else []), *ips]:
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise PkiError(f"invalid IP address {raw!r}") from None
        if ip not in ip_list:
            ip_list.append(ip)
    for name in dns_names:
        if not name or not re.fullmatch(r"[A-Za-z0-9*._-]{1,253}", name):
            raise PkiError(f"invalid DNS name {name!r}")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_uri(trust_domain, kind, node_id))]
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ip) for ip in ip_list]

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hactl"),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                                     x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    _mkdir_private(out)
    cert_path, key_path = out / NODE_CERT, out / NODE_KEY
    if not overwrite:
        for p in (key_path, cert_path):
            if p.exists():
                raise PkiError(f"refusing to overwrite {p} (pass --force to re-issue this node's identity)")
    write_file_atomic(key_path, _key_pem(key), 0o600, overwrite=overwrite)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=overwrite)
    if (out / CA_CERT).resolve() != (ca_dir / CA_CERT).resolve():
        write_file_atomic(out / CA_CERT, ca_pem, 0o644, overwrite=True)
    return cert_path, key_path


# ---------------------------------------------------------------------------------------------- loading

def _load_cert(pem: bytes, where: Any = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise PkiError(f"{where}: not a PEM certificate ({e})") from None


def _load_key(pem: bytes, where: Any = "key") -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise PkiError(f"{where}: not an unencrypted PEM private key ({e})") from None


def _as_cert(cert: bytes | str | x509.Certificate) -> x509.Certificate | None:
    if isinstance(cert, str):
        cert = cert.encode()
    if isinstance(cert, bytes):
        try:
            return x509.load_pem_x509_certificate(cert)
        except ValueError:
            return None
    return cert


def cert_serial(cert: bytes | str | x509.Certificate) -> str | None:
    """A certificate's serial number as lowercase hex (what the deny-list holds), or None if it does not parse."""
    c = _as_cert(cert)
    return None if c is None else format(c.serial_number, "x")


def spiffe_id(cert: bytes | str | x509.Certificate) -> tuple[str, str, str] | None:
    """(trust_domain, kind, id) from a certificate's ``spiffe://td/kind/id`` URI SAN, or None."""
    cert = _as_cert(cert)  # type: ignore[assignment]
    if cert is None:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        parsed = parse_spiffe_uri(uri)
        if parsed is not None:
            return parsed
    return None


def parse_spiffe_uri(uri: str) -> tuple[str, str, str] | None:
    m = re.fullmatch(r"spiffe://([a-z0-9._-]+)/([a-z]+)/([A-Za-z0-9._-]{1,64})", uri)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate, *, at: _dt.datetime | None = None) -> None:
    """Raise PkiError unless ``cert`` is signed by ``ca`` and valid at ``at`` (now)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError("certificate is not issued by the cluster CA") from None
    at = at or _now()
    if not (cert.not_valid_before_utc <= at <= cert.not_valid_after_utc):
        raise PkiError(f"certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} .. "
                       f"{cert.not_valid_after_utc:%Y-%m-%d})")


@dataclass(frozen=True)
class Identity:
    """A node's TLS identity: PEM bytes for the TLS contexts plus the parsed SPIFFE id."""
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)  # never in a repr: reprs end up in logs and test reports
    ca_pem: bytes = field(repr=False)
    trust_domain: str
    kind: str
    node_id: str

    @property
    def uri(self) -> str:
        return spiffe_uri(self.trust_domain, self.kind, self.node_id)

    def private_key(self) -> Any:
        return serialization.load_pem_private_key(self.key_pem, password=None)

    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem)


def load_cert_and_key(cert: str | os.PathLike, key: str | os.PathLike
                      ) -> tuple[bytes, bytes, x509.Certificate, Any]:
    """(cert PEM, key PEM, certificate, private key), read and checked to belong together; a PkiError names the
    file at fault. The first certificate in ``cert`` is the leaf (a chain may follow it)."""
    cert_pem, key_pem = _read(Path(cert), "certificate"), _read(Path(key), "key")
    c = _load_cert(cert_pem, cert)
    k = _load_key(key_pem, key)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if k.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            c.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise PkiError(f"{key} is not the private key of {cert}")
    return cert_pem, key_pem, c, k


def load_identity(cert: str | os.PathLike, key: str | os.PathLike, ca: str | os.PathLike) -> Identity:
    """Load and cross-check a node identity, so a mismatch fails at start-up with a clear message rather than
    as an opaque TLS handshake error later."""
    cert_pem, key_pem, c, k = load_cert_and_key(cert, key)
    ca_pem = _read(Path(ca), "CA certificate")
    ca_c = _load_cert(ca_pem, ca)
    if not isinstance(k, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise PkiError(f"{key}: unsupported key type {type(k).__name__} (expected EC P-256)")
    try:
        verify_issued_by(c, ca_c)
    except PkiError as e:
        raise PkiError(f"{cert}: {e} ({ca})") from None
    sid = spiffe_id(c)
    if sid is None:
        raise PkiError(f"{cert} has no spiffe://<trust-domain>/<kind>/<id> URI SAN; issue it with `hactl pki issue`")
    return Identity(cert_pem, key_pem, ca_pem, *sid)


def load_identity_dir(d: str | os.PathLike) -> Identity:
    """Load ``node.crt``/``node.key``/``ca.crt`` from a node's pki directory."""
    d = Path(d)
    return load_identity(d / NODE_CERT, d / NODE_KEY, d / CA_CERT)


# ---------------------------------------------------------------------------------------------- CLI glue

def add_pki_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pki init`` and ``pki issue`` on an argparse subparsers object. Each leaf parser sets
    ``func(args) -> int`` (the exit code)."""
    pki = subparsers.add_parser("pki", help="cluster CA and node certificates")
    sub = pki.add_subparsers(dest="pki_command", metavar="init|issue")
    sub.required = True

    p = sub.add_parser("init", help="create the cluster CA (ca.crt, ca.key)")
    p.add_argument("--dir", required=True, help="directory for ca.crt and ca.key (created 0700)")
    p.add_argument("--trust-domain", required=True, help="SPIFFE trust domain, e.g. hactl.example.org")
    p.add_argument("--days", type=int, default=3650)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("issue", help="issue a controller or router certificate (node.crt, node.key, ca.crt)")
    p.add_argument("--ca-dir", required=True)
    p.add_argument("--out", required=True, help="output directory, e.g. <data>/pki")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--id", required=True, dest="node_id")
    p.add_argument("--trust-domain", required=True)
    p.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    p.add_argument("--days", type=int, default=825)
    p.add_argument("--no-localhost", action="store_true",
                   help="do not add localhost/127.0.0.1 (added by default for controllers)")
    p.add_argument("--force", action="store_true", help="overwrite an existing node.crt/node.key")
    p.set_defaults(func=_cmd_issue)
    return pki


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        cert, key = init_ca(args.dir, args.trust_domain, days=args.days)
    except (PkiError, OSError) as e:
        print(f"hactl pki init: {e}", file=sys.stderr)
        return 1
    print(f"CA certificate: {cert}\nCA key:         {key} (0600; keep it safe)")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    try:
        cert, key = issue(args.ca_dir, args.out, kind=args.kind, node_id=args.node_id,
                          trust_domain=args.trust_domain, dns=args.dns, ips=args.ip, days=args.days,
                          local=False if args.no_localhost else None, overwrite=args.force)
    except (PkiError, OSError) as e:
        print(f"hactl pki issue: {e}", file=sys.stderr)
        return 1
    print(f"certificate: {cert}\nkey:         {key}\nidentity:    "
          f"{spiffe_uri(args.trust_domain, args.kind, args.node_id)}")
    return 0
