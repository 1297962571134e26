"""Every Prometheus metric refbus defines, in one place: services, the gateway, the deadlines and
the exporter import their metrics from here, so deploy/'s alert rules and dashboard can be checked
against one list (`metric_names`).

Labels carry codes from closed lists only, never a child, a worker, an id or free text: every label
value passes through one of the `*_label` functions below, which map anything outside its list to
`other`. So a label cannot hold a child reference whatever a caller passes (tests/unit/test_metrics.py).

Two registries:
- `REGISTRY`: what a service process measures itself (served on its health port at /metrics);
- `JETSTREAM_REGISTRY`: the server's own state, read from its monitoring endpoint by `refbus
  exporter` (and `refbus monitor --web`) at scrape time (services/monitor/exporter.py).

`REFBUS_METRICS=0` turns the services' instrumentation off (the wrappers are not installed at all):
for measuring its cost (bench/metrics_cost.py), or when nobody scrapes.
"""

import os
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from refbus.contracts.events import ALL_EVENT_TYPES
from refbus.contracts.subjects import NO_SECTOR
from refbus.contracts.vocabulary import Sector

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "other"


def enabled() -> bool:
    """REFBUS_METRICS: on unless 0/false/off/no."""
    return os.environ.get("REFBUS_METRICS", "1").strip().lower() not in ("0", "false", "off", "no")


# -- the closed lists every label value comes from ------------------------------------------------
SECTORS = frozenset(s.value for s in Sector)
SERVICES = frozenset({*SECTORS, "pager", "gateway", "deadlines"})
EVENT_TYPES = frozenset(t.__struct_config__.tag for t in ALL_EVENT_TYPES)  # type: ignore[attr-defined]

# Why a sector set a message aside (services/sector/service.py set_aside): the reason's prefix.
DEAD_LETTER_REASONS: tuple[tuple[str, str], ...] = (
    ("newer schema", "newer_schema"),
    ("misrouted", "misrouted"),
    ("addressed to", "misaddressed"),
    ("handling refused", "refused"),
    ("undecodable", "undecodable"),
    ("exhausted", "max_deliveries"),
)
DEAD_LETTER_CODES = frozenset({code for _, code in DEAD_LETTER_REASONS} | {"undecodable", OTHER})

# The lifecycle rule an IllegalEvent names (services/rules/lifecycle.py), by the words of its reason.
REFUSAL_RULES: tuple[tuple[str, str], ...] = (
    ("belongs to child", "wrong_child"),
    ("no such referral", "no_such_referral"),
    ("already has a case open", "case_already_open"),
    ("case events are addressed to no sector", "case_event_addressed"),
    ("referral id already used", "referral_id_reused"),
    ("a referral goes to another sector", "referral_to_self"),
    ("offers no service", "unknown_service"),
    ("no consent on record", "no_consent"),
    ("must be cancelled in the same append", "consent_cancel_missing"),
    ("takes only its consent_withdrawn cancellations", "consent_withdrawn_referral"),
    ("only the receiving sector", "not_the_receiver"),
    ("is not a party to this referral", "not_a_party"),
    ("must be addressed to the other party", "wrong_addressee"),
    ("receipt already acknowledged", "receipt_repeated"),
    ("cannot acknowledge receipt", "receipt_too_late"),
    ("is not allowed from status", "illegal_transition"),
    ("to itself", "deadline_to_self"),
    ("is not pending", "deadline_not_pending"),
    ("is not the request's respond_by", "deadline_mismatch"),
    ("has not passed", "deadline_not_passed"),
    ("already stated for deadline", "deadline_repeated"),
    ("event id", "event_id_taken"),
)
REFUSAL_CODES = frozenset({code for _, code in REFUSAL_RULES} | {OTHER})
WEBHOOK_FAILURES = frozenset({"timeout", "connection", "http_4xx", "http_5xx", "refused", OTHER})


def sector_label(value: object) -> str:
    text = getattr(value, "value", value)
    return text if text in SECTORS or text == NO_SECTOR else OTHER  # type: ignore[return-value]


def service_label(value: object) -> str:
    text = getattr(value, "value", value)
    return text if text in SERVICES else OTHER  # type: ignore[return-value]


def type_label(value: object) -> str:
    return value if value in EVENT_TYPES else OTHER  # type: ignore[return-value]


def _code(text: str, table: tuple[tuple[str, str], ...]) -> str:
    for words, code in table:
        if words in text:
            return code
    return OTHER


