"""Counters and histograms for the I/O thread: no lock, a list increment per event, exported when scraped.

prometheus_client's own Counter and Histogram take a lock on every change (a histogram two: its
sum and its bucket) and look for the bucket one bound after the other: a few microseconds, paid
on the transport's I/O thread, which is the worker's bottleneck. What one thread writes alone
needs no lock: :class:`LocalCounts` and :class:`LocalHistogram` are plain integers and floats that
only the I/O thread changes (``bisect`` finds a bucket), and :meth:`family` builds prometheus_client's
metric families from them when ``/metrics`` is scraped (a scrape may see one observation in the sum
and not yet in its bucket; the next one agrees).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily


class LocalCounts:
    """A counter per label value of a fixed set; written by one thread."""

    __slots__ = ("counts",)

    def __init__(self, values: Iterable[str]) -> None:
        self.counts = dict.fromkeys(values, 0)

    def family(self, name: str, documentation: str, labels: Sequence[str], fixed: Sequence[str]) -> CounterMetricFamily:
        """The counters as one family: ``labels`` are the fixed labels' names then the counted one's."""
        family = CounterMetricFamily(name, documentation, labels=list(labels))
        for value, count in list(self.counts.items()):
            family.add_metric([*fixed, value], float(count))
        return family


class LocalHistogram:
    """Observations counted into buckets (``le`` bounds, +Inf added) and summed; written by one thread."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: value <= le
        self.sum += value

    def family(
        self, name: str, documentation: str, labels: Sequence[str] = (), values: Sequence[str] = ()
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        counts, total = list(self.counts), self.sum
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append((_le(bound), float(running)))
        family.add_metric(list(values), buckets, total)
        return family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it: ``0.005``, ``10.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))
