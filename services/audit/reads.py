"""Reads that verify: what an auditor is shown of a child is checked against the signatures and the
chain, whichever way it was read. History pages (REFBUS_PAGES) carry no proofs, so each page's
events are held against the child index's, event by event (bytes, sequence): a page that differs is
refused and reported, and the index's events are shown instead, each verified. The index is read once
it holds every event the log counts for the child (it trails the log, most after a server start); an
index still behind after the wait is a finding, not a shorter history shown as whole."""

import asyncio
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from refbus.contracts import codec, pages, subjects
from refbus.services.audit.keys import KeyRecord
from refbus.services.audit.verify import Finding, Report, Verifier
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader, with_proof
from refbus.services.eventstore.records import StoredEvent


@dataclass
class VerifiedHistory:
    events: list[StoredEvent]
    "The child's events as the index holds them; one that fails verification has its event withheld."
    report: Report
    refused_pages: list[str] = field(default_factory=list)
    "Why a history page was refused (it differs from the verified index)."

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.refused_pages


async def verified_history(nc: NATS, child: str, records: dict[str, KeyRecord], wait: float = 5.0) -> VerifiedHistory:
    messages, behind = await _indexed(nc, child, wait)
    verifier = Verifier(records, contiguous=False)
    events: list[StoredEvent] = []
    raw: dict[int, bytes] = {}
    for msg in messages:
        headers = msg.headers or {}
        seq = jetstream.source_sequence(headers) or jetstream.stored_sequence(msg)
        stored_at = jetstream.stored_time(msg)
        try:
            event = codec.decode(msg.data)
            subject = subjects.event_subject(event.child, event.from_sector, event.to_sector)
        except codec.UndecodableEvent:
            subject = subjects.event_subject(child, *_unknown_route())
        before = len(verifier.report.findings)
        verifier.feed(seq, stored_at, subject, headers, msg.data)
        raw[seq] = msg.data
        found = [f for f in verifier.report.findings[before:] if f.seq == seq]
        try:
            stored = StoredEvent(seq, stored_at, codec.decode(msg.data))
        except codec.UndecodableEvent as exc:
            stored = StoredEvent(seq, stored_at, None, exc.reason)
        if found:
            stored = StoredEvent(seq, stored_at, None, f"not verified: {found[0].kind}: {found[0].detail}")
        events.append(with_proof(stored, headers))
    report = verifier.finish()
    refused: list[str] = []
    try:
        from_pages, _ = await LogReader(nc, wait)._history_pages(child)
    except (RuntimeError, TimeoutError, pages.UnreadablePage) as exc:
        from_pages = []
        refused.append(f"unreadable: {exc}"[:200])
    shown = {e.seq: e for e in events}
    for stored in from_pages:
        truth = shown.get(stored.seq)
        if truth is None or truth.event is None or stored.event != truth.event or raw.get(stored.seq) is None:
            refused.append(f"a history page shows seq {stored.seq} other than the verified log does")
            break
    if behind:
        report.counts["index-behind"] = 1
        report.findings.append(Finding(0, "index-behind", behind, child))
    for reason in refused:
        report.counts["page-refused"] = report.counts.get("page-refused", 0) + 1
        report.findings.append(Finding(0, "page-refused", reason, child))
    return VerifiedHistory(events, report, refused)


async def _indexed(nc: NATS, child: str, wait: float) -> tuple[list, str | None]:  # type: ignore[type-arg]
    """The child's messages in the index once it holds every event the log has of the child (it copies
    asynchronously, and a server just started resumes copying only after a while); after `wait`
    seconds, what it holds and why that is not all."""
    logged = sum((await jetstream.subject_counts(nc, subjects.STREAM, subjects.child_filter(child), wait)).values())
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        messages = await jetstream.BatchedDirectGet(nc).all_on(
            subjects.CHILD_INDEX_STREAM, subjects.child_index_subject(child), 1, wait
        )
        if len(messages) >= logged:
            return messages, None
        if asyncio.get_running_loop().time() > deadline:
            return messages, f"the child index holds {len(messages)} of the {logged} events the log has"
        await asyncio.sleep(0.05)


def _unknown_route() -> tuple:  # type: ignore[type-arg]
    from refbus.contracts.vocabulary import Sector

    return Sector.SOCIAL, None
