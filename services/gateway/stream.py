"""The events feed as server-sent events, `GET /v1/{sector}/events/stream`: the long-poll feed's
content and cursor, pushed down one open response.

Each event is one SSE message, `id:` its log sequence and `data:` the feed's `Delivered` JSON
({"seq", "event"}), with no `event:` field (so a browser's `onmessage` sees every one). A client
resumes with the standard `Last-Event-ID` header (what EventSource sends when it reconnects) or the
long-poll's `after` query; the header wins, since a reconnecting EventSource keeps its first URL.
Messages the feed cannot decode move the cursor with an `id:`-only message (no event dispatched).

Bounded per connection: the log is read one page at a time, and the next page only once the last is
written to the socket (the response is a generator the server drains), so a slow reader holds one
page, never a backlog. While nothing comes, a comment line every `heartbeat_s` keeps proxies from
closing the connection. If the log cannot be reached the stream ends; the client reconnects
(`retry:` says after how long) and resumes at its cursor.
"""

from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from litestar.response import ServerSentEvent, ServerSentEventMessage

from refbus.contracts import commands as c
from refbus.contracts.vocabulary import Sector

FeedReader = Callable[[Sector, int, int, float], Awaitable[c.Feed]]

PAGE = 100
"Events read from the log at a time, per connection: the bound on what one connection holds."
RETRY_MS = 2000
"What the stream tells a client to wait before reconnecting."
MAX_CURSOR = 2**53


def cursor_from(last_event_id: str | None, after: int) -> int | c.Refusal:
    """The sequence to resume after: `Last-Event-ID` when sent (a reconnect), else `after`."""
    from refbus.services.gateway.core import refusal

    if last_event_id is None or not last_event_id.strip():
        return after
    text = last_event_id.strip()
    if not text.isdigit() or int(text) > MAX_CURSOR:
        return refusal(422, "invalid", "Last-Event-ID must be a log sequence (a whole number)", field="Last-Event-ID")
    return int(text)


async def messages(
    feed: FeedReader, sector: Sector, after: int, heartbeat_s: float, page: int = PAGE
) -> AsyncIterator[ServerSentEventMessage]:
    """The stream's messages from `after` on, forever (until the client leaves or the log fails)."""
    yield ServerSentEventMessage(comment=f"refbus events for {sector.value} after {after}", retry=RETRY_MS, data=None)
    cursor = after
    while True:
        try:
            got = await feed(sector, cursor, page, heartbeat_s)
        except (TimeoutError, OSError):
            yield ServerSentEventMessage(comment="the log could not be reached; reconnect to resume", data=None)
            return
        for delivered in got.events:
            yield ServerSentEventMessage(id=delivered.seq, data=msgspec.json.encode(delivered).decode())
            cursor = delivered.seq
        if got.next_after > cursor:  # undecodable messages at the page's end: move the client's cursor past them
            yield ServerSentEventMessage(id=got.next_after, data=None)
            cursor = got.next_after
        elif not got.events:
            yield ServerSentEventMessage(comment="keep-alive", data=None)


def event_stream(feed: FeedReader, sector: Sector, after: int, heartbeat_s: float) -> ServerSentEvent:
    return ServerSentEvent(messages(feed, sector, after, heartbeat_s))
