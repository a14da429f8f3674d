"""The page: the live view of the run being watched, and the form that configures and starts runs.

Built per visit from the server's current state (so the first HTML already holds the hosts, and
a reload keeps what the form held); a timer refreshes the live parts twice a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nicegui import ui

from flowdc.errors import FlowdcError
from flowdc.ui.context import UiContext
from flowdc.ui.form import ConfigForm, FormField
from flowdc.ui.live import HOST_COLUMNS, LiveView

REFRESH_S = 0.5
NUMERIC = {"limit", "inflight", "queued", "rtprop_ms", "p50_ms", "p95_ms", "goodput", "ok", "n_429", "n_5xx",
           "hold_s"}


def build_page(ctx: UiContext) -> None:
    ui.page_title("FLOW-DC")
    with ui.header().classes("items-center bg-slate-800 q-py-xs"):
        ui.label("FLOW-DC").classes("text-h6 text-white")
        status = ui.label().classes("text-white q-ml-md flowdc-status")
    with ui.tabs().classes("w-full") as tabs:
        live_tab = ui.tab("Live")
        config_tab = ui.tab("Configure and run")
    with ui.tab_panels(tabs, value=live_tab).classes("w-full"):
        with ui.tab_panel(live_tab):
            live = LivePanel(ctx)
        with ui.tab_panel(config_tab):
            RunPanel(ctx)

    def refresh() -> None:
        status.text = ctx.status_text()
        live.refresh()

    refresh()
    ui.timer(REFRESH_S, refresh)


class LivePanel:
    """Totals, the per-host table and the charts, all from ctx.live."""

    def __init__(self, ctx: UiContext):
        self.ctx = ctx
        self.selected: list[str] = []
        view = ctx.live.view()
        with ui.row().classes("w-full gap-2"):
            self.cards = {name: _stat_card(name) for name in ("done", "failed", "rate", "MB/s", "ETA", "elapsed")}
        self.partitions = ui.label().classes("text-caption flowdc-partitions")
        columns = [{"name": k, "label": label, "field": k, "sortable": True,
                    "align": "right" if k in NUMERIC else "left"} for k, label in HOST_COLUMNS]
        self.table = ui.table(columns=columns, rows=view.rows, row_key="key", selection="multiple",
                              pagination={"rowsPerPage": 25, "sortBy": None},
                              on_select=self._on_select).classes("w-full flowdc-hosts").props("dense flat bordered")
        ui.label("Tick hosts to chart them; without a choice the charts show the busiest hosts."
                 ).classes("text-caption text-grey-7")
        with ui.row().classes("w-full no-wrap"):
            self.limit_chart = _chart("concurrency limit per host", "limit", "flowdc-limit-chart")
            self.latency_chart = _chart("p50 latency per host (ms)", "ms", "flowdc-latency-chart")
        self.throughput_chart = _chart("total throughput", "rows/s", "flowdc-throughput-chart", second_axis="MB/s")
        self.refresh(view)

    def _on_select(self, _: Any) -> None:
        self.selected = [row["key"] for row in self.table.selected]

    def refresh(self, view: LiveView | None = None) -> None:
        view = view or self.ctx.live.view(self.selected)
        tot = view.totals
        total = f" / {tot.rows_total:,}" if tot.rows_total else ""
        self.cards["done"].text = f"{tot.done:,}{total}"
        self.cards["failed"].text = "–" if tot.failed is None else f"{tot.failed:,}"
        self.cards["rate"].text = f"{tot.rate_per_s:,.1f}/s"
        self.cards["MB/s"].text = "–" if tot.mb_per_s is None else f"{tot.mb_per_s:.2f}"
        self.cards["ETA"].text = "done" if tot.finished else "stopped" if tot.stopped else _duration(tot.eta_s)
        self.cards["elapsed"].text = _duration(tot.elapsed_s)
        parts = [p for p in view.partitions if p]
        self.partitions.text = f"partitions: {', '.join(parts)}" if parts else ""
        if self.table.rows != view.rows:
            self.table.rows = view.rows
            self.table.update()
        t0 = view.t0 or 0.0
        _set_series(self.limit_chart, {k: [[round(t - t0, 1), lim] for t, lim, _ in pts]
                                       for k, pts in view.series.items()})
        _set_series(self.latency_chart, {k: [[round(t - t0, 1), p50] for t, _, p50 in pts]
                                         for k, pts in view.series.items()})
        _set_series(self.throughput_chart, {
            "rows/s": [[round(t - t0, 1), rate] for t, rate, _ in view.throughput],
            "MB/s": [[round(t - t0, 1), mb] for t, _, mb in view.throughput if mb is not None],
        }, second={"MB/s"})


class RunPanel:
    """The forms (one per run kind), load/save, and start/stop."""

    def __init__(self, ctx: UiContext):
        self.ctx = ctx
        kinds = list(ctx.forms)
        with ui.row().classes("items-center w-full"):
            self.kind = ui.toggle(kinds + (["prefect"] if ctx.prefect_api else []), value=ctx.kind,
                                  on_change=self._switch).classes("flowdc-kind")
            ui.button("Start", on_click=self._start).props("color=positive").classes("flowdc-start")
            ui.button("Stop", on_click=self._stop).props("color=negative outline").classes("flowdc-stop")
        with ui.row().classes("items-center w-full"):
            self.path = ui.input("config file (JSON, on the server)", value=ctx.config_path).classes("w-96").mark(
                "config-path")
            ui.button("Load", on_click=self._load).props("outline")
            ui.button("Save", on_click=self._save).props("outline")
        self.message = ui.label().classes("flowdc-message text-negative")
        self.forms = ui.column().classes("w-full")
        self._render()

    def _switch(self) -> None:
        self.ctx.kind = self.kind.value
        self._render()

    def _render(self) -> None:
        self.forms.clear()
        self.widgets: dict[str, Any] = {}
        with self.forms:
            if self.ctx.kind == "prefect":
                self._render_prefect()
                return
            form = self.ctx.forms[self.ctx.kind]
            groups = {"essentials": [], "more": [], "paarc": []}
            for f in form.fields:
                groups[f.group].append(f)
            with ui.grid(columns=3).classes("w-full"):
                for f in groups["essentials"]:
                    self.widgets[f.name] = _widget(f, form.shown.get(f.name))
            for group, title in (("more", "more options"), ("paarc", "PAARC (per-host concurrency)")):
                with ui.expansion(title).classes("w-full"), ui.grid(columns=3).classes("w-full"):
                    for f in groups[group]:
                        self.widgets[f.name] = _widget(f, form.shown.get(f.name))

    def _render_prefect(self) -> None:
        p = self.ctx.prefect
        self.widgets["deployment"] = ui.input("deployment (flow-name/deployment-name)", value=p["deployment"])
        self.widgets["parameters"] = ui.textarea("parameters (JSON object)", value=p["parameters"]).classes("w-full")
        ui.label(f"Prefect API: {self.ctx.prefect_api}").classes("text-caption")

    def _shown(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.widgets.items()}

    def _form(self) -> ConfigForm | None:
        return self.ctx.forms.get(self.ctx.kind)

    def _guard(self, action: Callable[[], str]) -> None:
        try:
            text = action()
        except FlowdcError as exc:  # the CLI's own one-line message
            self.message.classes(replace="flowdc-message text-negative")
            self.message.text = str(exc)
            return
        self.message.classes(replace="flowdc-message text-positive")
        self.message.text = text
        if self.ctx.kind != "prefect":
            self._render()  # shows the checked values (and masks any secret just typed)

    def _start(self) -> None:
        if self.ctx.kind == "prefect":
            self.ctx.prefect.update(self._shown())
            self._guard(self.ctx.start_prefect)
            return
        form = self._form()
        assert form is not None
        self._guard(lambda: self.ctx.start(self.ctx.kind, form.build(self._shown())))

    def _stop(self) -> None:
        self._guard(self.ctx.stop)

    def _load(self) -> None:
        form = self._form()
        if form is None:
            return

        def load() -> str:
            ignored = form.load(self.path.value)
            self.ctx.config_path = self.path.value
            return f"loaded {self.path.value}" + (f"; ignored keys: {', '.join(ignored)}" if ignored else "")

        self._guard(load)

    def _save(self) -> None:
        form = self._form()
        if form is None:
            return
        self._guard(lambda: f"saved {form.save(self.path.value, self._shown())}")


def _widget(f: FormField, value: Any) -> Any:
    if f.kind == "bool":
        w = ui.switch(f.name, value=bool(value))
    elif f.choices:
        options = ([None] if f.optional else []) + list(f.choices)
        w = ui.select(options, value=value, label=f.name)
    elif f.kind == "dict":
        w = ui.textarea(f.name, value=value or "", placeholder="JSON object")
    else:
        w = ui.input(f.name, value="" if value is None else str(value))
    return w.tooltip(f.help).classes(f"flowdc-field-{f.name}").mark(f"field-{f.name}")


def _stat_card(name: str) -> ui.label:
    with ui.card().classes("q-pa-sm min-w-[8rem]"):
        ui.label(name).classes("text-caption text-grey-7")
        return ui.label("–").classes(f"text-h6 flowdc-stat-{name.replace('/', '')}")


def _chart(title: str, unit: str, css: str, second_axis: str | None = None) -> ui.echart:
    y_axes: list[dict[str, Any]] = [{"type": "value", "name": unit}]
    if second_axis:
        y_axes.append({"type": "value", "name": second_axis})
    options = {"title": {"text": title, "textStyle": {"fontSize": 13}}, "animation": False,
               "tooltip": {"trigger": "axis"}, "legend": {"top": 22, "type": "scroll"},
               "grid": {"top": 60, "left": 50, "right": 50, "bottom": 30},
               "xAxis": {"type": "value", "name": "s"}, "yAxis": y_axes, "series": []}
    return ui.echart(options).classes(f"w-full h-64 {css}")


def _set_series(chart: ui.echart, series: dict[str, list[list[Any]]], second: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    new = [{"name": name, "type": "line", "showSymbol": False, "data": data, "yAxisIndex": 1 if name in second else 0}
           for name, data in series.items()]
    if chart.options["series"] != new:
        chart.options["series"] = new
        chart.update()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))
