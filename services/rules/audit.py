"""Checks a whole log: duplicates, illegal transitions, gaps, unreadable messages, and referrals
stuck in a non-terminal state past their deadline. Pure: stored events in, a report out."""

from collections import Counter
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from refbus.contracts.events import Event
from refbus.contracts.vocabulary import Urgency
from refbus.services.rules import lifecycle
from refbus.services.rules.deadlines import DEFAULT_TABLE, DeadlineTable, passed
from refbus.services.rules.state import ChildState, Referral, apply

# A referral is stuck when one of its follow-up deadlines has passed and what it waits for has not
# happened: the same table, and the same function, as the deadline service that reminds and
# escalates (services/rules/deadlines.py), so `refbus check` and the referral.overdue events agree.
DEFAULT_DEADLINES: DeadlineTable = DEFAULT_TABLE


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
    deadlines: DeadlineTable = DEFAULT_TABLE
    report: AuditReport = field(default_factory=AuditReport)
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
        apply(state, event, seq)

    def finish(self) -> AuditReport:
        for state in self.report.states.values():
            for referral_id, owed in state.owed_cancels.items():
                # Per event, a withdrawal cannot be judged: what it owes must follow in its own append.
                self.report.findings.append(
                    Finding(
                        "illegal",
                        state.last_seq,
                        f"consent withdrawn (event {owed.withdrawal.event_id}) but referral {referral_id} relies on "
                        "it and must be cancelled in the same append: its cancellations are missing",
                        state.child,
                    )
                )
            for referral in state.referrals.values():
                overdue = passed(referral, self.deadlines, self.now)
                if overdue:
                    kinds = ", ".join(f"{kind.value} {self.now - at} ago" for kind, at in overdue)
                    self.report.findings.append(
                        Finding(
                            "stuck",
                            state.last_seq,
                            f"referral {referral.referral_id} {referral.status.value} past its deadline: {kinds} "
                            f"({referral.referrer.value} -> {referral.receiver.value})",
                            state.child,
                        )
                    )
        return self.report

    def stuck(self) -> set[tuple[UUID, str]]:
        """(referral, deadline) pairs past due, for comparing with the deadline service's notices."""
        return {
            (r.referral_id, kind.value)
            for s in self.report.states.values()
            for r in s.referrals.values()
            for kind, _ in passed(r, self.deadlines, self.now)
        }


def as_table(deadlines: DeadlineTable | Mapping[Urgency, timedelta] | None) -> DeadlineTable:
    """A table from what callers pass: a table, None (the default) or, as `refbus check --stuck-after`
    did, one allowance per urgency (every deadline that long after the request)."""
    if deadlines is None:
        return DEFAULT_TABLE
    if isinstance(deadlines, DeadlineTable):
        return deadlines
    kinds = DEFAULT_TABLE.by_urgency[Urgency.ROUTINE].keys()
    return DeadlineTable({u: dict.fromkeys(kinds, after) for u, after in deadlines.items()})


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
    replay: AsyncIterable[_Stored], now: datetime, deadlines: DeadlineTable | Mapping[Urgency, timedelta] | None = None
) -> AuditReport:
    """The audit of a replay of the log, as `refbus check`, the demo's summary and the fault tests
    run it."""
    auditor = Auditor(now, as_table(deadlines))
    async for stored in replay:
        auditor.see(stored.seq, stored.event, stored.error)
    return auditor.finish()
