"""Server-side latency histograms and their Prometheus endpoint (engine.metrics)."""

import asyncio
import urllib.request

import numpy as np

import core
from engine import metrics as metrics_module
from engine.client import Client
from engine.server import Server
from tests import workload

SECRETS = {1: b"service-one"}


def _served_metrics(data_dir) -> Server:
    async def scenario():
        store = core.open(data_dir, accounts_max=1000, transfers_hot_max=100_000)
        server = Server(store, SECRETS)
        try:
            port = await server.start()
            client = await Client.connect("127.0.0.1", port, client_id=1, secret=SECRETS[1])
            await client.create_accounts(workload.account_batch())
            for seed in range(1, 4):
                await asyncio.gather(*(client.create_transfers(workload.transfer_batch(seed * 10 + k)[:50])
                                       for k in range(5)))
            for _ in range(7):
                await client.lookup_accounts([1, 2, 3])
            client.close()
        finally:
            await server.close()
            store.close()
        return server
    return asyncio.run(scenario())


def test_every_request_is_timed_in_every_stage(data_dir):
    server = _served_metrics(data_dir)
    figures = server.metrics.snapshot()
    for stage in metrics_module.STAGES:
        assert figures[("create_accounts", stage)]["count"] == 1
        assert figures[("create_transfers", stage)]["count"] == 15   # 3 rounds of 5 requests
        assert figures[("lookup_accounts", stage)]["count"] == 7
    for operation in ("create_transfers", "lookup_accounts"):
        quantiles = {stage: figures[(operation, stage)]["quantiles_s"] for stage in metrics_module.STAGES}
        for stage in ("queue", "apply", "commit", "reply"):
            assert 0 < quantiles[stage][0.5] <= quantiles["total"][0.999] + 1e-3
        buckets = figures[(operation, "total")]["buckets"]
        assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
        assert buckets[-1][1] <= figures[(operation, "total")]["count"]


def test_the_prometheus_endpoint_serves_the_histograms(data_dir):
    from prometheus_client.parser import text_string_to_metric_families

    server = _served_metrics(data_dir)
    http, thread, port = metrics_module.start_endpoint(server.metrics, "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        http.shutdown()
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(text) for sample in family.samples}
    key = ("tally_request_stage_seconds_count", (("operation", "create_transfers"), ("stage", "total")))
    assert samples[key] == 15
    inf = ("tally_request_stage_seconds_bucket", (("le", "+Inf"), ("operation", "lookup_accounts"), ("stage", "commit")))
    assert samples[inf] == 7
    p99 = ("tally_request_stage_quantile_seconds", (("operation", "create_transfers"), ("quantile", "0.99"),
                                                    ("stage", "apply")))
    assert samples[p99] > 0


def test_weighted_recording_is_hdrh_s_record_value_with_a_count():
    from hdrh.histogram import HdrHistogram

    from loadgen.histogram import LatencyHistogram

    values = np.array([1, 5, 5, 999, 1000, 1001, 123_456, 7_000_000, 10**10], dtype=np.int64)
    counts = np.array([3, 1, 2, 7, 1, 1, 4, 2, 1], dtype=np.uint64)
    ours = LatencyHistogram()
    ours.record(values, counts)
    reference = HdrHistogram(1, 3_600_000_000, 3)
    for value, count in zip(values.tolist(), counts.tolist()):
        reference.record_value(min(value, 3_600_000_000), count)
    assert ours.count == reference.get_total_count() == int(counts.sum())
    for percentile in (1, 25, 50, 90, 99, 99.9, 100):
        assert ours.value_at(percentile) == reference.get_value_at_percentile(percentile)
    assert ours.hdr.get_max_value() == reference.get_max_value()
