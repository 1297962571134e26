"""Sealed content, the cryptography alone: a party opens it, a non-party's key does not, nor does
ciphertext moved onto another event; an event written before content existed still decodes."""

import uuid
from datetime import date

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from refbus.contracts import codec
from refbus.contracts.content import ReferralContent
from refbus.contracts.events import ReferralRequested
from refbus.services.privacy import sealing
from tests.factories import new_child, request

CONTENT = ReferralContent(name="Ana Popa", date_of_birth=date(2016, 2, 29), guardian_contact="+40 700 000 000",
                          address="Str. Lunga 1, Iasi", note="Needs a family doctor.")


def public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_the_receiver_opens_a_non_party_does_not() -> None:
    child, referral, event = new_child(), uuid.uuid4(), uuid.uuid4()
    health, justice = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    key_id, key = sealing.new_data_key()
    sealed = sealing.seal(CONTENT, key_id, key, child=child, referral_id=referral, event_id=event)
    assert b"Ana Popa" not in msgspec.json.encode(sealed) and b"Lunga" not in sealed.ciphertext
    wrapped = sealing.wrap(key, child=child, key_id=key_id, reader="health", reader_key_id="content-health-x",
                           reader_public=public(health))
    opened = sealing.unwrap(wrapped, health, child=child, key_id=key_id, reader="health")
    assert sealing.open_sealed(sealed, opened, child=child, referral_id=referral, event_id=event) == CONTENT
    with pytest.raises(sealing.Unopenable):  # justice's key: not the reader's
        sealing.unwrap(wrapped, justice, child=child, key_id=key_id, reader="health")
    with pytest.raises(sealing.Unopenable):  # health's wrap claimed for another child
        sealing.unwrap(wrapped, health, child=new_child(), key_id=key_id, reader="health")


def test_ciphertext_moved_to_another_event_or_altered_does_not_open() -> None:
    child, referral, event = new_child(), uuid.uuid4(), uuid.uuid4()
    key_id, key = sealing.new_data_key()
    sealed = sealing.seal(CONTENT, key_id, key, child=child, referral_id=referral, event_id=event)
    for where in ({"child": new_child()}, {"referral_id": uuid.uuid4()}, {"event_id": uuid.uuid4()}):
        bound = {"child": child, "referral_id": referral, "event_id": event, **where}
        with pytest.raises(sealing.Unopenable):
            sealing.open_sealed(sealed, key, **bound)  # type: ignore[arg-type]
    flipped = msgspec.structs.replace(sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:])
    with pytest.raises(sealing.Unopenable):
        sealing.open_sealed(flipped, key, child=child, referral_id=referral, event_id=event)


def test_a_referral_stored_before_content_existed_still_decodes() -> None:
    old = msgspec.json.decode(codec.encode(request(new_child())))
    del old["sealed"]
    event = codec.decode(msgspec.json.encode(old))
    assert isinstance(event, ReferralRequested) and event.sealed is None


def test_the_largest_content_sealed_fits_an_event() -> None:
    widest = "\U0001f600"  # four bytes of UTF-8 each
    largest = ReferralContent(name=widest * 200, guardian_contact=widest * 200, address=widest * 300,
                              note=widest * 2000, date_of_birth=date(2020, 1, 1))
    event = request(new_child())
    key_id, key = sealing.new_data_key()
    sealed = sealing.seal(largest, key_id, key, child=event.child, referral_id=event.referral_id,
                          event_id=event.event_id)
    data = codec.encode(msgspec.structs.replace(event, sealed=sealed))
    assert len(data) <= codec.MAX_EVENT_BYTES and codec.decode(data).sealed == sealed  # type: ignore[union-attr]
