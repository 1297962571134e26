"""Group commit: many children's events appended in JetStream atomic batches, one fsync and one
PubAck per batch, with every guarantee of a single append kept.

- Every event carries `Nats-Msg-Id` = its event id; a batch is all or nothing.
- The first event of each child in a batch carries that child's expected last sequence (the server
  checks expected sequences against the stream as it was before the batch, so later events of the
  same child in the batch ride on the first one's check and on the batch's atomicity).
- Every event is checked by the lifecycle rules against a write-side cache of child states. The
  cache is only a guess: a stale entry makes the server refuse the whole batch (10071), after which
  the batch's children are re-read from the log and their events decided again. A message id already
  stored inside the dedup window (10201) is handled the same way: the re-read shows it stored.
"""

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import structlog
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import codec, subjects
from refbus.contracts.events import Event
from refbus.services.core.batches import first_sequence, publish_batch
from refbus.services.core.eventlog import (
    DUPLICATE_IN_BATCH,
    MAX_BATCH,
    STREAM_FULL,
    WRONG_LAST_SEQUENCE,
    EventLog,
    LogFull,
    headers_for,
)
from refbus.services.referral import lifecycle
from refbus.services.referral.state import ChildState, apply

log = structlog.get_logger(__name__)

LOAD_CONCURRENCY = 256
PIPELINE = 2


class Outcome(Enum):
    STORED = "stored"
    RETRY = "retry"
    "Refused as a whole (stale sequence, unknown outcome): re-read the children, decide again."
    ID_TAKEN = "id_taken"
    "A message id of the batch is already in the dedup window."


@dataclass
class WriteReport:
    stored: int = 0
    duplicates: int = 0
    "Already in the log (a retry or a resumed import): skipped, not stored again."
    refused: list[lifecycle.IllegalEvent] = field(default_factory=list)
    batches: int = 0
    retried_batches: int = 0


