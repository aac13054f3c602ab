"""`saedoctor demo`: the guide's layer sweep on the embedded default, end to end.

Trains one SAE per layer (4, 10, 16, 22, 28 by default: the guide's layers) on
`python-docs@train` with the `general` preset, all from ONE forward pass per batch that
stops after the deepest block, diagnoses the five SAEs together on `python-docs@test`, prints
the guide's layer-by-layer table and writes the JSON and HTML reports. A finished training
run in the output folder with the same config is reused, so a second `demo` only diagnoses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from saedoctor import defaults
from saedoctor.progress import stderr_console as console

DEMO_LAYERS = (4, 10, 16, 22, 28)
# Transcoders: the first blocks, contiguous from 0, as circuit-tracer loads a set; batchtopk
# exports a threshold, which circuit-tracer's layout can hold (a bare top-k it cannot).
TRANSCODER_LAYERS = (0, 1, 2, 3)
TRANSCODER_CHANGES = {"kind": "transcoder", "skip": True, "architecture": "batchtopk"}
DEMO_TOKENS = 300_000
DEMO_EVAL_TOKENS = 60_000


def _reusable(out: Path, cfg: Any) -> dict[str, Path] | None:
    from saedoctor.train.trainer import SUMMARY_FILE

    summary_path = out / SUMMARY_FILE
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if summary.get("config") != cfg.to_dict():
        return None
    paths = {name: Path(info["path"]) for name, info in (summary.get("saes") or {}).items()}
    if not paths or not all((p / "cfg.json").is_file() for p in paths.values()):
        return None
    return paths


def _resumable(out: Path, cfg: Any) -> bool:
    """An interrupted demo with the same config continues from its checkpoint."""
    from saedoctor.errors import InputError
    from saedoctor.train.checkpoint import CHECKPOINT_FILE
    from saedoctor.train.trainer import config_from_checkpoint

    if not (out / CHECKPOINT_FILE).is_file():
        return False
    try:
        return config_from_checkpoint(out).to_dict() == cfg.to_dict()
    except InputError:
        return False


def _diagnose_resumable(opts: Any, run_json: Path) -> dict[str, Any]:
    """Diagnose and write `run_json`; an interrupted diagnosis (its state file beside
    `run_json`) is continued, like the training step."""
    from saedoctor.diagnose import diagnose_and_write
    from saedoctor.diagnose_state import DiagnoseInterrupted, state_path_for

    opts.resume = state_path_for(run_json).is_file()
    if opts.resume:
        console.print(f"[bold]demo[/]: continuing the interrupted diagnosis "
                      f"({state_path_for(run_json)})", highlight=False)  # fmt: skip
    try:
        return diagnose_and_write(opts, run_json)
    except DiagnoseInterrupted as err:
        raise err.with_hint("run the same `saedoctor demo` again to resume") from None


def run_demo(layers: list[int], tokens: int, eval_tokens: int, out: Path, quiet: bool = False,
             *, model: str = defaults.DEFAULT_MODEL,
             train_corpus: str = defaults.DEFAULT_TRAIN_CORPUS,
             eval_corpus: str = defaults.DEFAULT_EVAL_CORPUS, kind: str = "sae",
             **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """Train, diagnose, compare; returns the report. `model` / corpora / `overrides` (training
    fields) exist for tests and experiments: the demo itself is the embedded default."""
    from saedoctor.diagnose import DiagnoseOptions
    from saedoctor.report import compare as cmp
    from saedoctor.report.render import render
    from saedoctor.train.config import preset_config
    from saedoctor.train.trainer import train

    start = time.perf_counter()
    if kind == "transcoder":
        overrides = {**TRANSCODER_CHANGES, **overrides}
    cfg = preset_config("general", layers=list(layers), training_tokens=tokens, model=model,
                        dataset=train_corpus, **overrides).validate()  # fmt: skip
    train_dir = out / "saes"
    paths = _reusable(train_dir, cfg)
    resume = paths is None and _resumable(train_dir, cfg)
    if paths is None:
        what = "skip transcoders" if kind == "transcoder" else "SAEs"
        console.print(
            f"[bold]demo[/]: training {len(layers)} {cfg.architecture} {what} "
            f"(x{cfg.expansion_factor:g}, "
            f"k={cfg.top_k}) at layers {', '.join(map(str, layers))} on "
            f"{cfg.dataset}, {tokens:,} tokens, one forward pass per batch → {train_dir}",
            highlight=False,
        )
        result = train(cfg, train_dir, quiet=quiet, resume=resume)
        paths = result.sae_paths
    else:
        console.print(f"[bold]demo[/]: reusing the SAEs trained in {train_dir}")
    trained = time.perf_counter()
    console.print(f"[bold]demo[/]: diagnosing {len(paths)} SAEs on {eval_corpus} "
                  f"({eval_tokens:,} tokens)")  # fmt: skip
    model_opt = None if model == defaults.DEFAULT_MODEL else model
    run_json = out / "run.json"
    document = _diagnose_resumable(DiagnoseOptions(
        model=model_opt, saes=[str(p) for p in paths.values()], corpus=eval_corpus,
        tokens=eval_tokens, quiet=quiet), run_json)  # fmt: skip
    html = out / "report.html"
    from saedoctor.atomic import atomic_write_bytes

    atomic_write_bytes(html, render(document, "html").encode())
    comparison = cmp.compare_reports([document], [str(run_json)])
    from rich.console import Console

    from saedoctor.report.compare_tables import layer_table
    from saedoctor.report.terminal import show

    show(Console(), layer_table(comparison), "layer-by-layer summary (the guide's table)")
    best = (document.get("sweep") or {}).get("best")
    if best:
        console.print(f"best layer: {best}", highlight=False)
    for d in (document.get("sweep") or {}).get("diagnoses") or []:
        console.print(f"[bold]{d.get('title')}[/] ({d.get('severity')})", highlight=False)
    if kind == "transcoder":
        _hand_off(document, run_json, out)
    done = time.perf_counter()
    console.print(f"train {trained - start:.0f} s, diagnose {done - trained:.0f} s; "
                  f"report: {run_json}, HTML: {html}", highlight=False)  # fmt: skip
    return document


def _hand_off(document: dict[str, Any], run_json: Path, out: Path) -> None:
    """What circuit tracing takes: the exclusion list and mask, and the folded set."""
    from saedoctor.report.circuit_tracer_filter import write_exclusions

    tracing = out / "circuit_tracing"
    listed = write_exclusions(document, str(run_json), tracing, fold=True)
    trained = {str(e["site"]["layer"]) for e in document["saes"]}
    excluded = {layer: [f["id"] for f in feats] for layer, feats in listed["exclude"].items()
                if layer in trained}  # fmt: skip
    console.print(f"[bold]demo[/]: excluded always-on features per layer {excluded}; "
                  f"transcoders for circuit-tracer in {out / 'saes' / 'circuit_tracer'}, "
                  f"exclusion list, mask and folded set in {tracing}", highlight=False)  # fmt: skip