def dead_letter_reason(reason: str) -> str:
    """The code of a set-aside reason: its words are free text (they may name ids), the code is not."""
    head = reason[:40]
    for words, code in DEAD_LETTER_REASONS:
        if head.startswith(words):
            return code
    return "undecodable" if reason else OTHER


def refusal_rule(reason: str) -> str:
    """The code of the lifecycle rule an IllegalEvent's reason names."""
    return _code(reason, REFUSAL_RULES)


def webhook_failure(reason: str) -> str:
    return reason if reason in WEBHOOK_FAILURES else OTHER


# -- what each service measures (REGISTRY) --------------------------------------------------------
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

PAIR = ("from_sector", "to_sector", "type")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HotPath(Collector):
    """The metrics counted once per message: plain dicts of ints on the hot path (a dict increment
    and a bisect, no lock: services count from their one event loop), turned into Prometheus
    families at scrape time. prometheus_client's Counter and Histogram take a lock per increment,
    several per observation: a few microseconds a message that the services need for referrals.
    Keys are label tuples already mapped through the `*_label` functions (the callers cache them)."""

    def __init__(self) -> None:
        self.events_in: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.events_out: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.redeliveries: defaultdict[str, int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[float]] = {}
        "(sector, type) -> a count per bucket (the last: above every bound), then the sum."

    def observe_latency(self, key: tuple[str, str], seconds: float) -> None:
        counts = self.latency.get(key)
        if counts is None:
            counts = self.latency[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        events_in = CounterMetricFamily(
            "refbus_events_in", "Events delivered to a sector's inbox handler (first deliveries), by route and type",
            labels=PAIR,
        )
        for labels, count in list(self.events_in.items()):
            events_in.add_metric(labels, count)
        events_out = CounterMetricFamily(
            "refbus_events_out", "Events a service appended to the log, by route and type", labels=PAIR
        )
        for labels, count in list(self.events_out.items()):
            events_out.add_metric(labels, count)
        redeliveries = CounterMetricFamily(
            "refbus_redeliveries", "Messages delivered to a sector again (scheduled returns and retries alike)",
            labels=("sector",),
        )
        for sector, count in list(self.redeliveries.items()):
            redeliveries.add_metric((sector,), count)
        latency = HistogramMetricFamily(
            "refbus_handler_seconds", "Time a sector's handler took over one delivered message",
            labels=("sector", "type"),
        )
        for labels, counts in list(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts[:-1], strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric(labels, buckets, counts[-1])
        yield from (events_in, events_out, redeliveries, latency)

    def describe(self) -> Iterator[Metric]:
        return self.collect()


HOT = HotPath()
REGISTRY.register(HOT)
HANDLER_FAILURES = Counter(
    "refbus_handler_failures", "Transient handler failures, given back to the server for a retry",
    ("sector",), registry=REGISTRY,
)
REFUSALS = Counter(
    "refbus_refusals", "Events refused by a lifecycle rule, by rule code", ("sector", "rule"), registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "refbus_dead_letters", "Messages a sector set aside (dead letters), by reason code",
    ("sector", "reason"), registry=REGISTRY,
)
INBOX_PENDING = Gauge(
    "refbus_inbox_pending", "Messages waiting in a sector's inbox consumer (num_pending, sampled)",
    ("sector",), registry=REGISTRY,
)
INBOX_ACK_PENDING = Gauge(
    "refbus_inbox_ack_pending", "Messages delivered to a sector and not yet acknowledged (referrals in work)",
    ("sector",), registry=REGISTRY,
)
OVERDUE = Counter(
    "refbus_overdue", "Referrals found past their deadline, by the sector whose move is due (deadlines service)",
    ("sector",), registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "refbus_webhook_deliveries", "Webhook deliveries that the receiving system acknowledged (gateway)",
    ("sector",), registry=REGISTRY,
)
WEBHOOK_FAILURES_TOTAL = Counter(
    "refbus_webhook_failures", "Webhook deliveries that failed, by reason code (gateway)",
    ("sector", "reason"), registry=REGISTRY,
)


def set_aside(sector: object, reason: str) -> None:
    """Count a dead letter (and, for a refusal, the rule that refused it)."""
    code = dead_letter_reason(reason)
    DEAD_LETTERS.labels(sector_label(sector), code).inc()
    if code == "refused":
        REFUSALS.labels(sector_label(sector), refusal_rule(reason)).inc()


def refused(sector: object, reason: str) -> None:
    REFUSALS.labels(sector_label(sector), refusal_rule(reason)).inc()


def handler_failed(sector: object) -> None:
    HANDLER_FAILURES.labels(sector_label(sector)).inc()


def overdue(sector: object, count: int = 1) -> None:
    OVERDUE.labels(sector_label(sector)).inc(count)


def webhook_delivered(sector: object) -> None:
    WEBHOOK_DELIVERIES.labels(sector_label(sector)).inc()


def webhook_failed(sector: object, reason: str) -> None:
    WEBHOOK_FAILURES_TOTAL.labels(sector_label(sector), webhook_failure(reason)).inc()


# -- the server's own state, read at scrape time (JETSTREAM_REGISTRY) --------------------------------
JETSTREAM_REGISTRY = CollectorRegistry()
JS_UP = Gauge(
    "refbus_jetstream_up", "1 when the server's JetStream state could be read at the last scrape",
    registry=JETSTREAM_REGISTRY,
)
JS_STORAGE = Gauge("refbus_jetstream_storage_bytes", "File storage JetStream uses", registry=JETSTREAM_REGISTRY)
JS_STORAGE_LIMIT = Gauge(
    "refbus_jetstream_storage_limit_bytes", "File storage JetStream may use (max_file_store)",
    registry=JETSTREAM_REGISTRY,
)
STREAM_MESSAGES = Gauge(
    "refbus_jetstream_stream_messages", "Messages in a stream", ("stream",), registry=JETSTREAM_REGISTRY
)
STREAM_BYTES = Gauge("refbus_jetstream_stream_bytes", "Bytes in a stream", ("stream",), registry=JETSTREAM_REGISTRY)
STREAM_MAX_BYTES = Gauge(
    "refbus_jetstream_stream_max_bytes", "A stream's max_bytes (-1: none; discard=new refuses writes there)",
    ("stream",), registry=JETSTREAM_REGISTRY,
)
STREAM_MAX_MESSAGES = Gauge(
    "refbus_jetstream_stream_max_messages", "A stream's max_msgs (-1: none)", ("stream",), registry=JETSTREAM_REGISTRY
)
CONSUMER = ("stream", "consumer")
CONSUMER_PENDING = Gauge(
    "refbus_jetstream_consumer_num_pending", "Messages a durable consumer has not yet delivered",
    CONSUMER, registry=JETSTREAM_REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "refbus_jetstream_consumer_num_ack_pending", "Messages a durable consumer delivered and awaits acks for",
    CONSUMER, registry=JETSTREAM_REGISTRY,
)
CONSUMER_REDELIVERED = Gauge(
    "refbus_jetstream_consumer_num_redelivered", "Messages a durable consumer has delivered more than once",
    CONSUMER, registry=JETSTREAM_REGISTRY,
)
CONSUMER_WAITING = Gauge(
    "refbus_jetstream_consumer_num_waiting", "Pull requests waiting on a durable consumer (a live puller)",
    CONSUMER, registry=JETSTREAM_REGISTRY,
)
FOREIGN_DELIVERIES = Gauge(
    "refbus_jetstream_foreign_push_consumers",
    "Consumers that push to a subject outside the reply inboxes (none of refbus's own do; an alarm)",
    registry=JETSTREAM_REGISTRY,
)
DEAD_LETTERS_STORED = Gauge(
    "refbus_dead_letter_stream_messages", "Dead letters kept in REFBUS_DEAD_LETTERS, by sector",
    ("sector",), registry=JETSTREAM_REGISTRY,
)
SERVICE_UP = Gauge(
    "refbus_service_connected", "Connections the server has from a refbus service (by its client name)",
    ("service",), registry=JETSTREAM_REGISTRY,
)


# -- exposition and the list of names -------------------------------------------------------------
def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def metric_names(*registries: CollectorRegistry) -> frozenset[str]:
    """Every series name the registries can expose (a counter `x`: `x_total`, ...), whether or not a
    labelled series exists yet."""
    names: set[str] = set()
    for registry in registries or (REGISTRY, JETSTREAM_REGISTRY):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return frozenset(names)


CHILD_LIKE = re.compile(r"c[0-9a-f]{16}")
"What a child reference looks like (contracts ChildRef): no exposed label value may contain one."
