"""Same inputs and seed → byte-identical metrics on CPU; the report records what was used;
out of GPU memory a batch is retried in halves with the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
import safetensors
import torch
from helpers import random_sae, saved_sae

from saedoctor.activations.sites import SiteReader
from saedoctor.activations.splice import Splicer
from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.sae.site import Site


def _opts(model_dir: Path, corpus: Path, saes: list[Path], tmp: Path, **kw) -> DiagnoseOptions:
    base = dict(model=str(model_dir), saes=[str(p) for p in saes], corpus=str(corpus),
                tokens=512, context=32, batch_size=4, quiet=True, seed=7,
                state_file=str(tmp / "state.partial.safetensors"))  # fmt: skip
    base.update(kw)
    return DiagnoseOptions(**base)


@pytest.fixture()
def saes(tmp_path: Path) -> list[Path]:
    # Listed deepest first: the pass must not depend on the order sites come in.
    return [
        saved_sae(tmp_path / "deep", random_sae(64, 128, architecture="relu", site=Site(2))),
        saved_sae(tmp_path / "shallow", random_sae(64, 256, site=Site(0), seed=1)),
    ]


def test_two_runs_give_identical_metrics_and_record_the_run(
    tiny_llama_dir, text_corpus, saes, tmp_path
):
    first = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path))
    second = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path))
    for a, b in zip(first["saes"], second["saes"], strict=True):
        assert json.dumps(a["metrics"]) == json.dumps(b["metrics"])
        assert json.dumps(a["feature_density"]) == json.dumps(b["feature_density"])
        assert "loss_recovered" in a["metrics"]
    run = first["run"]
    assert run["seed"] == 7 and run["options"]["seed"] == 7
    assert run["versions"]["torch"] == torch.__version__
    assert run["versions"]["numpy"] == numpy.__version__
    assert run["versions"]["safetensors"] == safetensors.__version__
    assert set(run["versions"]) >= {"saedoctor", "transformers", "python"}
    assert run["tokens_processed"] == 512 and run["sequences"] == 512 // 32
    # BOS opens each of the 16 sequences; EOS separators are not counted either.
    assert 0 < run["tokens_counted"] <= 512 - 16
    assert "resume" not in run["options"] and "state_file" not in run["options"]


def _oom_above(limit: int):
    def fail_if_large(input_ids: torch.Tensor) -> None:
        if input_ids.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    return fail_if_large


def _metrics_close(got: dict, want: dict, rel: float = 1e-9) -> None:
    for a, b in zip(got["saes"], want["saes"], strict=True):
        assert set(a["metrics"]) == set(b["metrics"])
        for key, value in b["metrics"].items():
            if isinstance(value, float):
                assert a["metrics"][key] == pytest.approx(value, rel=rel, abs=1e-12), key
            else:
                assert a["metrics"][key] == value, key


@pytest.mark.parametrize("downstream", [True, False])
def test_out_of_memory_retries_in_halves(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch, capsys, downstream
):
    small = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path, batch_size=2,
                           downstream=downstream))  # fmt: skip
    check = _oom_above(2)
    calls = []
    if downstream:
        clean = Splicer.clean

        def forward(self, input_ids):
            calls.append(input_ids.shape[0])
            check(input_ids)
            return clean(self, input_ids)

        monkeypatch.setattr(Splicer, "clean", forward)
    else:
        read = SiteReader.read

        def forward(self, input_ids):
            calls.append(input_ids.shape[0])
            check(input_ids)
            return read(self, input_ids)

        monkeypatch.setattr(SiteReader, "read", forward)
    capsys.readouterr()
    big = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path, batch_size=8,
                         downstream=downstream, explain_tokens=64,
                         preflight="none"))  # the main pass's reads only  # fmt: skip
    _metrics_close(big, small)
    assert calls[:4] == [8, 4, 2, 2]  # halved twice, then each later batch split up front
    assert 4 not in calls[4:] and 8 not in calls[4:]
    assert capsys.readouterr().err.count("out of GPU memory") == 1


def test_out_of_memory_after_some_saes_rolls_the_batch_back(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch
):
    """The second SAE's patched run fails after the first SAE's metrics took the batch: the
    retry must not count that batch twice."""
    small = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path, batch_size=2))
    patched = Splicer.patched

    def fail_on_shallow_site(self, site, replacement):
        if site == Site(0) and replacement.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return patched(self, site, replacement)

    monkeypatch.setattr(Splicer, "patched", fail_on_shallow_site)
    big = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path, batch_size=4))
    # The splicer made its one-off zero-ablation check on the 4-row batch that then failed,
    # so the deep SAE's first 2-row batch takes the one-token route where the small run took
    # the full one: the same (zero) logits scored by the same kernels, hence the same sums.
    _metrics_close(big, small)


def test_out_of_memory_on_one_sequence_is_one_clear_error(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch
):
    from saedoctor.errors import InputError

    def always(self, input_ids):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(SiteReader, "read", always)
    with pytest.raises(InputError, match="out of GPU memory .* one sequence of --context 32"):
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path, downstream=False))
