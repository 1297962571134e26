"""History pages: many of one child's events in one message, so that a history is read in a few
round trips instead of one message per event.

The history pager (refbus.services.pager) writes them into REFBUS_PAGES from the child index. They
are derived and disposable: the log REFBUS is the record, and a page only saves a reader work. The
newest page on a child's subject is its manifest: it names the child's other live pages, and how
far in REFBUS_CHILDREN they reach; what came after is read from the index itself.
"""

import itertools
from typing import Any

import msgspec

from refbus.contracts import subjects

PagedEvent = tuple[int, int, bytes]
"(sequence in REFBUS, stored at in ns since the epoch, the event's bytes as stored)"


class HistoryPage(msgspec.Struct, array_like=True, frozen=True, gc=False):
    events: list[PagedEvent]
    "Consecutive events of one child, in log order."
    covered_index_seq: int = 0
    "Manifest only: the child's events in REFBUS_CHILDREN up to this sequence are in the pages."
    runs: list[list[int]] = []
    """Manifest only: the child's live pages before this one, run by run (a run is what one write
    or merge produced), oldest first, as REFBUS_PAGES sequences. The last run is this page's own:
    it lists the pages of that run written just before it, and the manifest ends it."""
    run_events: list[int] = []
    "Manifest only: the number of events in each run of `runs`."


class PagerCheckpoint(msgspec.Struct, frozen=True):
    """Where the pager resumes: every event of REFBUS_CHILDREN up to `index_seq` is in a page."""

    index_seq: int


class UnreadablePage(ValueError, RuntimeError):
    """A page or checkpoint that is not one: whatever is wrong with its bytes, this is raised, nothing
    else. A page is disposable (the index has its events), so a reader takes the index instead.
    Also a RuntimeError, which EventLog.history_pages already treats as "no pages"."""


_page_encoder = msgspec.msgpack.Encoder()
_page_decoder = msgspec.msgpack.Decoder(HistoryPage)
_checkpoint_decoder = msgspec.msgpack.Decoder(PagerCheckpoint)


def encode_page(page: HistoryPage) -> bytes:
    return _page_encoder.encode(page)


def decode_page(data: bytes) -> HistoryPage:
    page = _decoded(_page_decoder, data)
    if len(page.runs) != len(page.run_events):
        raise UnreadablePage(f"a manifest with {len(page.runs)} runs counts the events of {len(page.run_events)}")
    return page


def encode_checkpoint(checkpoint: PagerCheckpoint) -> bytes:
    return _page_encoder.encode(checkpoint)


def decode_checkpoint(data: bytes) -> PagerCheckpoint:
    return _decoded(_checkpoint_decoder, data)


def _decoded(decoder: msgspec.msgpack.Decoder, data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except Exception as exc:  # msgspec's errors, RecursionError, MemoryError, TypeError for a non-buffer
        raise UnreadablePage(f"unreadable {decoder.type.__name__}: {type(exc).__name__}: {exc}"[:300]) from None


def checked_events(child: str, found: list[tuple[str, HistoryPage]], expected: int) -> list[PagedEvent] | None:
    """The events of pages read back (subject, page), if they are what a manifest promised: each
    page the child's own, `expected` events in all, in strictly increasing log order. None
    otherwise: a page lost with a server's unsynced writes and its sequence reused by another
    page would fail one of these, and the reader then takes the index instead."""
    own = (subjects.page_subject(child), subjects.page_data_subject(child))
    if any(subject not in own for subject, _ in found):
        return None
    events = [event for _, page in found for event in page.events]
    if len(events) != expected or any(a[0] >= b[0] for a, b in itertools.pairwise(events)):
        return None
    return events
