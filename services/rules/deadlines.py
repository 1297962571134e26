"""Follow-up deadlines: the one table both the deadline service (which acts on them) and the audit
(`refbus check`'s stuck findings) read, and the pure functions that say which are pending and passed.

Every deadline counts from the request (`requested_at`), so all of a referral's deadlines are known
the moment it is requested: a deadline service keeps them in a heap and needs no re-planning when
the referral moves, only a check, at the due time, that the deadline is still pending.

- received:   the receiving system acknowledges delivery (automatic: minutes);
- decided:    the receiver accepts or rejects;
- respond_by: the referrer's own date for the decision, when the request carries one;
- completed:  the referral is closed.
Per urgency, with optional overrides per receiving sector; configurable from a JSON file
(`REFBUS_DEADLINES_FILE`, see `DeadlineTable.from_json`).
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from refbus.contracts.vocabulary import Deadline, Sector, Status, Urgency
from refbus.services.rules.state import Referral

D = Deadline
DEFAULT_TABLE_SPEC: dict[Urgency, dict[Deadline, timedelta]] = {
    Urgency.ROUTINE: {D.RECEIVED: timedelta(minutes=15), D.DECIDED: timedelta(hours=48),
                      D.COMPLETED: timedelta(days=30)},
    Urgency.URGENT: {D.RECEIVED: timedelta(minutes=10), D.DECIDED: timedelta(hours=24),
                     D.COMPLETED: timedelta(days=7)},
    Urgency.EMERGENCY: {D.RECEIVED: timedelta(minutes=5), D.DECIDED: timedelta(hours=2),
                        D.COMPLETED: timedelta(hours=72)},
}


@dataclass(frozen=True)
class DeadlineTable:
    by_urgency: Mapping[Urgency, Mapping[Deadline, timedelta]] = field(default_factory=lambda: DEFAULT_TABLE_SPEC)
    by_sector: Mapping[tuple[Sector, Urgency], Mapping[Deadline, timedelta]] = field(default_factory=dict)
    "Overrides for referrals to one receiving sector at one urgency (only the kinds given)."

    def allowance(self, receiver: Sector, urgency: Urgency, kind: Deadline) -> timedelta | None:
        override = self.by_sector.get((receiver, urgency), {})
        return override.get(kind, self.by_urgency.get(urgency, {}).get(kind))

    @classmethod
    def uniform(cls, after: timedelta) -> "DeadlineTable":
        """Every deadline `after` the request (`refbus check --stuck-after`)."""
        kinds = (D.RECEIVED, D.DECIDED, D.COMPLETED)
        return cls({u: dict.fromkeys(kinds, after) for u in Urgency})

    @classmethod
    def from_json(cls, text: str) -> "DeadlineTable":
        """``{"routine": {"received": 900, ...}, "health/emergency": {"decided": 3600}}``: seconds,
        urgencies replace the defaults kind by kind, `<sector>/<urgency>` entries override."""
        by_urgency = {u: dict(k) for u, k in DEFAULT_TABLE_SPEC.items()}
        by_sector: dict[tuple[Sector, Urgency], dict[Deadline, timedelta]] = {}
        for key, kinds in json.loads(text).items():
            parsed = {Deadline(k): timedelta(seconds=float(v)) for k, v in kinds.items()}
            if "/" in key:
                sector, urgency = key.split("/", 1)
                by_sector[(Sector(sector), Urgency(urgency))] = parsed
            else:
                by_urgency[Urgency(key)].update(parsed)
        return cls(by_urgency, by_sector)

    @classmethod
    def from_env(cls) -> "DeadlineTable":
        path = os.environ.get("REFBUS_DEADLINES_FILE")
        return cls.from_json(Path(path).read_text()) if path else DEFAULT_TABLE


DEFAULT_TABLE = DeadlineTable()


def is_pending(referral: Referral, kind: Deadline) -> bool:
    """The deadline's condition is not met yet (regardless of time): what it waits for has not happened."""
    if not referral.is_open:
        return False
    match kind:
        case D.RECEIVED:
            return referral.received_at is None and referral.status is Status.REQUESTED
        case D.DECIDED:
            return referral.status is Status.REQUESTED
        case D.RESPOND_BY:
            return referral.status is Status.REQUESTED and referral.respond_by is not None
        case D.COMPLETED:
            return True
    return False  # pragma: no cover


def due_times(referral: Referral, table: DeadlineTable) -> list[tuple[Deadline, datetime]]:
    """Every deadline of the referral with its due time (pending or not), soonest first."""
    due: list[tuple[Deadline, datetime]] = []
    for kind in (D.RECEIVED, D.DECIDED, D.COMPLETED):
        allowance = table.allowance(referral.receiver, referral.urgency, kind)
        if allowance is not None:
            due.append((kind, referral.requested_at + allowance))
    if referral.respond_by is not None:
        due.append((D.RESPOND_BY, referral.respond_by))
    return sorted(due, key=lambda d: d[1])


def passed(referral: Referral, table: DeadlineTable, now: datetime) -> list[tuple[Deadline, datetime]]:
    """The deadlines that are still pending and whose time has come: what `refbus check` calls
    stuck and what the deadline service reminds and escalates (once each)."""
    return [(kind, at) for kind, at in due_times(referral, table) if at <= now and is_pending(referral, kind)]


def unnoticed(referral: Referral, table: DeadlineTable, now: datetime) -> list[tuple[Deadline, datetime]]:
    """Passed deadlines not yet both reminded and escalated."""
    done = referral.reminded.keys() & referral.escalated.keys()
    return [(kind, at) for kind, at in passed(referral, table, now) if kind not in done]
