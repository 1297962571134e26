"""Education: schools, kindergartens, school mediators and counsellors.

The default policy simulates this sector; a real sector system replaces `build_policy` with an
adapter to its own case-management API, implementing `SectorPolicy`.
"""

from refbus.contracts.vocabulary import Dimension, Sector
from refbus.services.rules.policy import OnwardReferral, SectorPolicy, ServiceProfile, SimulatedSector
from refbus.services.runtime.settings import Settings

PROFILES = {
    "school_enrolment": ServiceProfile(reject_rate=0.06),
    "school_mediation": ServiceProfile(reject_rate=0.1, hold_rate=0.2),
    "remedial_education": ServiceProfile(reject_rate=0.15, complete_rate=0.8),
    "school_counselling": ServiceProfile(
        reject_rate=0.05,
        # A school counsellor who sees trouble at home refers the family to social services.
        onward=(OnwardReferral(Sector.SOCIAL, "family_counselling", Dimension.FAMILY_AND_SOCIAL),),
        onward_rate=0.25,
    ),
    "kindergarten_place": ServiceProfile(reject_rate=0.3, complete_rate=0.9),
}


def build_policy(settings: Settings) -> SectorPolicy:
    return SimulatedSector(Sector.EDUCATION, PROFILES, speed=settings.sim_speed, works_since=settings.sim_works_since())
