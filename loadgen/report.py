"""The load run's report: ``report.json``, a self-contained ``report.html`` and a text summary.

``write(report, directory)`` writes both files, ``html(report)`` renders the page (inline CSS and
inline SVG drawn by the small plotting code below: no JavaScript, no network, no external fonts,
so the file can be mailed or attached to an issue and still opens), ``summary(report)`` gives the
one-screen text printed at the end of ``tally load run``.

The report is a plain JSON-able dict built by the runner. All latencies are in microseconds,
all rates in requests per second::

    {
      "format": "tally-load-report", "version": 1,
      "command": "tally load run ...",        # the command line, for the reader
      "started_at": "2026-11-23T10:50:00Z",
      "mode": "open" | "closed" | "replay",
      "config": {...},                         # free-form JSON: workload, connections, seed...
      "machine": {"cpu_count": 2, "platform": "...", "python": "3.11.7"},
      "duration_s": 30.0,                      # the measured window
      "target_per_s": 50000.0 | None,          # open loop: the workload's mean rate; closed: None
      "requests": {"scheduled": n, "sent": n, "answered": n, "failed_to_send": n},
      "achieved_per_s": 49987.2,               # answered / duration_s
      "result_codes": {"ok": n, "exceeds_credits": n, ...},          # core.Result names -> counts
      "kinds": {"payment": {"ok": n, ...}, "p2p": {...}, ...},       # per request kind, per code
      "operations": {"create_transfers": {"requests": n, "result_codes": {"ok": n, ...},
                                          "latency_us": {...as latency_us}}, "pay_orders": ...},
                                               # per operation of the wire (a kind has one)
      "codes": {"charged_at_once": n, "held": n, "left_to_time_out": n, "timed_out": n,
                "still_held_at_end": n, "follow_ups_not_sent": n},
                                               # optional: a run with payment codes, what became
                                               # of its held charges (loadgen.generator)
      "envelopes": {"packets_sent": n, "sent_minor": n, "sends_refused": n, "claims_ok": n,
                    "claims_late": n, "claims_refused": n, "claimed_minor": n,
                    "packets_emptied": n, "claims_waiting_at_end": n},
                                               # optional: a run with red envelopes (late: the
                                               # claims answered envelope_empty)
      "latency_us": {"p50": .., "p90": .., "p99": .., "p99.9": .., "p99.99": .., "max": ..,
                     "mean": .., "count": n},
      "distribution": [[percentile, value_us], ...],  # HDR percentile spectrum: percentile in
                                                      # [0, 100] ascending, last is 100.0 -> max
      "timeline": {                            # one entry per second of the run
          "t_s": [0, 1, ...],
          "offered_per_s": [...],              # scheduled (open loop) or sent (closed) that second
          "answered_per_s": [...],
          "p50_us": [...], "p99_us": [...], "p999_us": [...], "max_us": [...],
      },                                       # latencies of that second's answers; null if none
      "send_lag_us": {"p50": .., "p99": .., "max": ..},  # generator lateness vs its schedule
      "started_unix_s": 1796615291.8 | None,   # wall clock of second 0 of the timeline
      "marks": [{"t_s": 33.2, "duration_s": 0.9, "label": "checkpoint", "detail": "..."}],
                                               # server events on the time axis (optional:
                                               # add_server_events, from DATA/events.jsonl)
      "notes": ["..."],                        # free-form lines
      "paths": {"json": "...", "html": "..."}, # optional, set by the caller after write(), so
    }                                          # that summary() can say where the files are

Every field is read defensively: a missing or null number is drawn as a gap or shown as "–",
so a report of a run that went wrong (nothing answered, one second long) still renders.
"""

from __future__ import annotations

import html as html_module
import json
import math
import os
from dataclasses import dataclass

__all__ = ["add_server_events", "html", "standalone_chart", "summary", "write"]

FORMAT = "tally-load-report"
VERSION = 1

#: The latency figures of ``latency_us`` shown by name, in order.
PERCENTILES = ("p50", "p90", "p99", "p99.9", "p99.99", "max")

# ---------------------------------------------------------------------------------------------
# Files


def write(report: dict, directory: str) -> tuple[str, str]:
    """Create ``directory`` and write ``report.json`` and ``report.html`` there; return both paths.

    Non-finite floats are written as null (JSON has no NaN) and numpy values as plain numbers,
    so the file is strict JSON whatever the runner's arithmetic produced.
    """
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "report.json")
    html_path = os.path.join(directory, "report.html")
    text = json.dumps(_jsonable(report), indent=2, ensure_ascii=False, allow_nan=False)
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(html(report))
    return json_path, html_path


