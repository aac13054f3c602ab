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
from saedoctor.limits import top_k_fits
from saedoctor.sae.arch import TOPK_ARCHITECTURES
from saedoctor.train.config import ALIASES, ARCHITECTURES, TrainConfig, d_sae_for, with_changes

NOT_TRAINING = {
    "eval_tokens": "a `saedoctor diagnose --tokens` option, not a training setting",
    # the pre-flight's: how the SAE is wired to the model, not how it was trained
    "eval_site": "a `saedoctor diagnose --layer / --site` option, not a training setting",
    "eval_input_scale": "how activations are fed to the SAE, not a training setting",
    "eval_include_special": "a `saedoctor diagnose --include-special` option, not a training "
    "setting",
}
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
    cfg: TrainConfig, prescriptions: list[dict[str, Any]], source: str, d_in: int | None = None
) -> tuple[TrainConfig, list[Change], list[tuple[str, str]]]:
    """`cfg` with every prescription applied; returns it, the changes and the skipped ones.

    A prescription is skipped only when it is what makes the config invalid (with `d_in`, a
    top_k larger than the dictionary counts too). One that fails only because the config was
    already invalid waits for the others, since one of them may fix it (an expansion_factor
    below 1 raised to 1); if none does, the config's own fault is raised.
    """
    changes: list[Change] = []
    skipped: list[tuple[str, str]] = []
    pending = []
    for p in prescriptions:
        if not isinstance(p.get("field"), str):
            continue
        if p["field"] in NOT_TRAINING:
            skipped.append((p["field"], NOT_TRAINING[p["field"]]))
        else:
            pending.append(p)
    while pending:
        cfg, pending = _apply_each(cfg, pending, source, d_in, changes, skipped)
        if pending:
            cfg, pending = _apply_together(cfg, pending, source, d_in, changes, skipped)
    if (problem := _problem(cfg, d_in)) is not None:
        raise InputError(f"{source}: {problem}")
    return cfg, changes, skipped


def _apply_each(cfg: TrainConfig, pending: list[dict[str, Any]], source: str, d_in: int | None,
                changes: list[Change], skipped: list[tuple[str, str]]
                ) -> tuple[TrainConfig, list[dict[str, Any]]]:  # fmt: skip
    """Each prescription alone, again while any applies; returns those waiting on the base."""
    progress = True
    while pending and progress:
        progress, waiting = False, []
        for p in pending:
            new_cfg, error = _applied(cfg, [p], source, d_in)
            if error is None:
                cfg, progress = _record(cfg, new_cfg, [p], source, changes), True
            elif _problem(cfg, d_in) is not None:
                waiting.append(p)
            else:
                skipped.append((p["field"], error))
        pending = waiting
    return cfg, pending


def _apply_together(cfg: TrainConfig, pending: list[dict[str, Any]], source: str,
                    d_in: int | None, changes: list[Change], skipped: list[tuple[str, str]]
                    ) -> tuple[TrainConfig, list[dict[str, Any]]]:  # fmt: skip
    """Prescriptions that fix the base only together (a wider dictionary and a smaller k),
    else all but one of them (that one skipped); else none."""
    new_cfg, _ = _applied(cfg, pending, source, d_in)
    if _problem(new_cfg, d_in) is None:
        return _record(cfg, new_cfg, pending, source, changes), []
    for p in pending:
        rest = [q for q in pending if q is not p]
        new_cfg, error = _applied(cfg, rest, source, d_in)
        if rest and error is None:
            skipped.append((p["field"], _applied(new_cfg, [p], source, d_in)[1] or ""))
            return _record(cfg, new_cfg, rest, source, changes), []
    return cfg, []  # nothing fixes the base: the caller raises its fault


def _record(cfg: TrainConfig, new_cfg: TrainConfig, applied: list[dict[str, Any]], source: str,
            changes: list[Change]) -> TrainConfig:  # fmt: skip
    for p in applied:
        changes.append(_change(cfg, p))
        new_cfg, dropped = _without_l1_for_topk(new_cfg, p, source)
        changes += dropped
    return new_cfg


def _applied(
    cfg: TrainConfig, prescriptions: list[dict[str, Any]], source: str, d_in: int | None
) -> tuple[TrainConfig, str | None]:
    """`cfg` with these prescriptions set, and why it cannot be trained (None: it can)."""
    values = {}
    for p in prescriptions:
        key = _key(p["field"])
        values[key] = [int(p["new"])] if key == "layers" else p["new"]
    try:
        new_cfg = with_changes(cfg, values, source)
    except (InputError, TypeError, ValueError) as e:
        return cfg, str(e)
    return new_cfg, _problem(new_cfg, d_in)


def _problem(cfg: TrainConfig, d_in: int | None) -> str | None:
    """Why `cfg` cannot be trained (over a d_in-wide site when known), or None."""
    try:
        cfg.validate()
    except InputError as e:
        return str(e)
    if not d_in or cfg.architecture not in TOPK_ARCHITECTURES:
        return None
    d_sae = d_sae_for(cfg, d_in)
    if top_k_fits(cfg.top_k, d_sae):
        return None
    return (f"top_k={cfg.top_k} exceeds the dictionary size d_sae={d_sae} "
            f"(expansion_factor {cfg.expansion_factor} x d_in {d_in})")  # fmt: skip


def _key(field: str) -> str:
    return "layers" if field == "layer" else ALIASES.get(field, field)


def _change(cfg: TrainConfig, p: dict[str, Any]) -> Change:
    key = _key(p["field"])
    old = getattr(cfg, key, None)
    if key == "layers":
        old = old[0] if old else old
    return Change(p["field"], old, p["new"], str(p.get("why") or ""))


def _without_l1_for_topk(
    cfg: TrainConfig, p: dict[str, Any], source: str
) -> tuple[TrainConfig, list[Change]]:
    if p["field"] != "architecture" or p["new"] not in TOPK_ARCHITECTURES or cfg.l1_penalty <= 0:
        return cfg, []
    dropped = Change("l1_penalty", cfg.l1_penalty, 0.0, "TopK sets L0 with top_k: no L1 penalty")
    return with_changes(cfg, {"l1_penalty": 0.0}, source), [dropped]


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
        d_in = (entry.get("config") or {}).get("d_in")
        d_in = d_in if isinstance(d_in, int) and not isinstance(d_in, bool) else None
        cfg, changes, skipped = apply_prescriptions(base, prescriptions, source, d_in)
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
