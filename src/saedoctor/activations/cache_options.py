"""What an activation-cache run is asked to do: `CacheOptions`, the one declaration of
`saedoctor cache-activations`'s options (each field's flag and help: `saedoctor.options`)."""

from __future__ import annotations

from dataclasses import dataclass

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.options import flag_of, option
from saedoctor.sae.site import SITE_KINDS, Site

STORE_DTYPES = ("float32", "float16", "bfloat16")
_POSITIVE_INTS = ("tokens", "context", "batch_size", "shard_tokens")


@dataclass
class CacheOptions:
    """The sites are `layers` at `site`, plus `sites` (any mix of kinds, from Python)."""

    out: str = option(help="cache directory (one subdirectory per site)")
    layers: list[int] = option(
        [], flag="--layer", help="block index (repeatable: several sites)")
    site: str = option(defaults.DEFAULT_SITE_KIND, help=" | ".join(SITE_KINDS))
    sites: list[Site] = option(
        [], cli=False, help="more sites, each with its own kind (Site(layer, kind))")
    model: str | None = option(
        None, help="HF model id or local dir; default: SmolLM2-135M-Instruct")
    corpus: str = option(
        defaults.DEFAULT_EVAL_CORPUS, help="as for diagnose: builtin, file, directory or HF "
        "dataset id")
    text_field: str = option("text", help="text column of jsonl/parquet/HF data")
    tokens: int = option(defaults.DEFAULT_EVAL_TOKENS, help="tokens to stream")
    context: int = option(defaults.DEFAULT_CONTEXT, help="sequence length")
    batch_size: int = option(defaults.DEFAULT_BATCH_SIZE, help="sequences per batch")
    device: str = option("cpu", help="cpu, cuda, cuda:1, mps")
    dtype: str = option("float32", help="model dtype")
    store_dtype: str = option(
        "float32", help=f"{' | '.join(STORE_DTYPES)} on disk (read back as float32)")
    shard_tokens: int = option(262_144, help="tokens per shard file")
    include_special: bool = option(False, help="store BOS/EOS/pad positions too")
    quiet: bool = option(False, help="no progress bar")

    def all_sites(self) -> list[Site]:
        """Every site to cache, each once, in order."""
        return sorted({*self.sites, *(Site(n, self.site) for n in self.layers)})

    def validate(self) -> None:
        for name in _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                raise InputError(f"{flag_of(CacheOptions, name)}: expected a positive integer")
        if self.store_dtype not in STORE_DTYPES:
            raise InputError(f"--store-dtype {self.store_dtype!r}: expected one of "
                             f"{', '.join(STORE_DTYPES)}")  # fmt: skip
        if self.site not in SITE_KINDS:
            raise InputError(f"--site {self.site!r}: expected one of {', '.join(SITE_KINDS)}")
        if any(n < 0 for n in self.layers):
            raise InputError("--layer: expected block indices >= 0")
        if not self.all_sites():
            raise InputError("--layer: expected at least one layer to cache")
