"""Payload codecs for the verbs a root and controller endpoint handles (brief §4-§5).

Each class is one payload: `encode()` gives the bytes after the verb byte (packet offset 28 on), `decode(payload)`
parses them and raises only ProtocolError. Replies (OK, ERROR) carry the verb and the 8-byte packet id they
answer; a node matches an OK to its request by those 8 wire bytes, so they are kept as bytes, never as numbers.

Optional trailing fields follow the reference's reading rule: a field is present iff bytes remain for it (old
nodes send less). Fields we emit are always written in full, as real roots and controllers do.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hactl.zt import crypto
from hactl.zt.address import ADDRESS_SIZE, address_to_bytes
from hactl.zt.errors import ProtocolError
from hactl.zt.identity import Identity
from hactl.zt.inetaddress import InetAddress, Reader
from hactl.zt.packet import ErrorCode, Verb, crypt_hello_tail
from hactl.zt.world import World

PACKET_ID_SIZE = 8
_MAX_U16 = 0xFFFF


def _packet_id(value: bytes) -> bytes:
    if len(value) != PACKET_ID_SIZE:
        raise ValueError(f"packet id must be {PACKET_ID_SIZE} bytes")
    return bytes(value)


def _u(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


# --- generic replies -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ok:
    """OK: [1] in-re verb | [8] in-re packet id | verb-specific body."""
    in_re_verb: int
    in_re_packet_id: bytes
    body: bytes = b""

    def encode(self) -> bytes:
        return bytes([self.in_re_verb]) + _packet_id(self.in_re_packet_id) + self.body

    @classmethod
    def decode(cls, payload: bytes) -> Ok:
        r = Reader(payload)
        verb = r.u8("in-re verb")
        return cls(verb, r.take(PACKET_ID_SIZE, "in-re packet id"), r.rest())


@dataclass(frozen=True)
class Error:
    """ERROR: [1] in-re verb | [8] in-re packet id | [1] code | optional payload.
    The code stays an int: an unknown code from a peer is not malformed input."""
    in_re_verb: int
    in_re_packet_id: bytes
    code: int
    body: bytes = b""

    def encode(self) -> bytes:
        return bytes([self.in_re_verb]) + _packet_id(self.in_re_packet_id) + bytes([self.code]) + self.body

    @classmethod
    def decode(cls, payload: bytes) -> Error:
        r = Reader(payload)
        verb = r.u8("in-re verb")
        pid = r.take(PACKET_ID_SIZE, "in-re packet id")
        return cls(verb, pid, r.u8("error code"), r.rest())

    @classmethod
    def network_config(cls, in_re_packet_id: bytes, code: ErrorCode, network_id: int,
                       dictionary: bytes | None = None) -> Error:
        """The refusal of a NETWORK_CONFIG_REQUEST. The network id is mandatory: a node reads it
        unconditionally and drops an ERROR without it."""
        body = _u(network_id, 8)
        if dictionary is not None:
            if len(dictionary) > _MAX_U16:
                raise ValueError("error dictionary too long")
            body += _u(len(dictionary), 2) + dictionary
        return cls(Verb.NETWORK_CONFIG_REQUEST, in_re_packet_id, code, body)

    def network_id(self) -> int:
        """The network id of an ERROR about a network (NETWORK_CONFIG_REQUEST and friends)."""
        return Reader(self.body).u64("network id")


# --- HELLO ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MoonRef:
    """A moon a node HELLOs about: one it orbits, or wants (timestamp 0)."""
    type: int
    id: int
    timestamp: int


@dataclass(frozen=True)
class Hello:
    """HELLO, sent with cipher 0 (MAC only). Everything after the identity is optional on the wire; the moon
    list sits in a tail encrypted with its own Salsa20/12 stream, so encode/decode need the peer key and the
    packet id (decode leaves moons None without them; call it after the MAC has been checked)."""
    protocol_version: int
    version_major: int
    version_minor: int
    version_revision: int
    timestamp: int
    identity: Identity
    destination: InetAddress | None = None  # where the sender sent it: our address as the sender sees it
    planet_id: int | None = None
    planet_timestamp: int | None = None
    moons: tuple[MoonRef, ...] | None = None

    def encode(self, key: bytes | None = None, packet_id: bytes | None = None) -> bytes:
        out = (bytes([self.protocol_version, self.version_major, self.version_minor])
               + _u(self.version_revision, 2) + _u(self.timestamp, 8) + self.identity.to_bytes())
        if self.destination is None:
            return out
        out += self.destination.encode()
        if self.planet_id is None:
            return out
        out += _u(self.planet_id, 8) + _u(self.planet_timestamp or 0, 8)
        if self.moons is None:
            return out
        if key is None or packet_id is None:
            raise ValueError("a HELLO with a moon list needs the peer key and the packet id")
        tail = _u(len(self.moons), 2) + b"".join(
            bytes([m.type]) + _u(m.id, 8) + _u(m.timestamp, 8) for m in self.moons)
        return out + crypt_hello_tail(key, _packet_id(packet_id), tail)

    @classmethod
    def decode(cls, payload: bytes, key: bytes | None = None, packet_id: bytes | None = None) -> Hello:
        r = Reader(payload)
        proto = r.u8("protocol version")
        major = r.u8("major version")
        minor = r.u8("minor version")
        rev = r.u16("revision")
        ts = r.u64("timestamp")
        ident, r.pos = Identity.from_bytes_prefix(r.data, r.pos)
        if ident.has_private:
            raise ProtocolError("HELLO identity carries a private key")
        hello = cls(proto, major, minor, rev, ts, ident)
        if r.at_end():
            return hello
        dest = InetAddress.read(r)
        if r.remaining < 16:
            return cls(proto, major, minor, rev, ts, ident, dest)
        planet_id, planet_ts = r.u64(), r.u64()
        moons = None
        if not r.at_end() and key is not None and packet_id is not None:
            # Bytes after the moon list (none from 1.x nodes) are ignored, as the reference does.
            t = Reader(crypt_hello_tail(key, _packet_id(packet_id), r.rest()))
            count = t.u16("moon count")
            if count * 17 > t.remaining:
                raise ProtocolError(f"HELLO announces {count} moons in {t.remaining} bytes")
            moons = tuple(MoonRef(t.u8(), t.u64(), t.u64()) for _ in range(count))
        return cls(proto, major, minor, rev, ts, ident, dest, planet_id, planet_ts, moons)


def hello_identity(payload: bytes) -> Identity:
    """The identity in a HELLO payload, readable before authentication because HELLO is not encrypted: the
    receiver needs it to agree the key that checks the MAC."""
    if len(payload) < 13:
        raise ProtocolError("HELLO too short for an identity")
    return Identity.from_bytes_prefix(payload, 13)[0]


@dataclass(frozen=True)
class OkHello:
    """OK(HELLO): in-re HELLO id | echoed timestamp | our protocol and version | the HELLO's source as we saw
    it | [2] length + worlds newer than the node's (zero or more, non-signing form)."""
    in_re_packet_id: bytes
    timestamp_echo: int
    protocol_version: int
    version_major: int
    version_minor: int
    version_revision: int
    observed: InetAddress | None = None
    worlds: tuple[World, ...] = ()

    def encode(self) -> bytes:
        body = (_u(self.timestamp_echo, 8) + bytes([self.protocol_version, self.version_major, self.version_minor])
                + _u(self.version_revision, 2))
        if self.observed is not None:
            updates = b"".join(w.encode() for w in self.worlds)
            if len(updates) > _MAX_U16:
                raise ValueError("world updates too long")
            body += self.observed.encode() + _u(len(updates), 2) + updates
        elif self.worlds:
            raise ValueError("worlds need the observed address before them")
        return Ok(Verb.HELLO, self.in_re_packet_id, body).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OkHello:
        ok = Ok.decode(payload)
        if ok.in_re_verb != Verb.HELLO:
            raise ProtocolError(f"OK in re verb {ok.in_re_verb}, not HELLO")
        r = Reader(ok.body)
        ts = r.u64("timestamp echo")
        proto, major, minor = r.u8("protocol"), r.u8("major"), r.u8("minor")
        rev = r.u16("revision")
        observed = None
        worlds: list[World] = []
        if not r.at_end():
            observed = InetAddress.read(r)
            if r.remaining >= 2:
                w = Reader(r.take(r.u16("world update length"), "world updates"))
                while not w.at_end():
                    worlds.append(World.read(w))
        return cls(ok.in_re_packet_id, ts, proto, major, minor, rev, observed, tuple(worlds))


