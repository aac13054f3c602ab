"""Cross-layer transcoders: reconstruction against a naive float64 reference, the lazy
safetensors decoder, the per-block accumulator, and shape errors."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open as real_safe_open
from safetensors.torch import save_file

import saedoctor.sae.clt as clt_module
from saedoctor.errors import InputError
from saedoctor.metrics.clt import CLTReconstruction
from saedoctor.sae.clt import (
    CrossLayerTranscoder,
    SafetensorsDecoderSource,
    TensorDecoderSource,
    decoder_files,
    from_circuit_tracer,
)
from saedoctor.sae.site import Site

N_LAYERS, D_MODEL, D_T, K = 4, 16, 24, 5
ARCHS = ("relu", "jumprelu", "topk")


def planted(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """circuit-tracer-named tensors; pre-activations are ~N(0, 1) on ~N(0, I) inputs."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in range(N_LAYERS):
        t[f"W_enc_{i}"] = torch.randn(D_T, D_MODEL, generator=g) / D_MODEL**0.5
        t[f"b_enc_{i}"] = 0.1 * torch.randn(D_T, generator=g)
        t[f"b_dec_{i}"] = 0.1 * torch.randn(D_MODEL, generator=g)
        t[f"W_dec_{i}"] = torch.randn(D_T, N_LAYERS - i, D_MODEL, generator=g) / D_T**0.5
        if arch == "jumprelu":
            t[f"threshold_{i}"] = 0.1 + 0.5 * torch.rand(D_T, generator=g)
    return t


def inputs(seed: int = 1, n: int = 40) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {i: torch.randn(n, D_MODEL, generator=g) for i in range(N_LAYERS)}


def build(arch: str, tensors: dict[str, torch.Tensor], decoder=None) -> CrossLayerTranscoder:
    k = K if arch == "topk" else None
    return from_circuit_tracer(tensors, decoder, architecture=arch, k=k)


def reference_acts(t: dict[str, torch.Tensor], x: dict[int, torch.Tensor], arch: str) -> dict:
    """Float64 activations from the circuit-tracer formulas (topk: top k, then ReLU)."""
    acts = {}
    for i in range(N_LAYERS):
        pre = x[i].double() @ t[f"W_enc_{i}"].double().T + t[f"b_enc_{i}"].double()
        if arch == "relu":
            a = pre.clamp(min=0)
        elif arch == "jumprelu":
            a = pre * (pre > t[f"threshold_{i}"].double())
        else:
            top = pre.topk(K, dim=1)
            a = torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp(min=0))
        acts[i] = a
    return acts


def reference(t: dict, acts: dict, target: int, sources: range | None = None) -> torch.Tensor:
    """y_hat_l by a naive double loop over source blocks i <= l and features f."""
    n = acts[0].shape[0]
    y = t[f"b_dec_{target}"].double().expand(n, D_MODEL).clone()
    for i in sources if sources is not None else range(target + 1):
        w = t[f"W_dec_{i}"].double()
        for f in range(D_T):
            y += acts[i][:, f : f + 1] * w[f, target - i]
    return y


# -- (a) reconstruction equals the naive reference ----------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_matches_naive_float64_reference(arch):
    t, x = planted(arch), inputs()
    clt = build(arch, t)
    codes = clt.encode_all(x)
    acts = reference_acts(t, x, arch)
    assert (clt.n_layers, clt.d_model, clt.d_transcoder) == (N_LAYERS, D_MODEL, D_T)
    assert all(codes[i].is_sparse == (arch == "topk") for i in range(N_LAYERS))
    for layer, y_hat in clt.reconstruct_all(codes):
        torch.testing.assert_close(codes[layer].dense().double(), acts[layer], rtol=1e-5, atol=1e-5)
        ref = reference(t, acts, layer)
        torch.testing.assert_close(y_hat.double(), ref, rtol=1e-5, atol=1e-5)
        # The lower blocks' terms must matter, or the check above would not test them.
        lower = ref - reference(t, acts, layer, range(layer, layer + 1))
        assert layer == 0 or lower.norm() > 0.3 * ref.norm()


