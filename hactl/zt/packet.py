"""ZeroTier packets: the 28-byte header, armor/dearmor with Salsa20/12-Poly1305, hops and HELLO's encrypted tail.

Wire layout (big-endian): [0:8] packet id, which is also the cipher nonce | [8:13] destination | [13:18] source |
[18] flags: 0x80 legacy "encrypted", 0x40 fragmented, 0x38 cipher suite, 0x07 hops | [19:27] first 8 bytes of the
Poly1305 tag | [27] verb, 0x80 = payload LZ4-compressed | [28:] payload.

The Salsa20 key is the peer key mangled with the header and the packet length, so that a tag authenticates the
header too; the hop bits are masked out of it because relays increment them. We speak cipher 1 (encrypted) and
verify cipher 0 (MAC only, what HELLO uses); AES-GMAC-SIV (cipher 3) is never negotiated because we advertise
protocol version 11.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from hactl.zt import crypto
from hactl.zt.address import address_from_bytes, address_to_bytes
from hactl.zt.compression import HEADER_SIZE, MAX_PACKET_LENGTH, lz4_decompress
from hactl.zt.errors import ProtocolError

PHYSICAL_MTU = 1432  # packets longer than this travel as a head and fragments
RELAY_MAX_HOPS = 3  # a relay forwards only packets with fewer hops than this

FLAG_ENCRYPTED = 0x80
FLAG_FRAGMENTED = 0x40
_CIPHER_MASK = 0x38
_HOPS_MASK = 0x07
VERB_COMPRESSED = 0x80
_VERB_MASK = 0x1F
FRAGMENT_INDICATOR = 0xFF  # at byte 13 (where a packet has its source address) marks a fragment
_IDX_FLAGS = 18
_IDX_MAC = 19
_IDX_VERB = 27


class Cipher(IntEnum):
    POLY1305_NONE = 0  # MAC only, payload in clear (HELLO)
    POLY1305_SALSA2012 = 1
    NONE = 2  # "trusted path": refused
    AES_GMAC_SIV = 3  # not supported: we keep peers on Salsa20/12 by advertising protocol 11


class Verb(IntEnum):
    NOP = 0x00
    HELLO = 0x01
    ERROR = 0x02
    OK = 0x03
    WHOIS = 0x04
    RENDEZVOUS = 0x05
    FRAME = 0x06
    EXT_FRAME = 0x07
    ECHO = 0x08
    MULTICAST_LIKE = 0x09
    NETWORK_CREDENTIALS = 0x0A
    NETWORK_CONFIG_REQUEST = 0x0B
    NETWORK_CONFIG = 0x0C
    MULTICAST_GATHER = 0x0D
    MULTICAST_FRAME = 0x0E
    PUSH_DIRECT_PATHS = 0x10
    ACK = 0x12
    QOS_MEASUREMENT = 0x13
    USER_MESSAGE = 0x14
    REMOTE_TRACE = 0x15
    PATH_NEGOTIATION_REQUEST = 0x16


class ErrorCode(IntEnum):
    INVALID_REQUEST = 0x01
    BAD_PROTOCOL_VERSION = 0x02
    OBJ_NOT_FOUND = 0x03
    IDENTITY_COLLISION = 0x04
    UNSUPPORTED_OPERATION = 0x05
    NEED_MEMBERSHIP_CERTIFICATE = 0x06
    NETWORK_ACCESS_DENIED = 0x07
    UNWANTED_MULTICAST = 0x08
    NETWORK_AUTHENTICATION_REQUIRED = 0x09


def new_packet_id() -> bytes:
    # The id is the Salsa20 nonce: it must never repeat under one key, hence 64 random bits.
    return os.urandom(8)


@dataclass(frozen=True)
class Header:
    """The clear-text header of a received datagram: enough to find the peer key before authenticating."""
    packet_id: bytes
    destination: int
    source: int
    flags: int
    mac: bytes

    @property
    def cipher(self) -> int:
        return (self.flags & _CIPHER_MASK) >> 3

    @property
    def hops(self) -> int:
        return self.flags & _HOPS_MASK

    @property
    def fragmented(self) -> bool:
        return bool(self.flags & FLAG_FRAGMENTED)

    @classmethod
    def parse(cls, datagram: bytes) -> Header:
        if len(datagram) < HEADER_SIZE:
            raise ProtocolError(f"packet of {len(datagram)} bytes is shorter than the {HEADER_SIZE}-byte header")
        if len(datagram) > MAX_PACKET_LENGTH:
            raise ProtocolError(f"packet of {len(datagram)} bytes exceeds {MAX_PACKET_LENGTH}")
        if datagram[13] == FRAGMENT_INDICATOR:
            raise ProtocolError("datagram is a fragment, not a packet")
        return cls(packet_id=bytes(datagram[0:8]), destination=address_from_bytes(bytes(datagram[8:13])),
                   source=address_from_bytes(bytes(datagram[13:18])), flags=datagram[_IDX_FLAGS],
                   mac=bytes(datagram[_IDX_MAC:_IDX_VERB]))


@dataclass(frozen=True)
class Packet:
    """A packet in clear: what dearmor returns and armor takes. payload starts after the verb byte and is
    already decompressed."""
    packet_id: bytes
    destination: int
    source: int
    verb: int
    payload: bytes
    hops: int = 0
    cipher: int = Cipher.POLY1305_SALSA2012


def _mangled_key(key: bytes, head: bytes, flags: int, total_length: int) -> bytes:
    # Binding the header and the length into the key makes the MAC cover them; hops are left out (relays
    # change them), the length goes in little-endian.
    mk = bytearray(key[:32])
    for i in range(18):
        mk[i] ^= head[i]
    mk[18] ^= flags & 0xF8
    mk[19] ^= total_length & 0xFF
    mk[20] ^= (total_length >> 8) & 0xFF
    return bytes(mk)


def _keystream_xor(key: bytes, head: bytes, flags: int, total_length: int, body: bytes) -> bytes:
    """Salsa20/12 over 64 zero bytes then body: bytes [0:32] are the Poly1305 key, [64:] body XOR keystream
    from block 1 (the rest of block 0 is discarded, as in the reference)."""
    return crypto.salsa20_12_xor(_mangled_key(key, head, flags, total_length), bytes(head[0:8]),
                                 bytes(64) + body)


def armor(packet: Packet, key: bytes) -> bytes:
    """The datagram for packet under the 48-byte peer key (cipher 0 or 1; uncompressed payload). Sets the
    fragmented flag if the result exceeds the physical MTU, as the reference does before armoring."""
    if packet.cipher not in (Cipher.POLY1305_NONE, Cipher.POLY1305_SALSA2012):
        raise ValueError(f"cannot armor with cipher {packet.cipher}")
    # verb is the verb byte as sent: it may carry VERB_COMPRESSED when payload is already LZ4 (we never
    # compress, but tests build packets the way nodes do).
    if len(packet.packet_id) != 8 or not 0 <= packet.hops <= 7 or not 0 <= packet.verb <= 0xFF:
        raise ValueError("bad packet id, hop count or verb")
    total = HEADER_SIZE + len(packet.payload)
    if total > MAX_PACKET_LENGTH:
        raise ValueError(f"packet of {total} bytes exceeds {MAX_PACKET_LENGTH}")
    flags = (packet.cipher << 3) | packet.hops
    if packet.cipher == Cipher.POLY1305_SALSA2012:
        flags |= FLAG_ENCRYPTED
    if total > PHYSICAL_MTU:
        flags |= FLAG_FRAGMENTED
    head = packet.packet_id + address_to_bytes(packet.destination) + address_to_bytes(packet.source)
    body = bytes([packet.verb]) + packet.payload
    out = _keystream_xor(key, head, flags, total, body)
    if packet.cipher == Cipher.POLY1305_SALSA2012:
        body = out[64:]
    tag = crypto.poly1305(out[:32], body)
    return head + bytes([flags]) + tag[:8] + body


def dearmor(datagram: bytes, key: bytes, *, allow_cipher0: bool = True) -> Packet:
    """Authenticate and decrypt a datagram from the peer whose 48-byte key is key; decompress its payload.
    ProtocolError if it is not a packet, uses a cipher we do not speak, fails the MAC or does not decompress.
    allow_cipher0: real nodes accept MAC-only packets of any verb; callers may restrict them to HELLO."""
    header = Header.parse(datagram)
    cipher = header.cipher
    if cipher not in (Cipher.POLY1305_NONE, Cipher.POLY1305_SALSA2012):
        raise ProtocolError(f"cipher suite {cipher} is not accepted")
    if cipher == Cipher.POLY1305_NONE and not allow_cipher0:
        raise ProtocolError("unencrypted packet refused")
    body = bytes(datagram[_IDX_VERB:])
    out = _keystream_xor(key, datagram, header.flags, len(datagram), body)
    tag = crypto.poly1305(out[:32], body)
    if not crypto.constant_time_equal(tag[:8], header.mac):
        raise ProtocolError("MAC check failed")
    plain = out[64:] if cipher == Cipher.POLY1305_SALSA2012 else body
    verb_byte = plain[0]
    payload = plain[1:]
    if verb_byte & VERB_COMPRESSED:
        payload = lz4_decompress(payload, MAX_PACKET_LENGTH - HEADER_SIZE)
    return Packet(packet_id=header.packet_id, destination=header.destination, source=header.source,
                  verb=verb_byte & _VERB_MASK, payload=payload, hops=header.hops, cipher=cipher)


def hops_of(datagram: bytes) -> int:
    """The hop count of a packet or fragment (they keep it in different places)."""
    if len(datagram) >= 16 and datagram[13] == FRAGMENT_INDICATOR:
        return datagram[15] & _HOPS_MASK
    if len(datagram) < HEADER_SIZE:
        raise ProtocolError(f"datagram of {len(datagram)} bytes is neither a packet nor a fragment")
    return datagram[_IDX_FLAGS] & _HOPS_MASK


def increment_hops(datagram: bytes) -> bytes:
    """The datagram a relay forwards: the same bytes with one more hop (the MAC does not cover hops).
    ProtocolError once the relay limit is reached."""
    hops = hops_of(datagram)
    if hops >= RELAY_MAX_HOPS:
        raise ProtocolError(f"hop limit reached ({hops} hops)")
    idx = 15 if datagram[13] == FRAGMENT_INDICATOR else _IDX_FLAGS
    out = bytearray(datagram)
    out[idx] = (out[idx] & ~_HOPS_MASK & 0xFF) | (hops + 1)
    return bytes(out)


def crypt_hello_tail(key: bytes, packet_id: bytes, data: bytes) -> bytes:
    """Encrypt or decrypt the part of a HELLO after the planet timestamp (the moon list). Its own Salsa20/12
    stream: unmangled key, packet id with the low 3 bits of its last byte cleared as nonce. The sender applies
    it before armor, so the receiver must check the MAC first and then call this."""
    nonce = bytes(packet_id[:7]) + bytes([packet_id[7] & 0xF8])
    return crypto.salsa20_12_xor(bytes(key[:32]), nonce, bytes(data))
