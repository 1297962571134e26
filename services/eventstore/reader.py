"""The read side of the JetStream store: one child's history, counts, the child listing.

A history comes from the child's history pages (written by the pager) as far as they reach, the rest
from the REFBUS_CHILDREN index (the log re-keyed to one literal subject per child), and from the log
itself when the index stays behind. Every read includes all acknowledged writes: it asks the log's
leader how many events the child has on each of its subjects and reads until it has them all; the
same counts bind each payload's route to the subject it was stored on. Why this shape, with
measurements: docs/subjects.md and docs/decisions/0004-history-pages.md.
"""

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from refbus.contracts import codec, pages, subjects
from refbus.contracts.pages import PagedEvent
from refbus.services.audit import proof
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.records import IndexBehind, StoredEvent

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

# How long the index may stay behind before the rest is read from the log (after a leader failover
# it stops copying for seconds).
INDEX_PATIENCE = 0.5


class LogReader:
    def __init__(self, nc: NATS, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._batches = jetstream.BatchedDirectGet(nc)

    async def subject_counts(self, child: str) -> dict[str, int]:
        """How many events the child has on each of its subjects in REFBUS, counting every
        acknowledged write: from the leader's subject index, no message read, so no block loaded."""
        return await jetstream.subject_counts(self.nc, subjects.STREAM, subjects.child_filter(child), self.timeout)

    async def event_count(self, child: str) -> int:
        return sum((await self.subject_counts(child)).values())

    async def children(self) -> dict[str, int]:
        """Every child reference in the log, with its number of events (from the index's subject
        state, so no event is read)."""
        prefix = subjects.child_index_subject("")
        counts = await jetstream.subject_counts(
            self.nc, subjects.CHILD_INDEX_STREAM, subjects.child_index_subject("*"), self.timeout
        )
        return {subject.removeprefix(prefix): count for subject, count in counts.items()}

    async def history(
        self,
        child: str,
        *,
        min_seq: int = 0,
        upto_seq: int | None = None,
        wait: float = 5.0,
        fresh: bool = True,
        paged: bool = True,
    ) -> list[StoredEvent]:
        """One child's events in log order, including every write acknowledged before the call.
        `min_seq`: also wait for this sequence. `upto_seq`: stop there. `fresh=False` skips the
        round trip that guarantees read-your-writes (and the route check it carries)."""
        counts, (from_pages, index_start) = await asyncio.gather(
            self.subject_counts(child) if fresh else _nothing({}),
            self.history_pages(child) if paged else _nothing(([], 1)),
        )
        count = sum(counts.values())

        def complete(found: list[StoredEvent]) -> bool:
            # The log only grows (deny_delete), so the child's first `count` events are all there is.
            return len(found) >= count and (not min_seq or (bool(found) and found[-1].seq >= min_seq))

        found = from_pages
        if not (fresh and from_pages and complete(from_pages)):
            found = await self._rest(child, from_pages, index_start, complete, wait, count, min_seq)
        if fresh and _over_claimed(found, counts):
            found = await self._bound_to_subjects(child, found)
        return found if upto_seq is None else [e for e in found if e.seq <= upto_seq]

    async def _rest(
        self, child: str, from_pages: list[StoredEvent], index_start: int,
        complete: Callable[[list[StoredEvent]], bool],
        wait: float, count: int, min_seq: int,
    ) -> list[StoredEvent]:
        log_start = from_pages[-1].seq + 1 if from_pages else 1
        started = asyncio.get_running_loop().time()
        while True:
            waited = asyncio.get_running_loop().time() - started
            if waited < INDEX_PATIENCE:
                rest = await self._read(subjects.CHILD_INDEX_STREAM, subjects.child_index_subject(child), index_start)
            else:
                rest = await self._read(subjects.STREAM, subjects.child_filter(child), log_start)
            found = from_pages + rest
            if complete(found):
                return found
            if waited > wait:
                wanted = f"{count} events" + (f" and sequence {min_seq}" if min_seq else "")
                raise IndexBehind(f"neither the child index nor the log has reached {wanted} for {child}")
            await asyncio.sleep(0.002)

    async def _bound_to_subjects(self, child: str, found: list[StoredEvent]) -> list[StoredEvent]:
        """Some payload names another route than the subject it was stored on (a writer lying about
        who sent it): read the child from the log, where each event has its subject, and mark the
        ones that disagree. Without the right to read the log, mark every event on a route that
        has more payloads claiming it than the log holds."""
        try:
            on_log = await self._read(subjects.STREAM, subjects.child_filter(child), 1, bind=True)
        except (NatsError, RuntimeError, TimeoutError) as exc:
            log.warning("route_check_without_log", child=child, error=repr(exc))
            counts = await self.subject_counts(child)
            over = _over_claimed(found, counts)
            return [
                _refused(e, "route not verifiable: more events claim it than its subject holds")
                if e.event is not None and _route(e) in over
                else e
                for e in found
            ]
        by_seq = {e.seq: e for e in on_log}
        return [by_seq.get(e.seq, e) for e in found]

    # -- pages -----------------------------------------------------------------------------------

    async def history_pages(self, child: str) -> tuple[list[StoredEvent], int]:
        """The child's events in its history pages, and where in the index the rest begins.
        Anything unexpected means no pages: the index alone is always right."""
        try:
            return await self._history_pages(child)
        except (NatsError, RuntimeError, TimeoutError, pages.UnreadablePage) as exc:
            log.warning("history_pages_unavailable", child=child, error=repr(exc))
            return [], 1

    async def _history_pages(self, child: str) -> tuple[list[StoredEvent], int]:
        for _ in range(3):
            manifest = await self.read_page({"last_by_subj": subjects.page_subject(child)})
            if manifest is None:
                return [], 1
            page = pages.decode_page(manifest.data)
            earlier = await self.pages_at([seq for run in page.runs for seq in run])
            if earlier is None:
                continue  # a merge deleted one meanwhile: read the newer manifest
            events = pages.checked_events(
                child, [*earlier, (jetstream.stored_subject(manifest), page)], sum(page.run_events)
            )
            if events is None:
                log.warning("history_pages_inconsistent", child=child)
                return [], 1
            return [_decoded(seq, jetstream.datetime_from_ns(ns), data) for seq, ns, data in events], (
                page.covered_index_seq + 1
            )
        return [], 1

    async def read_page(self, request: dict[str, object]) -> Msg | None:
        """One message of REFBUS_PAGES (`{"seq": n}` or `{"last_by_subj": s}`); None if none."""
        return await jetstream.direct_get(self.nc, subjects.PAGES_STREAM, request, self.timeout)

    async def pages_at(self, seqs: list[int]) -> list[tuple[str, pages.HistoryPage]] | None:
        """The pages at these sequences, each with its subject, all asked at once; None if one is gone."""
        found = await asyncio.gather(*(self.read_page({"seq": seq}) for seq in seqs))
        if any(msg is None for msg in found):
            return None
        return [(jetstream.stored_subject(msg), pages.decode_page(msg.data)) for msg in found]  # type: ignore[arg-type]

    async def indexed_events(self, child: str, before_index_seq: int) -> list[PagedEvent]:
        """The child's events in the index before `before_index_seq`, as stored (for the pager)."""
        messages = await self._batches.all_on(
            subjects.CHILD_INDEX_STREAM, subjects.child_index_subject(child), 1, self.timeout
        )
        return [
            (jetstream.source_sequence(msg.headers or {}) or 0, jetstream.nats_time_ns(msg.headers["Nats-Time-Stamp"]),
             msg.data)  # type: ignore[index]
            for msg in messages
            if jetstream.stored_sequence(msg) < before_index_seq
        ]

    async def exists(self, seq: int, stream: str = subjects.STREAM) -> bool:
        return await jetstream.direct_get(self.nc, stream, {"seq": seq}, self.timeout) is not None

    async def _read(self, stream: str, subject: str, start: int = 1, bind: bool = False) -> list[StoredEvent]:
        messages = await self._batches.all_on(stream, subject, start, self.timeout)
        return [_stored(msg, bind) for msg in messages]


async def _nothing(value: _T) -> _T:
    return value


def _route(stored: StoredEvent) -> str:
    event = stored.event
    assert event is not None
    return subjects.event_subject(event.child, event.from_sector, event.to_sector)


def _over_claimed(found: list[StoredEvent], counts: dict[str, int]) -> set[str]:
    """Subjects that more payloads claim as their route than the log holds messages on: a payload
    lies about its sender or receiver (a message stored elsewhere claims this route)."""
    claimed = Counter(_route(e) for e in found if e.event is not None)
    return {route for route, n in claimed.items() if n > counts.get(route, 0)}


def _refused(stored: StoredEvent, reason: str) -> StoredEvent:
    return StoredEvent(stored.seq, stored.stored_at, None, reason)


def _stored(msg: Msg, bind: bool) -> StoredEvent:
    headers = msg.headers or {}
    # From the index, a sourced stream, the header names the event's sequence in the log itself.
    seq = jetstream.source_sequence(headers) or jetstream.stored_sequence(msg)
    if bind:
        found = bound_event(seq, jetstream.stored_time(msg), jetstream.stored_subject(msg), msg.data)
    else:
        found = _decoded(seq, jetstream.stored_time(msg), msg.data)
    return with_proof(found, headers)


def with_proof(stored: StoredEvent, headers: dict[str, str]) -> StoredEvent:
    """The event with the proof its message's headers carry (chain link, key, signature)."""
    chain = headers.get(proof.CHAIN)
    if chain is None:
        return stored
    return StoredEvent(
        stored.seq, stored.stored_at, stored.event, stored.error, chain, headers.get(proof.KEY), headers.get(proof.SIG)
    )


def bound_event(
    seq: int, stored_at: datetime, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> StoredEvent:
    """A message of the log taken as an event only if its payload's child and route are its subject's;
    with the proof its `headers` carry."""
    chain = key = sig = None
    if headers:
        chain, key, sig = headers.get(proof.CHAIN), headers.get(proof.KEY), headers.get(proof.SIG)
    try:
        return StoredEvent(seq, stored_at, codec.decode_on(subject, data), None, chain, key, sig)
    except codec.MisroutedEvent as exc:
        return StoredEvent(seq, stored_at, None, f"misrouted: {exc.reason}", chain, key, sig)
    except codec.UndecodableEvent as exc:
        return StoredEvent(seq, stored_at, None, exc.reason, chain, key, sig)


def _decoded(seq: int, stored_at: datetime, data: bytes) -> StoredEvent:
    try:
        return StoredEvent(seq, stored_at, codec.decode(data))
    except codec.UndecodableEvent as exc:
        return StoredEvent(seq, stored_at, None, exc.reason)