# --- WHOIS, ECHO, RENDEZVOUS, MULTICAST_LIKE -----------------------------------------------------------------

@dataclass(frozen=True)
class Whois:
    """WHOIS: one or more 5-byte addresses (nodes send one)."""
    addresses: tuple[int, ...]

    def encode(self) -> bytes:
        return b"".join(address_to_bytes(a) for a in self.addresses)

    @classmethod
    def decode(cls, payload: bytes) -> Whois:
        if not payload or len(payload) % ADDRESS_SIZE:
            raise ProtocolError(f"WHOIS payload of {len(payload)} bytes is not a list of addresses")
        return cls(tuple(int.from_bytes(payload[i:i + ADDRESS_SIZE], "big")
                         for i in range(0, len(payload), ADDRESS_SIZE)))


@dataclass(frozen=True)
class OkWhois:
    """OK(WHOIS): identities in public form (a node reads only the first)."""
    in_re_packet_id: bytes
    identities: tuple[Identity, ...]

    def encode(self) -> bytes:
        return Ok(Verb.WHOIS, self.in_re_packet_id, b"".join(i.to_bytes() for i in self.identities)).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OkWhois:
        ok = Ok.decode(payload)
        if ok.in_re_verb != Verb.WHOIS:
            raise ProtocolError(f"OK in re verb {ok.in_re_verb}, not WHOIS")
        idents = []
        pos = 0
        while pos < len(ok.body):
            ident, pos = Identity.from_bytes_prefix(ok.body, pos)
            idents.append(ident.public_only())
        if not idents:
            raise ProtocolError("OK(WHOIS) without an identity")
        return cls(ok.in_re_packet_id, tuple(idents))


