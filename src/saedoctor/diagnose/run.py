"""The main job: stream activations once, feed every SAE, measure every health metric,
grade it, and write the report atomically."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from saedoctor import distributed
from saedoctor.diagnose.entries import run_metadata, sae_entry
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.passes import run_on_activations, run_on_model
from saedoctor.diagnose.preflight import with_preflight
from saedoctor.diagnose.units import ensure_default_sae, load_saes
from saedoctor.errors import InputError


def diagnose(
    opts: DiagnoseOptions | None = None, *, loaded_model: Any = None, **overrides: Any
) -> dict[str, Any]:
    """Run the diagnosis and return the graded report document (SPEC §5).

    `loaded_model`: an already-built `saedoctor.activations.model.LoadedModel` (e.g. shared
    with `train`, or built from a config in a benchmark) instead of loading `opts.model`;
    `opts.model`, `dtype`, `device_map` and `quantize` then play no part in loading, token ids
    go to `opts.device`, and each SAE moves to its site's device.

    `overrides`: `DiagnoseOptions` fields as keywords, applied on top of `opts` (or of the
    defaults when `opts` is None)."""
    from saedoctor.health import apply_health, load_policy

    opts = _options(opts, overrides)
    opts.validate()
    distributed.setup_diagnose(opts)
    policy = load_policy(opts.policy)  # a bad policy fails before minutes of streaming
    torch.manual_seed(opts.seed)
    if not opts.saes and opts.activations is None:
        opts.saes = [str(ensure_default_sae(opts))]
    start = time.perf_counter()
    units = load_saes(opts)
    if not units:
        raise InputError("--sae: expected at least one SAE path")
    if opts.activations is not None:
        info = run_on_activations(opts, units)
    else:
        info = run_on_model(opts, units, loaded_model, policy)
    document = {
        "schema": "saedoctor.report/1",
        "run": run_metadata(opts, info, 0.0),
        "saes": [with_preflight(sae_entry(u, info, opts), info, u.name) for u in units],
    }
    if info.get("transcoder_set") is not None:
        document["transcoder_set"] = info["transcoder_set"]
    if info.get("cross_layer_transcoder"):
        document["cross_layer_transcoder"] = info["cross_layer_transcoder"]
    apply_health(document, policy)
    document["run"]["wall_time_s"] = round(time.perf_counter() - start, 3)
    if not opts.keep_state:
        _discard_state(info.get("state_file"))
    return document


def _options(opts: DiagnoseOptions | None, overrides: dict[str, Any]) -> DiagnoseOptions:
    if opts is None:
        return DiagnoseOptions(**overrides)
    # the same object when nothing is overridden: diagnose_and_write reads back its state_file
    return replace(opts, **overrides) if overrides else opts


def diagnose_and_write(opts: DiagnoseOptions, out: str | Path) -> dict[str, Any]:
    """`diagnose`, then the report JSON to `out`. The main pass's state is saved beside it,
    `<out>.partial.safetensors`, and deleted only once the report is written: an interrupt,
    or a failed write, leaves it for `resume=True`."""
    from saedoctor.diagnose_state import state_path_for
    from saedoctor.report.document import write_report

    opts.state_file = opts.state_file or str(state_path_for(out))
    opts.keep_state = True
    document = diagnose(opts)
    write_report(document, out)
    _discard_state(opts.state_file)
    return document


def _discard_state(path: str | Path | None) -> None:
    from saedoctor.diagnose_state import discard

    discard(path)
