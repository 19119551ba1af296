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
  inetaddress InetAddress (nil/IPv4/IPv6 wire form, CIDR bits) and Reader, the bounds-checked cursor
  world       planets and moons: codec, signed form, verification, replacement rule, building and signing,
              ZeroTier's built-in planet
  verbs       payload codecs: HELLO, OK(HELLO), OK/ERROR, WHOIS, ECHO, RENDEZVOUS, MULTICAST_LIKE,
              NETWORK_CONFIG_REQUEST, signed config chunks
  dictionary  the Dictionary text format (escapes, hex integers, size bound)
  rules       flow rules: the API's JSON <-> the binary form in a config's R key
  com         certificates of membership: build, sign, verify, agrees_with
  revocation  revocation credentials and the NETWORK_CREDENTIALS payload
  netconf     the netconf Dictionary from the API's network and member views; signed config chunks
  peer        peers (identity, key, replay window) and their paths, chosen as the reference does
  multicast   the MULTICAST_LIKE directory and MULTICAST_GATHER request/answer
  node        the sans-IO node of the controller role: datagrams and time in, datagrams and requests out
  endpoint    the asyncio UDP shell around a node (socket, timer, identity validation thread pool)
"""