def add_server_events(report: dict, path: str) -> int:
    """Mark the server's checkpoints of ``path`` (``tally serve``'s ``DATA/events.jsonl``, one
    JSON object per line) that fall within the run on the report's time axis; returns how many.
    Needs the report's ``started_unix_s`` and the two clocks to agree (the same host)."""
    start = _num(report.get("started_unix_s"))
    if start is None or not os.path.exists(path):
        return 0
    t_s, _ = _timeline(report)
    end = start + (max(t_s) + 1.0 if t_s else _num(report.get("duration_s")) or 0.0)
    marks = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a server killed mid-write
            at = _num(_dict(event).get("started_unix_s"))
            if at is None or not start <= at < end:
                continue
            duration = _num(event.get("duration_s")) or 0.0
            stall = _num(event.get("stall_s")) or 0.0
            kind = str(event.get("kind") or "event")
            detail = f"{duration:.2f} s" + (f", batches paused {stall * 1e3:.0f} ms" if kind == "checkpoint" else "")
            marks.append({"t_s": round(at - start, 3), "duration_s": round(duration, 3), "label": kind,
                          "detail": detail})
    report["marks"] = sorted(_list(report.get("marks")) + marks, key=lambda mark: mark["t_s"])
    return len(marks)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, without importing numpy
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Reading the report defensively


def _num(value) -> float | None:
    """A finite float, or None for null, NaN, infinities and anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else []


def _requests(report: dict) -> dict[str, float | None]:
    r = _dict(report.get("requests"))
    return {k: _num(r.get(k)) for k in ("scheduled", "sent", "answered", "failed_to_send")}


def _result_totals(report: dict) -> dict[str, int]:
    """Counts per result code: ``result_codes``, or the sum over ``kinds`` when it is missing."""
    sources = ([report.get("result_codes")] if _dict(report.get("result_codes"))
               else list(_dict(report.get("kinds")).values()))
    totals: dict[str, int] = {}
    for per_code in sources:
        for code, n in _dict(per_code).items():
            if _num(n) is not None:
                totals[str(code)] = totals.get(str(code), 0) + int(_num(n))
    return totals


def _ordered_codes(totals: dict[str, int], extra: set[str] = frozenset()) -> list[str]:
    """``ok`` first, then by count, descending (the codes a reader must look at come first)."""
    codes = set(totals) | set(extra)
    return sorted(codes, key=lambda c: (c != "ok", -totals.get(c, 0), c))


#: Answers that are outcomes, not refusals: ``ok``, ``user_paying`` (a code charge held for the
#: user's confirmation: its order and its hold exist) and ``envelope_empty`` (a red envelope's
#: late claimer: the packet was emptied before). None is counted as "not ok"; the others than
#: ``ok`` are shown apart, by what they mean.
OUTCOMES = ("ok", "user_paying", "envelope_empty")
_OUTCOME_LABELS = {"user_paying": "held", "envelope_empty": "late"}


def _errors(report: dict) -> int:
    return sum(n for code, n in _result_totals(report).items() if code not in OUTCOMES)


def _diff_pct(achieved: float | None, target: float | None) -> float | None:
    if achieved is None or target is None or target <= 0:
        return None
    return (achieved - target) / target * 100.0


# ---------------------------------------------------------------------------------------------
# Units


def _mode_name(mode: str) -> str:
    return "replay of a trace" if mode == "replay" else f"{mode} loop"


def _ms(value_us) -> str:
    """Microseconds as milliseconds, three significant digits; seconds from 100 s up (an
    outlier of an hour reads "3,600 s", not "3,600,000 ms")."""
    us = _num(value_us)
    if us is None:
        return "–"
    v = us / 1000.0
    if abs(v) >= 100_000:
        return f"{v / 1000:,.0f} s"
    if v == 0:
        return "0 ms"
    digits = 3 if abs(v) < 1 else 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0
    return f"{v:,.{digits}f} ms"


def _rate(per_s) -> str:
    x = _num(per_s)
    if x is None:
        return "–"
    return (f"{x:,.1f}" if 0 < abs(x) < 10 and x != int(x) else f"{x:,.0f}") + "/s"


def _count(n) -> str:
    x = _num(n)
    return "–" if x is None else f"{int(x):,}"


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.2f}%" if signed else f"{x:.2f}%"


def _tick_label(v: float) -> str:
    """A tick value without float noise: 0.1 -> '0.1', 50000 -> '50,000', 2.5 -> '2.5'."""
    v = float(f"{v:.10g}")
    s = f"{v:,.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


# ---------------------------------------------------------------------------------------------
# Plotting: one axis type, two ways to build it, one chart function for the three plots


@dataclass(frozen=True)
class _Axis:
    lo: float
    hi: float
    log: bool
    ticks: tuple[tuple[float, str], ...]  # (value, label); label "" draws a gridline only
    label: str

    def frac(self, v: float) -> float:
        """Position of ``v`` along the axis, 0..1, clamped (an outlier is drawn at the edge)."""
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return min(1.0, max(0.0, f))


def _linear_axis(lo: float, hi: float, label: str, integer: bool = False) -> _Axis:
    """Ticks at a 1-2-5 step, about six of them; ``hi`` is raised to the next tick."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / 6.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, round(step))
    lo = math.floor(lo / step + 1e-9) * step
    hi = math.ceil(hi / step - 1e-9) * step
    count = round((hi - lo) / step)
    ticks = tuple((lo + i * step, _tick_label(lo + i * step)) for i in range(count + 1))
    return _Axis(lo, hi, False, ticks, label)


