"""Webhook delivery counters. services/runtime/metrics.py (the metrics engineer's, not on this branch
yet) holds every Prometheus metric, including `webhook_delivered(sector)` and
`webhook_failed(sector, reason)` with reasons timeout, connection, http_4xx, http_5xx, refused: used
when it exists; until then the counts are kept here, in memory (tests and the bench read them)."""

from collections import Counter
from typing import Any

DELIVERED: Counter[str] = Counter()
FAILED: Counter[tuple[str, str]] = Counter()

_runtime: Any
try:  # the shared registry, once merged
    from refbus.services.runtime import metrics as _runtime  # type: ignore[attr-defined, no-redef]
except ImportError:  # pragma: no cover - depends on the branch
    _runtime = None


def webhook_delivered(sector: str) -> None:
    DELIVERED[sector] += 1
    if _runtime is not None and hasattr(_runtime, "webhook_delivered"):
        _runtime.webhook_delivered(sector)


def webhook_failed(sector: str, reason: str) -> None:
    FAILED[(sector, reason)] += 1
    if _runtime is not None and hasattr(_runtime, "webhook_failed"):
        _runtime.webhook_failed(sector, reason)
