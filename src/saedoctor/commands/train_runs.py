"""The runs `saedoctor train` is asked for: a preset, then a config file, then the flags
(`--set` included) layered on `TrainConfig()`; or a diagnosis report's prescriptions applied
to each SAE's own config, with the flags on top."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from saedoctor.errors import InputError

# A plan's fields that differ between SAEs of one run (one forward pass serves them all).
_PER_SAE = ("layers", "site", "layer_overrides", "preset")


def read_config_file(path: Path) -> dict[str, Any]:
    import tomllib

    if not path.is_file():
        raise InputError(f"--config {path}: no such file; expected a .json or .toml config")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"--config {path}: not valid {path.suffix or 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a table / object of training fields")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set FIELD=VALUE` items; VALUE is JSON when it parses as JSON, else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--set {item!r}: expected FIELD=VALUE (VALUE as JSON or text)")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def resolve_runs(preset: str | None, config: Path | None, from_prescription: Path | None,
                 select: list[str] | None, given: dict[str, Any]) -> list[tuple[Any, list]]:
    """(config, SAE specs) per run: one run unless prescribed SAEs need different settings."""
    from saedoctor.train.config import TrainConfig, preset_config, with_changes
    from saedoctor.train.prescription import plan_from_report
    from saedoctor.train.trainer import specs_for

    if from_prescription is not None:
        if preset or config:
            raise InputError("--from-prescription takes the SAE's own config: "
                             "drop --preset / --config (flags still override)")  # fmt: skip
        plans = plan_from_report(from_prescription, select)
        for plan in plans:
            _print_changes(plan)
            if given:
                plan.config = with_changes(plan.config, given, "flags").validate()
        return _group_plans(plans)
    if select:
        raise InputError("--sae selects SAEs of a --from-prescription report")
    cfg = preset_config(preset) if preset else TrainConfig()
    if config is not None:
        cfg = with_changes(cfg, read_config_file(config), f"--config {config}")
    cfg = with_changes(cfg, given, "flags").validate()
    return [(cfg, specs_for(cfg))]


def _print_changes(plan: Any) -> None:
    from saedoctor.progress import stderr_console as console

    console.print(f"[bold]{plan.entry}[/]: prescriptions applied to its training config")
    for c in plan.changes:
        console.print(f"  {c.field}: {c.old!r} → {c.new!r}  ({c.why})", highlight=False)
    if not plan.changes:
        console.print("  (no prescriptions: retraining with the same config)")
    for field, reason in plan.skipped:
        console.print(f"  skipped {field}: {reason}", highlight=False)


def _group_plans(plans: list[Any]) -> list[tuple[Any, list[Any]]]:
    """SAEs that share the run settings train together (one forward pass per batch)."""
    from saedoctor.sae.site import Site
    from saedoctor.train.config import RUN_FIELDS
    from saedoctor.train.trainer import SAESpec, sae_name

    groups: dict[str, tuple[Any, list[Any]]] = {}
    for plan in plans:
        cfg = plan.config
        key = json.dumps({k: getattr(cfg, k) for k in RUN_FIELDS if k not in _PER_SAE},
                         sort_keys=True, default=str)  # fmt: skip
        site = Site(cfg.layers[0], cfg.site)
        group = groups.setdefault(key, (cfg, []))
        name = sae_name(cfg, site)
        taken = {s.name for s in group[1]}
        if name in taken:
            name = f"{name}-{len(taken)}"
        group[1].append(SAESpec(name, site, cfg))
    return [(replace(cfg, layers=sorted({s.site.layer for s in specs})), specs)
            for cfg, specs in groups.values()]  # fmt: skip
