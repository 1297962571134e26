"""Checks a whole log: duplicates, illegal transitions, gaps, unreadable messages, and referrals
stuck in a non-terminal state past their deadline. Pure: stored events in, a report out."""

from collections import Counter
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from refbus.contracts.events import Event, ReferralRequested
from refbus.contracts.vocabulary import Status, Urgency
from refbus.services.rules import lifecycle
from refbus.services.rules.state import ChildState, Referral, apply

# How long a referral may wait in one status before it counts as stuck, by urgency, unless the
# referrer set its own `respond_by`. Follow-up deadlines are what closes the loop in practice.
DEFAULT_DEADLINES: dict[Urgency, timedelta] = {
    Urgency.EMERGENCY: timedelta(days=1),
    Urgency.URGENT: timedelta(days=3),
    Urgency.ROUTINE: timedelta(days=14),
}


@dataclass(frozen=True)
class Finding:
    kind: str
    "duplicate | illegal | gap | unreadable | misrouted | stuck"
    seq: int
    detail: str
    child: str | None = None


@dataclass
class AuditReport:
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    findings: list[Finding] = field(default_factory=list)
    states: dict[str, ChildState] = field(default_factory=dict)
    stored_ids: Counter[UUID] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return not self.findings

    def count(self, kind: str) -> int:
        return sum(f.kind == kind for f in self.findings)

    @property
    def referrals(self) -> list[Referral]:
        return [r for s in self.states.values() for r in s.referrals.values()]

    @property
    def open_referrals(self) -> int:
        return sum(r.is_open for r in self.referrals)


@dataclass
class Auditor:
    """Feed stored events in log order with `see`, then `finish` to look for stuck referrals."""

    now: datetime
    deadlines: dict[Urgency, timedelta] = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    report: AuditReport = field(default_factory=AuditReport)
    _urgency: dict[UUID, tuple[Urgency, datetime | None]] = field(default_factory=dict)
    _seen_seq: int = 0

    def see(self, seq: int, event: Event | None, error: str | None = None) -> None:
        report = self.report
        report.events += 1
        report.first_seq = report.first_seq or seq
        if self._seen_seq and seq != self._seen_seq + 1:
            report.findings.append(Finding("gap", seq, f"sequences {self._seen_seq + 1}..{seq - 1} are missing"))
        self._seen_seq = report.last_seq = seq
        if event is None:
            kind = "misrouted" if (error or "").startswith("misrouted") else "unreadable"
            report.findings.append(Finding(kind, seq, error or "cannot be decoded"))
            return
        report.stored_ids[event.event_id] += 1
        state = report.states.setdefault(event.child, ChildState(child=event.child))
        if report.stored_ids[event.event_id] > 1:
            report.findings.append(Finding("duplicate", seq, f"event {event.event_id} stored again", event.child))
            return
        try:
            lifecycle.check(state, event)
        except lifecycle.IllegalEvent as exc:
            report.findings.append(Finding("illegal", seq, exc.reason, event.child))
        if isinstance(event, ReferralRequested):
            self._urgency[event.referral_id] = (event.urgency, event.respond_by)
        apply(state, event, seq)

    def finish(self) -> AuditReport:
        for state in self.report.states.values():
            for referral in state.referrals.values():
                overdue = self._overdue(referral)
                if overdue is not None:
                    self.report.findings.append(
                        Finding(
                            "stuck",
                            state.last_seq,
                            f"referral {referral.referral_id} {referral.status.value} for "
                            f"{overdue} past its deadline ({referral.referrer.value} -> {referral.receiver.value})",
                            state.child,
                        )
                    )
        return self.report

    def _overdue(self, referral: Referral) -> timedelta | None:
        if not referral.is_open or referral.updated_at is None:
            return None
        urgency, respond_by = self._urgency.get(referral.referral_id, (Urgency.ROUTINE, None))
        if referral.status is Status.REQUESTED and respond_by is not None:
            deadline = respond_by
        else:
            deadline = referral.updated_at + self.deadlines[urgency]
        return self.now - deadline if self.now > deadline else None


def audit(stored: Iterable[tuple[int, Event | None, str | None]], now: datetime) -> AuditReport:
    auditor = Auditor(now)
    for seq, event, error in stored:
        auditor.see(seq, event, error)
    return auditor.finish()


class _Stored(Protocol):
    seq: int
    event: Event | None
    error: str | None


async def audit_replay(
    replay: AsyncIterable[_Stored], now: datetime, deadlines: dict[Urgency, timedelta] | None = None
) -> AuditReport:
    """The audit of a replay of the log, as `refbus check`, the demo's summary and the fault tests
    run it."""
    auditor = Auditor(now) if deadlines is None else Auditor(now, deadlines)
    async for stored in replay:
        auditor.see(stored.seq, stored.event, stored.error)
    return auditor.finish()
