"""The ZeroTier 1.x protocol, sans-IO: objects fed bytes that return bytes; no sockets here.

Modules, each with one job:
  errors      ProtocolError, the one exception bad network input raises
  _native     ctypes bindings to Debian's libsodium (Salsa20) and liblz4 (bounded decompression)
  crypto      Salsa20/12 and /20, Poly1305, SHA-512, C25519 (X25519 + Ed25519 as ZeroTier combines them)
  address     40-bit ZeroTier addresses
  identity    Identity: binary and string forms, the memory-hard address hash, validation, generation
  compression bounded LZ4 block decompression
  packet      the packet header, Salsa20/12-Poly1305 armor (cipher 0 and 1), hops, HELLO's encrypted tail
  fragment    fragments and their bounded reassembly
"""
