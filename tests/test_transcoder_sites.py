"""The transcoder input site `mlp_in` (the MLP's input, after the pre-MLP norm) on tiny random
models of each family, checked against the blocks' own norms and MLPs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
)

from saedoctor.activations.sites import SiteReader, decoder_blocks
from saedoctor.activations.splice import Splicer, start_block
from saedoctor.sae.site import Site, is_transcoder_site, parse_hook_name

VOCAB, HIDDEN, LAYERS = 100, 32, 3
SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
# Larger than HF's 0.02 so MLP outputs are O(1) and a 1e-5 tolerance means something.
INIT = dict(initializer_range=0.2)
_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                   num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=1,
                   **SPECIAL, **INIT)  # fmt: skip
_NEOX = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
             num_hidden_layers=LAYERS, num_attention_heads=2, **SPECIAL, **INIT)  # fmt: skip

CONFIGS: dict[str, Callable[[], object]] = {
    "llama": lambda: LlamaConfig(**_LLAMA_LIKE),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64, **SPECIAL, **INIT
    ),
    "neox_parallel": lambda: GPTNeoXConfig(**_NEOX, use_parallel_residual=True),
    "neox_sequential": lambda: GPTNeoXConfig(**_NEOX, use_parallel_residual=False),
    "gemma": lambda: GemmaConfig(**_LLAMA_LIKE, head_dim=16),
    "gemma2": lambda: Gemma2Config(**_LLAMA_LIKE, head_dim=16),
    "gemma3": lambda: Gemma3TextConfig(**_LLAMA_LIKE, head_dim=16),
}
FAMILIES = list(CONFIGS)

# Per family, named here independently of the reader: the pre-MLP norm; the module whose
# output the attention sublayer adds to the residual (None: parallel residual, where the MLP
# reads the norm of resid_pre); the post-MLP norm, if any.
LAYOUT: dict[str, tuple[str, str | None, str | None]] = {
    "llama": ("post_attention_layernorm", "self_attn", None),
    "gpt2": ("ln_2", "attn", None),
    "neox_parallel": ("post_attention_layernorm", None, None),
    "neox_sequential": ("post_attention_layernorm", "attention", None),
    "gemma": ("post_attention_layernorm", "self_attn", None),
    "gemma2": (
        "pre_feedforward_layernorm",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "gemma3": (
        "pre_feedforward_layernorm",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
}
_MODELS: dict[str, nn.Module] = {}


def tiny_model(family: str) -> nn.Module:
    if family not in _MODELS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval().float()
        with torch.no_grad():  # norms start at identity: randomise them so they matter
            for param in model.parameters():
                if param.dim() == 1:
                    param.normal_(0.3, 0.5)
        _MODELS[family] = model.requires_grad_(False)
    return _MODELS[family]


def _ids(batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _outputs(model: nn.Module, modules: list[nn.Module], ids: torch.Tensor) -> list[torch.Tensor]:
    """What plain forward hooks on `modules` see during one full forward pass."""
    seen: dict[int, torch.Tensor] = {}

    def make(i: int):
        def hook(_m, _a, out):
            seen[i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(modules))]


def _read(model: nn.Module, sites: list[Site], ids: torch.Tensor) -> dict[Site, torch.Tensor]:
    with SiteReader(model, sites) as reader:
        return reader.read(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_in_is_the_pre_mlp_norm_of_the_right_residual(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    norm_name, attn_name, _ = LAYOUT[family]
    acts = _read(model, [Site(L, "mlp_in") for L in range(LAYERS)], ids)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for layer, block in enumerate(decoder_blocks(model)):
        norm = getattr(block, norm_name)
        residual = hidden[layer]  # resid_pre of this block
        if attn_name is not None:
            residual = residual + _outputs(model, [getattr(block, attn_name)], ids)[0]
        with torch.no_grad():
            expected = norm(residual)
        got = acts[Site(layer, "mlp_in")]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, _outputs(model, [norm], ids)[0])
        assert not torch.allclose(got, hidden[layer], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_blocks_mlp_maps_mlp_in_to_mlp_out(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    post_name = LAYOUT[family][2]
    sites = [Site(L, k) for L in range(LAYERS) for k in ("mlp_in", "mlp_out")]
    acts = _read(model, sites, ids)
    for layer, block in enumerate(decoder_blocks(model)):
        with torch.no_grad():
            out = block.mlp(acts[Site(layer, "mlp_in")])
            if post_name is not None:  # Gemma2/3 add the post-normed MLP output
                out = getattr(block, post_name)(out)
        torch.testing.assert_close(out, acts[Site(layer, "mlp_out")], atol=1e-5, rtol=1e-5)
        assert out.abs().max() > 1e-2  # not trivially small


@pytest.mark.parametrize("family", FAMILIES)
def test_several_sites_in_one_pass_match_each_alone(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    sites = [Site(1, "mlp_in"), Site(1, "mlp_out"), Site(0, "resid_post"), Site(0, "mlp_in")]
    last = decoder_blocks(model)[LAYERS - 1]
    calls, handle = _counter(last)
    try:
        together = _read(model, sites, ids)
    finally:
        handle.remove()
    assert calls == [0]  # stopped after block 1
    for site in sites:
        torch.testing.assert_close(together[site], _read(model, [site], ids)[site], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "neox_parallel", "gemma3"])
def test_block_zero_sites_stop_the_forward_early(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    blocks = decoder_blocks(model)
    later, later_handle = _counter(blocks[1])
    try:
        _read(model, [Site(0, "mlp_in"), Site(0, "mlp_out")], ids)
        assert later == [0]
        # mlp_in alone: the forward stops before the MLP it feeds even runs.
        mlp_ran: list[int] = []
        mlp_handle = blocks[0].mlp.register_forward_hook(lambda *_: mlp_ran.append(1))
        try:
            _read(model, [Site(0, "mlp_in")], ids)
        finally:
            mlp_handle.remove()
        assert mlp_ran == [] and later == [0]
    finally:
        later_handle.remove()


def _counter(module: nn.Module) -> tuple[list[int], object]:
    calls = [0]

    def hook(*_args) -> None:
        calls[0] += 1

    return calls, module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("family", FAMILIES)
def test_splicer_clean_pass_captures_mlp_in(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    sites = [Site(1, "mlp_in"), Site(1, "mlp_out"), Site(0, "mlp_in")]
    splicer = Splicer(model, sites)
    logits, acts = splicer.clean(ids)
    expected = _read(model, sites, ids)
    for site in sites:
        torch.testing.assert_close(acts[site], expected[site], rtol=0, atol=0)
    assert start_block(Site(1, "mlp_in")) == 1
    assert splicer.resumable is True
    # Asked to, it can also replace mlp_in: its own activations give back the clean logits.
    same = splicer.patched(Site(1, "mlp_in"), acts[Site(1, "mlp_in")])
    torch.testing.assert_close(same, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "site"),
    [
        ("blocks.3.hook_mlp_in", Site(3, "mlp_in")),
        ("blocks.3.ln2.hook_normalized", Site(3, "mlp_in")),
        ("blocks.3.mlp.hook_in", Site(3, "mlp_in")),
        ("blocks.3.mlp.hook_out", Site(3, "mlp_out")),
        ("blocks.3.hook_mlp_out", Site(3, "mlp_out")),
        ("model.layers.3.mlp", Site(3, "mlp_out")),
        ("layers.3.mlp", Site(3, "mlp_out")),
        ("transformer.h.3.mlp", Site(3, "mlp_out")),
        ("gpt_neox.layers.3.mlp", Site(3, "mlp_out")),
        ("model.layers.3.mlp.input", Site(3, "mlp_in")),
        ("model.layers.3.mlp.output", Site(3, "mlp_out")),
        ("transformer.h.3.mlp.input", Site(3, "mlp_in")),
        ("gpt_neox.layers.3.mlp.output", Site(3, "mlp_out")),
        ("model.layers.3.self_attn", Site(3, "attn_out")),
        ("model.layers.3", Site(3, "resid_post")),
        ("blocks.3.hook_resid_pre", Site(3, "resid_pre")),
        ("model.layers.3.self_attn.input", None),
        ("blocks.3.mlp.hook_pre", None),
    ],
)
def test_parse_hook_name_transcoder_forms(name: str, site: Site | None) -> None:
    assert parse_hook_name(name) == site


def test_mlp_in_names_and_roles() -> None:
    site = Site(2, "mlp_in")
    assert site.hook_name == "blocks.2.hook_mlp_in"
    assert parse_hook_name(site.hook_name) == site
    assert "ln2.hook_normalized" in site.describe()
    assert is_transcoder_site("mlp_in", "input") and is_transcoder_site("mlp_out", "output")
    assert not is_transcoder_site("mlp_out", "input")
    assert not is_transcoder_site("resid_post", "output")
    with pytest.raises(ValueError):
        is_transcoder_site("mlp_in", "middle")
