"""`flowdc report TELEMETRY`: one PNG (or a self-contained HTML page) showing how each host was driven.

This module only draws: reading and summarizing the log is telemetry_read.py's (no matplotlib
there, so a UI or a collector can summarize a log without loading a plotting library). Only the
busiest hosts' time series are loaded, so memory is bounded by the plotted hosts.

Each plotted host gets one row of three panels: concurrency (limit, in-flight, PAARC state),
latency (p50/p95 TTFB, and the unloaded mean PAARC judges against) and outcome (ok/s, plus
429/503, 5xx and timeouts per time bin).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from flowdc.errors import ConfigError
from flowdc.localfiles import local_file_problem
from flowdc.telemetry_read import (
    COUNTERS,
    HostSeries,
    ReadStats,
    TelemetrySource,
    gap_threshold,
    load_series,
    summarize_with_stats,
    typical_step,
)

MAX_HOSTS = 12  # rows in the figure: more makes a PNG nobody scrolls through
MAX_TABLE_HOSTS = 500  # rows in the HTML table: a crawl can touch tens of thousands of hosts
TARGET_BINS = 150  # error bars per row: enough to locate a burst, few enough to see each bar

# Colours chosen so that related series share a hue and errors are the only warm colours.
C_LIMIT, C_INFLIGHT = "#1f3b73", "#5fa8d3"
C_P50, C_P95, C_BASE = "#2a6f97", "#8e7cc3", "#222222"
C_OK, C_GOODPUT = "#2e8b57", "#7a7a7a"
C_429, C_5XX, C_TIMEOUT = "#f28e2b", "#d62728", "#9c27b0"
STATE_COLOURS = {
    "INIT": "#cccccc",
    "STARTUP": "#b7e4c7",
    "PROBE_BW": "#ebe6dc",  # the steady state: a quiet warm grey, apart from the blue in-flight
    "PROBE_RTT": "#fff2b3",
    "BACKOFF": "#f8c8c8",
    "FIXED": "#eeeeee",
    "DOWN": "#9e9e9e",  # answered nothing for host_down_after: its rows wait, or fail unsent once released
}
EXTRA_STATE_COLOURS = ("#e0d4f5", "#fde0c5", "#d0f0ef", "#f5d0e6")  # states added to PAARC later


# -- figure ---------------------------------------------------------------------------------------
@dataclass
class _Axis:
    """The shared time axis: every row uses the same origin, unit and error bins so rows line up."""

    t0: float
    span: float
    scale: float  # seconds per displayed unit
    unit: str
    bin_s: float  # width of one error / ok-rate bin in seconds

    def x(self, t: np.ndarray) -> np.ndarray:
        return (t - self.t0) / self.scale


def _time_axis(summary: dict[str, dict[str, Any]], hosts: list[str], series: dict[str, HostSeries]) -> _Axis:
    t0 = min(summary[h]["first_t"] for h in hosts)
    span = max(max(summary[h]["last_t"] for h in hosts) - t0, 1.0)
    # Long runs read better in minutes or hours; short ones keep the seconds the brief asks for.
    scale, unit = (1.0, "s") if span <= 1800 else (60.0, "min") if span <= 36000 else (3600.0, "h")
    steps = [float(np.median(np.diff(s.t))) for s in series.values() if len(s.t) > 1]
    # At least two snapshots per bin, or jitter in the ~0.5 s snapshot clock makes every bar wobble.
    return _Axis(t0, span, scale, unit, _nice_bin(max(span / TARGET_BINS, 2 * min(steps, default=0.5))))


def _nice_bin(seconds: float) -> float:
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if nice >= seconds:
            return float(nice)
    return 86400.0 * math.ceil(seconds / 86400)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _held_steps(t: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """Step series (t in seconds) where a value holds until the next snapshot. The last value of each
    stretch holds for one snapshot interval, so a lone snapshot still shows; then a NaN breaks the
    line where the host was absent, instead of a ramp drawn across the gap."""
    step = typical_step(t)
    ends = np.append(np.nonzero(np.diff(t) > gap_threshold(t))[0], len(t) - 1)  # last index of each stretch
    parts_t: list[np.ndarray] = []
    parts_y: list[list[np.ndarray]] = [[] for _ in ys]
    start = 0
    for end in ends.tolist():
        parts_t += [t[start:end + 1], np.array([t[end] + step, t[end] + step])]
        for parts, y in zip(parts_y, ys, strict=True):
            parts += [y[start:end + 1], np.array([y[end], math.nan])]
        start = end + 1
    return np.concatenate(parts_t), *(np.concatenate(parts) for parts in parts_y)


def _state_colour(state: str, extra: dict[str, str]) -> str:
    if state in STATE_COLOURS:
        return STATE_COLOURS[state]
    if state not in extra:
        extra[state] = EXTRA_STATE_COLOURS[len(extra) % len(EXTRA_STATE_COLOURS)]
    return extra[state]


def _shade_states(axes: list[Axes], s: HostSeries, ax_t: _Axis, extra: dict[str, str]) -> None:
    """State as a full-height band behind the concurrency panel and a thin strip atop the others:
    the eye can follow a BACKOFF band across the row to the 429s and latency that caused it."""
    if all(state == "FIXED" for _, _, state in s.states):
        return  # nothing changes without PAARC; a uniform band would only add noise
    by_state: dict[str, list[tuple[float, float]]] = {}
    for start, end, state in s.states:
        by_state.setdefault(state, []).append(((start - ax_t.t0) / ax_t.scale, (end - start) / ax_t.scale))
    # One collection per state, not one axvspan per run: a long run has thousands of runs, and
    # per-patch bookkeeping then takes longer than all the rest of the figure.
    for state, spans in by_state.items():
        colour = _state_colour(state, extra)
        axes[0].broken_barh(spans, (0, 1), transform=axes[0].get_xaxis_transform(), color=colour, alpha=0.55,
                            lw=0, zorder=0)
        for ax in axes[1:]:
            ax.broken_barh(spans, (0.94, 0.06), transform=ax.get_xaxis_transform(), color=colour, lw=0, zorder=0)


def _plot_concurrency(ax: Axes, s: HostSeries, ax_t: _Axis) -> None:
    t, limit, inflight = _held_steps(s.t, s.values["limit"], s.values["inflight"])
    x = ax_t.x(t)
    ax.fill_between(x, 0, inflight, step="post", color=C_INFLIGHT, alpha=0.55, lw=0, zorder=2)
    ax.step(x, inflight, where="post", color=C_INFLIGHT, lw=0.8, zorder=2)
    ax.step(x, limit, where="post", color=C_LIMIT, lw=1.8, zorder=3)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("concurrency (requests)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


@dataclass
class _Bins:
    """One host's snapshots sorted into the shared time bins.

    Latency and rates are drawn per bin, not per snapshot: a two-hour run has 14,400 snapshots per
    host for ~500 pixels of panel, and raw they smear into a band; bin means stay legible.
    """

    idx: np.ndarray  # bin of each snapshot
    present: np.ndarray  # bins holding at least one snapshot; the others are gaps (host absent)
    left: np.ndarray  # bin starts, in display units
    centre: np.ndarray

    def total(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.idx, weights=values, minlength=len(self.present))

    def rate(self, counts: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """Per second over the time the bin's snapshots span, not the bin's width: the ~0.5 s
        snapshot clock drifts against the bins, so now and then a bin holds one snapshot fewer,
        and divided by its width that read as a dip no host had."""
        span = self.total(covered)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.present & (span > 0), self.total(counts) / span, math.nan)

    def mean(self, values: np.ndarray) -> np.ndarray:
        known = ~np.isnan(values)
        n = np.bincount(self.idx[known], minlength=len(self.present))
        sums = np.bincount(self.idx[known], weights=values[known], minlength=len(self.present))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, sums / n, math.nan)


def _bins(s: HostSeries, ax_t: _Axis) -> _Bins:
    nbins = max(1, math.ceil(ax_t.span / ax_t.bin_s) + 1)
    idx = np.clip(((s.t - ax_t.t0) // ax_t.bin_s).astype(int), 0, nbins - 1)
    left = np.arange(nbins) * ax_t.bin_s / ax_t.scale
    return _Bins(idx, np.bincount(idx, minlength=nbins) > 0, left, left + ax_t.bin_s / ax_t.scale / 2)


def _plot_latency(ax: Axes, s: HostSeries, bins: _Bins) -> None:
    p50, p95, base = (bins.mean(s.values[k]) for k in ("p50_ms", "p95_ms", "base_lat_ms"))
    if np.isnan(p50).all() and np.isnan(p95).all():
        fixed = bool(s.states) and all(state == "FIXED" for _, _, state in s.states)
        _note(ax, "no latency figures\n" + ("(PAARC disabled: fixed limit)" if fixed else "(no interval measured yet)"))
        ax.set_yticks([])
        return
    x = bins.centre
    ax.fill_between(x, p50, p95, color=C_P95, alpha=0.18, lw=0, zorder=1)
    ax.plot(x, p95, color=C_P95, lw=1.2, zorder=2)
    ax.plot(x, p50, color=C_P50, lw=1.6, zorder=3)
    ax.plot(x, base, color=C_BASE, lw=1.2, ls="--", zorder=4)
    ax.set_ylim(bottom=0, top=_latency_top(p95, p50, base))
    ax.set_ylabel("TTFB (ms)")


def _latency_top(*ys: np.ndarray) -> float:
    """Clip the y range at a rare spike so the usual latency stays readable (spikes go off the top)."""
    values = np.concatenate([y[~np.isnan(y)] for y in ys])
    if not len(values):
        return 1.0
    peak, usual = float(values.max()), float(np.percentile(values, 99))
    return max(1.0, 1.08 * (peak if peak <= 2 * usual else 1.5 * usual))


def _plot_outcome(ax: Axes, s: HostSeries, bins: _Bins, ax_t: _Axis) -> str:
    """Plot ok/s and errors; returns the panel title, which says so when there were no errors."""
    per_bin = {k: bins.total(s.deltas[k]) for k in COUNTERS}
    ax.plot(bins.centre, bins.rate(s.deltas["ok"], s.covered), color=C_OK, lw=1.8, zorder=3, drawstyle="steps-mid")
    goodput = bins.mean(s.values["goodput"])
    if not np.isnan(goodput).all():
        ax.plot(bins.centre, goodput, color=C_GOODPUT, lw=1.0, ls=":", zorder=2)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ok/s")
    if _plot_errors(ax, bins.left, per_bin, ax_t):
        return f"Outcome: ok/s, and errors per {_bin_label(ax_t.bin_s)} (bars)"
    return "Outcome: ok/s  (no 429/503, 5xx or timeouts)"


def _plot_errors(ax: Axes, left: np.ndarray, per_bin: dict[str, np.ndarray], ax_t: _Axis) -> bool:
    """Errors as stacked bars on their own (right) axis: counts, not rates, because a handful of
    429s is the news here and would vanish on the ok/s scale."""
    kinds = (("n_429_503", C_429), ("n_5xx", C_5XX), ("n_timeouts", C_TIMEOUT))
    if not any(per_bin[k].any() for k, _ in kinds):
        return False
    twin = ax.twinx()
    bottom = np.zeros(len(left))
    edges = np.append(left, left[-1] + ax_t.bin_s / ax_t.scale)
    for key, colour in kinds:
        # Stacked filled stairs: one artist per kind, where bar() would make a patch per bin.
        top = bottom + per_bin[key]
        if per_bin[key].any():
            twin.stairs(top, edges, baseline=bottom, fill=True, color=colour, alpha=0.85, lw=0, zorder=1)
        bottom = top
    twin.set_ylim(0, max(1.0, float(bottom.max())) * 1.15)
    twin.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    twin.set_ylabel(f"errors per {_bin_label(ax_t.bin_s)}", color="#a0522d")
    twin.tick_params(axis="y", colors="#a0522d")
    ax.set_zorder(twin.get_zorder() + 1)  # the ok/s line stays above the bars...
    ax.patch.set_visible(False)  # ...and the bars show through its background
    return True


def _bin_label(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#777777", fontsize=10,
            style="italic")


def _row_facts(info: dict[str, Any]) -> str:
    parts = [f"{info['requests']:,} requests", f"{info['ok']:,} ok"]
    errors = [(info["n_429_503"], "429/503"), (info["n_5xx"], "5xx"), (info["n_timeouts"], "timeouts")]
    parts += [f"{n:,} {label}" for n, label in errors if n]
    if info["final_limit"] is not None:
        parts.append(f"limit: max {info['max_limit']}, final {info['final_limit']}")
    if info["mean_inflight"] is not None:
        parts.append(f"mean in-flight {info['mean_inflight']:g}")
    if info["median_p50_ms"] is not None:
        parts.append(f"median p50 {info['median_p50_ms']:g} ms")
    return "  ·  ".join(parts)


def _legend_handles(series: list[HostSeries], states: list[tuple[str, str]]) -> list[Any]:
    """Legend entries for what the figure actually shows: no latency lines for a fixed-limit run."""
    def has(key: str) -> bool:
        return any(not np.isnan(s.values[key]).all() for s in series)

    def counted(key: str) -> bool:
        return any(s.deltas[key].any() for s in series)

    entries: list[tuple[bool, Any]] = [
        (has("limit"), Line2D([], [], color=C_LIMIT, lw=1.8, drawstyle="steps-post", label="limit")),
        (has("inflight"), Patch(color=C_INFLIGHT, alpha=0.55, label="in-flight")),
        (has("p50_ms"), Line2D([], [], color=C_P50, lw=1.6, label="p50 TTFB")),
        (has("p95_ms"), Line2D([], [], color=C_P95, lw=1.2, label="p95 TTFB")),
        (has("base_lat_ms"), Line2D([], [], color=C_BASE, lw=1.2, ls="--", label="base latency (unloaded mean)")),
        (True, Line2D([], [], color=C_OK, lw=1.8, label="ok/s (from counters)")),
        (has("goodput"), Line2D([], [], color=C_GOODPUT, lw=1.0, ls=":", label="PAARC goodput estimate")),
        (counted("n_429_503"), Patch(color=C_429, label="429/503")),
        (counted("n_5xx"), Patch(color=C_5XX, label="5xx")),
        (counted("n_timeouts"), Patch(color=C_TIMEOUT, label="timeouts")),
    ]
    handles = [handle for shown, handle in entries if shown]
    return handles + [Patch(color=colour, alpha=0.55, label=f"state {state}") for state, colour in states]


def _header_text(src: TelemetrySource, summary: dict[str, dict[str, Any]], shown: list[str], stats: ReadStats,
                 ax_t: _Axis) -> tuple[str, str]:
    start = datetime.fromtimestamp(ax_t.t0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    requests = sum(info["requests"] for info in summary.values())
    hosts = f"{len(summary)} host{'s' if len(summary) != 1 else ''}"
    if len(shown) < len(summary):
        hosts = f"showing the {len(shown)} busiest of {len(summary)} hosts ({len(summary) - len(shown)} left out)"
    sub = f"{hosts}  ·  {requests:,} requests  ·  {_duration(ax_t.span)} from {start}"
    notes = []
    if stats.truncated_tail:
        notes.append("last line truncated (run killed?)")
    if stats.skipped:
        notes.append(f"{stats.skipped} malformed line{'s' if stats.skipped != 1 else ''} skipped")
    if notes:
        sub += "  ·  " + ", ".join(notes)
    return f"FLOW-DC per-host telemetry: {src.name}", sub


# Fixed layout in inches. Hand-placed rather than constrained layout so the three columns line up
# across rows whatever the tick labels, and because constrained layout takes seconds for 12 rows.
WIDTH_IN, DPI = 18.0, 100
HEADER_HEIGHT_IN = 1.35  # title, subtitle, two legend lines
ROW_TITLE_IN, PANEL_TITLE_IN, PANEL_IN, TICKS_IN = 0.34, 0.24, 1.80, 0.40
ROW_HEIGHT_IN = ROW_TITLE_IN + PANEL_TITLE_IN + PANEL_IN + TICKS_IN
XLABEL_IN = 0.30  # under the last row only
LEFT_IN, GAP_IN, RIGHT_IN = 0.85, 0.85, 0.75  # the gaps hold the next panel's y labels
ROW_BACKGROUND = "#f3f5f8"


def _figure_height(rows: int) -> float:
    return HEADER_HEIGHT_IN + ROW_HEIGHT_IN * rows + XLABEL_IN


def _panel_rects(fig_h: float, row: int) -> list[tuple[float, float, float, float]]:
    """Figure-fraction rectangles of a row's three panels."""
    width = (WIDTH_IN - LEFT_IN - RIGHT_IN - 2 * GAP_IN) / 3
    top = fig_h - HEADER_HEIGHT_IN - row * ROW_HEIGHT_IN - ROW_TITLE_IN - PANEL_TITLE_IN
    bottom = top - PANEL_IN
    return [((LEFT_IN + col * (width + GAP_IN)) / WIDTH_IN, bottom / fig_h, width / WIDTH_IN, PANEL_IN / fig_h)
            for col in range(3)]