def _log_axis(lo: float, hi: float, label: str) -> _Axis:
    """Decades; 2 and 5 in between when the range is short (else the plot has one gridline)."""
    lo = max(lo, 1e-9)
    hi = max(hi, lo)
    d_lo = math.floor(math.log10(lo) + 1e-9)
    d_hi = math.ceil(math.log10(hi) - 1e-9)
    if d_hi <= d_lo:
        d_hi = d_lo + 1
    ticks = []
    for d in range(d_lo, d_hi + 1):
        ticks.append((10.0 ** d, _tick_label(10.0 ** d)))
        if d < d_hi and d_hi - d_lo <= 3:
            ticks += [(m * 10.0 ** d, _tick_label(m * 10.0 ** d) if d_hi - d_lo <= 2 else "")
                      for m in (2, 5)]
    return _Axis(10.0 ** d_lo, 10.0 ** d_hi, True, tuple(sorted(ticks)), label)


def _nines_axis(max_x: float, label: str) -> _Axis:
    """x = 1/(1-p) on a log scale, labelled 0%, 90%, 99%, 99.9%... as HdrHistogram's plotter.

    At least to 99.999% so runs are comparable; further if the data goes further (at most
    99.9999999%: 100% itself is at infinity, it is drawn at the right edge).
    """
    decades = min(9, max(5, math.ceil(math.log10(max(max_x, 1.0)) - 1e-9)))
    ticks = tuple((10.0 ** d, _nines(d)) for d in range(decades + 1))
    return _Axis(1.0, 10.0 ** decades, True, ticks, label)


def _nines(decades: int) -> str:
    if decades == 0:
        return "0%"
    if decades == 1:
        return "90%"
    return "99" + ("." + "9" * (decades - 2) if decades > 2 else "") + "%"


@dataclass(frozen=True)
class _Series:
    name: str
    points: list  # [(x, y) or None]; None breaks the line (a second with no data)
    color: str
    dashed: bool = False
    width: float = 1.8


# Colour-blind-safe (Okabe-Ito), in the order the series are usually read.
_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

_W, _H = 960, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 48, 44, 56
_CHAR_W = 7.0  # rough width of a 12 px sans-serif character, for laying out the legend


def _chart(title: str, series: list[_Series], x: _Axis, y: _Axis,
           empty_text: str = "no data") -> str:
    """One inline SVG line chart: frame, gridlines, tick labels, axis labels, legend, lines."""
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(v: float) -> float:
        return _LEFT + x.frac(v) * pw

    def py(v: float) -> float:
        return _TOP + (1.0 - y.frac(v)) * ph

    e = html_module.escape
    out = [(f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{e(title)}" '
            f'xmlns="http://www.w3.org/2000/svg">'),
           f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}"/>']
    for v, label in y.ticks:
        yy = py(v)
        out.append(f'<line class="grid{"" if label else " minor"}" x1="{_LEFT}" y1="{yy:.1f}" '
                   f'x2="{_LEFT + pw}" y2="{yy:.1f}"/>')
        if label:
            out.append(f'<text class="tick" x="{_LEFT - 8}" y="{yy + 4:.1f}" '
                       f'text-anchor="end">{e(label)}</text>')
    for v, label in x.ticks:
        xx = px(v)
        out.append(f'<line class="grid{"" if label else " minor"}" x1="{xx:.1f}" y1="{_TOP}" '
                   f'x2="{xx:.1f}" y2="{_TOP + ph}"/>')
        if label:
            out.append(f'<text class="tick" x="{xx:.1f}" y="{_TOP + ph + 18}" '
                       f'text-anchor="middle">{e(label)}</text>')
    out.append(f'<text class="axis-label" x="{_LEFT + pw / 2:.1f}" y="{_H - 12}" '
               f'text-anchor="middle">{e(x.label)}</text>')
    out.append(f'<text class="axis-label" transform="translate(18 {_TOP + ph / 2:.1f}) '
               f'rotate(-90)" text-anchor="middle">{e(y.label)}</text>')

    # No clip path: frac() already clamps every point into the plot area, and a clip would cut
    # half the stroke of a line lying on the frame (answered = 0).
    drawn = 0
    out.append("<g>")
    for s in series:
        dash = ' stroke-dasharray="7 5"' if s.dashed else ""
        for run in _runs(s.points):
            coords = [(px(a), py(b)) for a, b in run]
            if len(coords) == 1:  # an isolated second between gaps: a dot, or it would vanish
                out.append(f'<circle cx="{coords[0][0]:.1f}" cy="{coords[0][1]:.1f}" r="2.5" '
                           f'fill="{s.color}"/>')
            else:
                pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
                out.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="{s.width}" '
                           f'stroke-linejoin="round"{dash} points="{pts}"/>')
            drawn += 1
    out.append("</g>")
    if not drawn:
        out.append(f'<text class="empty" x="{_LEFT + pw / 2:.1f}" y="{_TOP + ph / 2:.1f}" '
                   f'text-anchor="middle">{e(empty_text)}</text>')

    # The legend sits above the plot area, so it never hides data.
    lx, ly = float(_LEFT), 20.0
    for s in series:
        item_w = 30 + len(s.name) * _CHAR_W + 18
        if lx + item_w > _W - _RIGHT and lx > _LEFT:
            lx, ly = float(_LEFT), ly + 16
        dash = ' stroke-dasharray="7 5"' if s.dashed else ""
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4:.1f}" x2="{lx + 24:.1f}" y2="{ly - 4:.1f}" '
                   f'stroke="{s.color}" stroke-width="2.5"{dash}/>')
        out.append(f'<text class="legend" x="{lx + 30:.1f}" y="{ly:.1f}">{e(s.name)}</text>')
        lx += item_w
    out.append("</svg>")
    return "\n".join(out)


