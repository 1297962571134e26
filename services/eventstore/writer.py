"""The write side of the JetStream store: group commit under every append.

Appends made while a publish is in flight wait and go together as one JetStream atomic batch (one
fsync, one PubAck), each child's events as one unit, at most one unit per child in a batch. Only the
first message of a unit carries the child's expected last sequence: the server checks expected
sequences against the stream as it was before the batch, and the batch's atomicity covers the rest.
Every message carries `Nats-Msg-Id` = its event id. The one classifier of the server's refusals is
`_refusal`. Why and how fast: docs/decisions/0003-group-commit.md.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from refbus.contracts import codec, subjects
from refbus.contracts.events import Event, event_type
from refbus.services.audit import keys, proof
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.records import ConcurrencyConflict, EventIdTaken, LogFull

MAX_BATCH = 500
PIPELINE = 2
"Batches in flight at once, over disjoint children: the next is built while the server fsyncs one."
ATOMIC_FROM = 8
"Fewer single-event appends than this go as separate publishes: an atomic batch is staged on disk."

_ids_encoder = msgspec.json.Encoder()


def headers_for(event: Event, expected_last_seq: int | None) -> dict[str, str]:
    """The headers of an append. `expected_last_seq=None` omits the per-child check: only for an
    event riding in an atomic batch behind an earlier event of the same child that carries it."""
    # Both ids in their canonical form from one call into msgspec (str(UUID) is Python code).
    ids = _ids_encoder.encode((event.event_id, event.correlation_id))  # b'["<36 chars>","<36 chars>"]'
    headers = {
        jetstream.MSG_ID: ids[2:38].decode(),
        # What operators may see without reading the payload (no personal data in headers).
        "Refbus-Event-Type": event_type(event),
        "Refbus-Correlation-Id": ids[41:77].decode(),
    }
    if expected_last_seq is not None:
        headers[jetstream.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_last_seq)
        headers[jetstream.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = subjects.child_filter(event.child)
    return headers


def messages_for(
    events: Sequence[Event], expected_last_seq: int, prev: proof.Link = proof.START,
    ring: keys.Keyring | None = None,
) -> tuple[list[jetstream.Message], proof.Link]:
    """The unit's messages, each linked to the one before it in the child's chain (`prev`: the
    child's newest link) and naming the key its sender signs with (signed when its batch is sent);
    and the link of the last (the child's newest once they are stored)."""
    messages: list[jetstream.Message] = []
    for i, e in enumerate(events):
        payload = codec.encode(e)
        headers = headers_for(e, expected_last_seq if i == 0 else None)
        prev = proof.next_link(prev, payload)
        headers[proof.CHAIN] = proof.format_link(prev)
        kid = ring.current(keys.signer(e)) if ring is not None else None
        if kid is not None:
            headers[proof.KEY] = kid
        messages.append((subjects.event_subject(e.child, e.from_sector, e.to_sector), payload, headers))
    return messages, prev


@dataclass(slots=True)
class _Unit:
    child: str
    expected: int
    events: Sequence[Event]
    messages: list[jetstream.Message]
    done: "asyncio.Future[list[int]]"


VerifyDuplicate = Callable[[Event, int], Awaitable[bool]]
"Is the message stored at this sequence this very event? (asked when the server answers 'duplicate')"


def _refusal(unit: _Unit, code: object, detail: str, alone: bool) -> BaseException:
    if code in jetstream.STREAM_FULL:
        return LogFull(detail)
    if code in jetstream.WRONG_LAST_SEQUENCE:
        # Refused with its batch, the sequence the server names is the culprit's, not this child's.
        actual = jetstream.named_sequence(detail) if alone else 0
        return ConcurrencyConflict(unit.child, unit.expected, detail, actual)
    return RuntimeError(f"append refused ({code}): {detail}")


class GroupCommit:
    def __init__(
        self, nc: NATS, verify_duplicate: VerifyDuplicate, timeout: float = 5.0, ring: keys.Keyring | None = None
    ) -> None:
        self.nc = nc
        self.ring = ring
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self._verify_duplicate = verify_duplicate
        self._queue: deque[_Unit] = deque()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()

    async def append(
        self, child: str, expected_last_seq: int, events: Sequence[Event], prev: proof.Link = proof.START
    ) -> tuple[list[int], proof.Link]:
        """The events' sequences once stored, and the child's chain link after them."""
        if not 1 <= len(events) <= MAX_BATCH:
            raise ValueError(f"1..{MAX_BATCH} events per append, not {len(events)}")
        ring = self.ring or keys.installed()
        messages, link = messages_for(events, expected_last_seq, prev, ring)
        unit = _Unit(child, expected_last_seq, events, messages, asyncio.get_running_loop().create_future())
        self._queue.append(unit)
        self._start_batches()
        return await unit.done, link

    async def append_together(
        self, units: Sequence[tuple[str, int, Sequence[Event], proof.Link]]
    ) -> list[list[int]]:
        """Several children's units as one atomic batch of their own, outside the group commit's
        queue: all stored or none (a duplicate id refuses them all; the caller re-reads)."""
        ring = self.ring or keys.installed()
        loop = asyncio.get_running_loop()
        batch = [
            _Unit(child, expected, events, messages_for(events, expected, prev, ring)[0], loop.create_future())
            for child, expected, events, prev in units
        ]
        await self._publish_atomic(batch, split_duplicates=False)
        outcomes = [await asyncio.gather(unit.done, return_exceptions=True) for unit in batch]
        for (outcome,) in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [outcome for (outcome,) in outcomes]  # type: ignore[misc]

    def _start_batches(self) -> None:
        while self._queue and len(self._in_flight) < PIPELINE:
            batch = self._next_batch()
            if not batch:
                return
            task = asyncio.create_task(self._commit(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: "asyncio.Task[None]") -> None:
        self._in_flight.discard(task)
        self._start_batches()

    def _next_batch(self) -> list[_Unit]:
        """Units in arrival order, one per child, children of a batch in flight waiting for it."""
        batch: list[_Unit] = []
        later: list[_Unit] = []
        size = 0
        while self._queue:
            unit = self._queue.popleft()
            if unit.child in self._busy or size + len(unit.messages) > MAX_BATCH:
                later.append(unit)
                if size + len(unit.messages) > MAX_BATCH:
                    break
                continue
            self._busy.add(unit.child)
            batch.append(unit)
            size += len(unit.messages)
        self._queue.extendleft(reversed(later))
        return batch

    async def _commit(self, batch: list[_Unit]) -> None:
        try:
            singles = all(len(u.messages) == 1 for u in batch)
            if singles and len(batch) < ATOMIC_FROM:
                # Each its own outcome: one timing out says nothing of the others.
                await asyncio.gather(*(self._publish_one(u) for u in batch))
            else:
                await self._publish_atomic(batch)
        except Exception as exc:  # no answer (timeout, connection): the outcome is unknown
            for unit in batch:
                if not unit.done.done():
                    unit.done.set_exception(exc)
        finally:
            self._busy.difference_update(u.child for u in batch)

    def _sign(self, messages: list[jetstream.Message]) -> None:
        ring = self.ring or keys.installed()
        if ring is not None:
            proof.sign_messages(messages, ring.private)  # type: ignore[arg-type]

    async def _publish_one(self, unit: _Unit) -> None:
        self._sign(unit.messages)
        subject, payload, headers = unit.messages[0]
        try:
            ack = await self.js.publish(subject, payload, timeout=self.timeout, headers=headers)
        except APIError as exc:
            unit.done.set_exception(_refusal(unit, exc.err_code, exc.description or "", alone=True))
            return
        except Exception as exc:
            unit.done.set_exception(exc)
            return
        if ack.duplicate and not await self._verify_duplicate(unit.events[0], ack.seq):
            unit.done.set_exception(EventIdTaken(unit.events[0], ack.seq))
            return
        unit.done.set_result([ack.seq])

    async def _publish_atomic(self, batch: list[_Unit], split_duplicates: bool = True) -> None:
        messages = [message for unit in batch for message in unit.messages]
        self._sign(messages)
        ack = await jetstream.publish_batch(self.nc, messages, self.timeout)
        error = ack.get("error")
        if not isinstance(error, dict):
            seq = jetstream.first_sequence(ack, len(messages))
            for unit in batch:
                unit.done.set_result(list(range(seq, seq + len(unit.messages))))
                seq += len(unit.messages)
            return
        code, detail = error.get("err_code"), f"batch of {len(messages)} refused: {error.get('description', '')}"
        if code == jetstream.DUPLICATE_IN_BATCH and split_duplicates:
            await self._isolate_duplicate(batch)
            return
        if code == jetstream.DUPLICATE_IN_BATCH:
            for unit in batch:
                unit.done.set_exception(ConcurrencyConflict(unit.child, unit.expected, "an event id is already stored"))
            return
        for unit in batch:
            unit.done.set_exception(_refusal(unit, code, detail, alone=len(batch) == 1))

    async def _isolate_duplicate(self, batch: list[_Unit]) -> None:
        """An id of the batch is stored already: our own earlier write, or another message's. Each
        unit alone finds out which; a duplicate answer is only success once the stored message is
        seen to be this very event."""
        if len(batch) > 1:
            for unit in batch:
                for _, _, headers in unit.messages:
                    for name in ("Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"):
                        headers.pop(name, None)
            await asyncio.gather(*(self._commit_alone(unit) for unit in batch))
            return
        unit = batch[0]
        # Alone and still refused: re-reading the child tells whether one of its ids is ours.
        unit.done.set_exception(ConcurrencyConflict(unit.child, unit.expected, "an event id is already stored"))

    async def _commit_alone(self, unit: _Unit) -> None:
        if len(unit.messages) == 1:
            await self._publish_one(unit)
        else:
            await self._publish_atomic([unit])
