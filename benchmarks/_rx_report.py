"""The prescription benchmark's Markdown tables, from its result payload only."""

from __future__ import annotations

from typing import Any


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.0f}"


def interval(pair: list[float | None] | None, digits: int = 3) -> str:
    if not pair or pair[0] is None:
        return "n/a"
    return f"[{fmt(pair[0], digits)}, {fmt(pair[1], digits)}]"


def verdict_row(rule: str, key: str, v: dict[str, Any]) -> str:
    if "baseline" not in v:
        return f"| {rule} | {key} | {v.get('metric')} | | | | | {v['verdict']} | |"
    base, arm = v["baseline"], v["arm"]
    change = ", ".join(f"{k}={_short(x)}" for k, x in (v.get("change") or {}).items())
    mark = _mark(v)
    return (f"| {rule} | {key}{mark}: {change} | {v['metric']} | {fmt(base['mean'])} "
            f"{interval(base['interval'])} | {fmt(arm['mean'])} {interval(arm['interval'])} | "
            f"{fmt(v['delta'])} {interval(v['interval'])} | {v['verdict']} | "
            f"{', '.join(v.get('worse') or []) or '-'} |")  # fmt: skip


def _short(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


HEAD = ("| rule | change | metric | baseline mean [95 %] | arm mean [95 %] | paired Δ [95 %] "
        "| verdict | band drops |\n|---|---|---|---|---|---|---|---|")  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Seeds: {len(result['seeds'])}; training tokens per arm: "
             f"{result['budget']['train']:,}; held-out tokens: {result['budget']['eval']:,} "
             f"(loss recovered on the first {result['budget']['downstream']:,}).", "",
             "## Rules", "", HEAD]  # fmt: skip
    for rule, block in result["verdicts"].items():
        for key, v in block.items():
            lines.append(verdict_row(rule, key, v))
    for miss in result.get("not_fired") or []:
        lines.append(f"\n{miss['rule']} did not fire on {miss['case']} seed {miss['seed']} "
                     f"(fired: {', '.join(miss['fired_instead']) or 'nothing'})")  # fmt: skip
    if result.get("missing"):
        lines.append(f"\nNot yet measured: {', '.join(result['missing'])}.")
    if result.get("guide"):
        lines += _guide(result["guide"])
    if result.get("mismatch_story"):
        lines += ["", "## Data-mismatch story", "", _story(result["mismatch_story"])]
    return "\n".join(lines) + "\n"


def _guide(guide: dict[str, Any]) -> list[str]:
    lines = ["", "## The guide's recommendations (vs the general preset, block 10)", "", HEAD]
    for key, v in guide["recommendations"].items():
        lines.append(verdict_row("guide", key, v))
    for key, v in guide["domain"].items():
        lines.append(verdict_row("domain (python-code)", key, v))
    for key, v in (guide.get("per_layer") or {}).items():
        lines.append(verdict_row(f"block {guide.get('late_block')}", key, v))
    lines += ["", f"expansion_factor 0.25: `{guide['expansion_below_one']['refused']['error']}`"]
    return lines


def _story(story: dict[str, Any]) -> str:
    rows = ["| SAE | seed | loss recovered docs | loss recovered code | VE docs | VE code "
            "| density JSD [95 %] | data_mismatch |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, seeds in story["rows"].items():
        for seed, r in enumerate(seeds):
            fired = f"{r['severity']}" if r["fired"] else "-"
            rows.append(
                f"| {label} | {seed} | {fmt(r['main']['loss_recovered'])} | "
                f"{fmt(r['compare']['loss_recovered'])} | {fmt(r['main']['variance_explained'])}"
                f" | {fmt(r['compare']['variance_explained'])} | {fmt(r['density_jsd'])} "
                f"{interval(r['density_jsd_interval'])} | {fired} |")  # fmt: skip
    return "\n".join(rows)


# -- docs/prescriptions.md: the same tables, each figure a checked marker ------------------------
FILE = "prescriptions.json"
DIGITS = {"always_on_count": ".2f", "dead_pct": ".2f", "l0": ".1f", "absorption": ".4f"}


def fig(key: str, fmt: str) -> str:
    """One figure marker; `benchmarks/figures.py --update` fills its text from the result."""
    return f"<!-- fig {FILE} {key} {fmt} --><!-- /fig -->"


def _cells(path: str, v: dict[str, Any]) -> str:
    f = DIGITS.get(v["metric"], ".3f")
    return " | ".join([
        fig(f"{path}.verdict", "str"),
        fig(f"{path}.baseline.mean", f), fig(f"{path}.arm.mean", f),
        f"{fig(f'{path}.delta', f)} [{fig(f'{path}.interval[0]', f)}, "
        f"{fig(f'{path}.interval[1]', f)}]",
    ])  # fmt: skip


def fig_tables(result: dict[str, Any]) -> str:
    """The rule table and the guide table of docs/prescriptions.md, as figure markers."""
    lines = ["| rule | change | metric | verdict | baseline | arm | paired Δ [95 %] |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for rule, block in result["verdicts"].items():
        for key, v in block.items():
            if "baseline" not in v:
                continue
            mark = _mark(v)
            path = f'verdicts.{rule}["{key}"]'
            lines.append(f"| `{rule}` | {key}{mark} | {v['metric']} | {_cells(path, v)} |")
    guide = result.get("guide") or {}
    lines += ["", "| recommendation | metric | verdict | reference | with it | "
              "paired Δ [95 %] |", "|---|---|---|---|---|---|"]  # fmt: skip
    for key, v in (guide.get("recommendations") or {}).items():
        path = f'guide.recommendations["{key}"]'
        lines.append(f"| {key} | {v['metric']} | {_cells(path, v)} |")
    for key, v in (guide.get("domain") or {}).items():
        path = f'guide.domain["{key}"]'
        lines.append(f"| {key} (python-code) | {v['metric']} | {_cells(path, v)} |")
    for key, v in (guide.get("per_layer") or {}).items():
        path = f'guide.per_layer["{key}"]'
        lines.append(f"| {key} (block {guide.get('late_block')}, vs the preset there) | "
                     f"{v['metric']} | "
                     f"{_cells(path, v)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _mark(v: dict[str, Any]) -> str:
    if v.get("prescribed", True):
        return ""
    # a retired arm's key already says "(retired)"
    return "" if v.get("retired") else " (not prescribed)"


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    results = Path(__file__).parent / "results" / FILE
    sys.stdout.write(fig_tables(json.loads(results.read_text())))
