"""Latency histograms: HdrHistogram (the ``hdrhistogram`` package), recorded a whole array at a time.

Latencies are integers in microseconds from 1 µs to one hour, kept to 3 significant digits
(a value is known to within 0.1%, whatever its size). ``hdrh``'s own ``record_value`` is a
Python call per value; a load generator answering a million requests a second cannot afford
that, so ``record`` computes the bucket of every value of an array with NumPy (the same
arithmetic as ``hdrh``, checked against it by the tests) and adds the counts in place.

Histograms travel between processes in HdrHistogram's standard compressed encoding
(``encode``/``decode``), and are merged with ``add``: the load generator's workers each keep
their own and the report merges them, which is exact (percentiles of a merged histogram, not
averages of percentiles).
"""

from __future__ import annotations

import numpy as np
from hdrh.histogram import HdrHistogram

LATENCY_US_LOWEST = 1
LATENCY_US_HIGHEST = 3_600_000_000   # one hour: anything slower is recorded as an hour
SIGNIFICANT_FIGURES = 3
#: The percentiles every report gives (p50 ... p99.99 and max).
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class LatencyHistogram:
    """An HdrHistogram of latencies in microseconds, with array recording."""

    def __init__(self, histogram: HdrHistogram | None = None):
        self.hdr = histogram or HdrHistogram(LATENCY_US_LOWEST, LATENCY_US_HIGHEST, SIGNIFICANT_FIGURES)
        h = self.hdr
        assert h.unit_magnitude == 0, "array recording assumes a lowest trackable value of 1"
        self._half_magnitude = h.sub_bucket_half_count_magnitude
        self._sub_bucket_mask = h.sub_bucket_mask
        self._counts = np.ctypeslib.as_array(h.counts)  # the histogram's own counters, not a copy
        assert self._counts.dtype.itemsize == 8 and len(self._counts) == h.counts_len

    @property
    def count(self) -> int:
        return self.hdr.get_total_count()

    def record(self, values_us: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Record every value of an integer array (clamped to 1 µs .. one hour), each once or
        ``counts[i]`` times."""
        if len(values_us) == 0:
            return
        values = np.clip(np.asarray(values_us, dtype=np.int64), LATENCY_US_LOWEST, LATENCY_US_HIGHEST)
        # hdrh: bucket = bit_length(v | sub_bucket_mask) - (half_magnitude + 1);
        # index = ((bucket + 1) << half_magnitude) + (v >> bucket) - half_count. Values stay
        # below 2**53, so frexp's exponent is the exact bit length.
        bit_length = np.frexp((values | self._sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
        bucket = bit_length - (self._half_magnitude + 1)
        index = ((bucket + 1) << self._half_magnitude) + (values >> bucket) - (1 << self._half_magnitude)
        if counts is None:
            slots, per_slot = np.unique(index, return_counts=True)
            self._counts[slots] += per_slot.astype(np.uint64)
            recorded = len(values)
        else:
            counts = np.asarray(counts, dtype=np.uint64)
            np.add.at(self._counts, index, counts)
            recorded = int(counts.sum())
        h = self.hdr
        h.total_count += recorded
        h.min_value = min(h.min_value, int(values.min()))
        h.max_value = max(h.max_value, int(values.max()))

    def add(self, other: "LatencyHistogram") -> None:
        if other.count:
            self.hdr.add(other.hdr)

    def reset(self) -> None:
        self.hdr.reset()

    def value_at(self, percentile: float) -> int:
        return self.hdr.get_value_at_percentile(percentile)

    def summary(self) -> dict:
        """p50 ... p99.99, max, mean and count in microseconds (the report's ``latency_us``)."""
        if not self.count:
            return {"count": 0}
        out = {f"p{p:g}": self.value_at(p) for p in PERCENTILES}
        out.update(max=self.hdr.get_max_value(), mean=round(self.hdr.get_mean_value(), 1), count=self.count)
        return out

    def spectrum(self, ticks_per_half_distance: int = 5) -> list[list[float]]:
        """The percentile spectrum: ``[percentile, value_us]`` pairs up to ``[100.0, max]``."""
        if not self.count:
            return []
        points = [[round(item.percentile_level_iterated_to, 6), item.value_iterated_to]
                  for item in self.hdr.get_percentile_iterator(ticks_per_half_distance)]
        if not points or points[-1][0] < 100.0:
            points.append([100.0, self.hdr.get_max_value()])
        return points

    def encode(self) -> bytes:
        """HdrHistogram's standard compressed encoding (base64), for another process or a file."""
        return self.hdr.encode()

    @classmethod
    def decode(cls, encoded: bytes | str) -> "LatencyHistogram":
        return cls(HdrHistogram.decode(encoded))
