"""The cryptography of sealed content, pure (no I/O), from `cryptography`.

- Content: AES-256-GCM under a child's data key (random, 256 bits), a random 96-bit nonce, and as
  associated data the event it belongs to (child, referral id, event id, key id): ciphertext copied
  onto another event, or another child, does not open.
- Wrapping a data key for a reader (a sector or the auditors): an ECIES-style box. A fresh X25519
  key pair per wrap; HKDF-SHA256 over the shared secret (salt: both public keys; info: the child,
  key id and reader) gives a one-time key-encryption key; AES-256-GCM seals the data key under it,
  with the same binding as associated data. Only the reader's X25519 private key opens it.
"""

import os
import uuid

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from refbus.contracts.content import ReferralContent, SealedContent

DATA_KEY_BYTES = 32
_CONTENT_DOMAIN = b"refbus-content-v1\0"
_WRAP_DOMAIN = b"refbus-child-key-v1\0"
_ZERO_NONCE = bytes(12)  # safe: each key-encryption key is used once (a fresh ephemeral key per wrap)

_content_encoder = msgspec.msgpack.Encoder()
_content_decoder = msgspec.msgpack.Decoder(ReferralContent)


class Unopenable(Exception):
    """The bytes do not open with this key: the wrong key, or altered, or moved to another event."""


class WrappedKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One data key of a child, sealed for one reader; the value of its entry in REFBUS_CHILD_KEYS."""

    reader_key_id: str
    "The reader's content key (keys.py record) it is sealed to."
    ephemeral_public: bytes
    ciphertext: bytes


def new_data_key() -> tuple[str, bytes]:
    """(key id, key): a fresh data key for a child. The id is random too: it names, it reveals nothing."""
    return os.urandom(8).hex(), os.urandom(DATA_KEY_BYTES)


def _content_binding(child: str, referral_id: uuid.UUID, event_id: uuid.UUID, key_id: str) -> bytes:
    return b"\0".join((_CONTENT_DOMAIN, child.encode(), referral_id.bytes, event_id.bytes, key_id.encode()))


def seal(content: ReferralContent, key_id: str, key: bytes, *, child: str, referral_id: uuid.UUID,
         event_id: uuid.UUID) -> SealedContent:
    nonce = os.urandom(12)
    plain = _content_encoder.encode(content)
    binding = _content_binding(child, referral_id, event_id, key_id)
    return SealedContent(key_id=key_id, nonce=nonce, ciphertext=AESGCM(key).encrypt(nonce, plain, binding))


def open_sealed(sealed: SealedContent, key: bytes, *, child: str, referral_id: uuid.UUID,
                event_id: uuid.UUID) -> ReferralContent:
    binding = _content_binding(child, referral_id, event_id, sealed.key_id)
    try:
        plain = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, binding)
    except (InvalidTag, ValueError):
        raise Unopenable("the content does not open with this key for this event") from None
    return _content_decoder.decode(plain)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_encryption_key(shared: bytes, ephemeral: bytes, reader_public: bytes, binding: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + reader_public, info=binding).derive(shared)


def _wrap_binding(child: str, key_id: str, reader: str) -> bytes:
    return b"\0".join((_WRAP_DOMAIN, child.encode(), key_id.encode(), reader.encode()))


def wrap(key: bytes, *, child: str, key_id: str, reader: str, reader_key_id: str,
         reader_public: bytes) -> WrappedKey:
    """`key` sealed for `reader`, whose content key is `reader_public` (32 raw X25519 bytes)."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _raw(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(reader_public))
    binding = _wrap_binding(child, key_id, reader)
    kek = _key_encryption_key(shared, ephemeral_public, reader_public, binding)
    return WrappedKey(reader_key_id=reader_key_id, ephemeral_public=ephemeral_public,
                      ciphertext=AESGCM(kek).encrypt(_ZERO_NONCE, key, binding))


def unwrap(wrapped: WrappedKey, private: X25519PrivateKey, *, child: str, key_id: str, reader: str) -> bytes:
    reader_public = _raw(private.public_key())
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(wrapped.ephemeral_public))
        binding = _wrap_binding(child, key_id, reader)
        kek = _key_encryption_key(shared, wrapped.ephemeral_public, reader_public, binding)
        return AESGCM(kek).decrypt(_ZERO_NONCE, wrapped.ciphertext, binding)
    except (InvalidTag, ValueError):
        raise Unopenable(f"the wrapped key does not open with {reader}'s content key") from None