@dataclass(frozen=True)
class Echo:
    """ECHO: any bytes (a keepalive sends none); OK(ECHO) returns them."""
    data: bytes = b""

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes) -> Echo:
        return cls(bytes(payload))

    def reply(self, in_re_packet_id: bytes) -> Ok:
        return Ok(Verb.ECHO, in_re_packet_id, self.data)


@dataclass(frozen=True)
class Rendezvous:
    """RENDEZVOUS: [1] flags | [5] the other peer | [2] port | [1] IP length (4/16) | IP. Its own address form,
    not InetAddress: port before IP, a length instead of a type."""
    peer: int
    endpoint: InetAddress
    flags: int = 0

    def encode(self) -> bytes:
        if self.endpoint.ip is None:
            raise ValueError("RENDEZVOUS needs a real address")
        ip = self.endpoint.ip.packed
        return (bytes([self.flags]) + address_to_bytes(self.peer) + _u(self.endpoint.port, 2) + bytes([len(ip)])
                + ip)

    @classmethod
    def decode(cls, payload: bytes) -> Rendezvous:
        r = Reader(payload)
        flags = r.u8("flags")
        peer = r.uint(ADDRESS_SIZE, "peer address")
        port = r.u16("port")
        n = r.u8("address length")
        if n not in (4, 16):
            raise ProtocolError(f"RENDEZVOUS address length {n}")
        raw = r.take(n, "address")
        ep = InetAddress.decode(bytes([4 if n == 4 else 6]) + raw + _u(port, 2))
        return cls(peer, ep, flags)


PUSH_FORGET_PATH, PUSH_CLUSTER_REDIRECT = 0x01, 0x02  # PUSH_DIRECT_PATHS flags


