"""HTTPS for the management API (api.tls_cert / api.tls_key): a real controller process, the server context, and
the warning about plain HTTP on a non-loopback address."""
from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml

from hactl.api.server import serve
from hactl.api.tls import plain_http_warning, server_ssl_context
from hactl.transport.pki import init_ca, issue
from tests.api.api_helpers import make_configs, start_initialised
from tests.proc_cluster import free_port_block
from tests.single_node import ControllerProcess, api_port, http_get, single_node

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "cluster.yaml"
START_TIMEOUT = 90.0  # generous: two cores shared with other test runs


def make_pki(root: Path, node_id: str, trust_domain: str = "hactl.local") -> tuple[Path, Path, Path]:
    """(ca.crt, node.crt, node.key) of a controller certificate; its SANs include localhost and 127.0.0.1."""
    init_ca(root / "ca", trust_domain)
    cert, key = issue(root / "ca", root / "pki", kind="controller", node_id=node_id, trust_domain=trust_domain)
    return root / "pki" / "ca.crt", cert, key


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


# ------------------------------------------------------------------------------------ a real controller

def test_controller_serves_the_api_over_https(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    shutil.copy(EXAMPLE, config)
    doc = single_node(yaml.safe_load(config.read_text()), free_port_block(2))
    ca, _, _ = make_pki(tmp_path, doc["id"], doc["cluster"]["trust_domain"])
    doc["api"].update(tls_cert="pki/node.crt", tls_key="pki/node.key")  # relative to the config file
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    port, verified = api_port(doc), client_context(ca)

    def https_health() -> bool:
        try:
            return http_get(port, "/health", context=verified)[0] == 200
        except ssl.SSLError:
            # Fail now, not at the timeout, when the reason is that the controller ignores api.tls_cert.
            try:
                http_get(port, "/health")
            except (OSError, http.client.HTTPException):
                return False
            raise AssertionError("the controller answers plain HTTP although api.tls_cert is set") from None

    with ControllerProcess(config, tmp_path / "controller.log") as ctl:
        ctl.wait_for(https_health, START_TIMEOUT, "HTTPS GET /health 200")
        # The token file is created by the first leader when it initialises the cluster.
        token_file = tmp_path / "api-token"
        token = ctl.wait_for(lambda: token_file.exists() and token_file.read_text().strip(), START_TIMEOUT,
                             "the API token file")

        def status() -> dict | None:
            code, body = http_get(port, "/status", context=verified, headers={"X-ZT1-Auth": token})
            return json.loads(body) if code == 200 else None
        st = ctl.wait_for(status, START_TIMEOUT, "authenticated HTTPS GET /status 200")
        assert st["cluster"]["id"] == doc["id"] and st["cluster"]["role"] == "leader"
        assert http_get(port, "/health", context=verified, host="localhost")[0] == 200  # the DNS SAN too

        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP on the HTTPS port
            http_get(port, "/health")
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the cluster CA
            http_get(port, "/health", context=ssl.create_default_context())
        assert "plain HTTP" not in ctl.output()
        assert ctl.stop() == 0, ctl.output()[-4000:]


# ------------------------------------------------------------------------------------ serve() and the context

def test_serve_with_ssl_context_answers_https_only(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path, "n1")

    async def main() -> None:
        cluster = await start_initialised(make_configs(tmp_path / "node", ("n1",))[0])
        server = await serve(cluster, "127.0.0.1", 0, version="1.0",
                             ssl_context=server_ssl_context(str(cert), str(key)))
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"https://127.0.0.1:{server.port}/health", ssl=client_context(ca)) as r:
                    assert r.status == 200
                with pytest.raises(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{server.port}/health") as r:
                        await r.read()
        finally:
            await server.stop()
            await cluster.stop()
    asyncio.run(asyncio.wait_for(main(), 60))


def test_server_context_requires_tls_1_2(tmp_path: Path) -> None:
    _, cert, key = make_pki(tmp_path, "n1")
    ctx = server_ssl_context(str(cert), str(key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.protocol == ssl.PROTOCOL_TLS_SERVER


def test_server_context_errors_name_the_file(tmp_path: Path) -> None:
    _, cert, key = make_pki(tmp_path, "n1")
    missing = tmp_path / "nope.crt"
    with pytest.raises(ValueError, match=f"not found: {missing}"):
        server_ssl_context(str(missing), str(key))
    with pytest.raises(ValueError, match=f"not found: {tmp_path / 'nope.key'}"):
        server_ssl_context(str(cert), str(tmp_path / "nope.key"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"{garbage}: not a PEM certificate"):
        server_ssl_context(str(garbage), str(key))
    with pytest.raises(ValueError, match=f"{garbage}: not an unencrypted PEM private key"):
        server_ssl_context(str(cert), str(garbage))
    other_cert, other_key = issue(tmp_path / "ca", tmp_path / "other", kind="controller", node_id="n2",
                                  trust_domain="hactl.local")
    with pytest.raises(ValueError, match=f"{other_key} is not the private key of {cert}"):
        server_ssl_context(str(cert), str(other_key))


# ------------------------------------------------------------------------------------ the plain-HTTP warning

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_no_warning_on_loopback(host: str) -> None:
    assert plain_http_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.11", "ctrl1.example.org"])
def test_warning_off_loopback(host: str) -> None:
    text = plain_http_warning(host)
    assert text is not None and host in text
    for words in ("token", "clear text", "api.tls_cert", "api.tls_key", "127.0.0.1"):
        assert words in text
