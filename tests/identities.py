"""Controller identities for tests, so that creating a cluster does not search for a new identity each time.

``POOL``: real ZeroTier identities (address derived from the key by the memory-hard hash; each passes
Identity.locally_validate), generated once with Identity.generate and kept here as test vectors. A cluster a test
starts in-process takes the next one (tests/conftest.py replaces the controller's new_controller_identity, which
costs ~1-3 s per cluster in pure Python). Never use them outside tests: their private keys are public here.

``bound_key(address)``: a key pair bound to an ARBITRARY address, for the state machine's own tests, whose
fixtures use addresses such as a1b2c3d4e5. No ZeroTier node would accept such an identity, but the state machine
never runs the memory-hard hash (the proposer does), so it takes it like a real one.
"""
from __future__ import annotations

import hashlib
import itertools
import threading

from hactl.zt import crypto
from hactl.zt.identity import Identity

POOL_STRINGS = (
    "5455a7a4de:0:c9e9dbcacc52b3675431a43f42c6b11df90339585fb94e5fa7f830c2a42e9417ad60c02acf32b708d101db7b0040567383"
    "0c4c7062da26b60e68fa5aeb919372:bcaa6fdb8ffb4bed684324d4e1d6469446fdf834a0300bcc8f0c5a50805103b92c65b415e58a1556"
    "91afd8da38568c28c3add51cc40b0a7c199a2aefd58096d7",
    "39a5cbdb98:0:72321b0fd35dbff29cd693a33339f68df173563a2e9cf907cbe008b367b5b11837211b5eae24237d29b122d1789a62b628"
    "779edf7080969a545fea8e30a50e22:a57e137562b5058055c064fb52a71a22b8e4474b4104c8d7d59d0f59636cb85227e1f2bc9fbb68f1"
    "1685be28e1bb317a7ebf0546fe9d177cadee6a8618fff08b",
    "4ccd9fc519:0:1b20bf11cc7834555c0d631733198828f1d2f2866b9785a6fd7e90591eb7c0268267661814f728c95cfe5f8d8657f44e3d"
    "13c530f47f82e54d4b5da4a277d30c:e2ee6423cab0437c1d18a931dd7e8a3281b0be79d24b3b5841942f4dafe811864698f6482f139778"
    "1b75b18a970fce1958856258f17e117f1ffecd30d855dc0a",
    "d078a51a2a:0:2bc3804af6ec67439c688d74f346c7f4ee38c89fd38c50026405b755a099db4a20a21706c09e451ea25863f78b72dd459f"
    "a0620406174922fc88714c1d57543a:58b6a637c0a8e6a3deb5b14691b2d0f04a42d4dd3c52543e5760be467f012e55675745f227270dbf"
    "c9598a749c20a35becf0ca08b1272a9fe2f5074801928a08",
    "86c549e274:0:b8f3310e9f561466d89923629154ad5dac59d356cb7455a25c1f8c633f6ffa00a858aece59081976b2e6406af606ece097"
    "7c0948b04e7ca4d37472f454c7e3ee:edf70afb067006ebc956730e63e9967005b8e6cf6f3fdf9c8bca78367d4c32d306d20a3a80a3a1af"
    "5732cd96c61372dcf0d45d6d936828c00204f9e0cdc97999",
    "627e64042b:0:7c5fdd4f9200cf882ab585536b0922284109d377dc76868f6fd090526c527f67fc949f0b779bdb6d19af2eb542b7c41509"
    "043029d8a412ae2bde0c107a70d230:7ee77c0d079f64c6d240d47628198fc8ad7a408c97b3f61f04fe4aa891fbc4441c602544e6f2d7c1"
    "379ff3bff6e6163b12e9715abb8467ddfb7c9b75babd86ad",
)
POOL = tuple(Identity.from_string(s) for s in POOL_STRINGS)

_next = itertools.cycle(POOL)
_lock = threading.Lock()  # (called from executor threads)


def next_controller_identity() -> Identity:
    """A stand-in for hactl.fsm.commands.new_controller_identity: the pool's identities in turn, so clusters
    started one after another get different addresses (until the pool wraps around: separate clusters may share
    an identity, as they may share nothing else)."""
    with _lock:
        return next(_next)


def bound_identity(address: str, key: int = 0) -> Identity:
    """A valid key pair (the private key matches the public one) under ``address``, which is NOT derived from it:
    for state machine tests only (see the module docstring). Deterministic: ``key`` picks one of its key pairs."""
    private = hashlib.sha512(f"hactl test controller {address}/{key}".encode()).digest()
    return Identity(int(address, 16), crypto.public_from_private(private), private)


def bound_key(address: str, key: int = 0) -> bytes:
    """bound_identity(address, key) in the form cluster.init and restore.begin carry (their ``signing_key``)."""
    return bound_identity(address, key).to_bytes(include_private=True)
