"""Plotly figures for the HTML report: density histogram, metrics against their bands, and the
layer sweep. Figures only; report/html.py places them on the page."""

from __future__ import annotations

import math
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from saedoctor.report.bands import band_set, display_range, regions, to_axis
from saedoctor.report.fields import GRADED, LABELS, STATUSES, format_metric, headline_reconstruction
from saedoctor.thresholds import ALWAYS_ON_DENSITY, DEAD_DENSITY

DEAD_THRESHOLD = DEAD_DENSITY  # SPEC §2: dead = density < 0.05 %
COLOURS = {"excellent": "#2e9e44", "good": "#1798b0", "warning": "#e69b00",
           "critical": "#d43f3a", "not measured": "#9aa0a6"}
TINTS = {"excellent": "#cdebd4", "good": "#cbeaf2", "warning": "#fbe6bd", "critical": "#f5cfcd"}
TEMPLATE = "plotly_white"


def density_histogram_figure(entry: dict[str, Any], run: dict[str, Any]) -> go.Figure:
    """log10 feature density; never-fired features (log of 0) get their own bar on the left."""
    hist = entry["density_histogram"]
    edges, counts = hist["edges"], hist["counts"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:], strict=False)]
    widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    never_x = edges[0] - 1.0
    options = run.get("options") or {}
    always_on = options.get("always_on_threshold") or ALWAYS_ON_DENSITY
    dead = options.get("dead_threshold") or DEAD_THRESHOLD
    fig = go.Figure()
    fig.add_bar(x=centers, y=counts, width=widths, name="features", marker_color="#4c78a8",
                customdata=[[10**a, 10**b] for a, b in zip(edges, edges[1:], strict=False)],
                hovertemplate="density %{customdata[0]:.2g}–%{customdata[1]:.2g}: "
                              "%{y} features<extra></extra>")
    fig.add_bar(x=[never_x], y=[hist.get("never_fired") or 0], width=[0.6], name="never fired",
                marker_color="#7f7f7f", hovertemplate="never fired: %{y}<extra></extra>")
    fig.add_vrect(x0=never_x - 0.5, x1=math.log10(dead), fillcolor=TINTS["critical"],
                  opacity=0.45, layer="below", line_width=0)
    fig.add_vrect(x0=math.log10(always_on), x1=max(edges[-1], 0.0) + 0.1,
                  fillcolor=TINTS["critical"], opacity=0.45, layer="below", line_width=0)
    fig.add_vline(x=math.log10(dead), line_dash="dash", line_color=COLOURS["critical"],
                  annotation_text=f"dead < {dead:.2%}", annotation_position="top left")
    fig.add_vline(x=math.log10(always_on), line_dash="dash", line_color=COLOURS["critical"],
                  annotation_text=f"always-on > {always_on:.0%}", annotation_position="top left")
    ticks = list(range(math.ceil(edges[0]), math.floor(edges[-1]) + 1))
    fig.update_xaxes(title_text="feature density (fraction of tokens, log scale)",
                     tickvals=[never_x, *ticks],
                     ticktext=["never", *(f"10<sup>{k}</sup>" for k in ticks)],
                     range=[never_x - 0.5, max(edges[-1], 0.0) + 0.1])
    fig.update_yaxes(title_text="features")
    fig.update_layout(title_text="Feature density", template=TEMPLATE, height=340, bargap=0,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, showlegend=True,
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    return fig


def graded_values(entry: dict[str, Any]) -> list[tuple[str, str, float | None, str | None]]:
    """(metric, label, value, status) for each graded metric, grader's values first."""
    graded = (entry.get("grading") or {}).get("statuses") or {}
    out = []
    for key in GRADED:
        info = graded.get(key)
        if info is not None:
            value, status, source = info.get("value"), info.get("status"), info.get("source")
        else:
            value, source = (headline_reconstruction(entry["metrics"]) if key == "loss_recovered"
                             else (entry["metrics"].get(key), key))
            status = None
        label = LABELS.get(key, key)
        if key == "loss_recovered" and source == "variance_explained":
            label = "loss recovered (VE)"
        out.append((key, label, value, status))
    return out


def bands_figure(document: dict[str, Any], entry: dict[str, Any]) -> go.Figure:
    """A bullet chart per graded metric: coloured status bands, a diamond at the value."""
    rows = graded_values(entry)
    fig = make_subplots(rows=len(rows), cols=1, vertical_spacing=0.35 / len(rows))
    origins = set()
    for i, (key, label, value, status) in enumerate(rows, start=1):
        bands = band_set(document, key)
        origins.add(bands.origin)
        lo, hi = display_range(key, value)
        for band, a, b in regions(key, bands, lo, hi):
            fig.add_trace(go.Bar(x=[b - a], base=[a], y=[label], orientation="h", width=0.8,
                                 marker_color=TINTS[band], marker_line_width=0, showlegend=False,
                                 hovertemplate=f"{band}<extra></extra>"), row=i, col=1)
        add_error_bar(fig, i, key, label, value_interval(entry, key))
        add_marker(fig, i, key, label, value, status, lo)
        fig.update_xaxes(range=[lo, hi], row=i, col=1, showgrid=False)
        if key == "always_on_count":  # a count: integer ticks only
            fig.update_xaxes(dtick=1, row=i, col=1)
        if key == "l0":
            ticks = [v for v in (1, 5, 10, 20, 50, 100, 200, 500, 1000, 3000, 10000)
                     if lo <= math.log10(v) <= hi]
            fig.update_xaxes(tickvals=[math.log10(v) for v in ticks],
                             ticktext=[str(v) for v in ticks], tickangle=0, row=i, col=1)
    for status in STATUSES:  # legend entries for the band colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=status,
                                 marker={"symbol": "square", "size": 12, "color": TINTS[status]}),
                      row=1, col=1)
    origin = " / ".join(sorted(origins))
    if not entry.get("grading"):
        origin += "; not graded, markers uncoloured"
    fig.update_layout(title_text=f"Graded metrics against their bands ({origin})",
                      template=TEMPLATE, barmode="overlay", height=78 * len(rows) + 90,
                      margin={"l": 170, "r": 60, "t": 70, "b": 30},
                      legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1,
                              "xanchor": "right"})
    return fig


