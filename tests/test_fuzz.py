"""Fuzzing every reader of user files: SAE loaders, the policy, the report, the corpora.

Property: a reader either succeeds or raises InputError (one line, exit code 2 at the command
line); never any other exception and never a hang. `make fuzz` runs these with 20x the
examples (hypothesis profile `fuzz`, see conftest.py).
"""

from __future__ import annotations

import copy
import functools
import json
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import random_sae
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import save_file

from saedoctor.activations.corpus import iter_documents
from saedoctor.errors import InputError
from saedoctor.health.policy import GRADED_METRICS, STATUSES, load_policy
from saedoctor.report.document import read_report
from saedoctor.report.filter import always_on_filter
from saedoctor.report.markdown import render_markdown
from saedoctor.sae.loaders import load_sae, save_sae
from test_report_data import goodfire

D_IN, D_SAE = 4, 8
HANG_SECONDS = 30


class Hang(Exception):
    """A reader took longer than any sane input needs."""


@contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def stop(_signum: int, _frame: object) -> None:
        raise Hang(f"reader still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def succeeds_or_input_error(read: Callable[[], Any]) -> Any:
    """`read()`'s result, or None when it raised a one-line InputError."""
    try:
        with no_hang():
            return read()
    except InputError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6,
)


# -- SAE loaders --------------------------------------------------------------------------
def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "enc": torch.randn(D_SAE, D_IN, generator=g), "b_enc": torch.zeros(D_SAE),
        "dec": torch.randn(D_IN, D_SAE, generator=g), "b_dec": torch.zeros(D_IN),
    }


def _template_files(root: Path) -> dict[str, dict[str, bytes]]:
    """A small valid SAE of every format, as {format: {relative file name: bytes}}."""
    save_sae(random_sae(D_IN, D_SAE, "topk", k=2), root / "native")
    w = _weights()
    save_file({"encoder.weight": w["enc"], "encoder.bias": w["b_enc"],
               "W_dec": w["dec"].T.contiguous(), "b_dec": w["b_dec"]},
              str(root / "sae.safetensors"))
    torch.save({"encoder_linear.weight": w["enc"], "encoder_linear.bias": w["b_enc"],
                "decoder_linear.weight": w["dec"], "decoder_linear.bias": w["b_dec"]},
               root / "goodfire.pth")
    torch.save({"encoder.weight": w["enc"], "encoder.bias": w["b_enc"],
                "decoder.weight": w["dec"], "b_dec": w["b_dec"], "k": torch.tensor(2)},
               root / "ae.pt")
    native_cfg = json.loads((root / "native" / "cfg.json").read_text())
    saelens_cfg = {k: v for k, v in native_cfg.items() if k != "saedoctor"}
    sparsify_cfg = {"d_in": D_IN, "num_latents": D_SAE, "k": 2, "activation": "topk",
                    "expansion_factor": 32, "transcode": False, "skip_connection": False}
    dl_cfg = {"trainer": {"dict_class": "AutoEncoderTopK", "activation_dim": D_IN,
                          "dict_size": D_SAE, "k": 2, "layer": 1, "lm_name": "m",
                          "submodule_name": "resid_post_layer_1", "steps": 10},
              "buffer": {"ctx_len": 64, "out_batch_size": 8}}
    native_weights = (root / "native" / "sae_weights.safetensors").read_bytes()
    return {
        "native": {"cfg.json": json.dumps(native_cfg).encode(),
                   "sae_weights.safetensors": native_weights},
        "saelens": {"cfg.json": json.dumps(saelens_cfg).encode(),
                    "sae_weights.safetensors": native_weights},
        "sparsify": {"layers.1/cfg.json": json.dumps(sparsify_cfg).encode(),
                     "layers.1/sae.safetensors": (root / "sae.safetensors").read_bytes()},
        "goodfire": {"m-SAE-l1.pth": (root / "goodfire.pth").read_bytes()},
        "dictionary_learning": {"config.json": json.dumps(dl_cfg).encode(),
                                "ae.pt": (root / "ae.pt").read_bytes()},
    }


WEIGHT_FILE = {"native": "sae_weights.safetensors", "saelens": "sae_weights.safetensors",
               "sparsify": "layers.1/sae.safetensors", "goodfire": "m-SAE-l1.pth",
               "dictionary_learning": "ae.pt"}
CFG_FILE = {"native": "cfg.json", "saelens": "cfg.json", "sparsify": "layers.1/cfg.json",
            "dictionary_learning": "config.json"}
FORMATS = sorted(WEIGHT_FILE)


