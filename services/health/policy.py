"""Health: family doctors, community nurses, mental health.

The default policy simulates this sector; a real sector system replaces `build_policy` with an
adapter to its own case-management API, implementing `SectorPolicy`.
"""

from refbus.contracts.vocabulary import Dimension, Sector, Urgency
from refbus.services.rules.policy import OnwardReferral, SectorPolicy, ServiceProfile, SimulatedSector
from refbus.services.runtime.settings import Settings

PROFILES = {
    "family_doctor_registration": ServiceProfile(reject_rate=0.05, work_delay=0.5),
    "vaccination": ServiceProfile(reject_rate=0.02, complete_rate=0.92),
    "health_assessment": ServiceProfile(
        reject_rate=0.05,
        # A family doctor who finds signs of neglect alerts child protection.
        onward=(
            OnwardReferral(
                Sector.SOCIAL, "child_protection_assessment", Dimension.FAMILY_AND_SOCIAL, Urgency.URGENT
            ),
        ),
        onward_rate=0.2,
    ),
    "mental_health_support": ServiceProfile(reject_rate=0.25, hold_rate=0.3, complete_rate=0.75),
    "disability_assessment": ServiceProfile(reject_rate=0.1, work_delay=1.5),
}


def build_policy(settings: Settings) -> SectorPolicy:
    return SimulatedSector(Sector.HEALTH, PROFILES, speed=settings.sim_speed, works_since=settings.sim_works_since())
