"""SAEs the benchmarks need when the real one is not at hand (memory and smoke runs)."""

from __future__ import annotations

from pathlib import Path


def default_or_random_sae(workdir: Path) -> tuple[Path, str]:
    """The cached default SAE, else a random one of its shape (layer, width, k): memory and
    speed depend on the shapes, not on the weights."""
    from saedoctor import defaults

    default = defaults.default_sae_dir()
    if (default / "cfg.json").is_file():
        return default, "default SAE"
    path = random_default_shape_sae(workdir / "sae")
    return path, "random SAE of the default's shape (default SAE not cached)"


def random_default_shape_sae(path: Path) -> Path:
    """A TopK SAE shaped like the embedded default's (block 10 resid_post, x8, k 32) with a
    random unit-norm decoder and a tied encoder, saved in the native format at `path`."""
    import torch

    from saedoctor import defaults
    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import SAE, SAEConfig
    from saedoctor.sae.site import Site

    d_in = 576  # SmolLM2-135M's width
    site = Site(defaults.DEFAULT_LAYER, defaults.DEFAULT_SITE_KIND)
    cfg = SAEConfig("topk", d_in, d_in * defaults.DEFAULT_EXPANSION, k=defaults.DEFAULT_K,
                    site=site)  # fmt: skip
    sae = SAE(cfg)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        w_dec = torch.randn(sae.W_dec.shape, generator=gen)
        sae.W_dec.copy_(torch.nn.functional.normalize(w_dec, dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    save_sae(sae, path)
    return path
