"""Sealing a referral's content, and opening it for one reader.

The referring gateway seals: a fresh data key of the child for the referral, wrapped for the
referrer, the receiver and the auditors and kept in REFBUS_CHILD_KEYS before the event is appended
(a receiver never meets an event whose key it was not yet given), then the content sealed under it.
A reader opens with its own content key: its gateway (a sector), or `refbus history` (the auditors).
One data key per referral, not one per child: a sector reads the content of the referrals it is a
party to and no other of the child's (docs/decisions/0021-sealed-content.md).
"""

import asyncio
from uuid import UUID

import structlog
from nats.aio.client import Client as NATS

from refbus.contracts import subjects
from refbus.contracts.content import ContentView, ReferralContent, SealedContent
from refbus.contracts.events import Event, ReferralRequested
from refbus.contracts.vocabulary import Sector
from refbus.services.audit import keys
from refbus.services.privacy import sealing
from refbus.services.privacy.keystore import ChildKeys, Erased, KeysUnavailable

log = structlog.get_logger(__name__)

CLEAR = "clear"
ERASED = ContentView(state="erased")
WITHHELD = ContentView(state="withheld")

__all__ = ["ContentKeys", "KeysUnavailable", "NoContentKey"]


class NoContentKey(Exception):
    """A reader's content key is not among the ring's public records: nothing can be wrapped for it."""


class ContentKeys:
    """One reader's view of sealed content: `reader` is a sector (its gateway) or keys.AUDITORS."""

    def __init__(self, nc: NATS, ring: keys.Keyring, reader: Sector | str, timeout: float = 5.0) -> None:
        self.ring = ring
        self.reader = reader.value if isinstance(reader, Sector) else reader
        self.store = ChildKeys(nc, timeout)

    def _public(self, reader: str) -> tuple[str, bytes]:
        record = self.ring.content_public(keys.content_owner(reader))
        if record is None:
            raise NoContentKey(f"no content key of {reader} is known here: provision the keys (refbus keys --out)")
        return record.key_id, record.public_key

    async def seal(self, content: ReferralContent, *, child: str, referral_id: UUID, event_id: UUID,
                   from_sector: Sector, to_sector: Sector) -> SealedContent:
        """`content` sealed for the referral's event, its key wrapped for both sectors and the
        auditors and stored (acknowledged) before this returns."""
        key_id, key = sealing.new_data_key()
        readers = (from_sector.value, to_sector.value, subjects.AUDITORS)
        wraps = []
        for reader in readers:
            reader_key_id, public = self._public(reader)
            wraps.append(sealing.wrap(key, child=child, key_id=key_id, reader=reader, reader_key_id=reader_key_id,
                                      reader_public=public))
        await asyncio.gather(*(self.store.put(child, r, key_id, w) for r, w in zip(readers, wraps, strict=True)))
        return sealing.seal(content, key_id, key, child=child, referral_id=referral_id, event_id=event_id)

    async def open(self, event: Event) -> ContentView | None:
        """The event's content as this reader may see it; None for an event without content."""
        if not isinstance(event, ReferralRequested) or event.sealed is None:
            return None
        sealed = event.sealed
        wrapped = await self.store.get(event.child, self.reader, sealed.key_id)
        if isinstance(wrapped, Erased):
            return ERASED
        if wrapped is None:
            return WITHHELD
        private = self.ring.content_private(wrapped.reader_key_id)
        if private is None:
            log.warning("content_key_missing", reader=self.reader, key_id=wrapped.reader_key_id)
            return WITHHELD
        try:
            key = sealing.unwrap(wrapped, private, child=event.child, key_id=sealed.key_id, reader=self.reader)
            content = sealing.open_sealed(sealed, key, child=event.child, referral_id=event.referral_id,
                                          event_id=event.event_id)
        except sealing.Unopenable as exc:
            log.warning("content_unopenable", child=event.child, event_id=str(event.event_id), error=str(exc))
            return WITHHELD
        return ContentView(state=CLEAR, content=content)
