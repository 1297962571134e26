"""How a sector reacts to a referral addressed to it: the seam where a real sector system plugs in.

A policy answers one question, again and again until the referral is closed: given the referral as it
stands now, what is the next step? Because the service asks it with the state freshly read from the
log, a redelivered message continues where the work stopped instead of starting over.

`SimulatedSector` is the default: a plausible sector with per-service rates and delays, deterministic
per referral (seeded by its id), so a retry takes the same decisions.
"""

import random
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from refbus.contracts.events import (
    ReferralAccepted,
    ReferralCompleted,
    ReferralEvent,
    ReferralFailed,
    ReferralInProgress,
    ReferralOnHold,
    ReferralRejected,
)
from refbus.contracts.vocabulary import (
    SERVICE_CATALOGUE,
    Dimension,
    FailReason,
    HoldReason,
    Outcome,
    RejectReason,
    Sector,
    Status,
    Urgency,
)
from refbus.services.referral.state import ChildState, Referral


@dataclass(frozen=True)
class Step:
    """The next event the receiving sector states about a referral, due `delay` seconds after the
    referral's last change (so asking again later gives the same due time)."""

    kind: type[ReferralEvent]
    fields: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class OnwardReferral:
    """A referral this sector sends on, once it has finished its own part."""

    to_sector: Sector
    service: str
    dimension: Dimension
    urgency: Urgency = Urgency.ROUTINE


class SectorPolicy(Protocol):
    async def next_step(self, referral: Referral, child: ChildState) -> Step | None:
        """None when the sector has nothing (more) to do: the referral is closed or waits on others."""
        ...

    async def onward(self, referral: Referral, child: ChildState) -> list[OnwardReferral]:
        """Referrals to send once `referral` is completed (a family doctor alerts child protection)."""
        ...


@dataclass(frozen=True)
class ServiceProfile:
    reject_rate: float = 0.12
    hold_rate: float = 0.15
    complete_rate: float = 0.85
    "Of the accepted referrals, how many end completed rather than failed."
    decision_delay: float = 0.4
    work_delay: float = 0.8
    onward: tuple[OnwardReferral, ...] = ()
    onward_rate: float = 0.0


@dataclass
class SimulatedSector:
    sector: Sector
    profiles: dict[str, ServiceProfile] = field(default_factory=dict)
    speed: float = 1.0
    "Divides every delay; tests use a large value."
    seed: int = 0

    def profile(self, service: str) -> ServiceProfile:
        return self.profiles.get(service, ServiceProfile())

    def _rng(self, referral_id: UUID, purpose: str) -> random.Random:
        return random.Random(f"{self.seed}:{referral_id}:{purpose}")

    def _delay(self, base: float, referral_id: UUID, purpose: str) -> float:
        return base * self._rng(referral_id, purpose).uniform(0.5, 1.5) / self.speed

    async def next_step(self, referral: Referral, child: ChildState) -> Step | None:
        p = self.profile(referral.service)
        rid = referral.referral_id
        match referral.status:
            case Status.REQUESTED:
                delay = self._delay(p.decision_delay, rid, "decide")
                if self._rng(rid, "reject").random() < p.reject_rate:
                    reason = self._rng(rid, "reason").choice(list(RejectReason))
                    return Step(ReferralRejected, {"reason": reason}, delay)
                return Step(ReferralAccepted, {}, delay)
            case Status.ACCEPTED:
                return Step(ReferralInProgress, {}, self._delay(p.work_delay / 4, rid, "start"))
            case Status.IN_PROGRESS:
                held = referral.steps.get("referral.on-hold", 0)
                if not held and self._rng(rid, "hold").random() < p.hold_rate:
                    reason = self._rng(rid, "hold-reason").choice(list(HoldReason))
                    return Step(ReferralOnHold, {"reason": reason}, self._delay(p.work_delay / 2, rid, "hold"))
                delay = self._delay(p.work_delay, rid, "work")
                if self._rng(rid, "complete").random() < p.complete_rate:
                    outcome = self._rng(rid, "outcome").choice(list(Outcome))
                    return Step(ReferralCompleted, {"outcome": outcome}, delay)
                reason = self._rng(rid, "fail").choice(list(FailReason))
                return Step(ReferralFailed, {"reason": reason}, delay)
            case Status.ON_HOLD:
                return Step(ReferralInProgress, {}, self._delay(p.work_delay / 2, rid, "resume"))
        return None

    async def onward(self, referral: Referral, child: ChildState) -> list[OnwardReferral]:
        p = self.profile(referral.service)
        if not p.onward or self._rng(referral.referral_id, "onward").random() >= p.onward_rate:
            return []
        pick = self._rng(referral.referral_id, "onward-pick").choice(p.onward)
        if pick.service not in SERVICE_CATALOGUE[pick.to_sector]:
            raise ValueError(f"profile of {self.sector.value}: {pick.to_sector.value} has no {pick.service}")
        return [pick]
