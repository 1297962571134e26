"""The justice sector's service: what its deployment runs.

Run it alone with `refbus service justice` or `faststream run --factory refbus.services.justice.main:create_app`.
"""

from refbus.contracts.vocabulary import Sector
from refbus.services.justice.policy import build_policy
from refbus.services.sector.app import app_factory

create_app = app_factory(Sector.JUSTICE, build_policy)
