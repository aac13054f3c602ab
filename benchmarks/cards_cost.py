"""What feature cards cost `saedoctor diagnose`: wall time, bounded memory, HTML size and open time.

    nice -n 0 .venv/bin/python benchmarks/cards_cost.py [--repeats 5] [--tokens 100000]
        [--small 100000] [--large 1000000] [--html-tokens 20000] [--html-saes trained]
        [--opens 5] [--parts wall,memory,html] [--quick] [--out DIR]

Issue 15's targets, one part each, all in `<out>/cards_cost.json` (+ `.md`):

1. `wall`: `saedoctor diagnose` as `make demo` runs it (embedded default model and SAE,
   every default option: 100 000 tokens, the pre-flight, downstream loss on the first
   16 384 tokens, the always-on explanations) with `--cards 64` against `--cards 0` (no card
   state at all), each run a fresh child process, alternating A B A B ... after one
   unrecorded warm-up round, `--repeats` runs each. Every run's wall time and peak RSS; the
   ratio cards / no cards taken pair by pair. Target: median ratio <= 1.15.
2. `memory`: peak RSS of `diagnose --cards 64 --no-downstream` at `--small` and `--large`
   tokens of `python-code@train` (diagnose_memory.py's runs; downstream off so the large run
   fits in minutes). Target: large / small <= 1.10. A `--cards 0` run at `--small` tokens is
   recorded as a reference (what the card state itself weighs). One run per size: a peak is
   a property of the shapes, not a timing.
3. `html`: 5 SAEs on the default model: the embedded default at block 10, and TopK SAEs of
   its shape at blocks `OTHER_LAYERS`, by default trained by `saedoctor train` on
   `TRAIN_TOKENS` tokens (8 steps: near their initialisation, but with b_dec at the data
   mean as a real trainer starts, so they have few dense features and a card count like a
   real SAE's; `--html-saes random` takes random tied SAEs with b_dec 0 instead, which
   have ~75 dense features each and so ~2x the cards). One `diagnose --cards 64
   --no-downstream` on `--html-tokens` tokens writes the HTML report. Records its size,
   the size of the same report rendered without its cards, and the card count, then
   opens it `--opens` times in headless Chromium (playwright, the chromium on PATH as
   tests/helpers.py finds it; a fresh browser context per open, after one unrecorded
   warm-up open): the time from navigation start until the page has loaded and every card
   (`details[id^=card-]`) and every plot is in the document. Targets: < 15 MB, < 5 s.
   The same report is also rendered with exactly `CARDS` cards per SAE (the sampled ones
   first: the issue's "5 SAEs x 64 cards"), and that page is sized and opened the same way;
   the default selection adds the uncertain and dense features' cards on top. Where the
   bytes go (card markup, context JSON, histograms) is recorded for both.

A run of some `--parts` keeps the other parts of the result file already there, each part
stamped with the date and command of the run that measured it (`measured_by`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _proc
import _results
from diagnose_memory import CORPUS as MEMORY_CORPUS
from diagnose_memory import peak_rss_mib

NAME = "cards_cost"
CARDS = 64  # the default --cards
WALL_TARGET = 1.15  # cards / no cards, median of the paired ratios
MEMORY_TARGET = 1.10  # peak RSS large / small
HTML_MB_TARGET = 15.0
OPEN_S_TARGET = 5.0
OTHER_LAYERS = (4, 16, 22, 28)  # besides the default SAE's block 10: 5 SAEs in all
TRAIN_TOKENS = 8_192  # of the SAEs at OTHER_LAYERS (--html-saes trained)
CHROMIUM_NAMES = ("chromium", "chromium-browser")  # as tests/helpers.py looks for it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
OPEN_TIMEOUT_MS = 120_000
PARTS = ("wall", "memory", "html")
QUICK = {"tokens": 1_024, "small": 1_000, "large": 4_000, "html_tokens": 1_024}


# -- 1. wall time -------------------------------------------------------------------------------
def diagnose_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saedoctor", "diagnose", *extra, "--out", str(out)]


def card_count(report: Path) -> int:
    """Cards in a diagnose report, over every SAE entry."""
    document = json.loads(report.read_text())
    return sum(len((e.get("cards") or {}).get("features") or []) for e in document["saes"])


def wall(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The default diagnose with and without cards, alternated, each run a fresh child."""
    tokens = [] if args.tokens is None else ["--tokens", str(args.tokens)]
    arms = {"cards": ["--cards", str(CARDS)], "no_cards": ["--cards", "0"]}
    rss: dict[str, list[float]] = {arm: [] for arm in arms}
    cards_seen: dict[str, set[int]] = {arm: set() for arm in arms}
    streamed: set[int] = set()  # tokens each run processed (the corpus may hold fewer)
    count = {"n": 0}

    def arm_fn(arm: str) -> Callable[[], float]:
        def run() -> float:
            count["n"] += 1
            report = workdir / f"wall-{count['n']}-{arm}.json"
            cmd = diagnose_cmd(report, *tokens, *arms[arm])
            done = _proc.check(_proc.run_measured(cmd, log=report.with_suffix(".log")),
                               f"diagnose ({arm})")  # fmt: skip
            rss[arm].append(done.peak_rss_mib)
            cards_seen[arm].add(card_count(report))
            streamed.add(json.loads(report.read_text())["run"]["tokens_processed"])
            return done.wall_s

        return run

    def show(arm: str, r: int, seconds: float) -> None:
        print(f"  wall run {r} {arm:>8}: {seconds:7.1f} s, peak RSS {rss[arm][-1]:7.1f} MiB",
              flush=True)  # fmt: skip

    fns = {arm: arm_fn(arm) for arm in arms}
    warmup = 0 if args.quick else 1
    runs = _results.alternate(fns, args.repeats, warmup=warmup, on_run=show)
    for arm in arms:  # the warm-up round's RSS is not a recorded run
        rss[arm] = rss[arm][warmup:]
    reason = _results.fewer_reason(args.repeats, args.quick)
    ratios = _results.paired_ratios(runs["cards"], runs["no_cards"])
    ratio = _results.timing(ratios, allow_fewer=reason, digits=4)
    if cards_seen["no_cards"] != {0} or 0 in cards_seen["cards"]:
        raise SystemExit(f"cards per report: {cards_seen}; expected none without and some with")
    return {
        "command_cards": _shown(diagnose_cmd(Path("OUT"), *tokens, *arms["cards"])),
        "command_no_cards": _shown(diagnose_cmd(Path("OUT"), *tokens, *arms["no_cards"])),
        "tokens": args.tokens if args.tokens is not None else "default (100000)",
        "tokens_processed": sorted(streamed),
        "warmup_rounds": warmup,
        "cards_per_report": sorted(cards_seen["cards"]),
        "cards_s": _results.timing(runs["cards"], allow_fewer=reason, digits=2),
        "no_cards_s": _results.timing(runs["no_cards"], allow_fewer=reason, digits=2),
        "ratio": ratio,
        "cards_peak_rss_mib": _results.timing(rss["cards"], allow_fewer=reason, digits=1),
        "no_cards_peak_rss_mib": _results.timing(rss["no_cards"], allow_fewer=reason, digits=1),
        "target": WALL_TARGET,
        "ok": ratio["median"] <= WALL_TARGET,
    }


