"""`saedoctor train`: its training flags are `TrainConfig`'s command-line fields
(saedoctor.options), each defaulting to "not given" so that a preset, then a config file,
then the given flags are layered (commands/train_runs.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from saedoctor.commands.exit_status import EXIT_INTERRUPTED, handled_errors
from saedoctor.commands.params import with_options
from saedoctor.errors import InputError
from saedoctor.train.api import DEFAULT_OUT
from saedoctor.train.config import TrainConfig


def register(app: typer.Typer) -> None:
    app.command(name="train")(train_command)


@with_options(TrainConfig, given_only=True, param="given")
def train_command(
    *,
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
    given: dict[str, Any],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="FIELD=VALUE for any training field (repeatable)"),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="output directory: one SAE folder per layer")
    ] = DEFAULT_OUT,
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

    The defaults shown are TrainConfig's: --preset, then --config, then the
    flags given change them.

    Under `torchrun --nproc_per_node N -m saedoctor train ...` the ranks split
    the forward pass and the tokens (or, with --distribute-layers, the SAEs);
    rank 0 writes."""
    from saedoctor.commands.train_runs import parse_set, resolve_runs

    with handled_errors():
        given = {**given, **parse_set(set_ or [])}
        if resume:
            _print_json(_resume(out, given, quiet, distribute_layers), as_json)
            return
        runs = resolve_runs(preset, config, from_prescription, sae, given)
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


def _resume(out: Path, given: dict[str, Any], quiet: bool,
            distribute_layers: bool = False) -> Any:  # fmt: skip
    from saedoctor.progress import stderr_console as console
    from saedoctor.train.checkpoint import CHECKPOINT_FILE
    from saedoctor.train.trainer import TrainingInterrupted, train

    if given:
        raise InputError(f"--resume continues the run saved in {out} with its own config; "
                         f"drop {', '.join(sorted(given))}")  # fmt: skip
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