def value_interval(entry: dict[str, Any], key: str) -> list[float] | None:
    """The graded value's interval (the grader's, else the entry's own)."""
    info = ((entry.get("grading") or {}).get("statuses") or {}).get(key) or {}
    if info.get("interval"):
        return info["interval"]
    return ((entry.get("intervals") or {}).get("metrics") or {}).get(key)


def add_error_bar(fig: go.Figure, row: int, key: str, label: str,
                  interval: list[float] | None) -> None:  # fmt: skip
    """The 95 % interval as a whisker behind the value's diamond."""
    if not interval:
        return
    xs = [to_axis(key, v) if key != "l0" or v > 0 else to_axis(key, 0.5) for v in interval]
    text = " – ".join(format_metric(key, v) for v in interval)
    fig.add_trace(go.Scatter(
        x=xs, y=[label, label], mode="lines+markers", showlegend=False, cliponaxis=False,
        line={"color": "#222222", "width": 2}, marker={"symbol": "line-ns-open", "size": 12},
        hovertemplate=f"{label}: interval {text}<extra></extra>",
    ), row=row, col=1)


def add_marker(fig: go.Figure, row: int, key: str, label: str, value: float | None,
               status: str | None, lo: float) -> None:
    if value is None:
        fig.add_trace(go.Scatter(x=[lo], y=[label], mode="text", text=["  not measured"],
                                 textposition="middle right", showlegend=False,
                                 hoverinfo="skip"), row=row, col=1)
        return
    text = format_metric(key, value)
    colour = COLOURS.get(status or "", "#333333")
    fig.add_trace(go.Scatter(
        x=[to_axis(key, value)], y=[label], mode="markers+text", text=[f"  {text}"],
        textposition="middle right", showlegend=False, cliponaxis=False,
        marker={"symbol": "diamond", "size": 15, "color": colour,
                "line": {"color": "#222222", "width": 1.5}},
        hovertemplate=f"{label}: {text} ({status or 'not graded'})<extra></extra>",
    ), row=row, col=1)


SWEEP_PANELS = (
    ("reconstruction", "loss recovered / VE"), ("l0", "L0"), ("dead_pct", "dead %"),
    ("always_on_count", "always-on features"), ("absorption", "absorption"),
    ("diversity_top10", "diversity (top-10)"),
)


def sweep_figure(saes: list[dict[str, Any]]) -> go.Figure | None:
    """Metrics vs layer, one line per (model, site kind); None unless ≥ 2 layers to compare.
    `saes` are the per-SAE summaries of report/compare.py."""
    placed = [s for s in saes if s["layer"] is not None]
    if len({s["layer"] for s in placed}) < 2:
        return None
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for _, t in SWEEP_PANELS],
                        horizontal_spacing=0.08, vertical_spacing=0.16)
    groups: dict[str, list[dict[str, Any]]] = {}
    for sae in sorted(placed, key=lambda s: s["layer"]):
        groups.setdefault(f"{sae['model']} {sae['site'] or ''}".strip(), []).append(sae)
    for g, (name, group) in enumerate(groups.items()):
        colour = qualitative.Plotly[g % len(qualitative.Plotly)]
        for p, (key, title) in enumerate(SWEEP_PANELS):
            xs, ys, marks = sweep_points(group, key)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                showlegend=p == 0, line={"color": colour}, cliponaxis=False,
                marker={"size": 11, "color": marks, "line": {"color": colour, "width": 2}},
                hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.4g}} ({title})<extra></extra>",
            ), row=p // 3 + 1, col=p % 3 + 1)
    fig.update_xaxes(title_text="layer", row=2)
    fig.update_layout(title_text="Layer sweep (marker colour = status)", template=TEMPLATE,
                      height=560, margin={"l": 50, "r": 20, "t": 90, "b": 50},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def sweep_points(group: list[dict[str, Any]], key: str) -> tuple[list, list, list]:
    xs, ys, marks = [], [], []
    for sae in group:
        if key == "reconstruction":
            value, status = sae["reconstruction"], sae["statuses"].get(sae["reconstruction_source"])
        else:
            value, status = sae["metrics"].get(key), sae["statuses"].get(key)
        if value is None:
            continue
        xs.append(sae["layer"])
        ys.append(value)
        marks.append(COLOURS.get(status or "", "#ffffff"))
    return xs, ys, marks