@functools.cache
def template_files() -> dict[str, dict[str, bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        return _template_files(Path(tmp))


def load_files(files: dict[str, bytes], fmt: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        target = root / WEIGHT_FILE[fmt] if fmt == "goodfire" else root
        return succeeds_or_input_error(lambda: load_sae(target))


def test_templates_load() -> None:
    # The fuzz tests below start from these: each must be a valid SAE.
    for fmt in FORMATS:
        assert load_files(template_files()[fmt], fmt) is not None, fmt


@pytest.mark.parametrize("fmt", FORMATS)
@given(blob=st.binary(max_size=1024))
@example(blob=b"")
@example(blob=b"\xff" * 8 + b"{}")
def test_random_bytes_as_weights(fmt: str, blob: bytes) -> None:
    load_files({**template_files()[fmt], WEIGHT_FILE[fmt]: blob}, fmt)


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64), st.just(0)),
    ),
    min_size=1, max_size=4,
)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, a, b in ops:
        if op == "flip" and out:
            out[a % len(out)] ^= b
        elif op == "truncate":
            del out[a % (len(out) + 1):]
        elif op == "extend":
            out += a
    return bytes(out)


@pytest.mark.parametrize("fmt", FORMATS)
@given(ops=mutations)
def test_mutated_weight_file(fmt: str, ops: list[tuple]) -> None:
    files = template_files()[fmt]
    load_files({**files, WEIGHT_FILE[fmt]: mutate(files[WEIGHT_FILE[fmt]], ops)}, fmt)


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*prefix, key)
            yield from _paths(inner, (*prefix, key))


EXTRA_KEYS = [("metadata",), ("activation_fn_kwargs",), ("activation_fn",), ("k",),
              ("rescale_acts_by_decoder_norm",), ("saedoctor", "site"), ("hook_name",),
              ("metadata", "hook_name"), ("sae_lens_version",), ("trainer",), ("buffer",),
              ("num_latents",), ("normalize_activations",), ("dtype",)]


def set_path(cfg: dict, path: tuple, value: Any, delete: bool) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


@pytest.mark.parametrize("fmt", sorted(CFG_FILE))
@given(data=st.data(), value=json_values, delete=st.booleans())
@example(data=None, value=float("inf"), delete=False)
@example(data=None, value=[1], delete=False)
def test_config_values(fmt: str, data: Any, value: Any, delete: bool) -> None:
    cfg = json.loads(template_files()[fmt][CFG_FILE[fmt]])
    paths = sorted(set(_paths(cfg)) | set(EXTRA_KEYS), key=repr)
    path = ("metadata",) if data is None else data.draw(st.sampled_from(paths))
    text = json.dumps(set_path(cfg, path, value, delete))
    load_files({**template_files()[fmt], CFG_FILE[fmt]: text.encode()}, fmt)


@pytest.mark.parametrize("fmt", sorted(CFG_FILE))
@given(blob=st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode()))
@example(blob=b"[" * 5000)
@example(blob=b'{"d_in": ' + b"9" * 5000 + b"}")
@example(blob="{\"d_in\": 4, \"é\": 1}".encode("latin-1"))
def test_config_junk(fmt: str, blob: bytes) -> None:
    load_files({**template_files()[fmt], CFG_FILE[fmt]: blob}, fmt)


# -- policy -------------------------------------------------------------------------------
interval_text = st.one_of(
    st.builds(lambda op, x: f"{op} {x}", st.sampled_from(["<", "<=", ">", ">=", "==", "=>"]),
              st.floats(allow_nan=False) | st.integers()),
    st.builds(lambda a, b: f"{a}..{b}", st.integers(-5, 5), st.integers(-5, 5)),
    st.text(max_size=10),
)
toml_scalar = st.one_of(
    st.lists(interval_text, max_size=3).map(json.dumps),
    interval_text.map(json.dumps),
    st.integers().map(str), st.booleans().map(lambda b: str(b).lower()),
    st.sampled_from(["worst", "best", "warning", "excellent", "nan", "inf", "[[1], [2]]"]).map(
        json.dumps),
    st.sampled_from(["{}", "[]", "1979-05-27", "nan", "[1, \"a\"]"]),
)
table_name = st.sampled_from([*GRADED_METRICS, "resolution", "l0s", "dead_pct.good", "x"])
entry_key = st.sampled_from([*STATUSES, "fallback_source", "resolution", "fallback", "goood"])


@st.composite
def policy_toml(draw: st.DrawFn) -> str:
    lines = [f"{k} = {draw(toml_scalar)}"
             for k in draw(st.lists(st.sampled_from(["resolution", "fallback"]), max_size=2))]
    for name in draw(st.lists(table_name, max_size=3, unique=True)):
        lines.append(f"[{name}]")
        for key in draw(st.lists(entry_key, max_size=3, unique=True)):
            lines.append(f"{key} = {draw(toml_scalar)}")
    return "\n".join(lines) + "\n"