@dataclass(frozen=True)
class PushDirectPaths:
    """PUSH_DIRECT_PATHS: [2] count | per path: [1] flags | [2] extension length (skipped) | [1] type 4/6 |
    [1] length 6/18 | IP | [2] port. With PUSH_CLUSTER_REDIRECT the receiver moves to the path at once (it is
    inserted above the path the push came on, whose lower-priority paths are dropped)."""
    paths: tuple[tuple[int, InetAddress], ...]  # (flags, address)

    def encode(self) -> bytes:
        out = [_u(len(self.paths), 2)]
        for flags, ep in self.paths:
            if ep.ip is None:
                raise ValueError("PUSH_DIRECT_PATHS needs real addresses")
            ip = ep.ip.packed
            out.append(bytes([flags]) + _u(0, 2) + bytes([4 if len(ip) == 4 else 6, len(ip) + 2]) + ip
                       + _u(ep.port, 2))
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes) -> PushDirectPaths:
        r = Reader(payload)
        paths = []
        for _ in range(r.u16("count")):
            flags = r.u8("flags")
            r.take(r.u16("extension length"), "extension")
            kind, n = r.u8("address type"), r.u8("address length")
            raw = r.take(n, "address")
            if (kind, n) not in ((4, 6), (6, 18)):
                continue  # a type this side does not know: skipped, as the reference does
            paths.append((flags, InetAddress.decode(bytes([kind]) + raw)))
        return cls(tuple(paths))


@dataclass(frozen=True)
class MulticastSubscription:
    network_id: int
    mac: int  # 48 bits
    adi: int  # 32 bits; for ARP groups the IPv4 address


MULTICAST_LIKE_ENTRY_SIZE = 18