def test_each_block_is_a_per_layer_transcoder_dictionary():
    t = planted("jumprelu")
    clt = build("jumprelu", t)
    for i, enc in enumerate(clt.encoders):
        assert (enc.site, enc.output_site) == (Site(i, "mlp_in"), Site(i, "mlp_out"))
        assert enc.is_transcoder and not enc.cfg.apply_b_dec_to_input
        assert torch.equal(enc.W_enc, t[f"W_enc_{i}"].T)
        assert torch.equal(enc.W_dec, t[f"W_dec_{i}"][:, 0, :])
        assert torch.equal(enc.threshold, t[f"threshold_{i}"])
        assert torch.equal(enc.b_dec, t[f"b_dec_{i}"])


def test_reconstruct_needs_every_lower_block():
    clt = build("relu", planted("relu"))
    codes = clt.encode_all({0: inputs()[0], 2: inputs()[2]})
    assert clt.reconstruct(0, codes).shape == (40, D_MODEL)
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        clt.reconstruct(2, codes)
    with pytest.raises(ValueError, match="blocks 0..3"):
        clt.encode_all({4: inputs()[0]})


# -- (b) the lazy decoder --------------------------------------------------------------------------
def write_decoders(t: dict[str, torch.Tensor], directory) -> list:
    for i in range(N_LAYERS):
        save_file(
            {f"W_dec_{i}": t[f"W_dec_{i}"].contiguous()}, str(directory / f"W_dec_{i}.safetensors")
        )
    return decoder_files(directory, N_LAYERS)


class _Recorder:
    """Wraps safe_open: counts get_slice calls, records the shape of every read, and fails on
    any whole-tensor read."""

    def __init__(self) -> None:
        self.slices: list[str] = []
        self.read_shapes: list[tuple[int, ...]] = []

    def open(self, path, framework, **kwargs):
        recorder, handle = self, real_safe_open(path, framework=framework, **kwargs)

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return handle.keys()

            def get_tensor(self, key):
                raise AssertionError(f"whole tensor {key} read")

            def get_slice(self, key):
                recorder.slices.append(key)
                return Slice(handle.get_slice(key))

        class Slice:
            def __init__(self, inner):
                self.inner = inner

            def get_shape(self):
                return self.inner.get_shape()

            def __getitem__(self, index):
                out = self.inner[index]
                recorder.read_shapes.append(tuple(out.shape))
                return out

        return Handle()


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_lazy_decoder_is_bit_identical_and_reads_one_slice_at_a_time(arch, tmp_path, monkeypatch):
    t, x = planted(arch), inputs()
    in_memory = build(arch, t)
    recorder = _Recorder()
    monkeypatch.setattr(clt_module, "safe_open", recorder.open)
    whole_w_dec_0 = t["W_dec_0"].numel() * 4
    budget = 2 * D_T * D_MODEL * 4  # two slices: less than one whole W_dec_0
    assert budget < whole_w_dec_0
    source = SafetensorsDecoderSource(write_decoders(t, tmp_path), cache_bytes=budget)
    lazy = build(arch, t, source)
    codes = lazy.encode_all(x)
    for layer in range(N_LAYERS):
        assert torch.equal(lazy.reconstruct(layer, codes), in_memory.reconstruct(layer, codes))
        assert source.cached_bytes <= budget
    assert recorder.read_shapes and set(recorder.read_shapes) == {(D_T, D_MODEL)}
    # Four own-block slices to build the encoders, then the six i < l slices once each
    # (the budget holds the two most recent; none is asked for twice in one pass).
    assert source.reads == len(recorder.read_shapes) == 4 + 6
    assert source.bytes_read == 10 * D_T * D_MODEL * 4


def test_lazy_decoder_cache_serves_repeated_batches(tmp_path):
    t, x = planted("relu"), inputs()
    source = SafetensorsDecoderSource(write_decoders(t, tmp_path), cache_bytes=1 << 20)
    clt = build("relu", t, source)
    codes = clt.encode_all(x)
    first = dict(clt.reconstruct_all(codes))
    reads = source.reads
    second = dict(clt.reconstruct_all(codes))
    assert source.reads == reads and source.hits == 6
    assert all(torch.equal(first[i], second[i]) for i in range(N_LAYERS))
    uncached = SafetensorsDecoderSource(write_decoders(t, tmp_path), cache_bytes=0)
    clt0 = build("relu", t, uncached)
    dict(clt0.reconstruct_all(codes))
    dict(clt0.reconstruct_all(codes))
    assert uncached.reads == 4 + 2 * 6 and uncached.cached_bytes == 0


