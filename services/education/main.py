"""The education sector's service.

Run it alone with `refbus service education` or `faststream run --factory refbus.services.education.main:create_app`.
"""

from refbus.contracts.vocabulary import Sector
from refbus.services.core.sector_service import sector_app_factory

create_app = sector_app_factory(Sector.EDUCATION)
