"""An event store in memory, with the JetStream store's interface and semantics (per-child expected
sequence, all-or-nothing appends, duplicate ids refused), for unit tests of handlers in
milliseconds. Never a substitute for the real one: the same contract tests run on both
(tests/contract/test_event_store.py)."""

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from refbus.contracts import codec, subjects
from refbus.contracts.events import Event
from refbus.services.audit import keys, proof
from refbus.services.eventstore.records import ConcurrencyConflict, DeadLetter, EventIdTaken, StoredEvent
from refbus.services.eventstore.store import EventStore, Unit


class InMemoryEventStore(EventStore):
    def __init__(self, ring: keys.Keyring | None = None) -> None:
        super().__init__()
        self.ring = ring
        self.log: list[StoredEvent] = []
        self.messages: list[tuple[int, datetime, str, dict[str, str], bytes]] = []
        "The log as the server would hold it: (seq, stored at, subject, headers, bytes), for verification."

        self.dead_letters: dict[str, list[DeadLetter]] = {}
        self._ids: dict[object, int] = {}
        self._last: dict[str, int] = {}

    async def append(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link | None = None
    ) -> list[int]:
        actual = self._last.get(child, 0)
        if actual != expected_last_seq:
            raise ConcurrencyConflict(child, expected_last_seq, f"wrong last sequence: {actual}", actual)
        for event in events:
            if event.event_id in self._ids:
                raise EventIdTaken(event, self._ids[event.event_id])
        stored = []
        now = datetime.now(UTC)
        link = await self._prev_link(child, expected_last_seq, prev)
        ring = self.ring or keys.installed()
        messages = []
        for event in events:
            payload = codec.encode(event)
            link = proof.next_link(link, payload)
            headers = {proof.CHAIN: proof.format_link(link)}
            kid = ring.current(keys.signer(event)) if ring is not None else None
            if kid is not None:
                headers[proof.KEY] = kid
            messages.append((subjects.event_subject(event.child, event.from_sector, event.to_sector), payload, headers))
        if ring is not None:
            proof.sign_messages(messages, ring.private)  # type: ignore[arg-type]
        for event, (subject, payload, headers) in zip(events, messages, strict=True):
            seq = len(self.log) + 1
            self.messages.append((seq, now, subject, headers, payload))
            # Through the codec, as on the wire: what is read back is what a reader of the log gets.
            self.log.append(StoredEvent(
                seq, now, codec.decode(payload), None, headers[proof.CHAIN], headers.get(proof.KEY),
                headers.get(proof.SIG),
            ))
            self._ids[event.event_id] = seq
            self._last[event.child] = seq
            stored.append(seq)
        return stored

    async def append_together(self, units: Sequence[Unit]) -> list[list[int]]:
        # Every check before any write, and no await that yields between them: all or none.
        ids: set[object] = set()
        for child, expected, events, _ in units:
            actual = self._last.get(child, 0)
            if actual != expected:
                raise ConcurrencyConflict(child, expected, f"wrong last sequence: {actual}")
            for event in events:
                if event.event_id in self._ids or event.event_id in ids:
                    raise ConcurrencyConflict(child, expected, "an event id is already stored")
                ids.add(event.event_id)
        return [await self.append(child, expected, events, prev) for child, expected, events, prev in units]

    async def history(
        self, child: str, *, min_seq: int = 0, upto_seq: int | None = None, fresh: bool = True, paged: bool = True
    ) -> list[StoredEvent]:
        return [
            e for e in self.log
            if e.event is not None and e.event.child == child and (upto_seq is None or e.seq <= upto_seq)
        ]

    async def event_count(self, child: str) -> int:
        return sum(1 for e in self.log if e.event is not None and e.event.child == child)

    async def replay(self, from_seq: int = 1) -> AsyncIterator[StoredEvent]:  # type: ignore[override]
        for stored in self.log[from_seq - 1 :]:
            yield stored

    async def children(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for stored in self.log:
            if stored.event is not None:
                found[stored.event.child] = found.get(stored.event.child, 0) + 1
        return found

    async def set_aside(self, by: str, record: DeadLetter) -> None:
        kept = self.dead_letters.setdefault(by, [])
        if all((r.consumer, r.stream_seq) != (record.consumer, record.stream_seq) for r in kept):
            kept.append(record)
