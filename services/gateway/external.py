"""The seam made real: a sector whose decisions come from its own system. The service takes no
step of its own: referrals reach the system by webhook (or the events feed) and the system answers
with commands through the gateway (accept, reject, start, hold, resume, complete, fail). The
delivery receipt (`referral.received`) is still the service's, as for every sector."""

from dataclasses import dataclass

from refbus.contracts.vocabulary import Sector
from refbus.services.rules.policy import OnwardReferral, Step
from refbus.services.rules.state import ChildState, Referral


@dataclass(frozen=True)
class ExternalSector:
    sector: Sector

    async def next_step(self, referral: Referral, child: ChildState) -> Step | None:
        return None

    async def onward(self, referral: Referral, child: ChildState) -> list[OnwardReferral]:
        return []
