"""Options declared once: each field of an options dataclass carries its command-line flag.

`DiagnoseOptions`, `TrainConfig` and `CacheOptions` are the one declaration of what
`saedoctor diagnose`, `saedoctor train` and `saedoctor cache-activations` take. Their
fields are declared with `option(...)` instead of `dataclasses.field(...)`:

    @dataclass
    class DiagnoseOptions:
        saes: list[str] = option([], flag="--sae", help="SAE path (repeatable)")
        tokens: int = option(100_000, help="tokens to stream")
        state_file: str | None = option(None, cli=False, help="where the state is saved")

Name, type, default, help and (in the class's `validate`) the checks live there only. The
Python API takes the dataclass or its field names as keywords; the command line is derived
from `cli_fields(cls)` (`saedoctor.commands.params.with_options` turns each into a typer
option). Per field:

- `flag`: the flag, or several (aliases), when it is not `--field-name`
  (`--sae` for `saes`, `("--dataset", "--corpus")` for `dataset`); a list-typed field is a
  repeatable flag; a bool field without `flag` gets `--name/--no-name`.
- `cli=False`: not on the command line (Python API, config files and `--set` only).
- `cli_type`: what the command line parses when the field's own type is wider
  (`str | dict | None` for a device map given as text or as a dict).
- `shown_default`: how `--help` shows a default that is worked out later
  (a learning rate computed from the dictionary size).

This module imports no command-line library, so options dataclasses in low-level packages
can use it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

_METADATA_KEY = "saedoctor.option"


class _Required:
    """The default of a field that has none: its flag must be given."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class OptionSpec:
    """What `option` stores in a field's metadata."""

    help: str
    flags: tuple[str, ...] = ()
    cli: bool = True
    cli_type: Any = None
    shown_default: str | None = None


@dataclass(frozen=True)
class CliField:
    """One field as a command line sees it."""

    name: str
    type: Any  # what the command line parses (the field's type unless `cli_type` says)
    default: Any  # REQUIRED when the field has no default
    declared_flags: tuple[str, ...]  # empty: the command line's own (`--name`, bool `--no-name`)
    help: str
    shown_default: str | None

    @property
    def flags(self) -> tuple[str, ...]:
        return self.declared_flags or (default_flag(self.name),)


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | tuple[str, ...] | None = None,
    cli: bool = True,
    cli_type: Any = None,
    shown_default: str | None = None,
) -> Any:
    """A dataclass field with its command-line metadata (module doc). A list, dict or set
    default is copied for every instance (a `default_factory`); no default: required."""
    flags = (flag,) if isinstance(flag, str) else tuple(flag or ())
    metadata = {_METADATA_KEY: OptionSpec(help, flags, cli, cli_type, shown_default)}
    if isinstance(default, list | dict | set):
        factory = functools.partial(copy.deepcopy, default)
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_spec(field: dataclasses.Field) -> OptionSpec:
    spec = field.metadata.get(_METADATA_KEY)
    if spec is None:
        raise TypeError(f"field {field.name!r}: declare it with saedoctor.options.option(...)")
    return spec


def default_of(field: dataclasses.Field) -> Any:
    """The field's default value (a fresh one for a factory), or REQUIRED."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def cli_fields(cls: type) -> list[CliField]:
    """The fields of options dataclass `cls` that are on the command line, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        spec = option_spec(field)
        if spec.cli:
            out.append(CliField(field.name, spec.cli_type or hints[field.name], default_of(field),
                                spec.flags, spec.help, spec.shown_default))  # fmt: skip
    return out


def default_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_of(cls: type, name: str) -> str:
    """The flag that sets field `name` of `cls` (its first one), for error messages."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return (option_spec(field).flags or (default_flag(name),))[0]
