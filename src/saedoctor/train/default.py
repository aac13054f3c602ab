"""Train and cache the default SAE (the first `saedoctor diagnose` with no arguments)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from saedoctor import defaults
from saedoctor.progress import stderr_console, token_progress
from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site
from saedoctor.train.quick import QuickTrainConfig, TrainState, train_topk_sae


def site_activations(
    model_spec: str | None,
    site: Site,
    corpus: str,
    tokens: int,
    device: str = "cpu",
    context: int = defaults.DEFAULT_CONTEXT,
    batch_size: int = defaults.DEFAULT_BATCH_SIZE,
) -> tuple[Iterator[torch.Tensor], int, str]:
    """A stream of counted-token activations at `site`, the model width and the model name."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches

    loaded = load_model(model_spec, device=device)
    batches = token_batches(
        loaded.tokenizer,
        iter_documents(corpus),
        context=context,
        batch_size=batch_size,
        max_tokens=tokens,
        name=corpus,
    )
    stream = (sb.acts[site] for sb in site_batches(loaded.model, [site], batches, device))
    return stream, loaded.d_model, loaded.name


def train_sae_on_model(
    model_spec: str | None,
    site: Site,
    corpus: str,
    tokens: int,
    cfg: QuickTrainConfig,
    device: str = "cpu",
    quiet: bool = False,
) -> SAE:
    stream, d_model, model_name = site_activations(model_spec, site, corpus, tokens, device)
    with token_progress(quiet) as progress:
        task = progress.add_task(f"train SAE {site.hook_name}", total=tokens)

        def on_step(state: TrainState) -> None:
            progress.update(
                task,
                completed=state.tokens,
                description=(f"train SAE {site.hook_name} fvu={state.last_fvu:.3f}"),
            )

        sae = train_topk_sae(stream, d_model, cfg, site=site, on_step=on_step)
    sae.cfg.model_name = model_name
    sae.cfg.metadata.update({"training_corpus": corpus, "context": defaults.DEFAULT_CONTEXT})
    return sae


def train_default_sae(path: Path, device: str = "cpu", quiet: bool = False) -> Path:
    from saedoctor.sae.loaders import save_sae

    stderr_console.print(
        f"[bold]No cached default SAE[/]: training a TopK SAE (layer {defaults.DEFAULT_LAYER} "
        f"{defaults.DEFAULT_SITE_KIND}, x{defaults.DEFAULT_EXPANSION}, k={defaults.DEFAULT_K}) "
        f"on {defaults.DEFAULT_TRAIN_CORPUS} (one pass, at most "
        f"{defaults.DEFAULT_TRAIN_TOKENS:,} tokens) → {path}"
    )
    site = Site(defaults.DEFAULT_LAYER, defaults.DEFAULT_SITE_KIND)
    cfg = QuickTrainConfig(expansion_factor=defaults.DEFAULT_EXPANSION, k=defaults.DEFAULT_K)
    sae = train_sae_on_model(
        defaults.DEFAULT_MODEL,
        site,
        defaults.DEFAULT_TRAIN_CORPUS,
        defaults.DEFAULT_TRAIN_TOKENS,
        cfg,
        device,
        quiet,
    )
    save_sae(sae, path)
    return path
