"""The metrics module: names as Prometheus expects them, and labels that cannot carry a child.

Every label value passes through a `*_label` function with a closed list; these tests feed them what
a hostile or careless caller could (child references, ids, free text) and then check every exposed
sample of both registries.
"""

import re
import uuid

from prometheus_client.parser import text_string_to_metric_families

from refbus.contracts.events import ALL_EVENT_TYPES
from refbus.contracts.vocabulary import Sector
from refbus.services.rules import lifecycle
from refbus.services.runtime import metrics
from tests.factories import new_child

NAME = re.compile(r"^refbus_[a-z_]+$")
ALLOWED_LABELS = {
    "from_sector", "to_sector", "type", "sector", "reason", "rule", "stream", "consumer", "service", "le",
}


def _refbus_families() -> list[object]:
    registries = (metrics.REGISTRY, metrics.JETSTREAM_REGISTRY)
    return [f for r in registries for f in r.collect() if f.name.startswith("refbus")]


def test_every_metric_is_refbus_named_and_labelled_with_codes_only() -> None:
    families = _refbus_families()
    assert len(families) >= 20
    for family in families:
        assert NAME.match(family.name), family.name  # type: ignore[attr-defined]
    for collector in metrics.REGISTRY._collector_to_names:  # type: ignore[attr-defined]
        for label in getattr(collector, "_labelnames", ()):
            assert label in ALLOWED_LABELS, label
            assert "child" not in label and "id" not in label.split("_")


def test_label_functions_never_pass_a_child_or_free_text() -> None:
    child = new_child()
    hostile = [child, f"refbus.ev.{child}.social.health", str(uuid.uuid4()), "Maria Popescu", "", "social "]
    for value in hostile:
        assert metrics.sector_label(value) == metrics.OTHER
        assert metrics.type_label(value) == metrics.OTHER
        assert metrics.service_label(value) == metrics.OTHER
        assert metrics.webhook_failure(value) == metrics.OTHER
        assert metrics.dead_letter_reason(value) in metrics.DEAD_LETTER_CODES
        assert metrics.refusal_rule(value) in metrics.REFUSAL_CODES
    assert metrics.sector_label(Sector.HEALTH) == "health"
    assert {metrics.type_label(t.__struct_config__.tag) for t in ALL_EVENT_TYPES} == metrics.EVENT_TYPES


def test_every_lifecycle_refusal_has_a_rule_code() -> None:
    # The reasons lifecycle.check can give, as its source spells them: each maps to a code of its own.
    source = open(lifecycle.__file__).read()
    reasons = re.findall(r'IllegalEvent\(event, f?"([^"]+)"\)', source)
    assert len(reasons) >= 12
    for reason in reasons:
        assert metrics.refusal_rule(reason) != metrics.OTHER, reason


def test_dead_letter_reasons_map_to_codes() -> None:
    child = new_child()
    cases = {
        "newer schema: v9": "newer_schema",
        f"misrouted: child {child} is not the subject's": "misrouted",
        "addressed to health, not social": "misaddressed",
        "handling refused: no such referral for this child": "refused",
        "not JSON: unexpected character": "undecodable",
    }
    for reason, code in cases.items():
        assert metrics.dead_letter_reason(reason) == code


def test_what_the_helpers_count_is_exposed_without_a_child() -> None:
    child = new_child()
    metrics.set_aside(Sector.SOCIAL, f"handling refused: belongs to child {child}, not c0000000000000000")
    metrics.set_aside(child, f"misrouted: {child}")
    metrics.refused("health", "referral.accepted is not allowed from status completed")
    metrics.handler_failed(child)
    metrics.overdue(Sector.EDUCATION, 2)
    metrics.webhook_delivered(Sector.JUSTICE)
    metrics.webhook_failed(Sector.JUSTICE, f"http 500 for {child}")
    labels = (metrics.sector_label(child), metrics.sector_label("health"), metrics.type_label(child))
    metrics.HOT.events_in[labels] += 1  # as instrument.handler counts, with labels from the label functions
    for registry in (metrics.REGISTRY, metrics.JETSTREAM_REGISTRY):
        text = metrics.exposition(registry).decode()
        assert not metrics.CHILD_LIKE.search(text)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for label, value in sample.labels.items():
                    assert not metrics.CHILD_LIKE.search(value), (sample.name, label, value)
    text = metrics.exposition().decode()
    assert 'refbus_dead_letters_total{reason="refused",sector="social"}' in text
    assert 'refbus_refusals_total{rule="wrong_child",sector="social"}' in text
    assert 'refbus_refusals_total{rule="illegal_transition",sector="health"}' in text
    assert 'refbus_overdue_total{sector="education"} 2.0' in text
    assert 'refbus_webhook_failures_total{reason="other",sector="justice"}' in text


def test_metric_names_lists_every_series_name() -> None:
    names = metrics.metric_names()
    for expected in (
        "refbus_events_in_total", "refbus_events_out_total", "refbus_handler_seconds_bucket",
        "refbus_dead_letters_total", "refbus_overdue_total", "refbus_inbox_pending",
        "refbus_jetstream_consumer_num_pending", "refbus_jetstream_stream_bytes", "process_resident_memory_bytes",
    ):
        assert expected in names


def test_metrics_can_be_turned_off(monkeypatch: object) -> None:
    monkeypatch.setenv("REFBUS_METRICS", "0")  # type: ignore[attr-defined]
    assert not metrics.enabled()
    monkeypatch.setenv("REFBUS_METRICS", "1")  # type: ignore[attr-defined]
    assert metrics.enabled()


def test_the_hot_path_histogram_counts_as_prometheus_does() -> None:
    hot = metrics.HotPath()
    for seconds in (0.0005, 0.0006, 0.003, 99.0):  # a value on a bound is in that bound's bucket (le)
        hot.observe_latency(("health", "referral.requested"), seconds)
    hot.events_out[("health", "social", "referral.received")] += 3
    families = {f.name: f for f in hot.collect()}
    samples = families["refbus_handler_seconds"].samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert (buckets["0.0005"], buckets["0.001"], buckets["0.005"], buckets["10.0"], buckets["+Inf"]) == (1, 2, 3, 3, 4)
    count = [s.value for s in families["refbus_handler_seconds"].samples if s.name.endswith("_count")]
    assert count == [4]
    assert [s.value for s in families["refbus_events_out"].samples] == [3]
