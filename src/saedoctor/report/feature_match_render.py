"""Drawing a feature comparison (report/feature_compare.py): the one-sentence summary, the
JSON document, a terminal table and Markdown."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from saedoctor.metrics.feature_match import HUNGARIAN, FeatureMatch
from saedoctor.report.feature_compare import Counterpart, FeatureComparison, SideFlags
from saedoctor.report.markdown import md_escape

FEATURE_MATCH_SCHEMA = "saedoctor.feature_match/1"
METHOD_NAMES = {HUNGARIAN: "Hungarian", "best_match": "chunked best-match"}
# Pair-cosine bands shown in the table: a shared pair sits in the top one or two.
COS_BANDS = (0.9, 0.7, 0.5)
SHOWN_IDS = 20  # ids listed in the terminal and Markdown per list; the JSON has them all
FLAG_WORDS = {"always_on": "always-on", "dead": "dead"}


def summary(cmp: FeatureComparison) -> str:
    """'B shares 83.1 % of A's features (cos ≥ 0.7); PW-MCC 0.861 (Hungarian, 4608 × 4608)'."""
    m = cmp.match
    mcc = f"PW-MCC {m.pw_mcc:.3f}" if m.pw_mcc_exact else f"PW-MCC ≤ {m.pw_mcc:.3f}"
    return (f"B shares {100 * m.shared_fraction_a:.1f} % of A's features "
            f"(cos ≥ {m.threshold:g}); {mcc} ({METHOD_NAMES[m.method]}, {m.n_a} × {m.n_b})")


def as_json(cmp: FeatureComparison) -> dict[str, Any]:
    m = cmp.match
    flags = None
    if cmp.flags_a is not None and cmp.flags_b is not None:
        flags = {"a": _flags_json(cmp.flags_a), "b": _flags_json(cmp.flags_b)}
    return {
        "schema": FEATURE_MATCH_SCHEMA,
        "summary": summary(cmp),
        "a": _side(cmp.a.source, cmp.a.d_in, m.n_a),
        "b": _side(cmp.b.source, cmp.b.d_in, m.n_b),
        "method": m.method,
        "threshold": m.threshold,
        "n_pairs": len(m.pair_cos),
        "n_shared": m.n_shared,
        "shared_fraction_a": m.shared_fraction_a,
        "shared_fraction_b": m.shared_fraction_b,
        "shared_fraction": m.shared_fraction,
        "pw_mcc": m.pw_mcc,
        "pw_mcc_exact": m.pw_mcc_exact,
        "mean_best_cos_a": float(m.best_cos_a.mean()),
        "mean_best_cos_b": float(m.best_cos_b.mean()),
        "pair_cos_bands": cos_bands(m),
        "a_only": m.a_only.tolist(),
        "b_only": m.b_only.tolist(),
        "flags": flags,
        "pairs": {"a": m.pair_a.tolist(), "b": m.pair_b.tolist(),
                  "cos": [round(float(c), 6) for c in m.pair_cos]},  # fmt: skip
        "wall_s": round(cmp.wall_s, 3),
    }


def _side(source: str, d_in: int, d_sae: int) -> dict[str, Any]:
    return {"source": source, "d_in": d_in, "d_sae": d_sae}


def _flags_json(side: SideFlags) -> dict[str, Any]:
    def item(c: Counterpart) -> dict[str, Any]:
        return {"id": c.feature, "partner": c.partner, "cos": c.cos, "partner_flag": c.partner_flag}

    return {"entry": side.entry, "always_on": [item(c) for c in side.always_on],
            "dead": [item(c) for c in side.dead]}  # fmt: skip


def cos_bands(m: FeatureMatch) -> dict[str, int]:
    """How many matched pairs fall in each cosine band ('≥ 0.9', '0.7–0.9', ..., '< 0.5')."""
    edges = [np.inf, *COS_BANDS, -np.inf]
    out = {}
    for high, low in zip(edges, edges[1:], strict=False):
        label = f"≥ {low:g}" if high == np.inf else f"< {high:g}" if low == -np.inf \
            else f"{low:g}–{high:g}"
        out[label] = int(((m.pair_cos >= low) & (m.pair_cos < high)).sum())
    return out


