"""Social services (community teams, child protection, benefits).

The default policy simulates this sector; a real sector system replaces `build_policy` with an
adapter to its own case-management API, implementing `SectorPolicy`.
"""

from refbus.contracts.vocabulary import Dimension, Sector
from refbus.services.rules.policy import OnwardReferral, SectorPolicy, ServiceProfile, SimulatedSector
from refbus.services.runtime.settings import Settings

PROFILES = {
    "social_benefits": ServiceProfile(reject_rate=0.15, decision_delay=0.6, work_delay=1.2),
    "family_counselling": ServiceProfile(reject_rate=0.08, hold_rate=0.2),
    "child_protection_assessment": ServiceProfile(
        reject_rate=0.03,
        decision_delay=0.2,
        onward=(OnwardReferral(Sector.EDUCATION, "school_mediation", Dimension.EDUCATION),),
        onward_rate=0.3,
    ),
    "emergency_housing": ServiceProfile(reject_rate=0.3, complete_rate=0.7),
    "material_support": ServiceProfile(reject_rate=0.1),
}


def build_policy(settings: Settings) -> SectorPolicy:
    return SimulatedSector(Sector.SOCIAL, PROFILES, speed=settings.sim_speed, works_since=settings.sim_works_since())