def standalone_chart(title: str, series: list, x_label: str, y_label: str) -> str:
    """A line chart as a standalone SVG document (its style inside: it opens in a browser or an
    image viewer), drawn as the report's charts are, on linear axes fitted to the data.
    ``series``: (name, [(x, y), ...]) or (name, points, dashed) each, in the legend's order."""
    points = [point for entry in series for point in entry[1]]
    xs, ys = [p[0] for p in points] or [0.0], [p[1] for p in points] or [0.0]
    drawn = [_Series(entry[0], list(entry[1]), _COLORS[i % len(_COLORS)], dashed=len(entry) > 2 and bool(entry[2]))
             for i, entry in enumerate(series)]
    svg = _chart(title, drawn, _linear_axis(min(xs), max(xs), x_label, integer=True),
                 _linear_axis(min(0.0, min(ys)), max(ys), y_label))
    # The charts' rules but their sizing in a page (a nested svg keeps its own width and height).
    style = "\n".join(line for line in _CSS.splitlines()
                      if line.startswith("svg.chart ") and not line.startswith("svg.chart {"))
    e = html_module.escape
    head = 30   # the title's band above the chart
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + head}" '
            f'viewBox="0 0 {_W} {_H + head}">\n<title>{e(title)}</title>\n<style>{style}\n'
            f'.title {{ font: 600 15px system-ui, "DejaVu Sans", sans-serif; fill: #1d2330; }}</style>\n'
            f'<rect width="{_W}" height="{_H + head}" fill="#fff"/>\n'
            f'<text class="title" x="{_LEFT}" y="{head - 8}">{e(title)}</text>\n'
            + svg.replace("<svg ", f'<svg x="0" y="{head}" width="{_W}" height="{_H}" ', 1) + "\n</svg>\n")


def _runs(points: list) -> list[list[tuple[float, float]]]:
    """Split a series at None into runs of finite points."""
    runs, current = [], []
    for p in points:
        if p is None or _num(p[0]) is None or _num(p[1]) is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((float(p[0]), float(p[1])))
    if current:
        runs.append(current)
    return runs


def _steps(t_s: list, values: list, scale: float = 1.0) -> list:
    """Per-second values as steps: second t covers [t, t+1), so a 1 s run still draws a line."""
    points: list = []
    for t, v in zip(t_s, values):
        v = _num(v)
        if v is None:
            points.append(None)
        else:
            points += [(t, v * scale), (t + 1.0, v * scale)]
    return points


def _timeline(report: dict) -> tuple[list[float], dict[str, list]]:
    """Seconds and the per-second columns, all of the same length (short columns padded)."""
    tl = _dict(report.get("timeline"))
    t_s = [_num(t) for t in _list(tl.get("t_s"))]
    columns = ("offered_per_s", "answered_per_s", "p50_us", "p99_us", "p999_us", "max_us")
    if not t_s or any(t is None for t in t_s):
        n = max((len(_list(tl.get(c))) for c in columns), default=0)
        t_s = [float(i) for i in range(n)]
    n = len(t_s)
    cols = {c: (_list(tl.get(c)) + [None] * n)[:n] for c in columns}
    return t_s, cols


def _time_axis(t_s: list[float], duration_s) -> _Axis:
    lo = min(t_s, default=0.0)
    hi = max((t + 1.0 for t in t_s), default=_num(duration_s) or 1.0)
    return _linear_axis(lo, hi, "time since start (s)", integer=True)


