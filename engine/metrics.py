"""Server-side latency histograms: where a request's time goes, without a load generator.

Per operation (``create_accounts``, ``create_transfers``, ``lookup_accounts``, ...) and per
stage of the way of a request (docs/request-path.md), an HdrHistogram of microseconds (1 us to
one hour, 3 significant figures):

* ``queue``: from the frame's arrival to the core thread taking its stage;
* ``apply``: the core thread's work on the stage (``Store.submit`` for a create batch);
* ``commit``: from applied to its log commit done (for lookups: to the commit of the batches
  before them, which their replies wait for);
* ``reply``: from the commit done to the reply written to the socket;
* ``total``: from arrival to reply written.

Batch stages (apply, commit, reply) are recorded once per batch with the batch's request
count as the weight; ``queue`` and ``total`` once per request, a whole stage's requests at a
time. Everything is recorded on the event loop's thread, under a lock that a reader (the
Prometheus endpoint's thread, ``snapshot``) takes too.

Exposed, when the config's ``metrics_port`` is set, in the Prometheus text format by
``prometheus_client`` (``start_endpoint``): a histogram ``tally_request_stage_seconds`` with
``operation`` and ``stage`` labels, and gauges ``tally_request_stage_quantile_seconds`` with
``quantile`` 0.5 / 0.99 / 0.999 from the HDR histograms. ``tally metrics`` prints them as a
table.
"""

from __future__ import annotations

import threading

import numpy as np
from hdrh.histogram import HdrHistogram

STAGES = ("queue", "apply", "commit", "reply", "total")
LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES = 1, 3_600_000_000, 3
QUANTILES = (0.5, 0.99, 0.999)
#: Bucket bounds of the Prometheus histogram, in seconds (the HDR histogram keeps the detail).
BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """The histograms of one server (``Server.metrics``)."""

    def __init__(self, operation_names: dict[int, str]):
        self._names = dict(operation_names)
        self._lock = threading.Lock()
        self._histograms: dict[tuple[str, str], HdrHistogram] = {}

    def _histogram(self, operation: int, stage: str) -> HdrHistogram:
        key = (self._names.get(operation, str(operation)), stage)
        histogram = self._histograms.get(key)
        if histogram is None:
            histogram = self._histograms[key] = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        return histogram

    def record_batch(self, operation: int, requests: int, arrivals_ns: list[int], taken_ns: int, applied_ns: int,
                     committed_ns: int, replied_ns: int) -> None:
        """One stage's times (``time.perf_counter_ns``): its requests' arrivals, when the core
        took it, finished applying it, saw it committed, and when its replies were written."""
        if requests == 0:
            return
        arrivals = np.asarray(arrivals_ns, dtype=np.int64)
        with self._lock:
            for stage, start_ns, end_ns in (("apply", taken_ns, applied_ns), ("commit", applied_ns, committed_ns),
                                           ("reply", committed_ns, replied_ns)):
                self._histogram(operation, stage).record_value(_clamped_us(end_ns - start_ns), requests)
            for stage, end_ns in (("queue", taken_ns), ("total", replied_ns)):
                histogram = self._histogram(operation, stage)
                waits_us, counts = np.unique(np.clip((end_ns - arrivals) // 1000, LOWEST_US, HIGHEST_US),
                                             return_counts=True)
                for wait_us, count in zip(waits_us.tolist(), counts.tolist()):
                    histogram.record_value(wait_us, count)

    def snapshot(self) -> dict[tuple[str, str], dict]:
        """Per (operation, stage): count, sum_s (approximate: HDR's mean × count), quantiles in
        seconds and cumulative bucket counts."""
        out = {}
        with self._lock:
            for key, histogram in self._histograms.items():
                count = histogram.get_total_count()
                buckets, seen = [], 0
                iterator = iter(histogram.get_recorded_iterator())
                pending = next(iterator, None)
                for bound_s in BUCKETS_S:
                    while pending is not None and pending.value_iterated_to <= bound_s * 1e6:
                        seen += pending.count_at_value_iterated_to
                        pending = next(iterator, None)
                    buckets.append((bound_s, seen))
                out[key] = {"count": count, "sum_s": histogram.get_mean_value() * count / 1e6,
                            "quantiles_s": {q: histogram.get_value_at_percentile(q * 100) / 1e6 for q in QUANTILES},
                            "max_s": histogram.get_max_value() / 1e6, "buckets": buckets}
        return out


def _clamped_us(ns: int) -> int:
    return min(max(ns // 1000, LOWEST_US), HIGHEST_US)


class _Collector:
    """A ``prometheus_client`` collector over a ``RequestMetrics`` (read at each scrape)."""

    def __init__(self, metrics: RequestMetrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        histogram = HistogramMetricFamily("tally_request_stage_seconds",
                                          "Time a request spends in each stage of the server (docs/request-path.md)",
                                          labels=("operation", "stage"))
        quantiles = GaugeMetricFamily("tally_request_stage_quantile_seconds",
                                      "Quantiles of the stage times since the server started (HDR histograms)",
                                      labels=("operation", "stage", "quantile"))
        for (operation, stage), figures in sorted(self.metrics.snapshot().items()):
            buckets = [(repr(bound), count) for bound, count in figures["buckets"]] + [("+Inf", figures["count"])]
            histogram.add_metric((operation, stage), buckets, figures["sum_s"])
            for quantile, value in figures["quantiles_s"].items():
                quantiles.add_metric((operation, stage, repr(quantile)), value)
        yield histogram
        yield quantiles


def start_endpoint(metrics: RequestMetrics, host: str, port: int):
    """Serve ``/metrics`` in the Prometheus text format on its own thread; returns the HTTP
    server (``shutdown()`` stops it) and the port it listens on."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread, server.server_port


def table(text: str) -> str:
    """The Prometheus text this module serves, as a table (``tally metrics``)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    quantiles: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tally_request_stage_seconds_count":
                counts[(labels["operation"], labels["stage"])] = sample.value
            elif sample.name == "tally_request_stage_quantile_seconds":
                quantiles.setdefault((labels["operation"], labels["stage"]), {})[labels["quantile"]] = sample.value
    if not counts:
        return "no request has been answered yet"
    lines = [f"{'operation':<22} {'stage':<7} {'requests':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"]
    for operation, stage in sorted(counts, key=lambda key: (key[0], STAGES.index(key[1]) if key[1] in STAGES else 99)):
        q = quantiles.get((operation, stage), {})
        lines.append(f"{operation:<22} {stage:<7} {counts[(operation, stage)]:>10,.0f} "
                     + " ".join(f"{q.get(name, float('nan')) * 1e3:>{width}.2f}"
                                for name, width in (("0.5", 8), ("0.99", 8), ("0.999", 9))))
    return "\n".join(lines)