def _shown(cmd: Sequence[str]) -> str:
    """A child's command as a user would type it (paths in the checkout made relative)."""
    return " ".join(["saedoctor", *cmd[3:]]).replace(str(_results.REPO) + "/", "")


# -- 2. memory ----------------------------------------------------------------------------------
def memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Peak RSS with cards at two token counts (and without cards at the smaller one)."""
    from _fixtures import default_or_random_sae

    sae, sae_note = default_or_random_sae(workdir)
    runs: dict[str, dict[str, Any]] = {}
    plan = [("cards", args.small), ("cards", args.large), ("no_cards", args.small)]
    for arm, tokens in plan:
        folder = workdir / f"memory-{arm}"
        folder.mkdir(exist_ok=True)
        cards = CARDS if arm == "cards" else 0
        peak, seconds = peak_rss_mib(tokens, [sae], folder, extra=("--cards", str(cards)))
        found = card_count(folder / f"run-{tokens}.json")
        runs[f"{arm}_{tokens}"] = {"cards": cards, "tokens": tokens,
                                   "peak_rss_mib": round(peak, 1),
                                   "wall_s_one_run": round(seconds, 1),
                                   "cards_in_report": found}  # fmt: skip
        print(f"  memory {arm:>8} {tokens:>9,} tokens: peak RSS {peak:7.1f} MiB "
              f"({seconds:.0f} s, {found} cards)", flush=True)  # fmt: skip
    large = runs[f"cards_{args.large}"]["peak_rss_mib"]
    small = runs[f"cards_{args.small}"]["peak_rss_mib"]
    ratio = large / small
    return {"corpus": MEMORY_CORPUS, "sae": sae_note, "downstream": False, "cards": CARDS,
            "small": args.small, "large": args.large, "runs": runs, "ratio": round(ratio, 4),
            "card_state_mib_at_small": round(small - runs[f"no_cards_{args.small}"]
                                             ["peak_rss_mib"], 1),
            "target": MEMORY_TARGET, "ok": ratio <= MEMORY_TARGET}  # fmt: skip


# -- 3. HTML ------------------------------------------------------------------------------------
def random_saes(layers: Sequence[int], workdir: Path) -> list[Path]:
    """Random TopK SAEs of the default's shape (576 -> 4608, k 32, resid_post) at `layers`,
    unit-norm decoder rows and a tied encoder, saved natively."""
    import torch

    from saedoctor import defaults
    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import SAE, SAEConfig
    from saedoctor.sae.site import Site

    d_in = 576  # SmolLM2-135M
    paths = []
    for layer in layers:
        cfg = SAEConfig("topk", d_in, d_in * defaults.DEFAULT_EXPANSION, k=defaults.DEFAULT_K,
                        site=Site(layer, defaults.DEFAULT_SITE_KIND))  # fmt: skip
        sae = SAE(cfg)
        gen = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            w_dec = torch.randn(sae.W_dec.shape, generator=gen)
            sae.W_dec.copy_(torch.nn.functional.normalize(w_dec, dim=1))
            sae.W_enc.copy_(sae.W_dec.T)
        paths.append(save_sae(sae, workdir / f"random-{layer}"))
    return paths


def trained_saes(layers: Sequence[int], workdir: Path) -> tuple[list[Path], str]:
    """SAEs at `layers` from one short `saedoctor train` (its every other option default)."""
    out = workdir / "train"
    cmd = [sys.executable, "-m", "saedoctor", "train",
           *[a for layer in layers for a in ("--layer", str(layer))],
           "--tokens", str(TRAIN_TOKENS), "--checkpoint-every", "0", "--quiet",
           "--out", str(out)]  # fmt: skip
    done = _proc.check(_proc.run_measured(cmd, log=workdir / "train.log"), "saedoctor train")
    found = sorted((p.parent for p in out.glob("L*/cfg.json")),
                   key=lambda p: int(p.name[1:].split("-")[0]))  # fmt: skip
    if len(found) != len(layers):
        raise SystemExit(f"saedoctor train wrote {found}, expected one SAE per {list(layers)}")
    note = (
        f"TopK x8 k32 SAEs at blocks {list(layers)} trained by `"
        f"{_shown(cmd).replace(str(out), 'OUT')}` ({done.wall_s:.0f} s)"
    )
    return found, note


def other_saes(args: argparse.Namespace, workdir: Path) -> tuple[list[Path], str]:
    if args.html_saes == "trained":
        return trained_saes(OTHER_LAYERS, workdir)
    note = (
        "random TopK SAEs of the default's shape (tied unit-norm rows, b_dec 0) at blocks "
        f"{list(OTHER_LAYERS)}"
    )
    return random_saes(OTHER_LAYERS, workdir), note


def html(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One 5-SAE report's HTML: its size, its cards, and how long Chromium takes to open it;
    then the same report with exactly `CARDS` cards per SAE."""
    from _fixtures import default_or_random_sae

    default, default_note = default_or_random_sae(workdir)
    others, others_note = other_saes(args, workdir)
    saes = [default, *others]
    report, page = workdir / "html-run.json", workdir / "report.html"
    cmd = diagnose_cmd(report, "--quiet", "--no-downstream", "--tokens", str(args.html_tokens),
                       "--cards", str(CARDS), *[a for s in saes for a in ("--sae", str(s))],
                       "--html", str(page))  # fmt: skip
    done = _proc.check(_proc.run_measured(cmd, log=workdir / "html-run.log"), "diagnose (html)")
    document = json.loads(report.read_text())
    default_page = page_figures(page, document, args)
    print(f"  html: {default_page['size_mb']:.2f} MB, {default_page['cards']} cards "
          f"({done.wall_s:.0f} s to diagnose and render)", flush=True)  # fmt: skip
    trimmed = cards_per_entry(document, CARDS)
    trimmed_file = workdir / f"report-{CARDS}.html"
    from saedoctor.report.html import render_html

    trimmed_file.write_text(render_html(trimmed))
    exact_page = page_figures(trimmed_file, trimmed, args)
    print(f"  html with {CARDS} cards per SAE: {exact_page['size_mb']:.2f} MB", flush=True)
    pages = (default_page, exact_page)
    return {
        "saes": {"default (block 10)": default_note, "others": others_note},
        "command": _shown(cmd).replace(str(workdir) + "/", ""),
        "tokens": args.html_tokens, "diagnose_and_render_s_one_run": round(done.wall_s, 1),
        "plotly_js_mb": round(plotly_bytes() / 1e6, 3),
        "why_counts": why_counts(document),
        "default_selection": default_page,
        f"exactly_{CARDS}_per_sae": {**exact_page, "how": EXACT_HOW},
        "targets": {"size_mb": HTML_MB_TARGET, "open_s": OPEN_S_TARGET},
        "ok": all(p["ok"] for p in pages),
    }  # fmt: skip


