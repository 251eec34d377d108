"""A tiny run of the core benchmark inside the test suite, so that it cannot rot."""

import json

from tally import bench_core, cli

KEYS = ("durable_transfers_per_s", "memory_transfers_per_s", "recovery_transfers_per_s", "batch_p50_ms",
        "batch_p99_ms", "lmdb_ceiling_per_s", "ratio_to_lmdb_ceiling")


def test_bench_core_runs_and_reports_every_key(tmp_path, capsys):
    assert cli.main(["bench", "core", "--json", "--accounts", "5000", "--transfers", "40000",
                     "--data", str(tmp_path / "not" / "yet")]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in KEYS:
        assert result[key] > 0, key
    assert result["failed_events"] == 0
    assert result["recovered_state_equal"] is True
    assert result["recovery_replayed_events"] == 40_000
    assert "durable" in bench_core.summary(result)


def test_cli_help_lists_subcommands(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    assert "bench" in out and "info" in out


def test_info_describes_a_data_directory(tmp_path, capsys):
    import core
    from tests import workload

    with core.open(str(tmp_path / "data"), accounts_max=100, transfers_hot_max=1000) as store:
        store.create_accounts(workload.account_batch())
    assert cli.main(["info", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "batches logged   1" in out
    assert f"accounts         {workload.ACCOUNTS}" in out


def test_bench_e2e_runs_a_server_process_and_reports_every_key(tmp_path):
    from tally import bench_e2e

    result = bench_e2e.run(seconds=0.5, connections=2, accounts=3000, core_transfers=16_380,
                           half_load_request_events=64, data_dir=str(tmp_path), prefault=False)
    for key in ("transfers_per_s", "core_transfers_per_s", "ratio_to_core", "p50_ms", "p99_ms", "p999_ms",
                "half_load_p99_ms"):
        assert result[key] > 0, key
    assert result["failed_events"] == 0
    assert result["server_exit_code"] == 0  # SIGTERM: a graceful shutdown
    assert result["peak_requests"] > 0 and result["half_load_requests"] > 0
    assert "end to end" in bench_e2e.summary(result)


def test_bench_products_pays_qr_orders_claims_red_envelopes_and_pays_with_coupons_and_across_borders(tmp_path):
    import json

    from tally import bench_products

    # 2 s: slices of 0.4 s, and more paid orders than a refund phase's 1 s warm-up clears. With 0.5 s
    # (slices of 0.1 s) a request that took longer than its slice on a busy machine counted nothing,
    # and the refunds could all end inside the warm-up: rates of 0 (seen in 1 of 3 runs here).
    # 12,000 accounts: the hot packet's 10,000 claimers are distinct wallets. Packets for 300,000
    # claims a second (claims_max_per_s), coupons for 300,000 payments: a smoke test, not a measure;
    # with 100,000 the claims of a fast moment ran out in their warm-up (claims 0 in 2 of 4 runs).
    result = bench_products.run(seconds=2.0, connections=2, accounts=12_000, data_dir=str(tmp_path / "data"),
                                prefault=False, settle_merchants=2_000, report_dir=str(tmp_path / "report"),
                                share_packets=3_000, claims_max_per_s=300_000, coupon_pays_max_per_s=300_000,
                                fx_pays_max_per_s=300_000)
    # Red envelopes: claims and sends, and one packet of 1,000 claimed by 10,000 wallets at once:
    # exactly 1,000 get a share, the others are late, and the packet read back is emptied exactly.
    assert result["red_envelope_claim_per_s"] > 0 and result["claim_ratio_to_transfers"] > 0
    assert result["red_envelope_send_per_s"] > 0
    assert result["hot_packet_claims_ok"] == 1000 and result["hot_packet_late"] == 9_000 and result["hot_packet_exact"]
    assert "red envelope claims" in bench_products.summary(result)
    # --report: 3,000 packets' shares by position, each position's mean near total / count.
    shares = json.loads((tmp_path / "report" / "envelope_shares.json").read_text())
    assert shares["packets"] == 3_000 and [row["count"] for row in shares["positions"]] == [3_000] * 10
    assert all(abs(row["mean_minus_expected_in_se"]) < 5 for row in shares["positions"])
    assert shares["positions"][0]["p100"] <= 2 * shares["expected_mean"]          # the first: at most 2 R / n
    csv = (tmp_path / "report" / "envelope_shares.csv").read_text().splitlines()
    assert csv[0].startswith("position,count,mean,std") and len(csv) == 11
    svg = (tmp_path / "report" / "envelope_shares.svg").read_text()
    assert svg.startswith("<?xml") and svg.count("<polyline") >= 8 and "claim position" in svg
    assert json.loads((tmp_path / "report" / "products.json").read_text())["hot_packet_claims_ok"] == 1000
    assert result["transfers_per_s"] > 0 and result["qr_pay_per_s"] > 0 and result["ratio_to_transfers"] > 0
    assert result["payment_code_per_s"] > 0 and result["code_ratio_to_transfers"] > 0
    assert result["refund_per_s"] > 0
    # Coupons granted before, then redeemed by payments in their slice; cross-border payments at
    # quotes taken before (every one answered ok: failed_events below).
    assert result["pay_with_coupon_per_s"] > 0 and result["coupon_ratio_to_transfers"] > 0
    assert result["coupon_grant_per_s"] > 0
    assert result["cross_border_pay_per_s"] > 0 and result["cross_border_ratio_to_transfers"] > 0
    assert result["cross_border_quote_per_s"] > 0
    assert "coupon payments" in bench_products.summary(result) and "cross-border" in bench_products.summary(result)
    assert result["settle_merchants"] == result["settle_moved"] == 2_000 and result["settle_reconciled"]
    assert result["notification_per_s"] > 0 and result["notifications_left_after_1s"] == 0
    # Every order created and paid once, every code issued and charged once, every coupon granted
    # and redeemed once, every cross-border payment at its quote.
    assert result["failed_events"] == 0
    assert result["server_exit_code"] == 0
    assert "QR payments" in bench_products.summary(result) and "payment codes" in bench_products.summary(result)


def test_bench_loadgen_offers_load_against_its_sink():
    from tally import bench_loadgen

    result = bench_loadgen.run(seconds=1.0, connections=1, depth=1)
    # A sink answers everything: the mix was generated, sent and answered (follow-ups such as
    # refunds wait a second for their payments, longer than this run).
    assert result["requests_per_s"] > 0 and result["requests_per_cpu_s"] > 0
    assert set(result["kinds"]) >= {"payment", "p2p", "hold"}


def test_bench_latency_measures_each_rate_against_a_fresh_server(tmp_path):
    from loadgen.workload import Population, Workload
    from tally import bench_latency

    result = bench_latency.run((300, 600), seconds=2.0, connections=3, data_dir=str(tmp_path), prefault=False,
                               workload=Workload(population=Population(users=2_000, merchants=50)))
    assert [r["rate_per_s"] for r in result["rates"]] == [300, 600]
    for r in result["rates"]:
        assert r["server_exit_code"] == 0
        assert r["answered"] > 0 and r["achieved_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        assert r["worst_second_p99_ms"] > 0
        assert r["server_cpu_us_per_request"] > 0  # the server's own CPU, sampled from /proc
        assert r["send_lag_p99_ms"] >= 0 and 0 <= r["host_steal_pct"] <= 100
        # The server's own view, from its metrics endpoint: within what the client saw.
        assert 0 < r["server_p50_ms"] <= r["server_p99_ms"] <= r["server_p999_ms"]
        assert r["server_p50_ms"] <= r["p99_ms"]
        assert set(r["server_stage_p99_ms"]) == {"queue", "apply", "commit", "reply"}
    assert "worst s p99" in bench_latency.summary(result)


def test_bench_latency_refuses_rates_that_are_not_positive(capsys):
    for rates in ("0", "10000,-5", "fast", ""):
        assert cli.main(["bench", "latency", "--rates", rates]) == 2
        assert "--rates must be positive integers" in capsys.readouterr().err