class GroupCommitWriter:
    def __init__(self, eventlog: EventLog, batch_size: int = MAX_BATCH, timeout: float = 10.0) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        self.eventlog = eventlog
        self.batch_size = batch_size
        self.timeout = timeout
        self._states: dict[str, ChildState] = {}

    async def write(self, events: Iterable[Event]) -> WriteReport:
        """Append `events` (each child's in order; children may interleave). Returns what happened;
        raises LogFull when the stream is at its limit (nothing of the refused batch is stored)."""
        report = WriteReport()
        await self._write(events, report)
        if report.refused:
            # A refusal judged on a cached state is only final when a fresh read agrees.
            doubtful, report.refused = report.refused, []
            for refusal in doubtful:
                self._states[refusal.event.child] = await self.eventlog.load(refusal.event.child)
            await self._write([refusal.event for refusal in doubtful], report)
        return report

    async def _write(self, events: Iterable[Event], report: WriteReport) -> None:
        queues: dict[str, deque[Event]] = {}
        for event in events:
            queues.setdefault(event.child, deque()).append(event)
        # Two batches in flight over disjoint children: the next one is built and sent while the
        # server stores and fsyncs the previous one. A child is in one batch at a time, so its
        # expected sequence is always known when its batch is built.
        in_flight: dict[asyncio.Task[Outcome], tuple[list[tuple[Event, dict[str, str]]], set[str]]] = {}
        busy: set[str] = set()
        unknown = list(queues)
        "Children whose state this writer has yet to read: all at first, then those of refused batches."
        refusals_in_a_row = 0
        try:
            while queues or in_flight:
                # After repeated refusals, go one event at a time, alone, to isolate the culprit.
                isolating = refusals_in_a_row >= 3
                while queues and len(in_flight) < (1 if isolating else PIPELINE):
                    if unknown:
                        await self._load_missing(unknown)
                        unknown = []
                    batch = self._next_batch(queues, report, 1 if isolating else self.batch_size, busy)
                    if not batch:
                        break
                    children = {event.child for event, _ in batch}
                    busy |= children
                    in_flight[asyncio.create_task(self._commit(batch, report))] = batch, children
                if not in_flight:
                    continue
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    batch, children = in_flight.pop(task)
                    busy -= children
                    outcome = task.result()
                    if outcome is Outcome.STORED:
                        refusals_in_a_row = 0
                    elif outcome is Outcome.ID_TAKEN and len(batch) == 1:
                        # Not in its child's history, yet the server knows the id: another event has it.
                        refused = lifecycle.IllegalEvent(batch[0][0], "event id already used by another event")
                        report.refused.append(refused)
                        self._states.pop(batch[0][0].child, None)
                        unknown.append(batch[0][0].child)
                        refusals_in_a_row = 0
                    else:
                        # Refused as a whole: forget what we believed about its children, decide again.
                        refusals_in_a_row += 1
                        report.retried_batches += 1
                        for child in children:
                            self._states.pop(child, None)
                        unknown.extend(children)
                        for event, _ in reversed(batch):
                            queues.setdefault(event.child, deque()).appendleft(event)
        finally:
            # On an error (the log is full), the other batch's outcome is still awaited and counted.
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    def _next_batch(
        self, queues: dict[str, deque[Event]], report: WriteReport, size: int, busy: set[str]
    ) -> list[tuple[Event, dict[str, str]]]:
        """Take events, child by child, until the batch is full; check each against its child's state
        (applied tentatively: a refused batch drops those states). Every child's events stay in order;
        children in a batch still in flight (`busy`) wait for it."""
        batch: list[tuple[Event, dict[str, str]]] = []
        for child in list(queues):
            if child in busy:
                continue
            queue = queues[child]
            state = self._states[child]
            first_of_child = True
            while queue and len(batch) < size:
                event = queue.popleft()
                if lifecycle.is_duplicate(state, event):
                    report.duplicates += 1
                    continue
                try:
                    lifecycle.check(state, event)
                except lifecycle.IllegalEvent as refused:
                    report.refused.append(refused)
                    continue
                # The server checks expected sequences against the stream before the batch only.
                event_headers = headers_for(event, state.last_seq if first_of_child else None)
                first_of_child = False
                apply(state, event)
                batch.append((event, event_headers))
            if not queue:
                del queues[child]
            if len(batch) >= size:
                break
        return batch

    async def _commit(self, batch: list[tuple[Event, dict[str, str]]], report: WriteReport) -> "Outcome":
        """Publish one atomic batch: stored, or refused as a whole."""
        messages = [(subjects.event_subject(e.child, e.from_sector, e.to_sector), codec.encode(e), h) for e, h in batch]
        last = len(batch)
        try:
            ack = await publish_batch(self.eventlog.nc, messages, self.timeout)
        except NatsTimeout:
            return Outcome.RETRY  # unknown outcome: re-reading the children tells what was stored
        error = ack.get("error")
        if error is None:
            first_seq = first_sequence(ack, last)
            for offset, (event, _) in enumerate(batch):
                state = self._states[event.child]
                state.last_seq = max(state.last_seq, first_seq + offset)
            report.stored += last
            report.batches += 1
            return Outcome.STORED
        code = error.get("err_code")
        if code in STREAM_FULL:
            for event, _ in batch:
                self._states.pop(event.child, None)
            raise LogFull(error.get("description", "stream full"))
        if code in WRONG_LAST_SEQUENCE or code == DUPLICATE_IN_BATCH:
            log.info("batch_refused", err_code=code, size=last)
            return Outcome.ID_TAKEN if code == DUPLICATE_IN_BATCH else Outcome.RETRY
        raise RuntimeError(f"atomic batch refused: {error}")

    async def _load_missing(self, children: list[str]) -> None:
        """Read the children the cache lacks. Reads may trail the log by a moment: a stale state
        makes the server refuse the batch, and the retry reads again."""
        missing = [c for c in children if c not in self._states]
        if len(missing) > LOAD_CONCURRENCY:
            # Many at once (an import): one listing of the index tells which children are new.
            known = await self.eventlog.children()
            for child in missing:
                if child not in known:
                    self._states[child] = ChildState(child=child)
            missing = [c for c in missing if c in known]
        for start in range(0, len(missing), LOAD_CONCURRENCY):
            chunk = missing[start : start + LOAD_CONCURRENCY]
            states = await asyncio.gather(*(self.eventlog.load(c, fresh=False) for c in chunk))
            self._states.update(zip(chunk, states, strict=True))
