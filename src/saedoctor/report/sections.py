"""A report turned into format-neutral pieces (tables of text + status), so terminal, Markdown
and HTML show the same content and differ only in how they draw it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saedoctor.report.fields import (
    GRADED,
    LABELS,
    NOT_MEASURED,
    ROWS,
    evidence_text,
    format_metric,
    format_value,
    status_by_metric,
    statuses,
)
from saedoctor.thresholds import INTERVAL_LEVEL


@dataclass
class Cell:
    text: str
    status: str | None = None  # excellent|good|warning|critical|not measured: drives colour
    ids: tuple[int, ...] = ()  # feature ids the text names: the HTML links each to its card


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""  # one line under the table (units, abbreviations)


def run_lines(document: dict[str, Any]) -> list[str]:
    run = document["run"]
    model = run.get("model") or {}
    data = run.get("corpus") or run.get("activations_file") or "?"
    policy = (run.get("policy") or {}).get("name") or (
        "default" if any(e.get("grading") for e in document["saes"]) else "none (not graded)")
    counted = run.get("tokens_counted")
    lines = [
        f"model: {model.get('name', 'none (cached activations)')}",
        f"data: {data}" + (f" (compared with {run['compare_corpus']})"
                           if run.get("compare_corpus") else ""),
        (f"tokens counted: {counted:,}" if isinstance(counted, int) else "tokens counted: ?")
        + corpus_ended_text(run),
        *auto_tokens_line(run),
        f"grading policy: {policy}",
        f"created: {run.get('created', '?')}, wall time {run.get('wall_time_s', '?')} s",
    ]
    versions = run.get("versions") or {}
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if run.get("note"):
        lines.append(f"note: {run['note']}")
    return lines


def corpus_ended_text(run: dict[str, Any]) -> str:
    """' (the corpus ended before the 100,000 tokens asked for)', or ''."""
    if not run.get("corpus_ended"):
        return ""
    asked = (run.get("options") or {}).get("tokens")
    asked_text = f"the {asked:,} tokens asked for" if isinstance(asked, int) else "--tokens"
    return f" (the corpus ended before {asked_text})"


def auto_tokens_line(run: dict[str, Any]) -> list[str]:
    """`--tokens auto`: why the pass stopped where it did."""
    auto = run.get("tokens_auto")
    if not auto:
        return []
    return [f"tokens: auto (cap {auto['cap']:,}): {auto['reason']}"]


def metric_table(entry: dict[str, Any]) -> Table:
    """One row per metric the SAE has (or was asked for and could not measure)."""
    metrics, not_measured = entry["metrics"], entry.get("not_measured") or {}
    by_metric = status_by_metric(entry)
    graded_as = {info.get("source"): key for key, info in statuses(entry).items()
                 if info.get("source") and info.get("source") != key}
    intervals = (entry.get("intervals") or {}).get("metrics") or {}
    level = (entry.get("intervals") or {}).get("level", INTERVAL_LEVEL)
    # A report written before intervals (or from published figures) keeps its four columns.
    shown = [f"{level:.0%} interval"] if intervals else []
    table = Table(["metric", "value", *shown, "status", "note"])
    for row in ROWS:
        if row.key not in metrics and row.key not in not_measured:
            continue
        value = metrics.get(row.key)
        if value is None and row.key in not_measured:
            table.rows.append([Cell(row.label), Cell(NOT_MEASURED, NOT_MEASURED),
                               *[Cell("") for _ in shown], Cell(NOT_MEASURED, NOT_MEASURED),
                               Cell(not_measured[row.key])])  # fmt: skip
            continue
        status = by_metric.get(row.key)
        note = f"graded as {LABELS.get(graded_as[row.key], graded_as[row.key])}" \
            if row.key in graded_as else ""
        interval = [Cell(interval_text(intervals.get(row.key), row.fmt)
                         + reach_text(entry, row.key)) for _ in shown]  # fmt: skip
        ids = tuple(value) if row.fmt == "ids" and isinstance(value, list) else ()
        table.rows.append([Cell(row.label), Cell(format_value(value, row.fmt), status, ids),
                           *interval, Cell(status or "", status), Cell(note)])
    method = (entry.get("intervals") or {}).get("method")
    if method:
        table.note = f"intervals: {method}"
        _drop_empty_last_column(table)  # room for the intervals on an 80-column terminal
    return table


def _drop_empty_last_column(table: Table) -> None:
    if all(not row[-1].text for row in table.rows):
        table.headers.pop()
        for row in table.rows:
            row.pop()


def interval_text(interval: list[float] | None, fmt: str) -> str:
    """'0.9101–0.9145', or '' when the metric has none."""
    if not interval:
        return ""
    low, high = (format_value(v, fmt) for v in interval)
    return low if low == high else f"{low}–{high}"


def reach_text(entry: dict[str, Any], key: str) -> str:
    """', reaches warning' when the graded interval crosses a band edge: the status beside it
    is then a verdict to hold loosely ("good, interval reaches warning")."""
    graded = next((info for info in statuses(entry).values()
                   if (info.get("source") or "") == key), {})  # fmt: skip
    reaches = graded.get("reaches") or []
    return f", reaches {' / '.join(reaches)}" if reaches else ""


def nonfinite_warning(entry: dict[str, Any]) -> str | None:
    """One line when rows or positions were left out as NaN/inf, else None (clean run)."""
    nf = entry.get("nonfinite") or {}
    counts = [(nf.get("activation_rows_skipped") or 0, "activation rows"),
              (nf.get("sae_output_rows_skipped") or 0, "rows with a non-finite SAE output"),
              (nf.get("downstream_positions_skipped") or 0, "positions of loss recovered / KL")]
    parts = [f"{n:,} {what}" for n, what in counts if n]
    if not parts:
        return None
    first = nf.get("first_positions") or []
    where = ", ".join(f"{seq}:{pos}" for seq, pos in first[:5])
    more = " …" if len(first) > 5 else ""
    return ("warning: non-finite values (NaN/inf) skipped: " + "; ".join(parts)
            + (f" (first at sequence:position {where}{more})" if where else ""))


def explanation_table(entry: dict[str, Any]) -> Table | None:
    """Why each always-on feature is always on (bias direction, antipodal pair, tokens)."""
    explanations = entry.get("always_on_explanations") or []
    if not explanations:
        return None
    table = Table(["feature", "density", "mean act.", "cos(dec, mean x)", "share of ‖x̂‖²",
                   "antipodal partner", "strongest tokens", "weakest tokens"])
    for ex in explanations:
        partner = ex.get("antipodal_partner")
        cos = format_value(ex.get("decoder_cos_with_mean"), "f2")
        if ex.get("is_bias_direction"):
            cos += " (bias direction)"
        table.rows.append([
            Cell(str(ex["feature"]), ids=(ex["feature"],)),
            Cell(percent(ex.get("density"), 1), "critical"),
            Cell(format_value(ex.get("mean_activation"), "g4")),
            Cell(cos, "warning" if ex.get("is_bias_direction") else None),
            Cell(percent(ex.get("reconstruction_share"), 1)),
            Cell(f"{partner['feature']} (enc. cos {format_value(partner.get('encoder_cos'), 'f2')})"
                 if partner else "none", ids=(partner["feature"],) if partner else ()),
            Cell(tokens_text(ex.get("strongest_tokens"))),
            Cell(tokens_text(ex.get("weakest_tokens"))),
        ])
    return table


def tokens_text(tokens: list[dict[str, Any]] | None, limit: int = 3) -> str:
    if not tokens:
        return "–"
    return ", ".join(f"{t.get('token', '')!r} ({format_value(t.get('activation'), 'g4')})"
                     for t in tokens[:limit])


def percent(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def prescription_table(prescriptions: list[dict[str, Any]]) -> Table | None:
    if not prescriptions:
        return None
    table = Table(["field", "old", "new", "why", "evidence"])
    for p in prescriptions:
        old = p.get("old")
        table.rows.append([Cell(p["field"]), Cell("unset" if old is None else str(old)),
                           Cell(str(p["new"])), Cell(p.get("why") or ""),
                           Cell(evidence_text(p))])
    return table


def corpus_table(entry: dict[str, Any], main_corpus: str | None = None) -> Table | None:
    """Main corpus vs compare corpus (compare minus main), the training-data-mismatch view."""
    comparison = entry.get("corpus_comparison")
    if not comparison:
        return None
    other = comparison.get("metrics") or {}
    deltas = comparison.get("deltas") or {}
    shown = set(deltas) | {k for k in (*GRADED, "variance_explained") if k in other}
    keys = [row.key for row in ROWS if row.key in shown and row.key != "always_on_features"]
    table = Table(["metric", main_corpus or "main corpus",
                   comparison.get("corpus") or "compare corpus", "Δ"],
                  note=corpus_summary(comparison))
    for key in keys:
        delta = deltas.get(key)
        table.rows.append([Cell(LABELS.get(key, key)),
                           Cell(format_metric(key, entry["metrics"].get(key))),
                           Cell(format_metric(key, other.get(key))),
                           Cell("–" if delta is None else f"{delta:+.4g}")])
    return table


def corpus_summary(comparison: dict[str, Any]) -> str:
    jsd = comparison.get("density_jsd")
    appeared, disappeared = comparison.get("appeared") or [], comparison.get("disappeared") or []
    tokens = comparison.get("tokens_counted")
    return (
        f"{comparison.get('corpus') or 'compare corpus'}"
        + (f" ({tokens:,} tokens)" if isinstance(tokens, int) else "")
        + f": density JSD {format_value(jsd, 'f4')} bits; {len(appeared)} features appeared "
        f"(alive only there), {len(disappeared)} disappeared (alive only on the main corpus)"
    )


SET_TITLE = "transcoder set, spliced in together"
_SET_ROWS = ("loss_recovered", "ce_clean", "ce_sae", "ce_ablated", "kl_sae", "kl_ablated",
             "kl_score")  # fmt: skip


def transcoder_set_table(document: dict[str, Any]) -> Table | None:
    """The replacement model's loss (every transcoder of the run spliced in at once), beside
    nothing else: each member's own splice is in its section."""
    from saedoctor.report.fields import LABELS, format_metric

    tset = document.get("transcoder_set")
    if not tset:
        return None
    metrics = tset.get("metrics") or {}
    labels = {**LABELS, "ce_sae": "CE with the set", "kl_sae": "KL with the set",
              "kl_ablated": "KL all ablated", "ce_ablated": "CE all ablated"}  # fmt: skip
    rows = [[Cell(labels.get(k, k)), Cell(format_metric(k, metrics.get(k)))] for k in _SET_ROWS]
    layers = ", ".join(str(layer) for layer in tset.get("layers") or [])
    note = (f"layers {layers}: each transcoder reads the stream the ones below it changed; "
            "ablated = all those MLPs zeroed")  # fmt: skip
    return Table(["metric", "value"], rows, note)


CLT_TITLE = "cross-layer transcoder"


def clt_tables(document: dict[str, Any]) -> list[tuple[str, Table]]:
    """Per cross-layer transcoder: each layer's MLP output reconstructed from every encoder
    at or below it, its error share, and the loss with every layer spliced in at once."""
    from saedoctor.report.fields import format_metric

    out = []
    for item in document.get("cross_layer_transcoder") or []:
        keys = ("variance_explained", "error_share")
        rows = [[Cell(str(layer["layer"]))] + [Cell(format_metric(k, layer.get(k))) for k in keys]
                for layer in item["layers"]]  # fmt: skip
        metrics = item.get("metrics") or {}
        spliced = ", ".join(f"{k} {format_metric(k, metrics.get(k))}"
                            for k in ("loss_recovered", "kl_sae"))  # fmt: skip
        note = (f"pooled error share {format_metric('error_share', item.get('error_share'))}; "
                f"every layer spliced at once: {spliced if metrics else 'not measured'}")
        title = f"{CLT_TITLE}: {item['name']}"
        out.append((title, Table(["layer", "variance explained", "error share"], rows, note)))
    return out
