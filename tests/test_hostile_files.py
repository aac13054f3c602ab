"""Hostile SAE files: lying safetensors headers, non-finite or mis-shaped weights, pickles that
try to run code. Each must end in one InputError line naming the file, with bounded memory."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import random_sae
from safetensors.torch import load_file, save_file

from saedoctor.errors import InputError
from saedoctor.sae.loaders import load_sae, save_sae

D_IN, D_SAE = 6, 16
ROOT = Path(__file__).resolve().parents[1]


def one_line_error(target: Path, names: Path) -> str:
    with pytest.raises(InputError) as info:
        load_sae(target)
    msg = str(info.value)
    assert str(names) in msg and "\n" not in msg, msg
    return msg


# -- safetensors with lying headers -------------------------------------------------------
def native_dir(root: Path) -> tuple[Path, Path]:
    save_sae(random_sae(D_IN, D_SAE, "relu"), root / "native")
    return root / "native", root / "native" / "sae_weights.safetensors"


def sparsify_dir(root: Path) -> tuple[Path, Path]:
    folder = root / "layers.0"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
            "encoder.bias": torch.zeros(D_SAE),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g),
            "b_dec": torch.zeros(D_IN),
        },
        str(folder / "sae.safetensors"),
    )
    cfg = {"d_in": D_IN, "num_latents": D_SAE, "k": 3, "activation": "topk"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder, folder / "sae.safetensors"


LAYOUTS = {"native": native_dir, "sparsify": sparsify_dir}


def split_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def with_header(header: dict | bytes, data: bytes, declared: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if declared is None else declared) + body + data


def first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def _shape_lies(h: dict, d: bytes) -> bytes:
    name = first_tensor(h)
    h[name]["shape"] = [s + 1 for s in h[name]["shape"]]
    return with_header(h, d)


def _offset_past_end(h: dict, d: bytes) -> bytes:
    name = first_tensor(h)
    start, end = h[name]["data_offsets"]
    h[name]["data_offsets"] = [start + len(d), end + len(d)]
    return with_header(h, d)


def _overlapping(h: dict, d: bytes) -> bytes:
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"])
    h[names[1]]["data_offsets"] = list(h[names[0]]["data_offsets"])
    return with_header(h, d)


def _unknown_dtype(h: dict, d: bytes) -> bytes:
    h[first_tensor(h)]["dtype"] = "F33"
    return with_header(h, d)


def _huge_tensor(h: dict, d: bytes) -> bytes:
    h[first_tensor(h)].update(shape=[2**40, 2**20], data_offsets=[0, 2**62])
    return with_header(h, d)


LIES: dict[str, Callable[[dict, bytes], bytes]] = {
    "header_length_past_file": lambda h, d: with_header(h, d, declared=10**6),
    "header_length_2_63": lambda h, d: with_header(h, d, declared=2**63),
    "header_not_json": lambda h, d: with_header(b"{not json", d),
    "header_json_list": lambda h, d: with_header(b"[1, 2, 3]", d),
    "header_json_string": lambda h, d: with_header(b'"weights"', d),
    "shape_disagrees_with_offsets": _shape_lies,
    "offsets_past_end": _offset_past_end,
    "overlapping_offsets": _overlapping,
    "unknown_dtype": _unknown_dtype,
    "huge_declared_tensor": _huge_tensor,
    "truncated": lambda h, d: with_header(h, d[: len(d) // 2]),
    "trailing_bytes": lambda h, d: with_header(h, d + b"\0" * 64),
    "only_7_bytes": lambda h, d: b"\x10\0\0\0\0\0\0",
    "empty": lambda h, d: b"",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("lie", sorted(LIES))
def test_lying_safetensors_header_is_one_line_error(tmp_path: Path, layout: str, lie: str) -> None:
    folder, weights = LAYOUTS[layout](tmp_path)
    header, data = split_header(weights)
    weights.write_bytes(LIES[lie](header, data))
    assert "safetensors" in one_line_error(folder, weights)


def test_bounded_memory_on_huge_declarations(tmp_path: Path) -> None:
    """Sizes declared by a header, a pickle or cfg.json are checked against the file before any
    allocation: under an address-space cap of 1.5 GiB over the baseline, declarations of 16 GiB
    to 4 TiB still end in InputError (an allocation would raise something else, or be killed)."""
    folder, weights = native_dir(tmp_path)
    header, data = split_header(weights)
    name = first_tensor(header)
    header[name].update(shape=[2**20, 2**20], data_offsets=[0, 2**42])
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "cfg.json").write_bytes((folder / "cfg.json").read_bytes())
    (tmp_path / "st" / "sae_weights.safetensors").write_bytes(with_header(header, data))
    torch.save({"encoder_linear.weight": torch.zeros(4)}, tmp_path / "huge.pt")
    _declare_numel(tmp_path / "huge.pt", 2**34)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(d_in=4096, d_sae=2**20)  # 16 GiB per weight matrix if built from the config
    (folder / "cfg.json").write_text(json.dumps(cfg))
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from saedoctor.errors import InputError
        from saedoctor.sae.loaders import load_sae
        torch.set_num_threads(1)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 1536 * 2**20, hard))
        for target in sys.argv[1:]:
            try:
                load_sae(target)
            except InputError as e:
                print("InputError", e)
            else:
                print("loaded", target)
        """
    )
    targets = [tmp_path / "st", tmp_path / "huge.pt", folder]
    run = subprocess.run(
        [sys.executable, "-c", script, *map(str, targets)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and len(lines) == 3, run.stderr[-2000:]
    assert all(line.startswith("InputError") for line in lines), lines
    assert "expected (4096, 1048576)" in lines[2]


def _declare_numel(path: Path, numel: int) -> None:
    """Rewrite a torch zip so its pickle declares `numel` elements for the one storage."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    # The storage's element count is pickled as BININT1 4 (K\x04); make it a LONG1.
    assert b"K\x04t" in members[pkl]
    members[pkl] = members[pkl].replace(b"K\x04t", b"\x8a\x06" + numel.to_bytes(6, "little") + b"t")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, b in members.items():
            z.writestr(n, b)


# -- weights that would give wrong numbers ------------------------------------------------
def test_nan_in_native_weights_names_tensor_and_count(tmp_path: Path) -> None:
    folder, weights = native_dir(tmp_path)
    tensors = load_file(str(weights))
    tensors["W_enc"][0, :3] = float("nan")
    tensors["W_enc"][1, 0] = float("-inf")
    save_file(tensors, str(weights))
    msg = one_line_error(folder, weights)
    assert "tensor W_enc has 4 non-finite values" in msg


def test_inf_in_sparsify_weights_refused(tmp_path: Path) -> None:
    folder, weights = sparsify_dir(tmp_path)
    tensors = load_file(str(weights))
    tensors["b_dec"][2] = float("inf")
    save_file(tensors, str(weights))
    assert "tensor b_dec has 1 non-finite values" in one_line_error(folder, weights)


def test_nan_in_half_precision_refused(tmp_path: Path) -> None:
    folder, weights = sparsify_dir(tmp_path)
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, str(weights))
    assert "tensor W_dec has 1 non-finite values" in one_line_error(folder, weights)


def goodfire_state(d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "encoder_linear.weight": torch.randn(d_sae, d_in, generator=g),
        "encoder_linear.bias": torch.zeros(d_sae),
        "decoder_linear.weight": torch.randn(d_in, d_sae, generator=g),
        "decoder_linear.bias": torch.zeros(d_in),
    }


def test_nan_in_pickled_weights_refused(tmp_path: Path) -> None:
    state = goodfire_state()
    state["decoder_linear.weight"][1, 1] = float("nan")
    torch.save(state, tmp_path / "sae.pth")
    msg = one_line_error(tmp_path / "sae.pth", tmp_path / "sae.pth")
    assert "tensor decoder_linear.weight has 1 non-finite values" in msg


def test_float8_weights_are_widened_not_crashed(tmp_path: Path) -> None:
    # float8_e4m3fn has no isfinite kernel: the finiteness check once raised
    # NotImplementedError here instead of loading.
    folder, weights = sparsify_dir(tmp_path)
    tensors = {k: v.to(torch.float8_e4m3fn) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    sae = load_sae(folder)
    expected = tensors["W_dec"].to(torch.float32)
    torch.testing.assert_close(sae.W_dec.detach(), expected)


def test_complex_weights_refused(tmp_path: Path) -> None:
    state = goodfire_state()
    state["encoder_linear.bias"] = torch.zeros(D_SAE, dtype=torch.complex64)
    torch.save(state, tmp_path / "sae.pt")
    assert "complex" in one_line_error(tmp_path / "sae.pt", tmp_path / "sae.pt")


def test_sparse_tensor_refused(tmp_path: Path) -> None:
    state = goodfire_state()
    state["encoder_linear.weight"] = state["encoder_linear.weight"].to_sparse()
    torch.save(state, tmp_path / "sae.pt")
    assert "dense" in one_line_error(tmp_path / "sae.pt", tmp_path / "sae.pt")


# -- shapes against the config ------------------------------------------------------------
@pytest.mark.parametrize(
    ("tensor", "shape"),
    [("W_enc", (D_IN, D_SAE + 1)), ("W_dec", (D_SAE, D_IN - 1)), ("b_enc", (D_SAE, 1)),
     ("b_dec", (D_IN + 2,)), ("threshold", (D_SAE - 1,))],
)
def test_tensor_shape_disagrees_with_cfg(tmp_path: Path, tensor: str, shape: tuple) -> None:
    save_sae(random_sae(D_IN, D_SAE, "relu"), tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors[tensor] = torch.zeros(shape)
    save_file(tensors, str(weights))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    if tensor == "threshold":  # only a jumprelu SAE reads a threshold
        cfg["architecture"] = cfg["saedoctor"]["architecture"] = "jumprelu"
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    msg = one_line_error(tmp_path / "sae", tmp_path / "sae")
    assert f"tensor {tensor} has shape {shape}" in msg


def test_cfg_d_in_disagrees_with_weights(tmp_path: Path) -> None:
    folder, _ = sparsify_dir(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = D_IN * 2
    (folder / "cfg.json").write_text(json.dumps(cfg))
    msg = one_line_error(folder, folder)
    assert f"expected ({D_IN * 2}, {D_SAE})" in msg


@pytest.mark.parametrize("value", ["Infinity", "NaN", "1e400", "[1]", '{"a": 1}', "-3"])
def test_cfg_d_sae_not_a_positive_integer(tmp_path: Path, value: str) -> None:
    folder, _ = native_dir(tmp_path)
    text = (folder / "cfg.json").read_text()
    (folder / "cfg.json").write_text(text.replace(f'"d_sae": {D_SAE}', f'"d_sae": {value}', 1))
    one_line_error(folder, folder)


# -- pickles ------------------------------------------------------------------------------
class _System:
    """A pickle payload that runs a shell command when unpickled without restrictions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WriteFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("payload", [_System, _WriteFile])
def test_code_running_pickle_in_zip_pt_does_not_run(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "marker"
    # The payload is live: plain pickle runs it.
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()
    marker.unlink()

    evil = tmp_path / "evil.pt"
    torch.save({**goodfire_state(), "encoder_linear.bias": payload(marker)}, evil)
    assert zipfile.is_zipfile(evil)
    msg = one_line_error(evil, evil)
    assert "refuses" in msg and ("posix.system" in msg or "getattr" in msg)
    assert not marker.exists()


def test_code_running_pickle_as_dictionary_learning_ae_pt(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "dl"
    folder.mkdir()
    torch.save({"encoder.weight": _System(marker)}, folder / "ae.pt")
    cfg = {"trainer": {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE}}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert "refuses" in one_line_error(folder, folder / "ae.pt")
    assert not marker.exists()


def test_legacy_pickle_with_payload_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    (tmp_path / "sae.pth").write_bytes(pickle.dumps({"encoder_linear.weight": _System(marker)}))
    one_line_error(tmp_path / "sae.pth", tmp_path / "sae.pth")
    assert not marker.exists()


def test_truncated_zip_pt(tmp_path: Path) -> None:
    torch.save(goodfire_state(), tmp_path / "sae.pt")
    raw = (tmp_path / "sae.pt").read_bytes()
    (tmp_path / "sae.pt").write_bytes(raw[: len(raw) * 2 // 3])
    assert "PyTorch" in one_line_error(tmp_path / "sae.pt", tmp_path / "sae.pt")


@pytest.mark.parametrize("content", [os.urandom(512), b"", b"PK\x03\x04" + bytes(60), b"\x80"])
def test_junk_bytes_named_pth(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "sae.pth").write_bytes(content)
    msg = one_line_error(tmp_path / "sae.pth", tmp_path / "sae.pth")
    assert "refuses" not in msg  # junk is reported as corrupt, not as an attack


def test_dictionary_learning_ae_pt_junk_and_truncated(tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    cfg = {"trainer": {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE}}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "ae.pt").write_bytes(os.urandom(256))
    one_line_error(folder, folder / "ae.pt")
    g = torch.Generator().manual_seed(2)
    torch.save(
        {"encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
         "encoder.bias": torch.zeros(D_SAE),
         "decoder.weight": torch.randn(D_IN, D_SAE, generator=g), "bias": torch.zeros(D_IN)},
        folder / "ae.pt",
    )
    assert load_sae(folder).cfg.d_sae == D_SAE
    raw = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(raw[:-100])
    one_line_error(folder, folder / "ae.pt")


def test_pickled_non_mapping_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(3)], tmp_path / "sae.pt")
    assert "state dict" in one_line_error(tmp_path / "sae.pt", tmp_path / "sae.pt")


# -- config values of the wrong JSON type (found by tests/test_fuzz.py) ---------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [("metadata", [1]), ("metadata", "x"), ("activation_fn_kwargs", "topk")],
)
def test_saelens_cfg_object_keys_of_wrong_type(tmp_path: Path, key: str, value: object) -> None:
    folder, _ = native_dir(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["saedoctor"]  # read as a plain SAELens (pre-6 without a version) config
    cfg.pop("metadata")
    cfg[key] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert f"config key {key!r}" in one_line_error(folder, folder)


def test_dictionary_learning_buffer_not_an_object(tmp_path: Path) -> None:
    folder = tmp_path / "dl"
    folder.mkdir()
    state = goodfire_state()
    torch.save({"encoder.weight": state["encoder_linear.weight"],
                "encoder.bias": state["encoder_linear.bias"],
                "decoder.weight": state["decoder_linear.weight"], "bias": torch.zeros(D_IN)},
               folder / "ae.pt")
    cfg = {"trainer": {"dict_class": "AutoEncoder", "activation_dim": D_IN, "dict_size": D_SAE},
           "buffer": [64]}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert "'buffer'" in one_line_error(folder, folder / "config.json")


# -- transcoder formats -------------------------------------------------------------------
def test_yaml_alias_bomb_in_circuit_tracer_config(tmp_path: Path) -> None:
    """A few hundred bytes of nested YAML aliases expand to 10**9 entries if copied whole."""
    folder = tmp_path / "set"
    folder.mkdir()
    layer = {"W_enc": torch.ones(4, 3), "W_dec": torch.ones(4, 3), "b_enc": torch.zeros(4),
             "b_dec": torch.zeros(3)}  # fmt: skip
    save_file(layer, str(folder / "layer_0.safetensors"))
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["model_kind: transcoder_set", "feature_input_hook: mlp.hook_in",
              "feature_output_hook: mlp.hook_out"]  # fmt: skip
    (folder / "config.yaml").write_text("\n".join(lines))
    sae = load_sae(folder)  # the bomb sits in keys saedoctor ignores
    assert "a8" not in sae.cfg.metadata["circuit_tracer_config"]


def test_nan_in_gemma_scope_npz_refused(tmp_path: Path) -> None:
    import numpy as np

    arrays = {"W_enc": np.ones((3, 4), np.float32), "W_dec": np.ones((4, 3), np.float32),
              "b_enc": np.zeros(4, np.float32), "b_dec": np.zeros(3, np.float32),
              "threshold": np.array([0.1, np.nan, 0.1, 0.1], np.float32)}  # fmt: skip
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(InputError) as e:
        load_sae(tmp_path / "params.npz")
    msg = str(e.value)
    assert "\n" not in msg and "params.npz" in msg and "threshold" in msg and "non-finite" in msg