def load_policy_bytes(blob: bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.toml"
        path.write_bytes(blob)
        return succeeds_or_input_error(lambda: load_policy(path))


@given(text=policy_toml(), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
@example(text='[l0]\ngood = ["<= 1e999"]\n', encoding="utf-8")
@example(text='[l0]\ngood = ["é 3"]\n', encoding="latin-1")
def test_policy_toml(text: str, encoding: str) -> None:
    load_policy_bytes(text.encode(encoding, errors="replace"))


@given(blob=st.binary(max_size=512))
@example(blob=b"a = " + b"[" * 5000)
@example(blob=b"\xef\xbb\xbf[l0]\n")
def test_policy_bytes(blob: bytes) -> None:
    load_policy_bytes(blob)


# -- report -------------------------------------------------------------------------------
def read_report_bytes(blob: bytes) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.json"
        path.write_bytes(blob)
        return succeeds_or_input_error(lambda: read_report(path))


@given(blob=st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
@example(blob=b"[" * 5000)
@example(blob=b'{"schema": ' + b"1" * 5000 + b"}")
@example(blob=b"\xff\xfe{\x00}\x00")
def test_report_junk(blob: bytes) -> None:
    read_report_bytes(blob)


def _all_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, inner in items:
        yield (*prefix, key)
        yield from _all_paths(inner, (*prefix, key))


REPORT = goodfire()
REPORT_PATHS = sorted(_all_paths(REPORT), key=repr)


@given(path=st.sampled_from(REPORT_PATHS), value=json_values, delete=st.booleans())
def test_report_mutated_then_rendered(path: tuple, value: Any, delete: bool) -> None:
    document = copy.deepcopy(REPORT)
    node = document
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    loaded = read_report_bytes(json.dumps(document).encode())
    if loaded is not None:  # what the reader accepts, the views must render
        succeeds_or_input_error(lambda: render_markdown(loaded))
        succeeds_or_input_error(lambda: always_on_filter(loaded))


# -- corpora ------------------------------------------------------------------------------
def read_corpus(name: str, blob: bytes) -> list[str] | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        docs = succeeds_or_input_error(lambda: list(iter_documents(str(path))))
        assert docs is None or all(isinstance(d, str) for d in docs)
        return docs


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl", "corpus.parquet"])
@given(blob=st.binary(max_size=512))
@example(blob=b"")
@example(blob=b"\n\n\n\f\n")
def test_corpus_bytes(name: str, blob: bytes) -> None:
    read_corpus(name, blob)


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl"])
@given(text=st.text(max_size=200),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"]))
def test_corpus_encodings(name: str, text: str, encoding: str) -> None:
    if name.endswith(".jsonl"):
        text = json.dumps({"text": text})
    read_corpus(name, text.encode(encoding, errors="replace"))


jsonl_line = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda v: json.dumps({"text": v}), json_values),
    st.builds(lambda v: json.dumps({"txt": v}), json_values),
    st.sampled_from(["", "   ", "{", "[" * 5000, '{"text": "a"} trailing', "\ufeff{}"]),
)


@given(lines=st.lists(jsonl_line, max_size=5))
@example(lines=['{"text": "one"}', "[1, 2]"])
@example(lines=['{"text": ' + "1" * 5000 + "}"])
@example(lines=["[" * 5000])
def test_corpus_jsonl_lines(lines: list[str]) -> None:
    read_corpus("corpus.jsonl", "\n".join(lines).encode())


@pytest.fixture(scope="module")
def parquet_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("pq") / "c.parquet"
    table = pa.table({"text": ["alpha beta", "x", "", None, "gamma " * 20], "n": [1, 2, 3, 4, 5]})
    pq.write_table(table, path)
    return path.read_bytes()


@given(ops=mutations)
@example(ops=[("flip", 4, 1)])  # footer intact, first page header corrupt
def test_corpus_parquet_mutated(parquet_template: bytes, ops: list[tuple]) -> None:
    read_corpus("corpus.parquet", mutate(parquet_template, ops))


def test_corpus_edge_documents(tmp_path: Path) -> None:
    assert read_corpus("corpus.txt", b"") == []
    assert read_corpus("corpus.txt", b"x") == ["x"]
    assert read_corpus("corpus.jsonl", b'{"text": "a"}\n\n{"text": " "}\n') == ["a", " "]
    assert read_corpus("corpus.jsonl", b'{"text": "a"}\n[1]\n') is None
    assert read_corpus("corpus.txt", "café".encode("latin-1")) == ["caf\ufffd"]