def _render_png(src: TelemetrySource, summary: dict[str, dict[str, Any]], shown: list[str],
                series: dict[str, HostSeries], stats: ReadStats) -> bytes:
    ax_t = _time_axis(summary, shown, series)
    fig_h = _figure_height(len(shown))
    # Figure() instead of pyplot: no global backend or figure registry is touched, and PNG output
    # goes through Agg, so this works headless and next to a live UI.
    fig = Figure(figsize=(WIDTH_IN, fig_h), dpi=DPI, facecolor="white")
    renderer = FigureCanvasAgg(fig).get_renderer()  # to measure text when placing row titles
    extra_states: dict[str, str] = {}
    first: Axes | None = None
    for row, host in enumerate(shown):
        axes = _plot_row(fig, renderer, fig_h, row, host, summary[host], series[host], ax_t, extra_states)
        first = first or axes[0]
        for ax in axes:
            if ax is not first:
                ax.sharex(first)  # one time axis for the whole figure: rows and panels line up
    for ax in axes:
        ax.set_xlabel(f"time since start ({ax_t.unit})", fontsize=10)
    if first is not None:
        first.set_xlim(0, ax_t.span / ax_t.scale)
    _draw_header(fig, fig_h, src, summary, shown, series, stats, ax_t, extra_states)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _draw_header(fig: Figure, fig_h: float, src: TelemetrySource, summary: dict[str, dict[str, Any]], shown: list[str],
                 series: dict[str, HostSeries], stats: ReadStats, ax_t: _Axis, extra_states: dict[str, str]) -> None:
    title, subtitle = _header_text(src, summary, shown, stats, ax_t)
    x = 0.2 / WIDTH_IN
    fig.text(x, 1 - 0.12 / fig_h, title, fontsize=16, fontweight="bold", va="top")
    fig.text(x, 1 - 0.48 / fig_h, subtitle, fontsize=11.5, color="#333333", va="top")
    seen = sorted({st for h in shown for _, _, st in series[h].states if st != "FIXED"}, key=_state_order)
    handles = _legend_handles([series[h] for h in shown], [(st, _state_colour(st, extra_states)) for st in seen])
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.78 / fig_h),
               ncols=max(1, (len(handles) + 1) // 2), frameon=False, fontsize=10, handlelength=2.2, columnspacing=1.8)


def _state_order(state: str) -> tuple[int, str]:
    known = list(STATE_COLOURS)
    return (known.index(state) if state in known else len(known), state)


def _plot_row(fig: Figure, renderer: RendererBase, fig_h: float, row: int, host: str, info: dict[str, Any],
              s: HostSeries, ax_t: _Axis, extra_states: dict[str, str]) -> list[Axes]:
    row_top = fig_h - HEADER_HEIGHT_IN - row * ROW_HEIGHT_IN
    if row % 2 == 1:  # alternate row backgrounds so a row reads as one unit
        fig.add_artist(Rectangle((0, (row_top - ROW_HEIGHT_IN) / fig_h), 1, ROW_HEIGHT_IN / fig_h,
                                 transform=fig.transFigure, color=ROW_BACKGROUND, zorder=-10))
    _row_title(fig, renderer, (row_top - 0.1) / fig_h, host, info)
    axes = [fig.add_axes(rect) for rect in _panel_rects(fig_h, row)]
    _plot_concurrency(axes[0], s, ax_t)
    bins = _bins(s, ax_t)
    _plot_latency(axes[1], s, bins)
    outcome_title = _plot_outcome(axes[2], s, bins, ax_t)
    _shade_states(axes, s, ax_t, extra_states)
    titles = ("Concurrency: limit and in-flight requests", "Latency: TTFB p50–p95 band, base latency", outcome_title)
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, loc="left", fontsize=9.5, color="#555555", pad=4)
        ax.grid(True, color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=9)
    return axes


