"""Referral flows from the log, without reading a child's data.

`LogFollower` follows REFBUS from its start with an ordered consumer that asks for headers only
(`headers_only`): the server never sends a payload, so nothing about a child reaches this process
but the child token of each subject, which `FlowCounts.see` drops at once. Each message is counted
by its subject's sector tokens and its `Refbus-Event-Type` header (services/eventstore/writer.py
sets it on every append); open referrals are tracked by `Refbus-Correlation-Id` and the sector pair
(a correlation chain may hold several referrals, one per pair in practice: an approximation fit for
an operator's view, not for the audit).
"""

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import permutations

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream
from refbus.services.runtime import metrics

log = structlog.get_logger(__name__)

TYPE_HEADER = "Refbus-Event-Type"
CORRELATION_HEADER = "Refbus-Correlation-Id"
SECTORS = tuple(s.value for s in Sector)
PAIRS = tuple(permutations(SECTORS, 2))
FUNNEL = ("requested", "received", "accepted", "completed")
CLOSING = ("rejected", "failed", "cancelled", "entered-in-error")
WORKING = ("requested", "accepted", "in-progress", "on-hold")
RATE_WINDOW_S = 60.0
RETRY_FOLLOW_S = 10.0
"How often to try again to follow a log that could not be followed (not there yet, or not allowed)."
DEADLINE_WORDS = ("overdue", "escalat", "remind", "deadline")
"Event types of the deadlines service (whatever their exact tags): counted as deadline events."


@dataclass
class _Open:
    receiver: str
    status: str
    since_ns: int


@dataclass
class FlowCounts:
    """Pure counting: feed `see` with each message's subject tokens, headers and storage time."""

    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    referrals: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    deadline_events: Counter[str] = field(default_factory=Counter)
    "Deadline events (reminders, escalations) by the sector they are addressed to."
    seen_seq: int = 0
    newest_ns: int = 0
    _recent: deque[tuple[int, str, str]] = field(default_factory=deque)
    _open: dict[tuple[str, str, str], _Open] = field(default_factory=dict)

    def see(self, subject: str, kind: str, correlation: str, seq: int, stored_ns: int) -> None:
        tokens = subject.split(".")
        if len(tokens) != 5:
            return
        frm, to = tokens[3], tokens[4]  # tokens[2], the child, is not kept
        if frm not in SECTORS:
            return
        kind = metrics.type_label(kind)
        self.seen_seq, self.newest_ns = seq, max(self.newest_ns, stored_ns)
        self.by_type[kind] += 1
        if to in SECTORS:
            self.events[(frm, to)] += 1
        if any(word in kind for word in DEADLINE_WORDS):
            self.deadline_events[to if to in SECTORS else frm] += 1
        if not kind.startswith("referral.") or to not in SECTORS:
            return
        status = kind.removeprefix("referral.")
        if status == "requested":
            self.referrals[(frm, to)] += 1
            self._recent.append((stored_ns, frm, to))
            self._open[(correlation, frm, to)] = _Open(to, "requested", stored_ns)
            return
        key = (correlation, to, frm)  # an update goes from the receiver back to the referrer
        referral = self._open.get(key)
        if referral is None:
            return
        if status in CLOSING or status == "completed":
            del self._open[key]
        else:
            referral.since_ns = stored_ns
            if status != "received":
                referral.status = status

    def rates_per_min(self, now_ns: int) -> Counter[tuple[str, str]]:
        """Referrals requested per pair in the last minute (by storage time)."""
        horizon = now_ns - int(RATE_WINDOW_S * 1e9)
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return Counter((frm, to) for _, frm, to in self._recent)

    def funnel(self) -> dict[str, int]:
        return {s: self.by_type[f"referral.{s}"] for s in (*FUNNEL, "in-progress", "on-hold", *CLOSING)}

    def open_by_receiver(self) -> dict[str, dict[str, int]]:
        found = {s: dict.fromkeys(WORKING, 0) for s in SECTORS}
        for referral in self._open.values():
            found[referral.receiver][referral.status] = found[referral.receiver].get(referral.status, 0) + 1
        return found

    def overdue_by_receiver(self, now_ns: int, after_s: float) -> dict[str, int]:
        """Open referrals whose last change is older than `after_s`, by the sector that must move."""
        horizon = now_ns - int(after_s * 1e9)
        found = dict.fromkeys(SECTORS, 0)
        for referral in self._open.values():
            if referral.since_ns < horizon:
                found[referral.receiver] += 1
        return found


class LogFollower:
    """Keeps a FlowCounts current from an ordered, headers-only consumer on REFBUS."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.counts = FlowCounts()
        self.error: str | None = None
        self._subscription: Subscription | None = None
        self._tried = -RETRY_FOLLOW_S

    async def start(self) -> None:
        """Follow the log; if that is refused (no stream yet, no permission), `error` says so and a
        later `start` tries again."""
        now = time.monotonic()
        if self._subscription is not None or now - self._tried < RETRY_FOLLOW_S:
            return
        self._tried = now
        js = self.nc.jetstream()
        try:
            self._subscription = await js.subscribe(
                subjects.LOG_SUBJECTS, stream=subjects.STREAM, cb=self._on_message, ordered_consumer=True,
                headers_only=True, deliver_policy=DeliverPolicy.ALL,
            )
            self.error = None
        except Exception as exc:  # no stream yet, or a user that may not create consumers on REFBUS
            self.error = f"cannot follow the log: {type(exc).__name__}"
            log.info("log_follow_refused", error=repr(exc))

    async def stop(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except Exception as exc:
                log.debug("log_unfollow_failed", error=repr(exc))

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            seq, ns = jetstream.delivered_position(msg.reply)
        except (ValueError, IndexError):
            return
        self.counts.see(msg.subject, headers.get(TYPE_HEADER, ""), headers.get(CORRELATION_HEADER, ""), seq, ns)

    async def caught_up(self, last_seq: int, within: float = 60.0) -> bool:
        """Wait until every message up to `last_seq` has been counted."""
        deadline = time.monotonic() + within
        while self.counts.seen_seq < last_seq and self.error is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return self.error is None
