"""A child's state as the log held it at a moment: the same fold (rules/state.py) over the events up
to that moment, by the log's time (when each event was stored) or the sector's (when it says it
occurred). By occurred time, events keep their log order: the order the rules checked them in."""

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from refbus.services.eventstore.records import StoredEvent
from refbus.services.rules.state import ChildState, apply

By = Literal["stored", "occurred"]


def state_as_of(history: Iterable[StoredEvent], at: datetime, by: By = "stored", child: str = "") -> ChildState:
    """The child's state from its events (log order) up to `at` inclusive; naive `at` is UTC."""
    if by not in ("stored", "occurred"):
        raise ValueError(f"by must be 'stored' or 'occurred', not {by!r}")
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    state: ChildState | None = None
    for stored in history:
        event = stored.event
        if event is None:
            continue
        if state is None:
            state = ChildState(child=child or event.child)
        when = stored.stored_at if by == "stored" else event.occurred_at
        if when <= at:
            apply(state, event, stored.seq)
    return state if state is not None else ChildState(child=child)