@dataclass(frozen=True)
class MulticastLike:
    """MULTICAST_LIKE: repeated [8] network id | [6] MAC | [4] ADI."""
    entries: tuple[MulticastSubscription, ...]

    def encode(self) -> bytes:
        return b"".join(_u(e.network_id, 8) + _u(e.mac, 6) + _u(e.adi, 4) for e in self.entries)

    @classmethod
    def decode(cls, payload: bytes) -> MulticastLike:
        if len(payload) % MULTICAST_LIKE_ENTRY_SIZE:
            raise ProtocolError(f"MULTICAST_LIKE payload of {len(payload)} bytes is not a list of 18-byte entries")
        r = Reader(payload)
        return cls(tuple(MulticastSubscription(r.u64(), r.uint(6), r.u32())
                         for _ in range(len(payload) // MULTICAST_LIKE_ENTRY_SIZE)))


# --- network configuration -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkConfigRequest:
    """NETWORK_CONFIG_REQUEST: [8] network id | [2] length + metadata Dictionary | [8] revision of the config
    the member holds | [8] that config's timestamp (both 0 if none; absent from old nodes: None)."""
    network_id: int
    metadata: bytes = b""
    revision: int | None = None
    timestamp: int | None = None

    def encode(self) -> bytes:
        if len(self.metadata) > _MAX_U16:
            raise ValueError("metadata too long")
        out = _u(self.network_id, 8) + _u(len(self.metadata), 2) + self.metadata
        if self.revision is not None:
            out += _u(self.revision, 8)
            if self.timestamp is not None:
                out += _u(self.timestamp, 8)
        return out

    @classmethod
    def decode(cls, payload: bytes) -> NetworkConfigRequest:
        r = Reader(payload)
        nwid = r.u64("network id")
        meta = r.take(r.u16("metadata length"), "metadata") if r.remaining else b""
        rev = r.u64() if r.remaining >= 8 else None
        ts = r.u64() if r.remaining >= 8 else None
        return cls(nwid, meta, rev, ts)


CHUNK_SIGNATURE_TYPE = 0x01
CHUNK_FLAG_FAST_PROPAGATE = 0x01
DEFAULT_CHUNK_SIZE = 1200  # keeps each packet under the physical MTU, so no fragmentation


@dataclass(frozen=True)
class ConfigChunk:
    """One signed chunk of a serialized config Dictionary: the body of NETWORK_CONFIG, or of
    OK(NETWORK_CONFIG_REQUEST) after its in-re fields. The signature covers network id through chunk index.
    The legacy unsigned form is refused: only a controller sends configs, and we are the controller."""
    network_id: int
    data: bytes
    flags: int
    update_id: int
    total_length: int
    index: int
    signature: bytes = field(repr=False)

    def signed_bytes(self) -> bytes:
        return (_u(self.network_id, 8) + _u(len(self.data), 2) + self.data + bytes([self.flags])
                + _u(self.update_id, 8) + _u(self.total_length, 4) + _u(self.index, 4))

    def encode(self) -> bytes:
        if len(self.signature) != crypto.SIGNATURE_SIZE:
            raise ValueError("chunk signature must be 96 bytes")
        return (self.signed_bytes() + bytes([CHUNK_SIGNATURE_TYPE]) + _u(crypto.SIGNATURE_SIZE, 2)
                + self.signature)

    @classmethod
    def read(cls, r: Reader) -> ConfigChunk:
        nwid = r.u64("network id")
        data = r.take(r.u16("chunk length"), "chunk data")
        if r.at_end():
            raise ProtocolError("unsigned legacy config chunk")
        flags = r.u8("flags")
        update_id = r.u64("update id")
        total = r.u32("total length")
        index = r.u32("chunk index")
        sig_type = r.u8("signature type")
        sig_len = r.u16("signature length")
        if sig_type != CHUNK_SIGNATURE_TYPE or sig_len != crypto.SIGNATURE_SIZE:
            raise ProtocolError(f"chunk signature type {sig_type} length {sig_len}")
        if index + len(data) > total:
            raise ProtocolError(f"chunk [{index}, {index + len(data)}) exceeds total {total}")
        return cls(nwid, data, flags, update_id, total, index, r.take(sig_len, "chunk signature"))

    @classmethod
    def decode(cls, payload: bytes) -> ConfigChunk:
        r = Reader(payload)
        chunk = cls.read(r)
        r.expect_end("config chunk")
        return chunk

    def verify(self, controller_public_key: bytes) -> bool:
        return crypto.verify(controller_public_key, self.signed_bytes(), self.signature)

    @property
    def chunk_id(self) -> bytes:
        """How a member recognizes a duplicate chunk: signature bytes 0-7 XOR 8-15."""
        return bytes(a ^ b for a, b in zip(self.signature[:8], self.signature[8:16]))

    @classmethod
    def make(cls, signer: Identity, network_id: int, data: bytes, update_id: int, total_length: int, index: int,
             flags: int = 0) -> ConfigChunk:
        unsigned = cls(network_id, data, flags, update_id, total_length, index, b"")
        return cls(network_id, data, flags, update_id, total_length, index, signer.sign(unsigned.signed_bytes()))


def chunk_config(signer: Identity, network_id: int, dictionary: bytes, update_id: int,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[ConfigChunk]:
    """Split a serialized config into signed chunks. update_id must be random, non-zero and new for every
    config: members keep at most three updates in flight and tell chunks apart by it."""
    if update_id == 0 or not 0 < update_id < 1 << 64:
        raise ValueError("update id must be a non-zero 64-bit value")
    if not 0 < chunk_size <= _MAX_U16:
        raise ValueError("bad chunk size")
    if not dictionary:
        raise ValueError("empty config")
    return [ConfigChunk.make(signer, network_id, dictionary[i:i + chunk_size], update_id, len(dictionary), i)
            for i in range(0, len(dictionary), chunk_size)]


@dataclass(frozen=True)
class OkNetworkConfig:
    """OK(NETWORK_CONFIG_REQUEST): the reply form of a chunk (a push uses NETWORK_CONFIG with the bare chunk)."""
    in_re_packet_id: bytes
    chunk: ConfigChunk

    def encode(self) -> bytes:
        return Ok(Verb.NETWORK_CONFIG_REQUEST, self.in_re_packet_id, self.chunk.encode()).encode()

    @classmethod
    def decode(cls, payload: bytes) -> OkNetworkConfig:
        ok = Ok.decode(payload)
        if ok.in_re_verb != Verb.NETWORK_CONFIG_REQUEST:
            raise ProtocolError(f"OK in re verb {ok.in_re_verb}, not NETWORK_CONFIG_REQUEST")
        return cls(ok.in_re_packet_id, ConfigChunk.decode(ok.body))


__all__ = ["ConfigChunk", "Echo", "Error", "Hello", "MoonRef", "MulticastLike", "MulticastSubscription",
           "NetworkConfigRequest", "Ok", "OkHello", "OkNetworkConfig", "OkWhois", "Rendezvous", "Whois",
           "chunk_config", "hello_identity"]
