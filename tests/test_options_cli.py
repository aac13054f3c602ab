"""Each option is declared once, on its options dataclass: the command line and the Python API
are derived from `DiagnoseOptions`, `TrainConfig` and `CacheOptions` (saedoctor.options)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer.main
from typer.testing import CliRunner

import saedoctor
from saedoctor.activations.cache_options import CacheOptions
from saedoctor.cli import app
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.options import REQUIRED, cli_fields, default_of, flag_of, option
from saedoctor.train.config import TrainConfig

# command → (its options dataclass, flags only "given" count, what the command declares itself)
COMMANDS = {
    "diagnose": (DiagnoseOptions, False, {"fail_on", "out", "md", "html", "as_json"}),
    "train": (TrainConfig, True, {"preset", "config", "from_prescription", "sae", "set_", "out",
                                  "resume", "keep_checkpoint", "dry_run", "as_json", "quiet",
                                  "distribute_layers"}),
    "cache-activations": (CacheOptions, False, set()),
}  # fmt: skip


class Captured(Exception):
    """Raised by a patched `validate` to hand back the options a command or API call built."""

    def __init__(self, options: object) -> None:
        super().__init__("captured")
        self.options = options


@pytest.fixture()
def capture(monkeypatch):
    def raiser(self, *args, **kwargs):
        raise Captured(self)

    for cls in (DiagnoseOptions, TrainConfig, CacheOptions):
        monkeypatch.setattr(cls, "validate", raiser)


def _click_params(command: str) -> dict:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}


def _base(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is not list and args else annotation


def _planted(field) -> object:
    """A value of the field's command-line type unlike its default (invented)."""
    kind = _base(field.type)
    if kind is bool:
        return not field.default
    if typing.get_origin(kind) is list:
        return [3, 5] if typing.get_args(kind)[0] is int else ["first", "second"]
    if kind is int:
        return (field.default if isinstance(field.default, int) else 0) + 3
    if kind is float:
        return (field.default if isinstance(field.default, float | int) else 0) + 0.25
    return f"planted-{field.name}"


def _shown(default: object) -> str | bool:
    if default is None or default == []:
        return False
    return " ".join(map(str, default)) if isinstance(default, list) else str(default)


def _args(field, value) -> list[str]:
    if isinstance(value, bool):
        return [f"--{'' if value else 'no-'}{field.name.replace('_', '-')}"]
    if isinstance(value, list):
        return [a for v in value for a in (field.flags[0], str(v))]
    return [field.flags[0], str(value)]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_cli_field_is_a_flag_with_its_default_and_help(command):
    cls, given_only, own = COMMANDS[command]
    params = _click_params(command)
    fields = cli_fields(cls)
    assert set(params) == {f.name for f in fields} | own
    for field in fields:
        param = params[field.name]
        assert set(field.flags) <= set(param.opts), field.name
        assert param.help == field.help
        if given_only:  # not given: None; the dataclass's default is what --help shows
            assert param.default is None, field.name
            assert param.show_default == (field.shown_default or _shown(field.default)), field.name
        elif field.default is REQUIRED:
            assert param.required, field.name
        elif field.default == []:
            assert param.default is None, field.name  # the factory's empty list fills in
        else:
            assert param.default == field.default, field.name


def test_fields_off_the_command_line_are_not_flags():
    params = _click_params("diagnose")
    assert "state_file" not in params and "keep_state" not in params
    hidden = {f.name for f in dataclasses.fields(TrainConfig)} - {
        f.name for f in cli_fields(TrainConfig)}  # fmt: skip
    assert {"shuffle_tokens", "layer_overrides", "preset"} <= hidden
    # --preset is the command's own (it starts from a preset), not the field that records it
    assert hidden & set(_click_params("train")) == {"preset"}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_reaches_the_dataclass(command, capture):
    cls, _, _ = COMMANDS[command]
    fields = cli_fields(cls)
    planted = {f.name: _planted(f) for f in fields}
    args = [a for f in fields for a in _args(f, planted[f.name])]
    result = CliRunner().invoke(app, [command, *args])
    assert isinstance(result.exception, Captured), result.output
    got = result.exception.options
    for name, value in planted.items():
        assert getattr(got, name) == value, name


