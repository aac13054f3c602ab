"""`saedoctor train` and `saedoctor demo` (typer commands; `register(app)` adds them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from saedoctor.errors import InputError

EXIT_INTERRUPTED = 130


def register(app: typer.Typer) -> None:
    app.command(name="train")(train_command)
    app.command(name="demo")(demo_command)


# -- helpers --------------------------------------------------------------------------------
def _read_config_file(path: Path) -> dict[str, Any]:
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


def _parse_set(items: list[str]) -> dict[str, Any]:
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

    per_sae = ("layers", "site", "layer_overrides", "preset")
    groups: dict[str, tuple[Any, list[Any]]] = {}
    for plan in plans:
        cfg = plan.config
        key = json.dumps({k: getattr(cfg, k) for k in RUN_FIELDS if k not in per_sae},
                         sort_keys=True, default=str)  # fmt: skip
        site = Site(cfg.layers[0], cfg.site)
        group = groups.setdefault(key, (cfg, []))
        name = sae_name(cfg, site)
        taken = {s.name for s in group[1]}
        if name in taken:
            name = f"{name}-{len(taken)}"
        group[1].append(SAESpec(name, site, cfg))
    out = []
    for cfg, specs in groups.values():
        layers = sorted({s.site.layer for s in specs})
        from dataclasses import replace

        out.append((replace(cfg, layers=layers), specs))
    return out


def _summary_table(result: Any) -> None:
    from rich.table import Table

    from saedoctor.progress import stderr_console as console

    n_saes = len(result.summary["saes"])
    table = Table(title=f"trained {n_saes} SAE(s): {result.tokens:,} tokens, "
                  f"{result.steps} steps, {result.wall_s:.0f} s", title_justify="left")  # fmt: skip
    for col in ("SAE", "var. explained", "L0", "dead %", "always-on", "path"):
        table.add_column(col)
    # from the summary, not result.saes: with --distribute-layers other ranks hold some SAEs
    for name, entry in result.summary["saes"].items():
        health = entry.get("final") or {}
        ve, l0, dead = health.get("variance_explained"), health.get("l0"), health.get("dead_pct")
        table.add_row(name, "-" if ve is None else f"{ve:.3f}", "-" if l0 is None else f"{l0:.1f}",
                      "-" if dead is None else f"{dead:.1f}",
                      str(health.get("always_on_count", "-")), str(result.sae_paths.get(name, "")))
    console.print(table)
    if result.warnings:
        console.print(f"{len(result.warnings)} health warning(s) during training; see "
                      f"{result.out_dir}/train.json")  # fmt: skip


# -- saedoctor train --------------------------------------------------------------------------
def train_command(
    preset: Annotated[str | None, typer.Option(help="general | domain (docs/training.md)")] = None,
    config: Annotated[Path | None, typer.Option(help="a .json or .toml file of fields")] = None,
    from_prescription: Annotated[
        Path | None,
        typer.Option(help="a diagnose report: retrain its SAEs with their prescriptions applied"),
    ] = None,
    sae: Annotated[
        list[str] | None,
        typer.Option("--sae", help="with --from-prescription: only these SAEs (name or index)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="HF id or local dir; default: embedded")] = None,
    layer: Annotated[
        list[int] | None, typer.Option("--layer", help="block index (repeatable: one SAE each)")
    ] = None,
    site: Annotated[str | None, typer.Option(help="resid_post|resid_pre|mlp_out|attn_out")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "--corpus", help="training corpus")
    ] = None,
    tokens: Annotated[int | None, typer.Option(help="training tokens")] = None,
    context: Annotated[int | None, typer.Option(help="sequence length")] = None,
    batch_size: Annotated[int | None, typer.Option(help="sequences per micro-batch")] = None,
    gradient_accumulation: Annotated[int | None, typer.Option()] = None,
    architecture: Annotated[str | None, typer.Option(help="topk|batchtopk|relu|jumprelu")] = None,
    expansion_factor: Annotated[float | None, typer.Option(help="d_sae / d_model (>= 1)")] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    l1_penalty: Annotated[float | None, typer.Option()] = None,
    sparsity_penalty: Annotated[float | None, typer.Option(help="L0 penalty")] = None,
    diversity_loss_weight: Annotated[float | None, typer.Option()] = None,
    decoder_orthogonality_weight: Annotated[float | None, typer.Option()] = None,
    auxk_alpha: Annotated[float | None, typer.Option()] = None,
    dead_feature_threshold: Annotated[
        int | None, typer.Option(help="tokens without firing after which AuxK treats a latent dead")
    ] = None,
    b_dec_init: Annotated[str | None, typer.Option(help="mean|geometric_median|zeros")] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option(help="SAE matmuls: fp32 | bf16")] = None,
    device: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    monitor_every: Annotated[int | None, typer.Option(help="steps between health reports")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="steps; 0: on Ctrl-C only")] = None,
    log_to: Annotated[
        list[str] | None, typer.Option("--log-to", help="wandb | tensorboard (repeatable)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="FIELD=VALUE for any training field (repeatable)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="output directory: one SAE folder per layer")] = Path(
        "sae_runs/train"
    ),
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --out")] = False,
    keep_checkpoint: Annotated[bool, typer.Option(help="keep checkpoint.pt at the end")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the resolved config and stop")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the run summary (train.json) to stdout")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    distribute_layers: Annotated[
        bool, typer.Option(help="under torchrun: each rank trains its own share of the SAEs "
                           "(default: every rank trains all of them on its share of the tokens)"),
    ] = False,
) -> None:
    """Train SAEs (one per layer, one forward pass per batch) with a live health monitor.

    Under `torchrun --nproc_per_node N -m saedoctor train ...` the ranks split the forward
    pass and the tokens (or, with --distribute-layers, the SAEs); rank 0 writes."""
    from saedoctor.cli import handled_errors

    flags = {
        "model": model, "layers": layer or None, "site": site, "dataset": dataset,
        "training_tokens": tokens, "context": context, "batch_size": batch_size,
        "gradient_accumulation": gradient_accumulation, "architecture": architecture,
        "expansion_factor": expansion_factor, "top_k": top_k, "l1_penalty": l1_penalty,
        "sparsity_penalty": sparsity_penalty, "diversity_loss_weight": diversity_loss_weight,
        "decoder_orthogonality_weight": decoder_orthogonality_weight, "auxk_alpha": auxk_alpha,
        "dead_feature_threshold": dead_feature_threshold, "b_dec_init": b_dec_init,
        "learning_rate": learning_rate, "precision": precision, "device": device, "seed": seed,
        "monitor_every": monitor_every, "checkpoint_every": checkpoint_every,
        "log_to": log_to or None,
    }  # fmt: skip
    with handled_errors():
        given = {k: v for k, v in flags.items() if v is not None}
        given.update(_parse_set(set_ or []))
        if resume:
            _print_json(_resume(out, given or None, quiet, distribute_layers), as_json)
            return
        runs = _resolve_runs(preset, config, from_prescription, sae, given)
        if dry_run:
            for cfg, specs in runs:
                typer.echo(json.dumps({"config": cfg.to_dict(),
                                       "saes": [s.name for s in specs]}, indent=1))  # fmt: skip
            return
        for i, (cfg, specs) in enumerate(runs):
            target = out if len(runs) == 1 else out / f"run{i}"
            _print_json(_run(cfg, specs, target, quiet, keep_checkpoint, distribute_layers),
                        as_json)  # fmt: skip
        _leave_group()


def _leave_group() -> None:
    from saedoctor.distributed import finish

    finish()


def _is_main() -> bool:
    from saedoctor.distributed import world

    return world().is_main


def _print_json(result: Any, as_json: bool) -> None:
    if as_json and _is_main():
        summary = {k: v for k, v in result.summary.items() if k != "history"}
        typer.echo(json.dumps(summary, indent=1))


def _resolve_runs(preset: str | None, config: Path | None, from_prescription: Path | None,
                  select: list[str] | None, given: dict[str, Any]) -> list[tuple[Any, list]]:
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
        cfg = with_changes(cfg, _read_config_file(config), f"--config {config}")
    cfg = with_changes(cfg, given, "flags").validate()
    return [(cfg, specs_for(cfg))]


def _run(cfg: Any, specs: list, out: Path, quiet: bool, keep_checkpoint: bool,
         distribute_layers: bool = False) -> Any:  # fmt: skip
    from saedoctor.progress import stderr_console as console
    from saedoctor.train.trainer import TrainingInterrupted, train

    if _is_main():
        console.print(f"[bold]training[/] {', '.join(s.name for s in specs)} on {cfg.dataset} "
                      f"({cfg.training_tokens:,} tokens, model {cfg.model}) → {out}",
                      highlight=False)  # fmt: skip
    try:
        result = train(cfg, out, specs=specs, quiet=quiet, keep_checkpoint=keep_checkpoint,
                       distribute_layers=distribute_layers)  # fmt: skip
    except TrainingInterrupted as e:
        _interrupted(e, out)
    if _is_main():
        _summary_table(result)
    return result


def _interrupted(e: Exception, out: Path) -> None:
    if _is_main():
        typer.echo(f"saedoctor: {e}; resume with: saedoctor train --resume --out {out}", err=True)
    _leave_group()
    raise typer.Exit(EXIT_INTERRUPTED) from None


def _resume(out: Path, given: dict[str, Any] | None, quiet: bool,
            distribute_layers: bool = False) -> Any:  # fmt: skip
    from saedoctor.progress import stderr_console as console
    from saedoctor.train.trainer import TrainingInterrupted, train

    if given:
        raise InputError(f"--resume continues the run saved in {out} with its own config; "
                         f"drop {', '.join(sorted(given))}")  # fmt: skip
    from saedoctor.train.checkpoint import CHECKPOINT_FILE

    if not (out / CHECKPOINT_FILE).is_file():
        raise InputError(f"{out / CHECKPOINT_FILE}: no checkpoint to resume from (--out names "
                         "the folder of an interrupted `saedoctor train`)")  # fmt: skip
    if _is_main():
        console.print(f"[bold]resuming[/] the run in {out}")
    try:
        result = train(None, out, resume=True, quiet=quiet, distribute_layers=distribute_layers)
    except TrainingInterrupted as e:
        _interrupted(e, out)
    if _is_main():
        _summary_table(result)
    return result


# -- saedoctor demo ---------------------------------------------------------------------------
def demo_command(
    tokens: Annotated[int, typer.Option(help="training tokens per SAE (one shared stream)")] = (
        300_000
    ),
    eval_tokens: Annotated[int, typer.Option(help="tokens for the diagnosis")] = 40_000,
    layers: Annotated[str, typer.Option(help="comma-separated blocks")] = "4,10,16,22,28",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("sae_runs/demo"),
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """Train SAEs at the guide's layers on the embedded default, diagnose them, compare."""
    from saedoctor.cli import handled_errors
    from saedoctor.train.demo import run_demo

    with handled_errors():
        try:
            layer_list = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError as e:
            raise InputError(f"--layers {layers!r}: expected comma-separated integers") from e
        from saedoctor.train.trainer import TrainingInterrupted

        try:
            run_demo(layer_list, tokens, eval_tokens, out, quiet)
        except TrainingInterrupted as e:
            typer.echo(f"saedoctor: {e}; run the same `saedoctor demo` again to resume", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