def _row_title(fig: Figure, renderer: RendererBase, y: float, host: str, info: dict[str, Any]) -> None:
    """Host name in bold, then its totals in grey on the same line."""
    x = 0.2 / WIDTH_IN
    name = fig.text(x, y, host, fontsize=13, fontweight="bold", va="top")
    width = name.get_window_extent(renderer).width / (WIDTH_IN * DPI)
    fig.text(x + width + 0.25 / WIDTH_IN, y - 0.02 / fig.get_figheight(), _row_facts(info), fontsize=11,
             color="#444444", va="top")


# -- output ---------------------------------------------------------------------------------------
def _output_path(src: TelemetrySource, out: str | None) -> Path:
    if out is not None:
        problem = local_file_problem(out) if "://" in out else None  # Path() would make s3:// a folder s3:
        if problem:
            raise ConfigError(f"--out {out}: {problem}")
        target = Path(out)
    elif src.remote:  # a log on a store: the report goes to the working folder
        target = Path(Path(src.name).stem + ".png")
    else:
        target = src.local_path.with_suffix(".png")
    if not src.remote and target.resolve() == src.local_path.resolve():
        raise ConfigError(f"the report would overwrite the telemetry file {src.display}; pass --out")
    if target.suffix.lower() not in (".png", ".html", ".htm"):
        raise ConfigError(f"--out must end in .png or .html, got {out}")
    if not target.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {target.parent}")
    problem = local_file_problem(str(target))
    if problem:  # before the log is read: a long log takes a while
        raise ConfigError(f"--out {target}: {problem}")
    return target


