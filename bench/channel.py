"""The control channel's stream layer against the gRPC bidi stream it replaced (control protocols 1 and 2).

Two processes on loopback, mutual TLS with certificates of one throw-away cluster CA (hactl.transport.pki), 200-byte
messages (a typical raft append or forwarded write), an echo server:

  rtt         one message in flight: round trip (send, echo, receive), and the client's CPU per round trip;
  pipelined   --messages sent back to back while the echoes are read: messages/s and the client's CPU per message.

Targets: `hactl` is hactl.transport.channel (open_stream and FrameStream: what every raft message and forwarded
write rides on); `grpc` is a grpc.aio bidi stream with identity (de)serializers, as control protocols 1 and 2 used
(needs the bench extra: pip install '.[bench]').

    python bench/channel.py [--messages 20000] [--targets hactl,grpc]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hactl.transport import pki  # noqa: E402
from hactl.transport.channel import FrameStream, cached_tls_context, open_stream  # noqa: E402

MESSAGE = b"x" * 200
WARMUP = 200


def identities(root: Path) -> tuple[pki.Identity, pki.Identity]:
    if not (root / "ca").exists():
        pki.init_ca(root / "ca", "bench.hactl")
        for n in ("client", "server"):
            pki.issue(root / "ca", root / n, kind="controller", node_id=n, trust_domain="bench.hactl")
    return pki.load_identity_dir(root / "client"), pki.load_identity_dir(root / "server")


# ------------------------------------------------------------------------------------------ servers


async def hactl_server(ident: pki.Identity, port: int) -> None:
    ctx = cached_tls_context(ident, server=True)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FrameStream(reader, writer, outbound=False)
        while (m := await stream.read()) is not None:
            await stream.write(m)

    server = await asyncio.start_server(echo, "127.0.0.1", port, ssl=ctx)
    await server.serve_forever()


async def grpc_server(ident: pki.Identity, port: int) -> None:
    import grpc
    import grpc.aio

    async def echo(_: object, context: grpc.aio.ServicerContext) -> None:
        while (m := await context.read()) is not grpc.aio.EOF:
            await context.write(m)

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(
        echo, request_deserializer=None, response_serializer=None)})
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials(
        [(ident.key_pem, ident.cert_pem)], root_certificates=ident.ca_pem, require_client_auth=True))
    await server.start()
    await server.wait_for_termination()


# ------------------------------------------------------------------------------------------ clients


class Pair:
    """write/read of one client stream, whichever target."""

    async def write(self, m: bytes) -> None: ...

    async def read(self) -> bytes: ...


async def hactl_client(ident: pki.Identity, port: int) -> Pair:
    s = open_stream(f"127.0.0.1:{port}", ident)
    p = Pair()
    p.write, p.read = s.write, s.read  # type: ignore[method-assign]
    return p


async def grpc_client(ident: pki.Identity, port: int) -> Pair:
    import grpc
    import grpc.aio
    creds = grpc.ssl_channel_credentials(root_certificates=ident.ca_pem, private_key=ident.key_pem,
                                         certificate_chain=ident.cert_pem)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    call = channel.stream_stream("/bench.Echo/Stream", request_serializer=None, response_deserializer=None)()
    p = Pair()
    p.write, p.read = call.write, call.read  # type: ignore[method-assign]
    return p


async def measure(name: str, pair: Pair, n: int) -> None:
    for _ in range(WARMUP):
        await pair.write(MESSAGE)
        await pair.read()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        await pair.write(MESSAGE)
        await pair.read()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"BENCH channel_{name}_rtt {wall / n * 1e6:.0f} us")
    print(f"BENCH channel_{name}_rtt_client_cpu {cpu / n * 1e6:.0f} us")

    async def drain() -> None:
        for _ in range(n):
            await pair.read()
    t, c = time.perf_counter(), time.process_time()
    reader = asyncio.create_task(drain())
    for _ in range(n):
        await pair.write(MESSAGE)
    await reader
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"BENCH channel_{name}_pipelined {n / wall:.0f} msg/s")
    print(f"BENCH channel_{name}_pipelined_client_cpu {cpu / n * 1e6:.1f} us")
    sys.stdout.flush()


SERVERS = {"hactl": hactl_server, "grpc": grpc_server}
CLIENTS = {"hactl": hactl_client, "grpc": grpc_client}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--targets", default="hactl,grpc")
    ap.add_argument("--serve", nargs=3, metavar=("TARGET", "PKI", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        target, root, port = args.serve
        asyncio.run(SERVERS[target](identities(Path(root))[1], int(port)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-channel-") as tmp:
        client_id, _ = identities(Path(tmp))
        for target in args.targets.split(","):
            if target == "grpc":
                if importlib.util.find_spec("grpc") is None:
                    print("# SKIP grpc: grpcio is not installed (pip install '.[bench]')")
                    continue
            port = free_port()
            server = subprocess.Popen([sys.executable, __file__, "--serve", target, tmp, str(port)])
            try:
                time.sleep(1.5)  # the server imports and binds

                async def run() -> None:
                    await measure(target, await CLIENTS[target](client_id, port), args.messages)
                asyncio.run(run())
            finally:
                server.kill()
                server.wait()
        print(f"# {args.messages} messages of {len(MESSAGE)} B per measurement, client and echo server in two "
              "processes on loopback, mutual TLS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
