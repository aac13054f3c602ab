"""`saedoctor train --from-prescription run.json`: the training config an SAE came from,
with its diagnosis's prescriptions applied.

The base config is the SAE's own trainer metadata when saedoctor trained it
(`config.metadata.trainer`); otherwise it is rebuilt from what the report knows (architecture,
d_sae / d_in, k, layer, site, model, training corpus and tokens, and trainer fields under the
usual aliases). Each prescription `{field, old, new, why}` then sets its field; fields that
are not training settings (`eval_tokens`, a `diagnose` option) are skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from saedoctor.errors import InputError
from saedoctor.train.config import ALIASES, ARCHITECTURES, TrainConfig, with_changes

NOT_TRAINING = {"eval_tokens": "a `saedoctor diagnose --tokens` option, not a training setting"}
_QUICK_NAMES = {"k": "top_k", "dead_tokens_threshold": "dead_feature_threshold",
                "lr": "learning_rate"}  # fmt: skip
_IGNORED = {"name", "version", "layer", "site", "d_sae", "input_scale", "batch_tokens",
            "effective_learning_rate"}


@dataclass
class Change:
    field: str
    old: Any
    new: Any
    why: str


@dataclass
class Planned:
    """One SAE of the report: its entry name, base config, prescribed config, the changes."""

    entry: str
    base: TrainConfig
    config: TrainConfig
    changes: list[Change]
    skipped: list[tuple[str, str]]


def base_config(entry: dict[str, Any], run: dict[str, Any]) -> TrainConfig:
    """The training config the report's SAE entry came from (as far as it says)."""
    config = entry.get("config") or {}
    metadata = config.get("metadata") or {}
    trainer = metadata.get("trainer") if isinstance(metadata.get("trainer"), dict) else {}
    name = entry.get("name", "?")
    arch = str(config.get("architecture") or trainer.get("architecture") or "topk")
    if arch not in ARCHITECTURES:
        raise InputError(f"SAE {name}: architecture {arch!r} cannot be trained by saedoctor "
                         f"(expected one of {', '.join(ARCHITECTURES)})")  # fmt: skip
    known = {f.name for f in fields(TrainConfig)}
    changes: dict[str, Any] = {"architecture": arch}
    d_in, d_sae = config.get("d_in"), config.get("d_sae")
    if d_in and d_sae:
        changes["expansion_factor"] = _tidy(d_sae / d_in)
    if config.get("k"):
        changes["top_k"] = int(config["k"])
    for key, value in trainer.items():
        key = _QUICK_NAMES.get(key, ALIASES.get(key, key))
        if key in known and key not in _IGNORED and value is not None:
            changes[key] = value
    if trainer.get("name") == "saedoctor.quick_topk" and trainer.get("batch_tokens"):
        context = int(metadata.get("context") or 128)
        changes["batch_size"] = max(1, int(trainer["batch_tokens"]) // context)
        changes["context"] = context
    site = entry.get("site") or {}
    layer = trainer.get("layer", site.get("layer"))
    if layer is None:
        raise InputError(f"SAE {name}: the report names no layer for it")
    changes["layers"] = [int(layer)]
    changes["site"] = trainer.get("site") or site.get("kind") or "resid_post"
    model = trainer.get("model") or config.get("model_name") or (run.get("model") or {}).get(
        "name")  # fmt: skip
    if model:
        changes["model"] = model
    if metadata.get("training_corpus"):
        changes["dataset"] = metadata["training_corpus"]
    if metadata.get("training_tokens") and "training_tokens" not in trainer:
        changes["training_tokens"] = int(metadata["training_tokens"])
    changes.pop("layer_overrides", None)
    return with_changes(TrainConfig(), changes, f"SAE {name} config")


def apply_prescriptions(
    cfg: TrainConfig, prescriptions: list[dict[str, Any]], source: str
) -> tuple[TrainConfig, list[Change], list[tuple[str, str]]]:
    """`cfg` with every prescription applied; returns it, the changes and the skipped ones."""
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    for p in prescriptions:
        field, new, why = p.get("field"), p.get("new"), str(p.get("why") or "")
        if not isinstance(field, str):
            continue
        if field in NOT_TRAINING:
            skipped.append((field, NOT_TRAINING[field]))
            continue
        key = "layers" if field == "layer" else ALIASES.get(field, field)
        old = getattr(cfg, key, None)
        value = [int(new)] if key == "layers" else new
        try:
            cfg = with_changes(cfg, {key: value}, source).validate()
        except InputError as e:
            skipped.append((field, str(e)))
            continue
        changes.append(Change(field, old[0] if key == "layers" and old else old, new, why))
        if field == "architecture" and new in ("topk", "batchtopk") and cfg.l1_penalty > 0:
            changes.append(Change("l1_penalty", cfg.l1_penalty, 0.0,
                                  "TopK sets L0 with top_k: no L1 penalty"))  # fmt: skip
            cfg = with_changes(cfg, {"l1_penalty": 0.0}, source)
    return cfg.validate(), changes, skipped


def plan_from_report(path: str | Path, select: list[str] | None = None) -> list[Planned]:
    """One plan per SAE of a diagnose report (or the `select`ed names / indices)."""
    from saedoctor.report.document import read_report

    return plan_from_document(read_report(path), select, str(path))


def plan_from_document(document: dict[str, Any], select: list[str] | None = None,
                       source: str = "report") -> list[Planned]:  # fmt: skip
    entries = document.get("saes") or []
    plans = []
    for entry in _select(entries, select, source):
        base = base_config(entry, document.get("run") or {})
        prescriptions = entry.get("prescriptions") or []
        cfg, changes, skipped = apply_prescriptions(base, prescriptions, source)
        plans.append(Planned(entry.get("name", "?"), base, cfg, changes, skipped))
    return plans


def _select(entries: list[dict], select: list[str] | None, source: str) -> list[dict]:
    if not entries:
        raise InputError(f"{source}: the report holds no SAE")
    if not select:
        return entries
    chosen = []
    names = [e.get("name", "") for e in entries]
    for key in select:
        if key.isdigit() and int(key) < len(entries):
            chosen.append(entries[int(key)])
            continue
        hits = [e for e, n in zip(entries, names, strict=True) if n == key or n.startswith(key)]
        if not hits:
            raise InputError(f"--sae {key!r}: not in {source} (SAEs: {', '.join(names)})")
        chosen.extend(hits)
    return chosen


def _tidy(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(float(x), 6)