EXACT_HOW = ("the same report JSON with each entry's cards cut to the first CARDS by reason "
             "(sampled, then uncertain, dense, always-on), rendered by render_html")  # fmt: skip
WHY_ORDER = ("sample", "uncertain", "dense", "always_on")


def cards_per_entry(document: dict[str, Any], n: int) -> dict[str, Any]:
    """A copy of the report with `n` cards per entry, sampled features first."""
    trimmed = json.loads(json.dumps(document))
    for entry in trimmed["saes"]:
        block = entry.get("cards") or {}
        rank = {why: i for i, why in enumerate(WHY_ORDER)}
        features = sorted(block.get("features") or [],
                          key=lambda c: min(rank.get(w, len(rank)) for w in c["why"] or ["?"]))
        block["features"] = features[:n]  # fmt: skip
    return trimmed


def page_figures(page: Path, document: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Size, card count, bytes by part, and open times of one rendered page."""
    text = page.read_text()
    anchors = len(re.findall(r'<details class="card" id="card-\d+-\d+"', text))
    per_entry = {e["name"]: len((e.get("cards") or {}).get("features") or [])
                 for e in document["saes"]}  # fmt: skip
    if anchors != sum(per_entry.values()):
        raise SystemExit(f"{anchors} card elements in {page.name}, {per_entry} cards in the JSON")
    size = page.stat().st_size
    bare = without_cards_bytes(document)
    opened = open_times(page, anchors, args)
    reason = _results.fewer_reason(args.opens, args.quick)
    open_s = _results.timing(opened["ready_s"], allow_fewer=reason, digits=3)
    return {
        "size_bytes": size, "size_mb": round(size / 1e6, 3),
        "size_mb_without_cards": round(bare / 1e6, 3),
        "bytes_per_card": round((size - bare) / max(anchors, 1)),
        "card_bytes_by_part": bytes_by_part(text),
        "cards": anchors, "cards_per_sae": per_entry,
        "open": {"ready_s": open_s,
                 "load_event_s": _results.timing(opened["load_s"], allow_fewer=reason, digits=3),
                 "wall_s_from_python": _results.timing(opened["wall_s"], allow_fewer=reason,
                                                       digits=3),
                 "browser_launch_s_one_run": round(opened["launch_s"], 2),
                 "chromium": opened["chromium"], "console_errors": opened["errors"],
                 "warmup_opens": 1, "ready_when": READY_WHEN},
        "ok": size / 1e6 < HTML_MB_TARGET and open_s["median"] < OPEN_S_TARGET,
    }  # fmt: skip


PART_PATTERNS = {
    "card_elements": r'<details class="card".*?</details>',
    "of_which_histograms": r'<svg class="hist".*?</svg>',
    "of_which_logit_lens": r'<div class="lens">.*?</table></div>',
    "context_json": r'<script type="application/json" class="card-data">.*?</script>',
    "list_items": r"<li data-card=.*?</li>",
}


def bytes_by_part(text: str) -> dict[str, int]:
    """UTF-8 bytes of the page's card parts (histograms and lens tables lie inside cards)."""
    return {part: sum(len(m.encode()) for m in re.findall(pattern, text, re.S))
            for part, pattern in PART_PATTERNS.items()}  # fmt: skip


def without_cards_bytes(document: dict[str, Any]) -> int:
    """The size of the same report's HTML with every entry's cards removed."""
    from saedoctor.report.html import render_html

    document = json.loads(json.dumps(document))
    for entry in document["saes"]:
        entry.pop("cards", None)
    return len(render_html(document).encode())


def why_counts(document: dict[str, Any]) -> dict[str, int]:
    """How many cards each reason selected, over every entry (a card may have several)."""
    counts: dict[str, int] = {}
    for entry in document["saes"]:
        for card in (entry.get("cards") or {}).get("features") or []:
            for why in card["why"]:
                counts[why] = counts.get(why, 0) + 1
    return dict(sorted(counts.items()))


def plotly_bytes() -> int:
    from plotly.offline import get_plotlyjs

    return len(get_plotlyjs().encode())


READY_WHEN = ("document.readyState is 'complete' (load event) and every card "
              "(details[id^=card-]) and every plot's svg (.sd-plot .main-svg) is in the page; "
              "ready_s is performance.now() then (ms since navigation start, polled every "
              "animation frame)")  # fmt: skip
READY_JS = """n => {
  if (document.readyState !== 'complete') return false;
  if (document.querySelectorAll('details[id^=card-]').length !== n) return false;
  const plots = document.querySelectorAll('.sd-plot');
  if (document.querySelectorAll('.sd-plot .main-svg').length < plots.length) return false;
  return performance.now();
}"""
LOAD_JS = "() => performance.getEntriesByType('navigation')[0].loadEventEnd"


def open_times(page_file: Path, cards: int, args: argparse.Namespace) -> dict[str, Any]:
    """Open the page `args.opens` times (after one warm-up open) in fresh browser contexts."""
    from playwright.sync_api import sync_playwright

    chromium = next((p for name in CHROMIUM_NAMES if (p := shutil.which(name))), None)
    if chromium is None:
        raise SystemExit("no chromium on PATH: `make setup` installs it "
                         "(scripts/ensure-chromium.sh)")  # fmt: skip
    out: dict[str, Any] = {"ready_s": [], "load_s": [], "wall_s": [], "errors": [],
                           "chromium": chromium}  # fmt: skip
    with sync_playwright() as pw:
        start = time.perf_counter()
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        out["launch_s"] = time.perf_counter() - start
        out["chromium"] = f"{chromium} {browser.version}"
        try:
            for i in range(args.opens + 1):
                ready, load, seconds, errors = open_once(browser, page_file, cards)
                out["errors"] += errors
                if i == 0:
                    continue  # warm-up: the browser's first page pays one-off start-up costs
                out["ready_s"].append(ready)
                out["load_s"].append(load)
                out["wall_s"].append(seconds)
                print(f"  open {i}: ready {ready:.2f} s (load event {load:.2f} s)", flush=True)
        finally:
            browser.close()
    return out


def open_once(browser: Any, page_file: Path, cards: int) -> tuple[float, float, float, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        start = time.perf_counter()
        page.goto(page_file.as_uri(), wait_until="commit", timeout=OPEN_TIMEOUT_MS)
        handle = page.wait_for_function(READY_JS, arg=cards, polling="raf",
                                        timeout=OPEN_TIMEOUT_MS)  # fmt: skip
        seconds = time.perf_counter() - start
        ready_ms = float(handle.json_value())
        load_ms = float(page.evaluate(LOAD_JS))
        return ready_ms / 1000, load_ms / 1000, seconds, errors
    finally:
        context.close()


def kept_parts(folder: Path, rerun: Sequence[str], quick: bool) -> dict[str, Any]:
    """The parts of the result file already in `folder` that this run does not measure, each
    stamped with the run that did (its date, command and versions)."""
    path = folder / f"{NAME}.json"
    if quick or not path.exists():
        return {}
    previous = json.loads(path.read_text())
    stamp = {key: previous.get(key) for key in ("date", "command", "versions")}
    return {part: {"measured_by": stamp, **previous[part]}
            for part in PARTS if part not in rerun and part in previous}  # fmt: skip


# -- the result -----------------------------------------------------------------------------------
def markdown(payload: dict[str, Any]) -> str:
    lines = ["| part | figure | median (min–max) | target | ok |", "|---|---|---|---|---|"]

    def row(part: str, what: str, block: dict[str, Any], fmt: str, target: str, ok: bool) -> None:
        lines.append(f"| {part} | {what} | {block['median']:{fmt}} ({block['min']:{fmt}}–"
                     f"{block['max']:{fmt}}) | {target} | {'yes' if ok else 'NO'} |")  # fmt: skip

    if "wall" in payload:
        w = payload["wall"]
        row("wall", "diagnose, cards / no cards", w["ratio"], ".3f", f"≤ {WALL_TARGET}", w["ok"])
        row("wall", "diagnose --cards 64, s", w["cards_s"], ".1f", "", True)
        row("wall", "diagnose --cards 0, s", w["no_cards_s"], ".1f", "", True)
    if "memory" in payload:
        m = payload["memory"]
        lines.append(f"| memory | peak RSS {m['large']:,} / {m['small']:,} tokens, cards on | "
                     f"{m['ratio']:.3f} (one run each) | ≤ {MEMORY_TARGET} | "
                     f"{'yes' if m['ok'] else 'NO'} |")  # fmt: skip
    if "html" in payload:
        for key in ("default_selection", f"exactly_{CARDS}_per_sae"):
            h = payload["html"].get(key)
            if h is None:
                continue
            what = f"{h['cards']} cards over {len(h['cards_per_sae'])} SAEs"
            lines.append(f"| html | size, {what} | {h['size_mb']:.2f} MB | < {HTML_MB_TARGET} MB"
                         f" | {'yes' if h['size_mb'] < HTML_MB_TARGET else 'NO'} |")  # fmt: skip
            ready = h["open"]["ready_s"]
            row("html", f"open in Chromium until ready ({what}), s", ready, ".2f",
                f"< {OPEN_S_TARGET}", ready["median"] < OPEN_S_TARGET)  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    started = time.time()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=_results.MIN_RUNS,
                   help="wall-time runs per arm (after one warm-up round)")  # fmt: skip
    p.add_argument("--tokens", type=int, default=None,
                   help="--tokens of the wall-time runs (default: diagnose's own)")  # fmt: skip
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--html-tokens", type=int, default=20_000)
    p.add_argument(
        "--html-saes",
        choices=("trained", "random"),
        default=None,
        help="the 4 SAEs besides the default (default: trained; --quick: random)",
    )
    p.add_argument("--opens", type=int, default=_results.MIN_RUNS,
                   help="timed opens of the HTML in Chromium (after one warm-up open)")  # fmt: skip
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    _results.add_arguments(p)
    args = p.parse_args()
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if unknown := sorted(set(parts) - set(PARTS)):
        p.error(f"unknown parts {unknown}")
    if args.quick:
        args.tokens, args.small, args.large = QUICK["tokens"], QUICK["small"], QUICK["large"]
        args.html_tokens = QUICK["html_tokens"]
        args.repeats = args.opens = _results.QUICK_RUNS
    args.html_saes = args.html_saes or ("random" if args.quick else "trained")
    steps = {"wall": wall, "memory": memory, "html": html}
    folder_out = _results.out_dir(args)
    payload: dict[str, Any] = {"cards": CARDS, **kept_parts(folder_out, parts, args.quick)}
    with tempfile.TemporaryDirectory(prefix="cards-cost-") as tmp:
        for part in parts:
            print(f"{part}:", flush=True)
            folder = Path(tmp) / part
            folder.mkdir()
            payload[part] = {**steps[part](args, folder),
                             "measured_by": {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                             "command": _results.command()}}  # fmt: skip
    payload["ok"] = all(payload[part]["ok"] for part in PARTS if part in payload)
    print(markdown(payload), end="")
    _results.write_result(NAME, payload, folder_out, started, quick=args.quick,
                          markdown=markdown(payload))  # fmt: skip


if __name__ == "__main__":
    main()
