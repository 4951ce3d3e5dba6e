"""Counters and histograms for the event loop's hot path, exposed through prometheus-client.

prometheus-client's ``Histogram.observe`` takes a lock per bucket increment and costs ~1.8 µs here;
``Counter.inc`` ~0.6 µs.  A card sale records six of them on the event-loop thread (its transaction
count and latency, three HSM round trips, the issuer round trip).  :class:`LoopHistogram` and
:class:`LoopCounter` keep plain Python numbers instead (``bisect`` into the bucket list: ~0.2 µs) and
hand them to the registry as a custom collector, so ``/metrics`` shows exactly the samples the
prometheus-client instruments would (``tests/test_loop_metrics.py`` compares the two expositions),
without the ``_created`` series.

Update them from one thread only (the event loop's: nothing here is locked).  A scrape from another
thread may see one observation half applied (its bucket counted, the sum not yet), never a torn value.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class _Family:
    """Label handling shared by both kinds: ``labels(*values)`` returns a cached child."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if registry is not None:
            registry.register(self)

    def _child(self, values: tuple[str, ...]) -> object:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {values!r}")
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> object:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return iter(())  # children appear as they are created: nothing to declare up front


class LoopHistogram(_Family):
    """``Histogram`` with the same ``labels(...).observe(x)`` API, for one thread."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry | None = None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._le = [floatToGoString(b) for b in bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self._bounds)

    def labels(self, *values: str) -> _HistogramChild:
        child = self._children.get(values)  # labels are strings: the arguments are the key
        return child if child is not None else self._child(tuple(map(str, values)))  # type: ignore[return-value]

    def observe(self, amount: float) -> None:
        """For a histogram without labels."""
        self.labels().observe(amount)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            assert isinstance(child, _HistogramChild)
            running, buckets = 0, []
            for le, n in zip(self._le, child.counts, strict=True):
                running += n
                buckets.append((le, float(running)))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class LoopCounter(_Family):
    """``Counter`` with the same ``labels(...).inc()`` API, for one thread."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def labels(self, *values: str) -> _CounterChild:
        child = self._children.get(values)  # labels are strings: the arguments are the key
        return child if child is not None else self._child(tuple(map(str, values)))  # type: ignore[return-value]

    def inc(self, amount: float = 1.0) -> None:
        """For a counter without labels."""
        self.labels().inc(amount)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            assert isinstance(child, _CounterChild)
            family.add_metric(list(values), child.value)
        yield family