# -- (c) the accumulator ---------------------------------------------------------------------------
def batches_of_targets(seed: int = 2) -> list[tuple[dict, dict]]:
    """(y by block, y_hat by block) for three batches of different sizes: y is the CLT's
    output plus noise, so VE and error share lie strictly between 0 and 1 (and differ, as
    b_dec gives y a mean)."""
    t = planted("jumprelu")
    clt = build("jumprelu", t)
    g = torch.Generator().manual_seed(seed)
    out = []
    for b, n in enumerate((17, 40, 9)):
        codes = clt.encode_all(inputs(seed=10 + b, n=n))
        y_hat = dict(clt.reconstruct_all(codes))
        y = {i: y_hat[i] + 0.3 * torch.randn(n, D_MODEL, generator=g) for i in range(N_LAYERS)}
        out.append((y, y_hat))
    return out


def fed(batches: list[tuple[dict, dict]]) -> CLTReconstruction:
    acc = CLTReconstruction(N_LAYERS, D_MODEL)
    for y, y_hat in batches:
        for layer in range(N_LAYERS):
            acc.update(layer, y[layer], y_hat[layer])
    return acc


def test_accumulator_matches_float64_reference_per_block_and_pooled():
    batches = batches_of_targets()
    got = fed(batches).compute()
    sse_all = energy_all = 0.0
    for layer in range(N_LAYERS):
        y = torch.cat([b[0][layer] for b in batches]).double()
        y_hat = torch.cat([b[1][layer] for b in batches]).double()
        sse = (y - y_hat).pow(2).sum().item()
        energy = y.pow(2).sum().item()
        ve = 1 - sse / (y - y.mean(0)).pow(2).sum().item()
        sse_all, energy_all = sse_all + sse, energy_all + energy
        metrics = got["layers"][layer]
        assert 0.01 < metrics["error_share"] < 0.95 and 0.05 < ve < 0.95
        assert metrics["variance_explained"] == pytest.approx(ve, rel=1e-12)
        assert metrics["fvu"] == pytest.approx(1 - ve, rel=1e-12)
        assert metrics["error_share"] == pytest.approx(sse / energy, rel=1e-12)
        assert metrics["mse"] == pytest.approx(sse / y.shape[0], rel=1e-12)
        assert got["tokens"][layer] == 66
    assert got["error_share"] == pytest.approx(sse_all / energy_all, rel=1e-12)
    per_block = [got["layers"][i]["error_share"] for i in range(N_LAYERS)]
    assert min(per_block) < got["error_share"] < max(per_block)


def test_merging_two_halves_equals_one_pass_and_state_round_trips():
    batches = batches_of_targets()
    one = fed(batches).compute()
    merged = fed(batches[:2]).merge(fed(batches[2:])).compute()
    for layer in range(N_LAYERS):
        for key, value in one["layers"][layer].items():
            assert merged["layers"][layer][key] == pytest.approx(value, rel=1e-12), key
    assert merged["error_share"] == pytest.approx(one["error_share"], rel=1e-12)
    restored = CLTReconstruction(N_LAYERS, D_MODEL)
    restored.load_state_dict(fed(batches).state_dict("clt."), "clt.")
    assert restored.compute() == one


def test_accumulator_refuses_mismatches_and_reports_unseen_blocks():
    acc = CLTReconstruction([1, 3], D_MODEL)
    with pytest.raises(ValueError, match="no tokens seen"):
        acc.compute()
    acc.update(1, torch.ones(3, D_MODEL), torch.zeros(3, D_MODEL))
    out = acc.compute()
    assert out["layers"][3] is None and out["error_share"] == 1.0
    with pytest.raises(ValueError, match="measures"):
        acc.update(0, torch.ones(3, D_MODEL), torch.zeros(3, D_MODEL))
    with pytest.raises(ValueError, match="cannot merge"):
        acc.merge(CLTReconstruction(N_LAYERS, D_MODEL))
    with pytest.raises(ValueError, match="layers"):
        CLTReconstruction(N_LAYERS, D_MODEL).load_state_dict(acc.state_dict())