def _throughput_chart(report: dict) -> str:
    t_s, cols = _timeline(report)
    target = _num(report.get("target_per_s"))
    offered = "scheduled" if report.get("mode") == "open" else "sent"
    # Offered is wide and light underneath: where answered equals it, both stay visible.
    series = [_Series(f"offered ({offered})", _steps(t_s, cols["offered_per_s"]), "#8cc4e8",
                      width=5.0),
              _Series("answered", _steps(t_s, cols["answered_per_s"]), _COLORS[1])]
    x = _time_axis(t_s, report.get("duration_s"))
    if target is not None:
        series.append(_Series(f"target {_rate(target)} (mean)", [(x.lo, target), (x.hi, target)],
                              _COLORS[6], dashed=True, width=1.2))
    y_hi = max([p[1] for s in series for p in s.points if p is not None] + [1.0])
    y = _linear_axis(0.0, y_hi * 1.05, "requests/s")
    return _chart("Throughput over time", series + _mark_series(report, y), x, y, "no requests")


def _latency_chart(report: dict) -> str:
    t_s, cols = _timeline(report)
    series = [_Series(name, _steps(t_s, cols[key], 1e-3), color) for name, key, color in
              (("p50", "p50_us", _COLORS[0]), ("p99", "p99_us", _COLORS[2]),
               ("p99.9", "p999_us", _COLORS[4]), ("max", "max_us", _COLORS[1]))]
    y = _latency_axis([p[1] for s in series for p in s.points if p is not None])
    x = _time_axis(t_s, report.get("duration_s"))
    return _chart("Latency percentiles over time", series + _mark_series(report, y), x, y, "no answered requests")


def _mark_series(report: dict, y: _Axis) -> list[_Series]:
    """The report's marks (server checkpoints) as dashed vertical lines, one series per label."""
    by_label: dict[str, list] = {}
    for mark in _list(report.get("marks")):
        at = _num(_dict(mark).get("t_s"))
        if at is not None:
            by_label.setdefault(str(mark.get("label") or "event"), []).extend([(at, y.lo), (at, y.hi), None])
    return [_Series(f"{label} (server)", points, "#7a7f8a", dashed=True, width=1.2)
            for label, points in sorted(by_label.items())]


def _latency_axis(values_ms: list[float]) -> _Axis:
    """Log scale: a jump from 2 ms to 400 ms must leave the 2 ms part readable."""
    positive = [v for v in values_ms if v > 0]
    if not positive:
        return _log_axis(0.1, 100.0, "latency (ms, log scale)")
    return _log_axis(min(positive), max(positive), "latency (ms, log scale)")


def _distribution_chart(report: dict) -> str:
    points = []
    for row in _list(report.get("distribution")):
        row = _list(row)
        if len(row) < 2:
            continue
        p, v = _num(row[0]), _num(row[1])
        if p is None or v is None or not 0.0 <= p <= 100.0:
            continue
        x = math.inf if p >= 100.0 else 1.0 / (1.0 - p / 100.0)
        points.append((x, v * 1e-3))
    finite_x = [x for x, _ in points if math.isfinite(x)]
    x_axis = _nines_axis(max(finite_x, default=1.0), "percentile (log scale of 1/(1−p))")
    # 100% is at infinity: it is drawn at the right edge (the frac() clamp), as the max.
    points = [(min(x, x_axis.hi), v) for x, v in points]
    y_axis = _latency_axis([v for _, v in points])
    series = [_Series("latency at percentile", points, _COLORS[0], width=2.0)]
    return _chart("Latency distribution", series, x_axis, y_axis, "no answered requests")


# ---------------------------------------------------------------------------------------------
# HTML page

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #5a6272; margin: 0 0 4px; }
code { font: 12.5px ui-monospace, "DejaVu Sans Mono", monospace; background: #eceef2;
       padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px;
         margin-top: 18px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 10px 12px; }
