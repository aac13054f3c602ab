"""How a command ends: exit codes, one-line errors, and the `--fail-on` gate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from saedoctor.errors import InputError

EXIT_GATED = 1  # --fail-on: an SAE was graded poor (or had warnings)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
FAIL_LEVELS = ("poor", "warning")
_WARNING_SEVERITIES = ("warning", "critical")

FailOn = Annotated[
    str | None, typer.Option(help="exit 1 when an SAE is graded poor | has warnings")
]


@contextlib.contextmanager
def handled_errors() -> Iterator[None]:
    """Bad input, or a file that cannot be written (full disk: the previous file is left as it
    was) → one line on stderr and exit code 2; Ctrl-C → exit 130 without a traceback, saying
    where the state was saved when the command saves one."""
    from saedoctor.atomic import WriteFailed

    try:
        yield
    except InputError as err:
        typer.echo(f"saedoctor: error: {err}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except WriteFailed as err:
        typer.echo(f"saedoctor: {err}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt as err:  # a subclass (diagnose's) carries a message
        typer.echo(f"saedoctor: {str(err) or 'interrupted'}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


def check_fail_level(level: str | None) -> None:
    if level is not None and level not in FAIL_LEVELS:
        raise InputError(f"--fail-on {level!r}: expected one of {', '.join(FAIL_LEVELS)}")


def should_fail(document: dict[str, Any], level: str | None) -> bool:
    """`poor`: any SAE graded poor. `warning`: also any warning/critical metric or diagnosis."""
    if level is None:
        return False
    for entry in document["saes"]:
        grading = entry.get("grading") or {}
        if grading.get("grade") == "poor":
            return True
        if level == "warning" and any(
            d.get("severity") in _WARNING_SEVERITIES for d in entry.get("diagnoses", [])
        ):
            return True
    return False


def exit_if_gated(document: dict[str, Any], level: str | None) -> None:
    if should_fail(document, level):
        raise typer.Exit(EXIT_GATED)