# -- (d) shape errors -----------------------------------------------------------------------------
def _without(t: dict, *names: str) -> dict:
    return {k: v for k, v in t.items() if k not in names}


BAD_TENSORS = {
    "gap": (lambda t: _without(t, "W_enc_2", "b_enc_2", "b_dec_2"), "W_enc_2 is missing"),
    "second dim": (
        lambda t: {**t, "W_dec_1": torch.zeros(D_T, N_LAYERS, D_MODEL)},
        r"W_dec_1 has shape \(24, 4, 16\); its second dim must be n_layers - 1 = 3",
    ),
    "decoder width": (
        lambda t: {**t, "W_dec_2": torch.zeros(D_T - 4, 2, D_MODEL)},
        r"W_dec_2 has shape \(20, 2, 16\) but W_dec_0 has \(24, 4, 16\)",
    ),
    "decoder vs encoder": (
        lambda t: {**t, **{f"W_dec_{i}": torch.zeros(D_T, N_LAYERS - i, 8) for i in range(4)}},
        r"decoder is \[d_transcoder=24, d_model=8\] but the encoders are \[d_model=16",
    ),
    "encoder width": (
        lambda t: {**t, "W_enc_3": torch.zeros(D_T, D_MODEL + 1)},
        r"W_enc_3 has shape \(24, 17\), expected \(24, 16\)",
    ),
    "bias": (lambda t: {**t, "b_dec_1": torch.zeros(3)}, r"b_dec_1 has shape \(3,\)"),
    "missing decoder": (lambda t: _without(t, "W_dec_3"), "missing decoder tensor.*W_dec_3"),
    "negative threshold": (
        lambda t: {**t, "threshold_0": -torch.ones(D_T)},
        "threshold_0 has 24 negative values",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_shapes_give_one_line_input_errors(case):
    mutate, message = BAD_TENSORS[case]
    with pytest.raises(InputError, match=message) as err:
        from_circuit_tracer(mutate(planted("jumprelu")))
    assert "\n" not in str(err.value)


def test_bad_decoder_files_give_one_line_input_errors(tmp_path):
    t = planted("relu")
    files = write_decoders(t, tmp_path)
    with pytest.raises(InputError, match="decoder has 3 source blocks, encoders 4"):
        from_circuit_tracer(t, TensorDecoderSource([t[f"W_dec_{i}"][:, 1:] for i in range(3)]))
    save_file({"W_dec_2": torch.zeros(D_T, 3, D_MODEL)}, str(files[2]))
    with pytest.raises(
        InputError, match=r"W_dec_2.safetensors: W_dec_2 has shape \(24, 3, 16\); its second dim"
    ):
        SafetensorsDecoderSource(files)
    save_file({"other": torch.zeros(1)}, str(files[2]))
    with pytest.raises(InputError, match=r"missing tensor W_dec_2 \(found: other\)"):
        SafetensorsDecoderSource(files)
    files[2].unlink()
    with pytest.raises(InputError, match="W_dec_2.safetensors: decoder file is missing") as err:
        SafetensorsDecoderSource(files)
    assert "\n" not in str(err.value)


def test_activation_choice_is_checked():
    t = planted("relu")
    with pytest.raises(InputError, match="needs a positive k"):
        from_circuit_tracer(t, architecture="topk")
    with pytest.raises(InputError, match="threshold_0 is missing"):
        from_circuit_tracer(t, architecture="jumprelu")
    with pytest.raises(InputError, match="activation 'gated'"):
        from_circuit_tracer(t, architecture="gated")
    assert from_circuit_tracer(planted("jumprelu")).encoders[0].cfg.architecture == "jumprelu"
    assert from_circuit_tracer(t).encoders[0].cfg.architecture == "relu"