def _html_page(title: str, png: bytes, summary: dict[str, dict[str, Any]]) -> str:
    columns = [("host", "host"), ("requests", "requests"), ("ok", "ok"), ("429/503", "n_429_503"),
               ("5xx", "n_5xx"), ("timeouts", "n_timeouts"), ("final limit", "final_limit"),
               ("max limit", "max_limit"), ("mean in-flight", "mean_inflight"), ("median p50 (ms)", "median_p50_ms"),
               ("final state", "final_state")]
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    rows = []
    for host, info in list(summary.items())[:MAX_TABLE_HOSTS]:
        cells = [_cell(host if key == "host" else info[key]) for _, key in columns]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = len(summary) - MAX_TABLE_HOSTS
    tail = f"<p>{more:,} less busy hosts not listed.</p>" if more > 0 else ""
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }}
th {{ background: #f0f2f5; }} td:first-child, th:first-child {{ text-align: left; font-family: monospace; }}
tr:nth-child(even) td {{ background: #fafbfc; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Per-host summary (busiest first)</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>{tail}
<h2>Over time</h2>
<img alt="per-host telemetry plots" src="data:image/png;base64,{image}">
</body></html>
"""


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, int):
        return f"<td>{value:,}</td>"
    if isinstance(value, float):
        return f"<td>{value:g}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def render_report(telemetry: str | Path, out_path: str | None = None,
                  storage_options: Mapping[str, Any] | None = None) -> str:
    """Plot a telemetry log (a JSONL file, or a folder of parts, local or on any fsspec URL); write a
    PNG (default: beside a local log) or, for a .html out_path, a self-contained page with the PNG
    inlined and a per-host table. Returns the path written."""
    # Opened before the output checks, so a typo in the path gets the obvious message.
    src = TelemetrySource(telemetry, storage_options)
    out = _output_path(src, out_path)
    summary, stats = summarize_with_stats(src)
    shown = list(summary)[:MAX_HOSTS]
    series = load_series(src, set(shown))
    png = _render_png(src, summary, shown, series, stats)
    try:
        if out.suffix.lower() == ".png":
            out.write_bytes(png)
        else:
            out.write_text(_html_page(f"FLOW-DC telemetry: {src.name}", png, summary), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    return str(out)
