"""What the demo prints: referrals per sector pair and per final state, and time to acceptance."""

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from refbus.contracts.vocabulary import Status
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.audit import audit_replay
from refbus.services.rules.state import Referral


@dataclass
class Summary:
    children: int = 0
    events: int = 0
    unreadable: int = 0
    referrals: list[Referral] = field(default_factory=list)
    open_by_child: dict[str, int] = field(default_factory=dict)
    "Open referrals of each child that has any."

    @property
    def open(self) -> int:
        return sum(r.is_open for r in self.referrals)

    def open_of(self, children: set[str]) -> int:
        """Open referrals of these children (the demo waits for its own, not for older ones in the log)."""
        return sum(n for child, n in self.open_by_child.items() if child in children)

    def by_pair(self) -> Counter[str]:
        return Counter(f"{r.referrer.value} -> {r.receiver.value}" for r in self.referrals)

    def by_state(self) -> Counter[str]:
        return Counter(r.status.value for r in self.referrals)

    def seconds_to(self, attribute: str) -> list[float]:
        return sorted(
            (getattr(r, attribute) - r.requested_at).total_seconds()
            for r in self.referrals
            if getattr(r, attribute) is not None and (attribute != "decided_at" or r.status != Status.REJECTED)
        )

    def render(self) -> str:
        lines = [
            f"children: {self.children}   events in the log: {self.events}   referrals: {len(self.referrals)}"
            f"   still open: {self.open}   unreadable messages: {self.unreadable}",
            "",
            "referrals per sector pair:",
            *(f"  {pair:<24}{n:>6}" for pair, n in sorted(self.by_pair().items())),
            "",
            "referrals per final state:",
            *(f"  {state:<24}{n:>6}" for state, n in sorted(self.by_state().items(), key=lambda kv: -kv[1])),
            "",
        ]
        for label, attribute in (("time to receipt", "received_at"), ("time to acceptance", "decided_at")):
            lines.append(f"{label:<24}" + _percentiles(self.seconds_to(attribute)))
        return "\n".join(lines)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "  (none)"
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return f"  p50 {q[49]:.2f}s   p90 {q[89]:.2f}s   max {values[-1]:.2f}s   (n={len(values)})"


async def summarise(store: EventStore) -> Summary:
    """Replay the whole log once, through the same audit `refbus check` runs."""
    report = await audit_replay(store.replay(), now=datetime.now(UTC))
    return Summary(
        children=len(report.states),
        events=report.events,
        unreadable=report.count("unreadable"),
        referrals=report.referrals,
        open_by_child={
            child: n
            for child, state in report.states.items()
            if (n := sum(r.is_open for r in state.referrals.values()))
        },
    )