.card.warn { border-color: #d55e00; background: #fff6f0; }
.card .label { color: #5a6272; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { color: #5a6272; font-size: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #dde1e7; border-radius: 6px;
         padding: 8px 8px 4px; }
figcaption { color: #5a6272; font-size: 12.5px; padding: 4px 8px 6px; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font-family: system-ui, "DejaVu Sans", sans-serif; fill: #1d2330; }
svg.chart .tick { font-size: 12px; fill: #4a5262; font-variant-numeric: tabular-nums; }
svg.chart .axis-label { font-size: 13px; }
svg.chart .legend { font-size: 12px; }
svg.chart .empty { font-size: 15px; fill: #8a92a2; }
svg.chart .plot { fill: #fff; stroke: #9aa2b1; }
svg.chart .grid { stroke: #e3e6eb; stroke-width: 1; }
svg.chart .grid.minor { stroke: #f0f2f5; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e7; width: 100%; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef2; text-align: left;
         vertical-align: baseline; }
th { background: #f0f2f5; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid #dde1e7; }
td.key { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px;
         white-space: nowrap; width: 1%; padding-right: 32px; }
td.value { overflow-wrap: anywhere; }
ul.notes { margin: 0; padding-left: 20px; }
"""


def html(report: dict) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; nothing is fetched)."""
    e = html_module.escape
    mode = str(report.get("mode") or "?")
    started = str(report.get("started_at") or "")
    duration = _num(report.get("duration_s"))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Tally load report — {e(_mode_name(mode))}, {e(started)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body><main>",
        "<h1>Tally load report</h1>",
        (f'<p class="meta">{e(_mode_name(mode))} · {e(_seconds(duration))} measured · started '
         f"{e(started or '–')}</p>"),
    ]
    if report.get("command"):
        parts.append(f'<p class="meta"><code>{e(str(report["command"]))}</code></p>')
    parts.append(_cards(report))

    parts.append("<h2>Throughput over time</h2>")
    parts.append(_figure(_throughput_chart(report),
                         "Requests per second, per one-second bucket. Offered: scheduled (open "
                         "loop) or sent (closed loop); answered: responses received in that "
                         "second. The dashed line is the workload's mean target rate; grey dashed "
                         "lines mark the server's checkpoints, when the server's events were found."))
    parts.append("<h2>Latency percentiles over time</h2>")
    parts.append(_figure(_latency_chart(report),
                         "Percentiles of the requests answered in each second; log scale, since "
                         "a server falling behind moves latency from milliseconds to seconds. "
                         "Gaps are seconds in which nothing was answered. Grey dashed lines: the "
                         "server's checkpoints."))
    parts.append("<h2>Latency distribution</h2>")
    parts.append(_figure(_distribution_chart(report),
                         "The HDR percentile spectrum of the whole run: x is 1/(1−p) on a log "
                         "scale, so each step right is one more nine; the right edge is the max. "
                         "The y-axis is log too: with a linear one, a tail of seconds squashes "
                         "the body of the distribution (milliseconds) flat against the floor."))

    parts.append("<h2>Result codes per kind</h2>")
    parts.append(_codes_table(report))
    if _dict(report.get("operations")):
        parts.append("<h2>Per operation</h2>")
        parts.append(_operations_table(report))
    parts.append("<h2>Configuration</h2>")
    parts.append(_kv_table(report.get("config")))
    parts.append("<h2>Machine</h2>")
    parts.append(_kv_table(report.get("machine")))
    notes = [str(n) for n in _list(report.get("notes"))]
    if notes:
        parts.append("<h2>Notes</h2>")
        parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append(f'<p class="meta" style="margin-top:24px">{e(FORMAT)} version '
                 f"{e(str(report.get('version', VERSION)))}</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _seconds(duration_s: float | None) -> str:
    return "–" if duration_s is None else f"{duration_s:,.1f} s"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html_module.escape(caption)}</figcaption></figure>"


def _card(label: str, value: str, sub: str = "", warn: bool = False, title: str = "") -> str:
    e = html_module.escape
    sub_html = f'<div class="sub">{e(sub)}</div>' if sub else ""
    title_html = f' title="{e(title)}"' if title else ""
    return (f'<div class="card{" warn" if warn else ""}"{title_html}><div class="label">'
            f'{e(label)}</div><div class="value">{e(value)}</div>{sub_html}</div>')


def _cards(report: dict) -> str:
    achieved = _num(report.get("achieved_per_s"))
    target = _num(report.get("target_per_s"))
    diff = _diff_pct(achieved, target)
    req = _requests(report)
    lat = _dict(report.get("latency_us"))
    lag = _dict(report.get("send_lag_us"))
    errors = _errors(report)
    unanswered = (None if req["sent"] is None or req["answered"] is None
                  else max(0.0, req["sent"] - req["answered"]))
    cards = [_card("achieved", _rate(achieved),
                   f"target {_rate(target)} ({_pct(diff, signed=True)})" if target is not None
                   else "no target (closed loop)" if report.get("mode") == "closed"
                   else "no target",
                   warn=diff is not None and diff < -1.0)]
    for key in PERCENTILES:
        if key == "p90":
            continue  # the page has the spectrum; the cards keep to the figures people quote
        cards.append(_card(key, _ms(lat.get(key)),
                           f"mean {_ms(lat.get('mean'))}" if key == "p50" else ""))
    cards.append(_card("answered", _count(req["answered"]),
                       f"of {_count(req['sent'])} sent · {_count(req['scheduled'])} scheduled"))
    failed = int(req["failed_to_send"] or 0)
    # Refusals such as exceeds_credits are the ledger's answers, not failures of the run; what
    # went unanswered is.
    cards.append(_card("not ok", f"{errors:,}",
                       f"failed to send {failed:,} · unanswered {_count(unanswered)}",
                       warn=failed > 0 or bool(unanswered)))
    cards.append(_card("send lag p99", _ms(lag.get("p99")),
                       f"p50 {_ms(lag.get('p50'))} · max {_ms(lag.get('max'))}",
                       title="How late the load generator sent requests relative to their "
                             "schedule: its own precision, not the server's latency."))
    return '<section class="cards">' + "".join(cards) + "</section>"


def _codes_table(report: dict) -> str:
    e = html_module.escape
    kinds = {str(k): _dict(v) for k, v in _dict(report.get("kinds")).items()}
    totals = _result_totals(report)
    codes = _ordered_codes(totals, {str(c) for per in kinds.values() for c in per})
    if not codes:
        return '<p class="meta">no results</p>'
    all_n = sum(totals.values())
    head = ("<tr><th>result code</th>" + "".join(f'<th class="n">{e(k)}</th>' for k in kinds)
            + '<th class="n">total</th><th class="n">share</th></tr>')
    rows = []
    for code in codes:
        n = totals.get(code, 0)
        cells = "".join(f'<td class="n">{_count(kinds[k].get(code, 0))}</td>' for k in kinds)
        rows.append(f"<tr><td>{e(code)}</td>{cells}<td class=\"n\">{n:,}</td>"
                    f'<td class="n">{_pct(n / all_n * 100 if all_n else None)}</td></tr>')
    kind_totals = "".join(
        f'<td class="n">{sum(int(_num(v) or 0) for v in kinds[k].values()):,}</td>' for k in kinds)
    rows.append(f'<tr class="total"><td>total</td>{kind_totals}<td class="n">{all_n:,}</td>'
                f'<td class="n">{_pct(100.0 if all_n else None)}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _not_ok(codes: dict) -> list[tuple[str, int]]:
    """The codes other than the outcomes (``OUTCOMES``) with their counts, most first."""
    counts = {str(code): int(_num(n) or 0) for code, n in _dict(codes).items() if str(code) not in OUTCOMES}
    return sorted(((code, n) for code, n in counts.items() if n), key=lambda item: (-item[1], item[0]))


def _apart(codes: dict, short: bool = False) -> str:
    """The outcomes other than ``ok`` an operation got, by what they mean ("held: user_paying 3";
    ``short``: "held 3"), or ""."""
    counts = {code: int(_num(_dict(codes).get(code)) or 0) for code in _OUTCOME_LABELS}
    return ", ".join((f"{label} {counts[code]:,}" if short else f"{label}: {code} {counts[code]:,}")
                     for code, label in _OUTCOME_LABELS.items() if counts[code])


def _operations_table(report: dict) -> str:
    e = html_module.escape
    head = ("<tr><th>operation</th><th class=\"n\">requests</th>"
            + "".join(f'<th class="n">{e(key)}</th>' for key in PERCENTILES if key != "p90")
            + "<th>not ok</th></tr>")
    rows = []
    for name, entry in _dict(report.get("operations")).items():
        entry = _dict(entry)
        latency = _dict(entry.get("latency_us"))
        not_ok = ", ".join(f"{code} {n:,}" for code, n in _not_ok(entry.get("result_codes"))) or "none"
        apart = _apart(entry.get("result_codes"))
        if apart:   # outcomes, shown apart from the refusals
            not_ok = f"{not_ok} ({apart})"
        rows.append(f"<tr><td>{e(str(name))}</td><td class=\"n\">{_count(entry.get('requests'))}</td>"
                    + "".join(f'<td class="n">{_ms(latency.get(key))}</td>' for key in PERCENTILES if key != "p90")
                    + f"<td>{e(not_ok)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as dotted keys; lists of scalars stay one JSON value (short and readable)."""
    if isinstance(value, dict):
        if not value and prefix:
            return [(prefix, "{}")]
        rows = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        rows = []
        for i, v in enumerate(value):
            rows += _flatten(v, f"{prefix}[{i}]")
        return rows
    if isinstance(value, str):
        return [(prefix, value)]
    return [(prefix, json.dumps(_jsonable(value), ensure_ascii=False, default=str))]


def _kv_table(value) -> str:
    e = html_module.escape
    rows = _flatten(value) if isinstance(value, dict) else ([("", str(value))] if value else [])
    if not rows:
        return '<p class="meta">not recorded</p>'
    return ("<table>" + "".join(f'<tr><td class="key">{e(k)}</td><td class="value">{e(v)}</td></tr>'
                                for k, v in rows) + "</table>")


# ---------------------------------------------------------------------------------------------
# Text summary

_SUMMARY_COLUMNS = 100
_SUMMARY_CODES = 4  # result codes listed by name; the rest are summed


def summary(report: dict) -> str:
    """A one-screen text summary (at most about 20 lines of at most 100 columns)."""
    achieved = _num(report.get("achieved_per_s"))
    target = _num(report.get("target_per_s"))
    req = _requests(report)
    lat = _dict(report.get("latency_us"))
    lag = _dict(report.get("send_lag_us"))
    mode = str(report.get("mode") or "?")
    lines = [(f"tally load {'replay' if mode == 'replay' else 'run'}: {_mode_name(mode)}, "
              f"{_seconds(_num(report.get('duration_s')))} measured, "
              f"started {report.get('started_at') or '–'}")]
    if target is not None:
        lines.append(f"rate      {_rate(achieved)} achieved of {_rate(target)} target "
                     f"({_pct(_diff_pct(achieved, target), signed=True)})")
    else:
        lines.append(f"rate      {_rate(achieved)} achieved (no target: closed loop)"
                     if report.get("mode") == "closed" else f"rate      {_rate(achieved)} achieved")
    lines.append(f"requests  {_count(req['answered'])} answered of {_count(req['sent'])} sent, "
                 f"{_count(req['scheduled'])} scheduled, "
                 f"{_count(req['failed_to_send'])} failed to send")
    lines.append("latency   " + "  ".join(f"{key} {_ms(lat.get(key))}" for key in PERCENTILES))
    lines.append(f"          mean {_ms(lat.get('mean'))} over {_count(lat.get('count'))} answers; "
                 f"send lag p50 {_ms(lag.get('p50'))}  p99 {_ms(lag.get('p99'))}  "
                 f"max {_ms(lag.get('max'))}")
    totals = _result_totals(report)
    all_n = sum(totals.values())
    codes = _ordered_codes(totals)
    shown, rest = codes[:_SUMMARY_CODES], codes[_SUMMARY_CODES:]
    entries = [f"{c} {totals[c]:,} ({totals[c] / all_n * 100:.2f}%)" if all_n else f"{c} 0"
               for c in shown]
    if rest:
        entries.append(f"{len(rest)} other codes {sum(totals[c] for c in rest):,}")
    lines += _wrap("results   ", entries or ["none"])
    operations = _dict(report.get("operations"))
    if len(operations) > 1:   # a mix of operations: each one's answers, latency and refusals
        for i, (name, entry) in enumerate(operations.items()):
            entry = _dict(entry)
            latency = _dict(entry.get("latency_us"))
            not_ok = _not_ok(entry.get("result_codes"))
            apart = _apart(entry.get("result_codes"), short=True)
            lines.append(("per op    " if i == 0 else " " * 10)
                         + f"{str(name):<17}{_count(entry.get('requests')):>9}  p50 {_ms(latency.get('p50')):>9}  "
                         f"p99 {_ms(latency.get('p99')):>9}  "
                         + (f"{apart}, " if apart else "")
                         + ("not ok: " + ", ".join(f"{code} {n:,}" for code, n in not_ok) if not_ok
                            else "all ok" if not apart else "rest ok"))
    codes = _dict(report.get("codes"))
    if codes:
        lines.append(f"codes     charges {_count(codes.get('charged_at_once'))} paid at once, "
                     f"{_count(codes.get('held'))} held (user_paying): {_count(codes.get('still_held_at_end'))} "
                     f"still held at the end, {_count(codes.get('timed_out'))} timed out")
    envelopes = _dict(report.get("envelopes"))
    if envelopes:
        lines.append(f"envelopes {_count(envelopes.get('packets_sent'))} sent ({_count(envelopes.get('sent_minor'))}), "
                     f"claims {_count(envelopes.get('claims_ok'))} ok ({_count(envelopes.get('claimed_minor'))}) "
                     f"{_count(envelopes.get('claims_late'))} late, {_count(envelopes.get('packets_emptied'))} emptied")
    by_label: dict[str, list[dict]] = {}
    for mark in _list(report.get("marks")):
        by_label.setdefault(str(_dict(mark).get("label") or "event"), []).append(_dict(mark))
    for label, marks in sorted(by_label.items()):
        longest = max((_num(mark.get("duration_s")) or 0.0) for mark in marks)
        lines.append(f"server    {len(marks)} {label}(s) at "
                     + ", ".join(f"{_num(mark.get('t_s')) or 0:.0f}" for mark in marks[:12])
                     + (" …" if len(marks) > 12 else "") + f" s (longest {longest:.2f} s)")
    paths = report.get("paths")
    if isinstance(paths, dict):
        paths = list(paths.values())
    elif isinstance(paths, str):
        paths = [paths]
    for i, p in enumerate(_list(paths)):
        lines.append(("report    " if i == 0 else "          ") + str(p))
    return "\n".join(line[:_SUMMARY_COLUMNS] for line in lines)


def _wrap(head: str, entries: list[str]) -> list[str]:
    """Entries joined by two spaces, continued under ``head`` when the line would pass 100."""
    lines, line = [], head
    for entry in entries:
        if len(line) > len(head) and len(line) + 2 + len(entry) > _SUMMARY_COLUMNS:
            lines.append(line)
            line = " " * len(head)
        line += ("  " if len(line) > len(head) else "") + entry
    lines.append(line)
    return lines
