"""A command's typer options, derived from an options dataclass (saedoctor.options).

    @with_options(DiagnoseOptions)
    def diagnose_command(*, opts: DiagnoseOptions, out: Annotated[Path, typer.Option()] = ...):
        ...

The command's parameter named `opts` (keyword-only, like the others; `param` names another)
is replaced, where it stands, by one typer option per command-line field of the dataclass:
the field's name, its flag(s), type, default and help. The command is called with the
dataclass built from them.
With `given_only=True` (`saedoctor train`, where a preset, then a config file, then the flags
are layered) every derived option defaults to "not given" (None), its help shows the
dataclass's default, and the command gets a dict of the fields whose flags were given.

typer reads a command's parameters from `inspect.signature(func)` and
`typing.get_type_hints(func)`: the returned function carries both (`__signature__`,
`__annotations__`), built from the command's own parameters and the fields.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from saedoctor.options import REQUIRED, CliField, cli_fields


def with_options(cls: type, *, given_only: bool = False,
                 param: str = "opts") -> Callable[[Callable], Callable]:  # fmt: skip
    """Decorator: the command's parameter `param` becomes the fields of `cls` (module doc)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        fields = cli_fields(cls)
        params = _parameters(func, fields, given_only, param)
        repeatable = {f.name for f in fields if _is_list(f.type)}

        def command(**kwargs: Any) -> Any:
            values = {f.name: _plain(kwargs.pop(f.name)) for f in fields}
            if given_only:  # None and an empty repeatable flag: not given
                kwargs[param] = {k: v for k, v in values.items() if v is not None and v != []}
            else:  # an empty repeatable flag keeps the dataclass's default
                kwargs[param] = cls(**{k: v for k, v in values.items()
                                       if v is not None or k not in repeatable})  # fmt: skip
            return func(**kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(command, attr, getattr(func, attr))
        return command

    return decorate


def _parameters(func: Callable[..., Any], fields: list[CliField], given_only: bool,
                param: str) -> list[inspect.Parameter]:  # fmt: skip
    """The command's own parameters with the fields in place of `param`."""
    own = inspect.signature(func, eval_str=True).parameters
    if param not in own:
        raise TypeError(f"{func.__name__}: expected a parameter named {param!r}")
    clash = {f.name for f in fields} & set(own)
    if clash:
        raise TypeError(f"{func.__name__}: parameters {sorted(clash)} are also option fields")
    out: list[inspect.Parameter] = []
    for name, parameter in own.items():
        if name == param:
            out += [_parameter(f, given_only) for f in fields]
        else:
            out.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    return out


def _parameter(field: CliField, given_only: bool) -> inspect.Parameter:
    kind = inspect.Parameter.KEYWORD_ONLY
    if given_only:
        shown = field.shown_default or _shown(field.default)
        info = typer.Option(*field.declared_flags, help=field.help, show_default=shown)
        return inspect.Parameter(field.name, kind, default=None,
                                 annotation=Annotated[_optional(field.type), info])  # fmt: skip
    shown = field.shown_default or True
    info = typer.Option(*field.declared_flags, help=field.help, show_default=shown)
    if field.default is REQUIRED:
        return inspect.Parameter(field.name, kind, annotation=Annotated[field.type, info])
    if _is_list(field.type) and not field.default:
        # typer's "not given" for a repeatable flag is None; the dataclass's factory fills in
        return inspect.Parameter(field.name, kind, default=None,
                                 annotation=Annotated[_optional(field.type), info])  # fmt: skip
    return inspect.Parameter(field.name, kind, default=field.default,
                             annotation=Annotated[field.type, info])  # fmt: skip


def _plain(value: Any) -> Any:
    """A repeatable flag's values as a list (click may hand back a tuple)."""
    return list(value) if isinstance(value, tuple) else value


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation)))


def _optional(annotation: Any) -> Any:
    return annotation if type(None) in typing.get_args(annotation) else annotation | None


def _shown(default: Any) -> str | bool:
    """The dataclass default as `--help` shows it; nothing for None or an empty list."""
    if default is None or default == [] or default is REQUIRED:
        return False
    if isinstance(default, list):
        return " ".join(str(v) for v in default)
    return str(default)
