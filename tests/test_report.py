"""The load run's report (loadgen/report.py): report.json round-trips, report.html has the three
plots with finite coordinates and escaped strings, edge cases render, the summary fits a screen."""

import json
import math
import re

import numpy as np

from loadgen import report as report_module


def hdr_percentiles(ticks_per_half_distance: int, count: int) -> list[float]:
    """The percentiles HdrHistogram's percentile iterator visits: ``ticks`` steps per halving of
    the distance to 100%, until one sample is left, then 100."""
    out, p = [], 0.0
    while count and 100.0 - p > 100.0 / count:
        out.append(p)
        half_distance = 2.0 ** (math.floor(math.log2(100.0 / (100.0 - p))) + 1)
        p += 100.0 / (ticks_per_half_distance * half_distance)
    return out + [100.0]


def synthetic_report(seconds: int = 30, target_per_s: float | None = 50_000.0,
                     samples_per_s: int = 2_000, seed: int = 7) -> dict:
    """An open-loop run where the server falls behind between seconds 15 and 20: latency jumps
    from ~2 ms to ~400 ms, answers drop, then it catches up with a backlog."""
    rng = np.random.default_rng(seed)
    rate = target_per_s or 40_000.0
    t_s = np.arange(seconds)
    offered = rng.poisson(rate, seconds).astype(float)
    behind = (t_s >= seconds // 2) & (t_s < seconds // 2 + 5)
    answered = np.where(behind, offered * 0.55, offered * 0.999)
    recovery = t_s == seconds // 2 + 5
    answered[recovery] = offered[recovery] + offered[behind].sum() * 0.45
    columns = {k: [] for k in ("p50_us", "p99_us", "p999_us", "max_us")}
    all_samples = []
    for t in t_s:
        scale_us = 400_000.0 if behind[t] else 2_000.0
        lat = rng.lognormal(math.log(scale_us), 0.35, samples_per_s)
        lat[:3] *= 8.0  # a few slow ones per second, for a visible max
        all_samples.append(lat)
        for key, q in (("p50_us", 50), ("p99_us", 99), ("p999_us", 99.9), ("max_us", 100)):
            columns[key].append(round(float(np.percentile(lat, q)), 1))
    samples = np.concatenate(all_samples)
    n = int(answered.sum())
    percentiles = hdr_percentiles(5, len(samples))
    values_us = np.percentile(samples, percentiles)
    distribution = [[p, round(float(v), 1)] for p, v in zip(percentiles, values_us)]
    errors = {"exceeds_credits": 1_203, "debit_account_not_found": 14, "exists": 3,
              "pending_transfer_expired": 2, "transfers_limit_reached": 1}
    kinds = {"payment": {"ok": int(n * 0.8) - 1_000, "exceeds_credits": 1_000},
             "p2p": {"ok": int(n * 0.1) - 220, "exceeds_credits": 203,
                     "debit_account_not_found": 14, "exists": 3},
             "hold": {"ok": int(n * 0.05) - 3, "pending_transfer_expired": 2,
                      "transfers_limit_reached": 1},
             "refund": {"ok": n - int(n * 0.8) - int(n * 0.1) - int(n * 0.05)}}
    codes = {"ok": sum(k["ok"] for k in kinds.values()), **errors}
    return {
        "format": "tally-load-report", "version": 1,
        "command": "tally load run payments.toml --report out/ --connections 8",
        "started_at": "2026-11-23T10:50:00Z",
        "mode": "open" if target_per_s is not None else "closed",
        "config": {"workload": {"seconds": seconds,
                                "population": {"users": 1_000_000, "merchants": 10_000,
                                               "merchant_zipf_s": 1.1},
                                "mix": {"payment": 80, "p2p": 10, "hold": 5, "refund": 5},
                                "rate": {"shape": "constant", "per_s": rate}},
                   "connections": 8, "seed": seed, "server": "127.0.0.1:4100",
                   "label": "nightly <script>alert('x')</script> & co"},
        "machine": {"cpu_count": 2, "platform": "Linux-6.1-x86_64", "python": "3.11.7"},
        "duration_s": float(seconds),
        "target_per_s": target_per_s,
        "requests": {"scheduled": int(offered.sum()), "sent": int(offered.sum()),
                     "answered": n, "failed_to_send": 0},
        "achieved_per_s": n / seconds,
        "result_codes": codes,
        "kinds": kinds,
        "latency_us": {"p50": float(np.percentile(samples, 50)),
                       "p90": float(np.percentile(samples, 90)),
                       "p99": float(np.percentile(samples, 99)),
                       "p99.9": float(np.percentile(samples, 99.9)),
                       "p99.99": float(np.percentile(samples, 99.99)),
                       "max": float(samples.max()), "mean": float(samples.mean()), "count": n},
        "distribution": distribution,
        "timeline": {"t_s": t_s.tolist(), "offered_per_s": offered.tolist(),
                     "answered_per_s": np.round(answered).tolist(), **columns},
        "send_lag_us": {"p50": 12.0, "p99": 310.0, "max": 2_950.0},
        "notes": ["latency measured from the scheduled send time (no coordinated omission)"],
    }


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


def coordinates(svg: str) -> list[str]:
    """Every number in a coordinate attribute (points, x, y, cx, cy, x1...)."""
    values = re.findall(r'\b(?:points|x|y|x1|x2|y1|y2|cx|cy|width|height)="([^"]*)"', svg)
    return [n for v in values for n in re.split(r"[ ,]+", v.strip()) if n]


def polyline_lengths(svg: str) -> list[int]:
    return [len(p.split()) for p in re.findall(r'<polyline[^>]*points="([^"]*)"', svg)]


def test_write_round_trips_and_renders_the_three_plots(tmp_path):
    report = synthetic_report()
    json_path, html_path = report_module.write(report, str(tmp_path / "out"))
    with open(json_path, encoding="utf-8") as f:
        assert json.load(f) == report
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    assert page == report_module.html(report)
    assert page.count("<svg") == 3
    for svg in svgs(page):
        assert max(polyline_lengths(svg)) >= 20
        for number in coordinates(svg):
            assert math.isfinite(float(number)), number
        assert "nan" not in svg.lower() and "inf" not in svg.lower()
    # Self-contained: nothing is fetched.
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_strings_from_the_report_are_escaped():
    report = synthetic_report(seconds=3)
    report["command"] = "tally load run --label '<img src=x onerror=alert(1)>'"
    report["kinds"]["<b>kind</b>"] = {"<i>code</i>": 1}
    report["notes"].append("</ul><script>alert(2)</script>")
    report["mode"] = "<script>"
    page = report_module.html(report)
    assert "<script" not in page and "<img" not in page and "<b>kind" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<svg") == 3


def test_headline_and_tables():
    report = synthetic_report(seconds=5)
    page = report_module.html(report)
    lat = report["latency_us"]
    assert report_module._ms(lat["p99"]) in page
    assert f"{report['requests']['answered']:,}" in page
    assert "exceeds_credits" in page and "payment" in page and "cpu_count" in page
    assert "workload.population.users" in page


def test_edge_cases_render_three_plots():
    one_second = synthetic_report(seconds=1)
    all_null = synthetic_report(seconds=4)
    for key in ("p50_us", "p99_us", "p999_us", "max_us"):
        all_null["timeline"][key] = [None] * 4
    nothing_answered = synthetic_report(seconds=3)
    nothing_answered.update(
        achieved_per_s=0.0, result_codes={}, kinds={}, distribution=[],
        latency_us={k: None for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max", "mean")}
        | {"count": 0},
        send_lag_us={"p50": None, "p99": None, "max": None})
    nothing_answered["requests"]["answered"] = 0
    nothing_answered["timeline"].update(answered_per_s=[0, 0, 0], p50_us=[None] * 3,
                                        p99_us=[None] * 3, p999_us=[None] * 3, max_us=[None] * 3)
    outlier = synthetic_report(seconds=6)
    outlier["latency_us"]["max"] = 3.6e9  # an hour
    outlier["timeline"]["max_us"][2] = 3.6e9
    outlier["distribution"][-1] = [100.0, 3.6e9]
    closed = synthetic_report(seconds=4, target_per_s=None)
    gaps = synthetic_report(seconds=5)
    gaps["timeline"]["p50_us"] = [None, 1500.0, None, 0.0, float("nan")]
    empty = {}
    for report in (one_second, all_null, nothing_answered, outlier, closed, gaps, empty):
        page = report_module.html(report)
        assert page.count("<svg") == 3
        for svg in svgs(page):
            for number in coordinates(svg):
                assert math.isfinite(float(number)), number
        text = report_module.summary(report)
        assert len(text.splitlines()) <= 25


def test_json_is_strict_even_with_numpy_and_nan(tmp_path):
    report = synthetic_report(seconds=2)
    report["achieved_per_s"] = np.float64(report["achieved_per_s"])
    report["timeline"]["p50_us"] = np.array([float("nan"), 1000.0])
    json_path, _ = report_module.write(report, str(tmp_path))
    with open(json_path, encoding="utf-8") as f:
        text = f.read()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["timeline"]["p50_us"] == [None, 1000.0]


def test_summary_fits_a_screen():
    report = synthetic_report()
    report["paths"] = {"json": "/tmp/out/report.json", "html": "/tmp/out/report.html"}
    text = report_module.summary(report)
    lines = text.splitlines()
    assert len(lines) <= 25 and max(map(len, lines)) <= 100
    assert report_module._ms(report["latency_us"]["p99"]) in text
    assert f"{report['achieved_per_s']:,.0f}/s" in text
    assert "/tmp/out/report.html" in text
    assert "2 other codes 3" in text  # ok and the top three errors by name, the last two summed


def test_server_checkpoints_within_the_run_become_marks_on_both_time_charts(tmp_path):
    report = synthetic_report(seconds=30)
    report["started_unix_s"] = 1_000_000.0
    events = tmp_path / "events.jsonl"
    lines = [{"kind": "checkpoint", "started_unix_s": 1_000_012.5, "duration_s": 0.9, "stall_s": 0.07},
             {"kind": "checkpoint", "started_unix_s": 999_990.0, "duration_s": 1.0},   # before the run
             {"kind": "flush", "started_unix_s": 1_000_020.0, "duration_s": 0.3},
             {"kind": "checkpoint", "started_unix_s": 1_000_031.0, "duration_s": 1.0}]  # after it
    events.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "checkp')  # cut short
    assert report_module.add_server_events(report, str(events)) == 2
    assert [(m["t_s"], m["label"]) for m in report["marks"]] == [(12.5, "checkpoint"), (20.0, "flush")]
    page = report_module.html(report)
    assert page.count("checkpoint (server)") == 2 and page.count("flush (server)") == 2
    summary = report_module.summary(report)
    assert "server    1 checkpoint(s) at 12 s (longest 0.90 s)" in summary
    assert "server    1 flush(s) at 20 s (longest 0.30 s)" in summary
    # No wall-clock start (an old report): nothing is marked rather than marked wrongly.
    del report["started_unix_s"]
    assert report_module.add_server_events(report, str(events)) == 0


def test_each_operation_gets_its_latency_and_refusals_by_name():
    report = synthetic_report()
    report["operations"] = {
        "create_transfers": {"requests": 900, "result_codes": {"ok": 899, "exceeds_credits": 1},
                             "latency_us": {"p50": 2_000, "p99": 9_000, "p99.9": 12_000, "p99.99": 12_500,
                                            "max": 13_000}},
        "create_orders": {"requests": 100, "result_codes": {"ok": 88, "orders_limit_reached": 12},
                          "latency_us": {"p50": 2_500, "p99": 31_000, "max": 40_000}},
        "pay_orders": {"requests": 80, "result_codes": {"ok": 80}, "latency_us": {"count": 0}},
    }
    text = report_module.summary(report)
    assert "not ok: orders_limit_reached 12" in text and "not ok: exceeds_credits 1" in text
    assert any(line.split()[:2] == ["pay_orders", "80"] and line.endswith("all ok") for line in
               (line.strip() for line in text.splitlines()))
    assert len(text.splitlines()) <= 25 and max(map(len, text.splitlines())) <= 100
    page = report_module.html(report)
    assert "Per operation" in page and "orders_limit_reached 12" in page and "31.0 ms" in page
    # One operation only (transfers): the summary keeps its old shape.
    report["operations"] = {"create_transfers": report["operations"]["create_transfers"]}
    assert "per op" not in report_module.summary(report)
