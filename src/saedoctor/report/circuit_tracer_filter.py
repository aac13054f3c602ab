"""`saedoctor filter --format circuit-tracer`: a transcoder set's always-on features in the
shape circuit-tracer consumes — `{layer: [ids]}` keyed by the set's layer index, with each
feature's density, and the same as a boolean mask `[n_layers, d_transcoder]`.

Never a union across layers: feature 294 of layer 3 and feature 294 of layer 7 are different
features (docs/circuit_tracing.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saedoctor.errors import InputError
from saedoctor.report.always_on import always_on_features
from saedoctor.report.filter import FILTER_SCHEMA, model_of
from saedoctor.thresholds import ALWAYS_ON_DENSITY

MASK_TENSOR = "exclude"


@dataclass
class Exclusions:
    """What a circuit-tracing run should leave out of its graph."""

    model: str | None
    threshold: float
    n_layers: int
    d_transcoder: int
    layers: dict[int, list[dict[str, Any]]]  # layer -> [{"id", "density"}], every layer listed

    def mask(self) -> torch.Tensor:
        """`[n_layers, d_transcoder]`, True where a feature is excluded."""
        out = torch.zeros(self.n_layers, self.d_transcoder, dtype=torch.bool)
        for layer, features in self.layers.items():
            out[layer, [f["id"] for f in features]] = True
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": FILTER_SCHEMA,
            "format": "circuit-tracer",
            "model": self.model,
            "threshold": self.threshold,
            "n_layers": self.n_layers,
            "d_transcoder": self.d_transcoder,
            "mask": {"file": "exclude_mask.safetensors", "tensor": MASK_TENSOR,
                     "shape": [self.n_layers, self.d_transcoder]},  # fmt: skip
            "exclude": {str(layer): ids for layer, ids in sorted(self.layers.items())},
        }


def circuit_tracer_exclusions(document: dict[str, Any], source: str) -> Exclusions:
    """The always-on features of every transcoder of a report; InputError (naming `source`)
    when it holds none, or when they do not form one set (two at a layer, mixed widths)."""
    entries = [e for e in document["saes"] if (e.get("config") or {}).get("kind") == "transcoder"]
    if not entries:
        raise InputError(f"{source}: no transcoder in this report; --format circuit-tracer "
                         "needs a report of transcoders (kind: transcoder)")  # fmt: skip
    widths = {e["config"]["d_sae"] for e in entries}
    if len(widths) > 1:
        raise InputError(f"{source}: transcoders of different widths {sorted(widths)}; "
                         "expected one transcoder set")  # fmt: skip
    layers: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        layer = (entry.get("site") or {}).get("layer")
        if layer is None or layer in layers:
            why = "has no layer" if layer is None else f"shares layer {layer} with another"
            raise InputError(f"{source}: transcoder {entry['name']} {why}; expected one "
                             "transcoder per layer")  # fmt: skip
        layers[layer] = [f.as_json() for f in always_on_features(entry)]
    n_layers = _n_layers(document, max(layers) + 1)
    layers = {layer: layers.get(layer, []) for layer in range(n_layers)}
    threshold = (document["run"].get("options") or {}).get("always_on_threshold", ALWAYS_ON_DENSITY)
    return Exclusions(model_of(document), threshold, n_layers, widths.pop(), layers)


def _n_layers(document: dict[str, Any], needed: int) -> int:
    """The model's block count when the report knows it (circuit-tracer's sets span it)."""
    model = document["run"].get("model") or {}
    n = model.get("n_layers")
    return n if isinstance(n, int) and n >= needed else needed


def fold_plan(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Per transcoder, in layer order: its file, layer, and `{feature: E[a_f]}` for its
    always-on features, `E[a_f]` = density × mean activation when active (the mean over all
    counted tokens, zeros included)."""
    plan = []
    for entry in document["saes"]:
        if (entry.get("config") or {}).get("kind") != "transcoder":
            continue
        density = entry.get("feature_density") or []
        when_active = entry.get("feature_mean_activation") or []
        means = {f.id: density[f.id] * when_active[f.id] for f in always_on_features(entry)
                 if f.id < min(len(density), len(when_active))}  # fmt: skip
        plan.append({"path": entry["path"], "layer": entry["site"]["layer"],
                     "mean_activation": means})  # fmt: skip
    return sorted(plan, key=lambda item: item["layer"])


def write_exclusions(document: dict[str, Any], source: str, out: str | Path, *,
                     fold: bool = False) -> dict[str, Any]:  # fmt: skip
    """`out/exclude.json`, `out/exclude_mask.safetensors` and, with `fold`, `out/folded/`
    (the set with its always-on features folded); the folder appears whole or not at all.
    Returns what exclude.json holds."""
    from safetensors.torch import save_file

    from saedoctor.atomic import atomic_directory

    exclusions = circuit_tracer_exclusions(document, source)
    result = exclusions.as_json()
    with atomic_directory(out, "--out") as tmp:
        save_file({MASK_TENSOR: exclusions.mask()}, str(tmp / result["mask"]["file"]))
        if fold:
            result["folded"] = _write_folded(document, tmp / "folded")
        (tmp / "exclude.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _write_folded(document: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Each transcoder of the report, reloaded from its file, with its always-on features
    folded at their measured mean activation; written in circuit-tracer's layout."""
    from saedoctor.sae.fold import fold_features
    from saedoctor.sae.loaders import load_sae, save_circuit_tracer

    plan = fold_plan(document)
    folded = [fold_features(load_sae(item["path"], layer=item["layer"]),
                            item["mean_activation"], item["path"]) for item in plan]  # fmt: skip
    save_circuit_tracer(folded, directory)
    return {"directory": "folded",
            "layers": {str(i["layer"]): sorted(i["mean_activation"]) for i in plan}}  # fmt: skip
