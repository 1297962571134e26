"""How a sector reacts to a referral addressed to it: the seam where a real sector system plugs in.

A policy answers one question, again and again until the referral is closed: given the referral as it
stands now, what is the next step? Because the service asks it with the state freshly read from the
log, a redelivered message continues where the work stopped instead of starting over.

`SimulatedSector` is the default: a plausible sector with per-service rates and delays, deterministic
per referral (seeded by its id), so a retry takes the same decisions.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import blake2b
from typing import Any, Protocol, TypeVar
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
from refbus.services.rules.state import ChildState, Referral

T = TypeVar("T")


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
    works_since: datetime | None = None
    "Referrals requested before this are left alone: a registry's past open referrals are an operator's to work,"
    " not the simulation's (`refbus check` reports them once past their deadline). None: every referral."

    def profile(self, service: str) -> ServiceProfile:
        return self.profiles.get(service, ServiceProfile())

    def _draw(self, referral_id: UUID, purpose: str) -> float:
        """A number in [0, 1) fixed by the seed, the referral and the purpose, so a retry decides
        the same. A hash, not a seeded Random: seeding one costs more than the rest of a step."""
        key = f"{self.seed}:{purpose}".encode()
        digest = blake2b(referral_id.bytes, digest_size=8, key=key).digest()
        return int.from_bytes(digest) / 2**64

    def _pick(self, options: Sequence[T], referral_id: UUID, purpose: str) -> T:
        return options[int(self._draw(referral_id, purpose) * len(options))]

    def _delay(self, base: float, referral_id: UUID, purpose: str) -> float:
        return base * (0.5 + self._draw(referral_id, purpose)) / self.speed

    async def next_step(self, referral: Referral, child: ChildState) -> Step | None:
        if self.works_since is not None and referral.requested_at < self.works_since:
            return None
        p = self.profile(referral.service)
        rid = referral.referral_id
        match referral.status:
            case Status.REQUESTED:
                delay = self._delay(p.decision_delay, rid, "decide")
                if self._draw(rid, "reject") < p.reject_rate:
                    reason = self._pick(list(RejectReason), rid, "reason")
                    return Step(ReferralRejected, {"reason": reason}, delay)
                return Step(ReferralAccepted, {}, delay)
            case Status.ACCEPTED:
                return Step(ReferralInProgress, {}, self._delay(p.work_delay / 4, rid, "start"))
            case Status.IN_PROGRESS:
                held = referral.steps.get("referral.on-hold", 0)
                if not held and self._draw(rid, "hold") < p.hold_rate:
                    reason = self._pick(list(HoldReason), rid, "hold-reason")
                    return Step(ReferralOnHold, {"reason": reason}, self._delay(p.work_delay / 2, rid, "hold"))
                delay = self._delay(p.work_delay, rid, "work")
                if self._draw(rid, "complete") < p.complete_rate:
                    outcome = self._pick(list(Outcome), rid, "outcome")
                    return Step(ReferralCompleted, {"outcome": outcome}, delay)
                reason = self._pick(list(FailReason), rid, "fail")
                return Step(ReferralFailed, {"reason": reason}, delay)
            case Status.ON_HOLD:
                return Step(ReferralInProgress, {}, self._delay(p.work_delay / 2, rid, "resume"))
        return None

    async def onward(self, referral: Referral, child: ChildState) -> list[OnwardReferral]:
        p = self.profile(referral.service)
        if not p.onward or self._draw(referral.referral_id, "onward") >= p.onward_rate:
            return []
        pick = self._pick(p.onward, referral.referral_id, "onward-pick")
        if pick.service not in SERVICE_CATALOGUE[pick.to_sector]:
            raise ValueError(f"profile of {self.sector.value}: {pick.to_sector.value} has no {pick.service}")
        return [pick]
