"""The social sector's service: what its deployment runs.

Run it alone with `refbus service social` or `faststream run --factory refbus.services.social.main:create_app`.
"""

from refbus.contracts.vocabulary import Sector
from refbus.services.sector.app import app_factory
from refbus.services.social.policy import build_policy

create_app = app_factory(Sector.SOCIAL, build_policy)
