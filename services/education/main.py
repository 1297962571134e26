"""The education sector's service: what its deployment runs.

Run it alone with `refbus service education` or `faststream run --factory refbus.services.education.main:create_app`.
"""

from refbus.contracts.vocabulary import Sector
from refbus.services.education.policy import build_policy
from refbus.services.sector.app import app_factory

create_app = app_factory(Sector.EDUCATION, build_policy)
