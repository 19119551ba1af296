"""PKI: CA creation, leaf issuance, SANs, file modes, refusals, identity loading and the CLI glue."""
from __future__ import annotations

import argparse
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hactl.transport import pki


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def sans(cert_path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_init_and_issue_controller(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        ca_cert, ca_key = pki.init_ca(tmp_path / "ca", "example.org")
        cert_path, key_path = pki.issue(tmp_path / "ca", tmp_path / "n1" / "pki", kind="controller",
                                        node_id="ctrl-1", trust_domain="example.org", dns=["ctrl1.internal"],
                                        ips=["10.0.0.7", "::1"])
    finally:
        os.umask(old_umask)
    assert mode(ca_key) == 0o600 and mode(key_path) == 0o600
    assert mode(ca_cert) == 0o644 and mode(cert_path) == 0o644
    assert mode(tmp_path / "ca") == 0o700 and mode(tmp_path / "n1") == 0o700 and mode(tmp_path / "n1" / "pki") == 0o700
    assert (tmp_path / "n1" / "pki" / "ca.crt").read_bytes() == ca_cert.read_bytes()
    assert not [p for p in (tmp_path / "ca").iterdir() if ".tmp-" in p.name]  # no temp files left behind

    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    s = sans(cert_path)
    assert s.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/controller/ctrl-1"]
    assert set(s.get_values_for_type(x509.DNSName)) == {"localhost", "ctrl1.internal"}
    assert set(s.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                          ipaddress.ip_address("10.0.0.7"),
                                                          ipaddress.ip_address("::1")}
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(ca)

    ident = pki.load_identity_dir(tmp_path / "n1" / "pki")
    assert (ident.trust_domain, ident.kind, ident.node_id) == ("example.org", "controller", "ctrl-1")
    assert pki.spiffe_id(cert_path.read_bytes()) == ("example.org", "controller", "ctrl-1")
    assert pki.spiffe_id(ca_cert.read_bytes()) is None  # the CA names only the trust domain


def test_router_has_no_localhost_by_default(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "example.org")
    cert, _ = pki.issue(tmp_path / "ca", tmp_path / "r", kind="router", node_id="r1", trust_domain="example.org")
    s = sans(cert)
    assert s.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/router/r1"]
    assert s.get_values_for_type(x509.DNSName) == [] and s.get_values_for_type(x509.IPAddress) == []
    cert2, _ = pki.issue(tmp_path / "ca", tmp_path / "c", kind="controller", node_id="c1",
                         trust_domain="example.org", local=False)
    assert sans(cert2).get_values_for_type(x509.DNSName) == []


def test_ca_is_never_overwritten(tmp_path: Path) -> None:
    cert, key = pki.init_ca(tmp_path / "ca", "example.org")
    before = key.read_bytes()
    with pytest.raises(pki.PkiError, match=r"refusing to overwrite the existing CA: .*ca\.key"):
        pki.init_ca(tmp_path / "ca", "example.org")
    assert key.read_bytes() == before
    cert.unlink()
    with pytest.raises(pki.PkiError, match="ca.key exists"):  # a lone key also blocks: never replace a key
        pki.init_ca(tmp_path / "ca", "example.org")


def test_issue_refusals(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "example.org")
    for bad in ["", "a/b", "x" * 65, "ctrl 1", "..", "é"]:
        with pytest.raises(pki.PkiError, match="invalid node id"):
            pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id=bad, trust_domain="example.org")
    with pytest.raises(pki.PkiError, match="invalid kind"):
        pki.issue(tmp_path / "ca", tmp_path / "o", kind="server", node_id="a",  # type: ignore[arg-type]
                  trust_domain="example.org")
    with pytest.raises(pki.PkiError, match="does not match the CA's trust domain"):
        pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id="a", trust_domain="other.org")
    with pytest.raises(pki.PkiError, match="invalid trust domain"):
        pki.init_ca(tmp_path / "ca2", "Upper.Case")
    with pytest.raises(pki.PkiError, match="invalid IP"):
        pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id="a", trust_domain="example.org",
                  ips=["300.1.1.1"])
    with pytest.raises(pki.PkiError, match="CA certificate not found"):
        pki.issue(tmp_path / "nope", tmp_path / "o", kind="controller", node_id="a", trust_domain="example.org")
    pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id="a", trust_domain="example.org")
    with pytest.raises(pki.PkiError, match="refusing to overwrite .*node.key.*--force"):
        pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id="a", trust_domain="example.org")
    old = (tmp_path / "o" / "node.key").read_bytes()
    pki.issue(tmp_path / "ca", tmp_path / "o", kind="controller", node_id="a", trust_domain="example.org",
              overwrite=True)
    assert (tmp_path / "o" / "node.key").read_bytes() != old
    assert mode(tmp_path / "o" / "node.key") == 0o600


def test_load_identity_cross_checks(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "example.org")
    pki.init_ca(tmp_path / "ca2", "example.org")
    pki.issue(tmp_path / "ca", tmp_path / "a", kind="controller", node_id="a", trust_domain="example.org")
    pki.issue(tmp_path / "ca", tmp_path / "b", kind="controller", node_id="b", trust_domain="example.org")
    with pytest.raises(pki.PkiError, match="is not the private key of"):
        pki.load_identity(tmp_path / "a" / "node.crt", tmp_path / "b" / "node.key", tmp_path / "ca" / "ca.crt")
    with pytest.raises(pki.PkiError, match="not issued by the cluster CA"):
        pki.load_identity(tmp_path / "a" / "node.crt", tmp_path / "a" / "node.key", tmp_path / "ca2" / "ca.crt")
    with pytest.raises(pki.PkiError, match="not found"):
        pki.load_identity(tmp_path / "a" / "missing.crt", tmp_path / "a" / "node.key", tmp_path / "ca" / "ca.crt")


def test_spiffe_id_parsing() -> None:
    assert pki.parse_spiffe_uri("spiffe://td.x/controller/n-1.a_b") == ("td.x", "controller", "n-1.a_b")
    assert pki.parse_spiffe_uri("spiffe://td.x/controller") is None
    assert pki.parse_spiffe_uri("https://td.x/controller/a") is None
    assert pki.spiffe_id(b"not a cert") is None


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hactl")
    sub = parser.add_subparsers(dest="command", required=True)
    pki.add_pki_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    assert _cli(["pki", "init", "--dir", ca, "--trust-domain", "example.org"]) == 0
    assert _cli(["pki", "init", "--dir", ca, "--trust-domain", "example.org"]) == 1
    assert "refusing to overwrite the existing CA" in capsys.readouterr().err
    out = str(tmp_path / "n1")
    assert _cli(["pki", "issue", "--ca-dir", ca, "--out", out, "--kind", "controller", "--id", "n1",
                 "--trust-domain", "example.org", "--dns", "n1.example.org", "--ip", "10.1.2.3"]) == 0
    assert "spiffe://example.org/controller/n1" in capsys.readouterr().out
    s = sans(Path(out) / "node.crt")
    assert {"n1.example.org", "localhost"} == set(s.get_values_for_type(x509.DNSName))
    assert _cli(["pki", "issue", "--ca-dir", ca, "--out", str(tmp_path / "x"), "--kind", "router", "--id", "bad/id",
                 "--trust-domain", "example.org"]) == 1
    assert "invalid node id 'bad/id'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse rejects an unknown kind with its usage error (exit 2)
        _cli(["pki", "issue", "--ca-dir", ca, "--out", out, "--kind", "gateway", "--id", "a",
              "--trust-domain", "example.org"])
    assert e.value.code == 2
