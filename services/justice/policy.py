"""Justice: civil registry, identity documents, legal aid, probation.

The default policy simulates this sector; a real sector system replaces `build_policy` with an
adapter to its own case-management API, implementing `SectorPolicy`.
"""

from refbus.contracts.vocabulary import Dimension, Sector
from refbus.services.rules.policy import OnwardReferral, SectorPolicy, ServiceProfile, SimulatedSector
from refbus.services.runtime.settings import Settings

PROFILES = {
    "birth_registration": ServiceProfile(
        reject_rate=0.04,
        work_delay=1.0,
        # With a birth certificate the child can finally be registered with a family doctor.
        onward=(OnwardReferral(Sector.HEALTH, "family_doctor_registration", Dimension.HEALTH),),
        onward_rate=0.5,
    ),
    "identity_documents": ServiceProfile(reject_rate=0.08),
    "legal_aid": ServiceProfile(reject_rate=0.2, hold_rate=0.25),
    "probation_support": ServiceProfile(reject_rate=0.1, complete_rate=0.7),
}


def build_policy(settings: Settings) -> SectorPolicy:
    return SimulatedSector(Sector.JUSTICE, PROFILES, speed=settings.sim_speed, works_since=settings.sim_works_since())
