"""A synthetic community for the demo: households screened by a community team, vulnerable children,
their vulnerabilities in the pilot's six dimensions, consent, and the referrals that follow.

Proportions follow the Bacău pilot (22,000 vulnerable children with ~42,000 vulnerabilities: about
1.9 each; most cases found by the community social workers). Every id is pseudonymous and derived
from the seed, so the same seed writes the same community: no real person is in it.
"""

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from refbus.contracts.events import (
    CaseOpened,
    ConsentRecorded,
    Event,
    ReferralRequested,
    VulnerabilityIdentified,
)
from refbus.contracts.vocabulary import Dimension, Guardian, LegalBasis, Sector, Urgency

# Who finds the child: mostly the community team (social), sometimes a school, a doctor, a registry.
ORIGIN_WEIGHTS = {Sector.SOCIAL: 70, Sector.EDUCATION: 15, Sector.HEALTH: 10, Sector.JUSTICE: 5}
# How often each dimension shows up among the pilot's vulnerabilities.
DIMENSION_WEIGHTS = {
    Dimension.POVERTY: 30,
    Dimension.HEALTH: 18,
    Dimension.EDUCATION: 17,
    Dimension.FAMILY_AND_SOCIAL: 16,
    Dimension.HOUSING: 11,
    Dimension.RISK_BEHAVIOUR: 8,
}
# Which sector and service answer a vulnerability of each dimension.
ANSWERS: dict[Dimension, tuple[tuple[Sector, str], ...]] = {
    Dimension.POVERTY: ((Sector.SOCIAL, "social_benefits"), (Sector.SOCIAL, "material_support")),
    Dimension.HEALTH: (
        (Sector.HEALTH, "family_doctor_registration"),
        (Sector.HEALTH, "vaccination"),
        (Sector.HEALTH, "health_assessment"),
    ),
    Dimension.EDUCATION: (
        (Sector.EDUCATION, "school_enrolment"),
        (Sector.EDUCATION, "remedial_education"),
        (Sector.EDUCATION, "kindergarten_place"),
    ),
    Dimension.HOUSING: ((Sector.SOCIAL, "emergency_housing"),),
    Dimension.RISK_BEHAVIOUR: (
        (Sector.EDUCATION, "school_counselling"),
        (Sector.HEALTH, "mental_health_support"),
        (Sector.JUSTICE, "probation_support"),
    ),
    Dimension.FAMILY_AND_SOCIAL: (
        (Sector.SOCIAL, "family_counselling"),
        (Sector.SOCIAL, "child_protection_assessment"),
        (Sector.JUSTICE, "birth_registration"),
        (Sector.JUSTICE, "identity_documents"),
    ),
}
CONSENT_RATE = 0.85


@dataclass(frozen=True)
class ChildCase:
    child: str
    events: tuple[Event, ...]

    @property
    def referrals(self) -> list[ReferralRequested]:
        return [e for e in self.events if isinstance(e, ReferralRequested)]


def community(
    children: int, seed: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Iterator[ChildCase]:
    """The community's cases one child at a time, each stamped with the clock when it is drawn."""
    rng = random.Random(seed)
    for _ in range(children):
        yield _child_case(rng, clock())


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def _child_case(rng: random.Random, now: datetime) -> ChildCase:
    child = "c" + _hex(rng, 16)
    origin = rng.choices(list(ORIGIN_WEIGHTS), weights=list(ORIGIN_WEIGHTS.values()))[0]
    worker = "w" + _hex(rng, 8)
    opened = uuid.UUID(int=rng.getrandbits(128), version=4)

    def envelope(**extra: object) -> dict[str, object]:
        return {
            "event_id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "child": child,
            "from_sector": origin,
            "occurred_at": now,
            "actor": worker,
            "correlation_id": opened,
            **extra,
        }

    count = min(6, 1 + int(rng.expovariate(1 / 1.9)))  # ~1.9 distinct vulnerabilities per child
    dimensions = rng.sample(list(DIMENSION_WEIGHTS), k=count, counts=list(DIMENSION_WEIGHTS.values()))
    dimensions = list(dict.fromkeys(dimensions))
    events: list[Event] = [CaseOpened(**envelope(household="h" + _hex(rng, 16)))]  # type: ignore[arg-type]
    events += [VulnerabilityIdentified(**envelope(dimension=d)) for d in dimensions]  # type: ignore[arg-type]
    consented = rng.random() < CONSENT_RATE
    if consented:
        others = tuple(s for s in Sector if s != origin)
        events.append(ConsentRecorded(**envelope(given_by=Guardian.PARENT, sectors=others)))  # type: ignore[arg-type]
    for dimension in dimensions:
        choices = [a for a in ANSWERS[dimension] if a[0] != origin]
        if not choices:
            continue  # the sector that found the child answers this need itself
        to, service = rng.choice(choices)
        referral_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        urgent = dimension in (Dimension.FAMILY_AND_SOCIAL, Dimension.HOUSING) and rng.random() < 0.3
        events.append(
            ReferralRequested(
                **envelope(to_sector=to, correlation_id=referral_id),  # type: ignore[arg-type]
                referral_id=referral_id,
                dimension=dimension,
                service=service,
                urgency=Urgency.URGENT if urgent else Urgency.ROUTINE,
                legal_basis=LegalBasis.GUARDIAN_CONSENT if consented else LegalBasis.CHILD_PROTECTION_DUTY,
            )
        )
    return ChildCase(child, tuple(events))
