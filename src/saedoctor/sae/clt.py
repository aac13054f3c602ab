"""Cross-layer transcoders (CLT, circuit-tracer 0.5.0 layout).

A CLT has one encoder per block i, reading that block's MLP input, and a decoder from every
source block i into every block l >= i: `W_dec_i [d_t, n_layers - i, d_model]`, with
`W_dec_i[f, l - i]` feature f's vector into block l. Block l's MLP output is reconstructed as

    y_hat_l = b_dec_l + sum_{i <= l} a_i @ W_dec_i[:, l - i, :]

Each source block is held as a per-layer transcoder `Dictionary` (mlp_in -> mlp_out at block
i, with its own-block decoder `W_dec_i[:, 0]` and bias `b_dec_i`), so every per-layer feature
metric applies to it unchanged. The off-diagonal slices (i < l) come from a `DecoderSource`,
one slice at a time: the whole decoder grows as n_layers² and is never materialised.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors import safe_open

from saedoctor.errors import InputError
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import Dictionary, SAEConfig, build_sae
from saedoctor.sae.site import Site

_ENC_KEY = re.compile(r"^W_enc_(\d+)$")
# circuit-tracer has no TopK CLT on disk; saedoctor accepts one from memory (with its k).
CLT_ARCHITECTURES = ("relu", "jumprelu", "topk")


# -- decoder sources ----------------------------------------------------------------------
@runtime_checkable
class DecoderSource(Protocol):
    """Where a CLT's decoder lives: `W_dec_i[:, l - i, :]` for source i and target l >= i."""

    @property
    def n_layers(self) -> int: ...

    @property
    def d_transcoder(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def decoder_slice(self, source: int, target: int) -> torch.Tensor:
        """`W_dec_source[:, target - source, :]` as a contiguous `[d_t, d_model]` tensor."""
        ...


def _check_pair(source: int, target: int, n_layers: int) -> None:
    if not 0 <= source <= target < n_layers:
        raise ValueError(
            f"decoder slice {source} -> {target}: expected 0 <= source <= target < {n_layers}"
        )


def _check_decoder_shape(shape: Sequence[int], i: int, n_layers: int, where: str) -> None:
    """A W_dec_i must be 3-D with one slice per target block i..n_layers-1."""
    if len(shape) != 3:
        raise InputError(f"{where}: W_dec_{i} has shape {tuple(shape)}, expected 3-D "
                         f"[d_transcoder, {n_layers - i}, d_model]")  # fmt: skip
    if shape[1] != n_layers - i:
        raise InputError(
            f"{where}: W_dec_{i} has shape {tuple(shape)}; its second dim must be "
            f"n_layers - {i} = {n_layers - i} (one slice per target block {i}..{n_layers - 1})"
        )


def _check_same_width(shapes: Sequence[Sequence[int]], where: str) -> tuple[int, int]:
    """(d_t, d_model) shared by every W_dec_i."""
    d_t, d_model = shapes[0][0], shapes[0][2]
    for i, shape in enumerate(shapes):
        if (shape[0], shape[2]) != (d_t, d_model):
            raise InputError(
                f"{where}: W_dec_{i} has shape {tuple(shape)} but W_dec_0 has "
                f"{tuple(shapes[0])}; expected [d_transcoder={d_t}, *, d_model={d_model}]"
            )
    return d_t, d_model


class _Widths:
    """The decoder widths both sources check once at construction."""

    _d_t: int
    _d_model: int

    @property
    def d_transcoder(self) -> int:
        return self._d_t

    @property
    def d_model(self) -> int:
        return self._d_model


class TensorDecoderSource(_Widths):
    """The decoder held in memory, from circuit-tracer-shaped `W_dec_i` tensors."""

    def __init__(self, W_dec: Sequence[torch.Tensor], source: str = "cross-layer transcoder"):
        n = len(W_dec)
        if n == 0:
            raise InputError(f"{source}: no W_dec tensors")
        for i, w in enumerate(W_dec):
            _check_decoder_shape(tuple(w.shape), i, n, source)
        self._d_t, self._d_model = _check_same_width([tuple(w.shape) for w in W_dec], source)
        # Target-major copies make each slice a contiguous view, so a request never copies;
        # the caller's tensors are not kept.
        self._by_target = [w.detach().permute(1, 0, 2).contiguous() for w in W_dec]

    @property
    def n_layers(self) -> int:
        return len(self._by_target)

    def decoder_slice(self, source: int, target: int) -> torch.Tensor:
        _check_pair(source, target, self.n_layers)
        return self._by_target[source][target - source]

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> TensorDecoderSource:  # fmt: skip
        """Move (or cast) every slice in place; returns self."""
        self._by_target = [w.to(device=device, dtype=dtype) for w in self._by_target]
        return self


class SafetensorsDecoderSource(_Widths):
    """The decoder read lazily from circuit-tracer's `W_dec_{i}.safetensors` files.

    Each request reads one `[d_t, d_model]` slice through a memory-mapped `get_slice`, never a
    whole `W_dec_i`; up to `cache_bytes` of recently used slices are kept (least recently used
    evicted first). `reads`, `bytes_read` and `hits` count disk reads and cache hits."""

    def __init__(
        self,
        files: Sequence[str | Path],
        keys: Sequence[str] | None = None,
        *,
        cache_bytes: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.files = [Path(f) for f in files]
        self.keys = list(keys) if keys is not None else [f"W_dec_{i}" for i in range(len(files))]
        if not self.files or len(self.keys) != len(self.files):
            raise InputError(f"decoder files {len(self.files)} / keys {len(self.keys)}: "
                             "expected one key per file, at least one file")  # fmt: skip
        shapes = [self._shape(i) for i in range(len(self.files))]
        self._d_t, self._d_model = _check_same_width(shapes, str(self.files[0].parent))
        self.cache_bytes, self.dtype, self.device = cache_bytes, dtype, torch.device(device)
        self._cache: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self.reads = self.bytes_read = self.hits = 0

    def _shape(self, i: int) -> list[int]:
        file, key = self.files[i], self.keys[i]
        if not file.is_file():
            raise InputError(f"{file}: decoder file is missing")
        try:
            with safe_open(str(file), framework="pt") as f:
                if key not in f.keys():
                    found = ", ".join(sorted(f.keys())) or "none"
                    raise InputError(f"{file}: missing tensor {key} (found: {found})")
                shape = list(f.get_slice(key).get_shape())
        except InputError:
            raise
        except Exception as e:  # safetensors raises its own error types on a bad header
            raise InputError(f"{file}: not a readable safetensors file ({e})") from e
        _check_decoder_shape(shape, i, len(self.files), str(file))
        return shape

    @property
    def n_layers(self) -> int:
        return len(self.files)

    @property
    def cached_bytes(self) -> int:
        return sum(_nbytes(t) for t in self._cache.values())

    def decoder_slice(self, source: int, target: int) -> torch.Tensor:
        _check_pair(source, target, self.n_layers)
        key = (source, target)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        out = self._read(source, target - source)
        if source != target:  # the own-block slice is copied into that block's Dictionary
            self._remember(key, out)
        return out

    def _read(self, source: int, offset: int) -> torch.Tensor:
        with safe_open(str(self.files[source]), framework="pt") as f:
            part = f.get_slice(self.keys[source])[:, offset, :]
        out = part.to(device=self.device, dtype=self.dtype or part.dtype).contiguous()
        self.reads += 1
        self.bytes_read += _nbytes(part)
        return out

    def _remember(self, key: tuple[int, int], t: torch.Tensor) -> None:
        size = _nbytes(t)
        if size > self.cache_bytes:
            return  # caching it would evict everything and still overrun the budget
        while self._cache and self.cached_bytes + size > self.cache_bytes:
            self._cache.popitem(last=False)
        self._cache[key] = t


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def decoder_files(directory: str | Path, n_layers: int) -> list[Path]:
    """circuit-tracer's decoder files `W_dec_{i}.safetensors`, i = 0..n_layers-1."""
    return [Path(directory) / f"W_dec_{i}.safetensors" for i in range(n_layers)]


# -- the transcoder -----------------------------------------------------------------------
class CrossLayerTranscoder:
    """One per-layer `Dictionary` per source block plus the off-diagonal decoder."""

    def __init__(self, encoders: Sequence[Dictionary], decoder: DecoderSource,
                 source: str = "cross-layer transcoder") -> None:  # fmt: skip
        self.encoders = list(encoders)
        self.decoder = decoder
        self.source = source
        _check_encoders(self.encoders, source)
        _check_decoder(self.encoders, decoder, source)

    @property
    def n_layers(self) -> int:
        return len(self.encoders)

    @property
    def d_model(self) -> int:
        return self.encoders[0].cfg.d_in

    @property
    def d_transcoder(self) -> int:
        return self.encoders[0].cfg.d_sae

    @property
    def sites(self) -> list[tuple[Site, Site]]:
        """(input site, output site) of every source block, in block order."""
        return [(e.site, e.output_site) for e in self.encoders]  # type: ignore[misc]

    def encode_all(self, x_by_layer: Mapping[int, torch.Tensor]) -> dict[int, Codes]:
        """Codes of each block's encoder on that block's MLP input `x_i [n, d_model]`."""
        for layer in x_by_layer:
            self._check_layer(layer)
        with torch.no_grad():
            return {layer: self.encoders[layer].encode(x) for layer, x in x_by_layer.items()}

    @torch.no_grad()
    def reconstruct(self, target_layer: int, codes_by_layer: Mapping[int, Codes]) -> torch.Tensor:
        """`y_hat_l [n, d_model]`: block l's MLP output from the codes of blocks 0..l."""
        self._check_layer(target_layer)
        missing = [i for i in range(target_layer + 1) if i not in codes_by_layer]
        if missing:
            raise ValueError(f"reconstructing block {target_layer} needs the codes of blocks "
                             f"0..{target_layer}; missing {missing}")  # fmt: skip
        # The own-block term (diagonal slice + b_dec_l) is the per-layer dictionary's decode.
        out = self.encoders[target_layer].decode(codes_by_layer[target_layer])
        for i in range(target_layer):
            w = self.decoder.decoder_slice(i, target_layer)
            out += _decode(codes_by_layer[i], w.to(out.device, out.dtype))  # out is fresh
        return out

    def reconstruct_all(
        self, codes_by_layer: Mapping[int, Codes]
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """(l, y_hat_l) for every target block, made one at a time as the caller asks."""
        for layer in range(self.n_layers):
            yield layer, self.reconstruct(layer, codes_by_layer)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"block {layer}: this CLT has blocks 0..{self.n_layers - 1}")

    @classmethod
    def from_circuit_tracer(cls, tensors: Mapping[str, torch.Tensor],
                            decoder: DecoderSource | None = None,
                            **kwargs: Any) -> CrossLayerTranscoder:  # fmt: skip
        """See the module function `from_circuit_tracer`."""
        return from_circuit_tracer(tensors, decoder, **kwargs)

    def to(self, device: torch.device | str) -> CrossLayerTranscoder:
        """Move the encoders (and an in-memory decoder) to `device`; returns self."""
        self.encoders = [e.to(device) for e in self.encoders]
        if isinstance(self.decoder, TensorDecoderSource):
            self.decoder.to(device)
        elif isinstance(self.decoder, SafetensorsDecoderSource):
            self.decoder.device = torch.device(device)
            self.decoder._cache.clear()
        return self


def _decode(codes: Codes, w: torch.Tensor) -> torch.Tensor:
    """`a @ w` without the bias, sparse codes through embedding_bag (no [n, k, d] temporary)."""
    if codes.indices is None:
        return codes.values @ w
    return F.embedding_bag(codes.indices, w, per_sample_weights=codes.values, mode="sum")


def _check_encoders(encoders: list[Dictionary], source: str) -> None:
    if not encoders:
        raise InputError(f"{source}: no encoders")
    first = encoders[0].cfg
    for i, enc in enumerate(encoders):
        cfg = enc.cfg
        if (cfg.d_in, cfg.d_sae, cfg.d_target) != (first.d_in, first.d_sae, first.d_in):
            raise InputError(
                f"{source}: encoder {i} is d_in={cfg.d_in}, d_sae={cfg.d_sae}, "
                f"d_out={cfg.d_target}; expected {first.d_in}, {first.d_sae}, {first.d_in} "
                "as encoder 0"
            )
        if enc.site is None or enc.site.layer != i:
            raise InputError(f"{source}: encoder {i} reads {enc.site}; expected block {i} "
                             "(one encoder per block 0..n-1, no gap)")  # fmt: skip
        if cfg.apply_b_dec_to_input or enc.W_skip is not None:
            raise InputError(f"{source}: encoder {i} subtracts b_dec from its input or has a "
                             "skip term; a CLT has neither")  # fmt: skip


def _check_decoder(encoders: list[Dictionary], decoder: DecoderSource, source: str) -> None:
    cfg = encoders[0].cfg
    _check_decoder_dims(decoder, len(encoders), cfg.d_sae, cfg.d_in, source)


def _check_decoder_dims(decoder: DecoderSource, n: int, d_t: int, d_model: int,
                        source: str) -> None:  # fmt: skip
    if decoder.n_layers != n:
        raise InputError(f"{source}: decoder has {decoder.n_layers} source blocks, "
                         f"encoders {n}")  # fmt: skip
    if (decoder.d_transcoder, decoder.d_model) != (d_t, d_model):
        raise InputError(
            f"{source}: decoder is [d_transcoder={decoder.d_transcoder}, d_model="
            f"{decoder.d_model}] but the encoders are [d_model={d_model}, d_transcoder={d_t}]"
        )


# -- from circuit-tracer tensors ------------------------------------------------------------
def from_circuit_tracer(
    tensors: Mapping[str, torch.Tensor],
    decoder: DecoderSource | None = None,
    *,
    architecture: str | None = None,
    k: int | None = None,
    source: str = "cross-layer transcoder",
    model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CrossLayerTranscoder:
    """A CLT from circuit-tracer-named tensors: `W_enc_{i} [d_t, d_model]`, `b_enc_{i} [d_t]`,
    `b_dec_{i} [d_model]`, optional `threshold_{i} [d_t]` (JumpReLU), and either `W_dec_{i}
    [d_t, n_layers - i, d_model]` or a `decoder` source (the lazy one, from files).

    `architecture` defaults to jumprelu with thresholds, else relu; "topk" needs `k`."""
    n = _layer_count(tensors, source)
    arch = architecture or ("jumprelu" if "threshold_0" in tensors else "relu")
    _check_architecture(arch, k, tensors, n, source)
    if decoder is None:
        decoder = TensorDecoderSource(_decoder_tensors(tensors, n, source), source)
    d_t, d_model = tensors["W_enc_0"].shape
    _check_decoder_dims(decoder, n, d_t, d_model, source)  # before any slice is asked for
    encoders = []
    for i in range(n):
        _check_layer_tensors(tensors, i, d_t, d_model, source)
        diag = decoder.decoder_slice(i, i)
        encoders.append(_encoder(tensors, diag, i, arch, k, source, model_name, metadata))
    return CrossLayerTranscoder(encoders, decoder, source)


def _layer_count(tensors: Mapping[str, torch.Tensor], source: str) -> int:
    layers = sorted(int(m.group(1)) for key in tensors if (m := _ENC_KEY.match(key)))
    if not layers:
        raise InputError(f"{source}: no W_enc_{{i}} tensors")
    for i in range(layers[-1] + 1):
        if i not in layers:
            raise InputError(f"{source}: W_enc_{i} is missing; a CLT needs blocks "
                             f"0-{layers[-1]} with no gap")  # fmt: skip
    return len(layers)


def _check_architecture(arch: str, k: int | None, tensors: Mapping[str, torch.Tensor],
                        n: int, source: str) -> None:  # fmt: skip
    if arch not in CLT_ARCHITECTURES:
        raise InputError(f"{source}: CLT activation {arch!r}; expected one of "
                         f"{', '.join(CLT_ARCHITECTURES)}")  # fmt: skip
    has = [f"threshold_{i}" in tensors for i in range(n)]
    if arch == "jumprelu" and not all(has):
        raise InputError(f"{source}: threshold_{has.index(False)} is missing; a JumpReLU CLT "
                         "needs one per block")  # fmt: skip
    if arch != "jumprelu" and any(has):
        raise InputError(f"{source}: threshold tensors given for a {arch} CLT")
    if arch == "topk" and not k:
        raise InputError(f"{source}: a topk CLT needs a positive k")


def _decoder_tensors(tensors: Mapping[str, torch.Tensor], n: int, source: str) -> list:
    missing = [f"W_dec_{i}" for i in range(n) if f"W_dec_{i}" not in tensors]
    if missing:
        raise InputError(f"{source}: missing decoder tensor(s) {', '.join(missing)} "
                         "(and no decoder source given)")  # fmt: skip
    return [tensors[f"W_dec_{i}"] for i in range(n)]


def _check_layer_tensors(tensors: Mapping[str, torch.Tensor], i: int, d_t: int, d_model: int,
                         source: str) -> None:  # fmt: skip
    expected = {f"W_enc_{i}": (d_t, d_model), f"b_enc_{i}": (d_t,), f"b_dec_{i}": (d_model,),
                f"threshold_{i}": (d_t,)}  # fmt: skip
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is None and not name.startswith("threshold"):
            raise InputError(f"{source}: missing tensor {name}")
        if t is not None and tuple(t.shape) != shape:
            raise InputError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape} "
                             f"(W_enc_0 is [d_transcoder={d_t}, d_model={d_model}])")  # fmt: skip
    thr = tensors.get(f"threshold_{i}")
    if thr is not None and (thr < 0).any():
        # circuit-tracer keeps pre-activations in (threshold, 0]; saedoctor's JumpReLU
        # rectifies them, so the two would silently differ.
        raise InputError(f"{source}: threshold_{i} has {int((thr < 0).sum())} negative "
                         "values; expected thresholds >= 0")  # fmt: skip


def _encoder(tensors: Mapping[str, torch.Tensor], diag: torch.Tensor, i: int, arch: str,
             k: int | None, source: str, model_name: str | None,
             metadata: dict[str, Any] | None) -> Dictionary:  # fmt: skip
    w_enc = tensors[f"W_enc_{i}"]
    d_t, d_model = w_enc.shape
    cfg = SAEConfig(
        architecture=arch, d_in=d_model, d_sae=d_t, k=k if arch == "topk" else None,
        apply_b_dec_to_input=False, site=Site(i, "mlp_in"), output_site=Site(i, "mlp_out"),
        d_out=d_model, dtype=str(w_enc.dtype).removeprefix("torch."), model_name=model_name,
        metadata={**(metadata or {}), "clt_source_layer": i},
    )  # fmt: skip
    weights = {"W_enc": w_enc.T, "b_enc": tensors[f"b_enc_{i}"], "W_dec": diag,
               "b_dec": tensors[f"b_dec_{i}"]}  # fmt: skip
    if arch == "jumprelu":
        weights["threshold"] = tensors[f"threshold_{i}"]
    return build_sae(cfg, weights, f"{source} block {i}")


__all__ = ["CLT_ARCHITECTURES", "CrossLayerTranscoder", "DecoderSource",
           "SafetensorsDecoderSource", "TensorDecoderSource", "decoder_files",
           "from_circuit_tracer"]  # fmt: skip
