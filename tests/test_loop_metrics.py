"""switch.loop_metrics against prometheus-client: the same observations give the same exposition."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from switch.loop_metrics import LoopCounter, LoopHistogram
from switch.metrics import FAST_BUCKETS, LATENCY_BUCKETS


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition without the ``_created`` series (the loop instruments do not keep them)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


amounts = st.one_of(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.sampled_from([*LATENCY_BUCKETS, *FAST_BUCKETS, 0.0, 1e-9]),  # values exactly on a bound
)


@settings(max_examples=60, deadline=None)
@given(obs=st.lists(st.tuples(st.sampled_from(["sale", "void", "balance"]), st.sampled_from(["00", "51", "A0"]),
                              amounts), max_size=40))
def test_same_exposition_as_prometheus_client(obs):
    ref, loop = CollectorRegistry(), CollectorRegistry()
    ref_count = Counter("posswitch_transactions", "Transactions answered", ["type", "response_code"], registry=ref)
    ref_hist = Histogram("posswitch_transaction_seconds", "Request to reply", ["type"], buckets=LATENCY_BUCKETS,
                         registry=ref)
    ref_fast = Histogram("posswitch_hsm_seconds", "HSM", ["command"], buckets=FAST_BUCKETS, registry=ref)
    count = LoopCounter("posswitch_transactions", "Transactions answered", ["type", "response_code"], registry=loop)
    hist = LoopHistogram("posswitch_transaction_seconds", "Request to reply", ["type"], buckets=LATENCY_BUCKETS,
                         registry=loop)
    fast = LoopHistogram("posswitch_hsm_seconds", "HSM", ["command"], buckets=FAST_BUCKETS, registry=loop)
    for txn_type, rc, seconds in obs:
        for c, h, f in ((ref_count, ref_hist, ref_fast), (count, hist, fast)):
            c.labels(txn_type, rc).inc()
            h.labels(txn_type).observe(seconds)
            f.labels(rc).observe(seconds / 1000)
    assert _exposition(loop) == _exposition(ref)


def test_buckets_are_cumulative_and_le_inclusive():
    reg = CollectorRegistry()
    h = LoopHistogram("h", "h", buckets=(0.1, 1.0), registry=reg)
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    lines = _exposition(reg)
    assert 'h_bucket{le="0.1"} 2.0' in lines  # 0.1 itself is in the le="0.1" bucket
    assert 'h_bucket{le="1.0"} 4.0' in lines
    assert 'h_bucket{le="+Inf"} 5.0' in lines
    assert "h_count 5.0" in lines
    assert "h_sum 8.65" in lines
    assert LoopHistogram("x", "x", buckets=(1.0, math.inf))._bounds == [1.0, math.inf]


def test_label_count_and_negative_increments_are_refused():
    c = LoopCounter("c_total", "c", ["a"])
    with pytest.raises(ValueError):
        c.labels("x", "y")
    with pytest.raises(ValueError):
        c.labels("x").inc(-1)
    c.labels("x").inc(2)
    assert c.labels("x").value == 2
