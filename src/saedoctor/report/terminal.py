"""The terminal view of a report: one column per SAE, one row per metric."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

# (report key, label, format); order follows the guide's list of metrics.
ROWS: list[tuple[str, str, str]] = [
    ("always_on_count", "always-on features", "{:d}"),
    ("always_on_features", "always-on ids", "ids"),
    ("diversity_top10", "diversity (top-10)", "{:.2f}"),
    ("loss_recovered", "loss recovered", "{:.4f}"),
    ("variance_explained", "variance explained", "{:.4f}"),
    ("variance_explained_legacy", "variance explained (legacy)", "{:.4f}"),
    ("fvu", "FVU", "{:.4f}"),
    ("mse", "MSE", "{:.4g}"),
    ("cossim", "cosine(x, x̂)", "{:.4f}"),
    ("l2_ratio", "‖x̂‖/‖x‖", "{:.4f}"),
    ("relative_reconstruction_bias", "relative recon. bias", "{:.4f}"),
    ("l0", "L0", "{:.2f}"),
    ("dead_pct", "dead %", "{:.2f}"),
    ("dead_count", "dead", "{:d}"),
    ("never_fired_count", "never fired", "{:d}"),
    ("dense_count", "dense (>10%)", "{:d}"),
    ("absorption", "absorption (max dec. cos)", "{:.4f}"),
    ("tokens_seen", "tokens seen", "{:,d}"),
]


def format_value(key: str, fmt: str, metrics: dict[str, Any], not_measured: dict) -> str:
    if key in not_measured and key not in metrics:
        return "[dim]not measured[/]"
    value = metrics.get(key)
    if value is None:
        return "[dim]–[/]"
    if fmt == "ids":
        shown = ", ".join(str(i) for i in value[:8])
        return shown + (f" … (+{len(value) - 8})" if len(value) > 8 else "") or "none"
    return fmt.format(value)


def metrics_table(document: dict[str, Any]) -> Table:
    table = Table(title="saedoctor: SAE health metrics", show_lines=False)
    table.add_column("metric", style="bold")
    for entry in document["saes"]:
        table.add_column(entry["name"], justify="right")
    for key, label, fmt in ROWS:
        cells = [
            format_value(key, fmt, e["metrics"], e.get("not_measured", {}))
            for e in document["saes"]
        ]
        table.add_row(label, *cells)
    return table


def run_summary(document: dict[str, Any]) -> str:
    run = document["run"]
    model = run.get("model") or {}
    source = run.get("corpus") or run.get("activations_file")
    lines = [
        f"model: {model.get('name', 'none (cached activations)')}   data: {source}   "
        f"tokens counted: {run.get('tokens_counted', 0):,}   time: {run.get('wall_time_s')} s"
    ]
    for entry in document["saes"]:
        site = entry.get("site") or {}
        lines.append(f"  {entry['name']}: site {site.get('description', 'none')}")
    return "\n".join(lines)


def print_report(document: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(run_summary(document))
    console.print(metrics_table(document))
