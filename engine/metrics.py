"""Server-side latency histograms: where a request's time goes, without a load generator.

Per operation (``create_accounts``, ``create_transfers``, ``lookup_accounts``, ...) and per
stage of the way of a request (docs/request-path.md), an HdrHistogram of microseconds (1 us to
one hour, 3 significant figures):

* ``queue``: from the frame's arrival to the batcher taking its stage;
* ``apply``: the batcher's work on the stage (``Store.stage`` for a create batch);
* ``commit``: from applied to the journal sync that holds it (the run's stages share one; for
  lookups: the sync of the batches before them, which their replies wait for);
* ``reply``: from the commit done to the reply written to the socket;
* ``total``: from arrival to reply written.

Batch stages (apply, commit, reply) are recorded once per batch with the batch's request
count as the weight; ``queue`` and ``total`` once per request. Recording appends to plain lists
(about 3 us a batch: ``hdrh``'s own ``record_value`` is a Python call of a few microseconds per
value, which cost 130 us a batch); the lists are folded into the HDR histograms a whole array at
a time (``loadgen.histogram``) when they reach ``FOLD_VALUES`` and before every read.
Everything is recorded on the event loop's thread, under a lock that a reader (the Prometheus
endpoint's thread, ``snapshot``) takes too.

Exposed, when the config's ``metrics_port`` is set, in the Prometheus text format by
``prometheus_client`` (``start_endpoint``): a histogram ``tally_request_stage_seconds`` with
``operation`` and ``stage`` labels, and gauges ``tally_request_stage_quantile_seconds`` with
``quantile`` 0.5 / 0.99 / 0.999 from the HDR histograms. ``tally metrics`` prints them as a
table.
"""

from __future__ import annotations

import threading

import numpy as np

from loadgen.histogram import LatencyHistogram

STAGES = ("queue", "apply", "commit", "reply", "total")
#: Values waiting in the lists before they are folded into the histograms.
FOLD_VALUES = 1 << 16
QUANTILES = (0.5, 0.99, 0.999)
#: Bucket bounds of the Prometheus histogram, in seconds (the HDR histogram keeps the detail).
BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """The histograms of one server (``Server.metrics``)."""

    def __init__(self, operation_names: dict[int, str]):
        self._names = dict(operation_names)
        self._lock = threading.Lock()
        self._histograms: dict[tuple[str, str], LatencyHistogram] = {}
        # Per operation: (per-request values of queue, of total; per-batch values of apply,
        # commit, reply; the batches' weights), all in microseconds, not yet folded.
        self._pending: dict[int, tuple[list, list, list, list, list, list]] = {}
        self._pending_values = 0

    def record_batch(self, operation: int, requests: int, arrivals_ns: list[int], taken_ns: int, applied_ns: int,
                     committed_ns: int, replied_ns: int) -> None:
        """One stage's times (``time.perf_counter_ns``): its requests' arrivals, when the core
        took it, finished applying it, saw it committed, and when its replies were written."""
        if requests == 0:
            return
        with self._lock:
            pending = self._pending.get(operation)
            if pending is None:
                pending = self._pending[operation] = ([], [], [], [], [], [])
            queue, total, apply, commit, reply, weights = pending
            queue.extend([(taken_ns - arrival) // 1000 for arrival in arrivals_ns])
            total.extend([(replied_ns - arrival) // 1000 for arrival in arrivals_ns])
            apply.append((applied_ns - taken_ns) // 1000)
            commit.append((committed_ns - applied_ns) // 1000)
            reply.append((replied_ns - committed_ns) // 1000)
            weights.append(requests)
            self._pending_values += 2 * len(arrivals_ns) + 4
            if self._pending_values >= FOLD_VALUES:
                self._fold()

    def _fold(self) -> None:
        """Move the pending values into the histograms (the lock held)."""
        for operation, (queue, total, apply, commit, reply, weights) in self._pending.items():
            name = self._names.get(operation, str(operation))
            for stage, values in (("queue", queue), ("total", total)):
                if values:
                    self._histogram(name, stage).record(np.array(values, dtype=np.int64))
            if weights:
                counts = np.array(weights, dtype=np.uint64)
                for stage, values in (("apply", apply), ("commit", commit), ("reply", reply)):
                    self._histogram(name, stage).record(np.array(values, dtype=np.int64), counts)
        self._pending.clear()
        self._pending_values = 0

    def _histogram(self, name: str, stage: str) -> LatencyHistogram:
        histogram = self._histograms.get((name, stage))
        if histogram is None:
            histogram = self._histograms[(name, stage)] = LatencyHistogram()
        return histogram

    def snapshot(self) -> dict[tuple[str, str], dict]:
        """Per (operation, stage): count, sum_s (approximate: HDR's mean × count), quantiles in
        seconds and cumulative bucket counts."""
        out = {}
        with self._lock:
            self._fold()
            for key, latency in self._histograms.items():
                histogram = latency.hdr
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


def parse(text: str) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], dict[str, float]]]:
    """The Prometheus text this module serves, read back: per (operation, stage) the request
    count, and the quantiles in seconds by their label ("0.5", "0.99", "0.999")."""
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
    return counts, quantiles


def table(text: str) -> str:
    """The Prometheus text this module serves, as a table (``tally metrics``)."""
    counts, quantiles = parse(text)
    if not counts:
        return "no request has been answered yet"
    lines = [f"{'operation':<22} {'stage':<7} {'requests':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"]
    for operation, stage in sorted(counts, key=lambda key: (key[0], STAGES.index(key[1]) if key[1] in STAGES else 99)):
        q = quantiles.get((operation, stage), {})
        lines.append(f"{operation:<22} {stage:<7} {counts[(operation, stage)]:>10,.0f} "
                     + " ".join(f"{q.get(name, float('nan')) * 1e3:>{width}.2f}"
                                for name, width in (("0.5", 8), ("0.99", 8), ("0.999", 9))))
    return "\n".join(lines)