def test_train_flags_not_given_leave_the_config_alone(capture):
    result = CliRunner().invoke(app, ["train"])
    assert isinstance(result.exception, Captured), result.output
    assert result.exception.options == TrainConfig()
    aliased = CliRunner().invoke(app, ["train", "--corpus", "c.jsonl", "--layer", "4"])
    assert aliased.exception.options == TrainConfig(dataset="c.jsonl", layers=[4])


def test_diagnose_bool_flags_turn_off(capture):
    result = CliRunner().invoke(app, ["diagnose", "--no-downstream"])
    got = dataclasses.replace(result.exception.options, state_file=None, keep_state=False)
    assert got == DiagnoseOptions(downstream=False)  # state_file, keep_state: the command's


# -- the Python API takes every field -------------------------------------------------------
def _every_field(cls) -> dict:
    """Every field with a value unlike its default where the field has a simple type."""
    values = {}
    for field in dataclasses.fields(cls):
        default = default_of(field)
        kind = _base(typing.get_type_hints(cls)[field.name])
        if kind in (int, float) and not isinstance(default, bool):
            values[field.name] = (default or 0) + 3
        elif kind is bool:
            values[field.name] = not default
        else:
            values[field.name] = default if default is not REQUIRED else "planted"
    return values


def test_python_diagnose_takes_every_field(capture):
    values = _every_field(DiagnoseOptions)
    with pytest.raises(Captured) as got:
        saedoctor.diagnose(**values)
    assert got.value.options == DiagnoseOptions(**values)
    base = DiagnoseOptions(tokens=7)
    with pytest.raises(Captured) as got:  # keywords apply on top of a given options object
        saedoctor.diagnose(base, context=9)
    assert (got.value.options.tokens, got.value.options.context) == (7, 9)


def test_python_train_takes_every_field(capture, tmp_path):
    import saedoctor.train.config  # noqa: F401 - the package now shadows the function: callable

    values = _every_field(TrainConfig)
    with pytest.raises(Captured) as got:
        saedoctor.train(out=tmp_path, **values)
    assert got.value.options == TrainConfig(**values)
    with pytest.raises(Captured) as got:  # the guide's names too
        saedoctor.train(TrainConfig(top_k=16), lr=1e-3)
    assert (got.value.options.top_k, got.value.options.learning_rate) == (16, 1e-3)


def test_python_cache_activations_takes_every_field(capture):
    values = _every_field(CacheOptions)
    with pytest.raises(Captured) as got:
        saedoctor.cache_activations(**values)
    assert got.value.options == CacheOptions(**values)


def test_the_api_names_stay_callable_after_their_packages_load():
    import saedoctor.diagnose.run  # noqa: F401
    import saedoctor.train.trainer  # noqa: F401
    from saedoctor import diagnose, train

    assert callable(diagnose) and callable(train)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tokenz'"):
        diagnose(tokenz=5)


# -- the field helper ---------------------------------------------------------------------
def test_option_copies_mutable_defaults_and_names_flags():
    @dataclasses.dataclass
    class Planted:
        out: str = option(help="required: no default")
        items: list[int] = option([1], flag="--item", help="repeatable")
        size: int = option(2, help="plain")
        hidden: bool = option(False, cli=False, help="Python only")

    a, b = Planted(out="x"), Planted(out="y")
    a.items.append(2)
    assert b.items == [1]
    assert [f.name for f in cli_fields(Planted)] == ["out", "items", "size"]
    assert flag_of(Planted, "items") == "--item" and flag_of(Planted, "size") == "--size"
    assert cli_fields(Planted)[0].default is REQUIRED

    @dataclasses.dataclass
    class Undeclared:
        size: int = 2

    with pytest.raises(TypeError, match="declare it with"):
        cli_fields(Undeclared)
