"""The health sector's service: what its deployment runs.

Run it alone with `refbus service health` or `faststream run --factory refbus.services.health.main:create_app`.
"""

from refbus.contracts.vocabulary import Sector
from refbus.services.health.policy import build_policy
from refbus.services.sector.app import app_factory

create_app = app_factory(Sector.HEALTH, build_policy)
