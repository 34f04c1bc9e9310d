"""metrics.Family and metrics.LockFreeHistogram (no lock on the per-call paths) expose
exactly what prometheus_client's Counter, Gauge and Histogram expose for the same updates."""
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from switchd.metrics import Family, LockFreeHistogram

_LABEL = st.sampled_from(["acme", "globex", "-", "a b", 'q"uote', "é"])
_AMOUNT = st.one_of(st.integers(0, 1000), st.floats(0, 1e6, allow_nan=False))
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def _pair():
    return CollectorRegistry(), CollectorRegistry()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_LABEL, _LABEL, _AMOUNT), max_size=30))
def test_a_counter_family_scrapes_as_a_prometheus_counter(updates):
    ours_reg, theirs_reg = _pair()
    ours = Family("x_cost_total", "Cost by tenant and carrier", ("tenant", "carrier"),
                  registry=ours_reg)
    theirs = Counter("x_cost_total", "Cost by tenant and carrier", ("tenant", "carrier"),
                     registry=theirs_reg)
    for tenant, carrier, amount in updates:
        ours.labels(tenant, carrier).inc(amount)
        theirs.labels(tenant, carrier).inc(amount)
    assert generate_latest(ours_reg) == generate_latest(theirs_reg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_LABEL, st.floats(-1e6, 1e6, allow_nan=False)), max_size=30))
def test_a_gauge_family_scrapes_as_a_prometheus_gauge(updates):
    ours_reg, theirs_reg = _pair()
    ours = Family("x_health", "Health score", ("carrier",), "gauge", registry=ours_reg)
    theirs = Gauge("x_health", "Health score", ("carrier",), registry=theirs_reg)
    for carrier, value in updates:
        ours.labels(carrier=carrier).set(value)
        theirs.labels(carrier=carrier).set(value)
    assert generate_latest(ours_reg) == generate_latest(theirs_reg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_BUCKETS), st.floats(0, 1, allow_nan=False)),
                max_size=50))
def test_the_lock_free_histogram_scrapes_as_a_prometheus_histogram(values):
    ours_reg, theirs_reg = _pair()
    ours = LockFreeHistogram("x_seconds", "Time to decide", _BUCKETS, registry=ours_reg)
    theirs = Histogram("x_seconds", "Time to decide", buckets=_BUCKETS, registry=theirs_reg)
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    assert generate_latest(ours_reg) == generate_latest(theirs_reg)


def test_a_counter_refuses_to_go_down_or_be_set_and_labels_are_counted():
    family = Family("x_calls_total", "Calls", ("result",), registry=CollectorRegistry())
    cell = family.labels("answered")
    cell.inc(2)
    assert family.labels(result="answered") is cell and cell.value == 2
    for wrong in (lambda: cell.inc(-1), lambda: cell.set(5), lambda: family.labels("a", "b")):
        try:
            wrong()
        except ValueError:
            continue
        raise AssertionError("accepted")
    assert cell.value == 2