def rows(cmp: FeatureComparison) -> list[tuple[str, str]]:
    """The table's (label, value) rows, shared by the terminal and Markdown."""
    m = cmp.match
    out = [
        ("A", f"{cmp.a.source} ({m.n_a} features)"),
        ("B", f"{cmp.b.source} ({m.n_b} features)"),
        ("method", f"{METHOD_NAMES[m.method]} ({len(m.pair_cos)} matched pairs)"),
        (f"shared (cos ≥ {m.threshold:g})", f"{m.n_shared}: {_pct(m.shared_fraction_a)} of A, "
                                             f"{_pct(m.shared_fraction_b)} of B"),
        ("PW-MCC", f"{m.pw_mcc:.3f}" + ("" if m.pw_mcc_exact else " (upper bound)")),
        ("mean best cos", f"A→B {m.best_cos_a.mean():.3f}, B→A {m.best_cos_b.mean():.3f}"),
        ("pair cosines", ", ".join(f"{k}: {v}" for k, v in cos_bands(m).items())),
        ("A only (died, if B is later)", _ids(m.a_only.tolist())),
        ("B only (born, if B is later)", _ids(m.b_only.tolist())),
    ]
    for name, side in (("A", cmp.flags_a), ("B", cmp.flags_b)):
        if side is not None:
            out += [(f"{FLAG_WORDS[f]} in {name}", flag_text(side.of(f), f))
                    for f in FLAG_WORDS]  # fmt: skip
    return out


def flag_text(items: list[Counterpart], flag: str) -> str:
    """'3: 2 with a counterpart (1 always-on there too), none for 1: 99; pairs 12→40 (0.93),
    57→8 (0.81, not always-on there)'."""
    if not items:
        return "none"
    kept = [c for c in items if c.partner is not None]
    lost = [c.feature for c in items if c.partner is None]
    same = sum(c.partner_flag == flag for c in kept)
    text = f"{len(items)}: {len(kept)} with a counterpart ({same} {FLAG_WORDS[flag]} there too)"
    text += f", none for {_ids(lost)}" if lost else ""
    if kept:
        text += "; pairs " + ", ".join(_pair(c, flag) for c in kept[:SHOWN_IDS]) + _more(len(kept))
    return text


def _pair(c: Counterpart, flag: str) -> str:
    there = "" if c.partner_flag == flag else \
        f", {FLAG_WORDS[c.partner_flag] if c.partner_flag else 'not ' + FLAG_WORDS[flag]} there"
    return f"{c.feature}→{c.partner} ({c.cos:.2f}{there})"


def _ids(ids: list[int]) -> str:
    if not ids:
        return "none"
    return f"{len(ids)}: " + ", ".join(str(i) for i in ids[:SHOWN_IDS]) + _more(len(ids))


def _more(n: int) -> str:
    return f", … ({n - SHOWN_IDS} more)" if n > SHOWN_IDS else ""


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def terminal(cmp: FeatureComparison, console: Console | None = None) -> None:
    console = console or Console()
    console.print(Text(summary(cmp), style="bold"))
    table = Table(title="feature matching", title_justify="left", show_header=False)
    table.add_column("", style="bold", overflow="fold")
    table.add_column("", overflow="fold")
    for label, value in rows(cmp):
        table.add_row(Text(label), Text(value))  # Text: ids and paths are not rich markup
    console.print(table)


def markdown(cmp: FeatureComparison) -> str:
    lines = ["# saedoctor feature matching", "", md_escape(summary(cmp)), "",
             "| | |", "|---|---|"]  # fmt: skip
    lines += [f"| {md_escape(label)} | {md_escape(value)} |" for label, value in rows(cmp)]
    return "\n".join(lines) + "\n"
