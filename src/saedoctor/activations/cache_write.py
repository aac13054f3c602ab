"""Activation caches: run the model once, evaluate SAEs on its activations many times.

    saedoctor cache-activations --model M --layer 6 --site resid_post --corpus C --out acts/
    saedoctor diagnose --activations acts/blocks.6.hook_resid_post --sae S

Layout, one directory per site (named by its hook name):

    <out>/<hook_name>/index.json               format, model, corpus, site, d_in, shards
    <out>/<hook_name>/shard-00000.safetensors  "activations" [n, d_in], "sequence" [n] int64

Only counted tokens are stored (BOS/EOS/padding left out, as in a diagnosis), with the global
index of the sequence each came from, so per-sequence metrics (diversity) are the same as on
the model. A shard holds whole sequences and is closed once it reaches `shard_tokens`.
Reading memory-maps one shard at a time (`safetensors.safe_open`): a cache far larger than
memory streams through. Streaming corpora (HF `streaming=True`, parquet in row batches,
jsonl line by line) are tokenised as they go, never materialised whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from saedoctor.activations.cache_options import CacheOptions
from saedoctor.errors import InputError
from saedoctor.sae.site import Site

FORMAT = "saedoctor.activation-cache/1"
INDEX = "index.json"


class _ShardWriter:
    """Buffers one site's rows and writes a shard whenever `shard_tokens` are reached."""

    def __init__(self, directory: Path, site: Site, dtype: torch.dtype, shard_tokens: int):
        self.directory, self.site, self.dtype, self.limit = directory, site, dtype, shard_tokens
        self.rows: list[torch.Tensor] = []
        self.seqs: list[torch.Tensor] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, x: torch.Tensor, sequence: torch.Tensor) -> None:
        """One batch's rows: a batch is whole sequences, so a shard never splits one."""
        self.rows.append(x.detach().to("cpu", self.dtype))
        self.seqs.append(sequence.to("cpu", torch.int64))
        self.buffered += x.shape[0]
        if self.buffered >= self.limit:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save

        from saedoctor.atomic import atomic_write_bytes

        if not self.buffered:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        tensors = {"activations": torch.cat(self.rows), "sequence": torch.cat(self.seqs)}
        atomic_write_bytes(self.directory / name, save(tensors, metadata={"format": FORMAT}))
        first = int(tensors["sequence"][0])
        self.shards.append({"file": name, "tokens": self.buffered, "first_sequence": first})
        self.rows, self.seqs, self.buffered = [], [], 0


def write_activation_cache(opts: CacheOptions | None = None, **overrides: Any) -> dict[str, Path]:
    """Stream the corpus through the model once; write every site's shards and index.
    `overrides`: `CacheOptions` fields, applied on top of `opts`.

    Returns the directory written per site hook name."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches
    from saedoctor.progress import token_progress

    opts = replace(opts, **overrides) if opts is not None else CacheOptions(**overrides)
    opts.validate()
    loaded = load_model(opts.model, device=opts.device, dtype=opts.dtype)
    sites = opts.all_sites()
    for site in sites:
        if site.layer >= loaded.n_layers:
            raise InputError(f"--layer {site.layer}: model {loaded.name} has {loaded.n_layers} "
                             f"blocks (0..{loaded.n_layers - 1})")  # fmt: skip
    out = Path(opts.out).expanduser()
    store = getattr(torch, opts.store_dtype)
    writers = {s: _ShardWriter(out / s.hook_name, s, store, opts.shard_tokens) for s in sites}
    batches = token_batches(
        loaded.tokenizer, iter_documents(opts.corpus, text_field=opts.text_field),
        context=opts.context, batch_size=opts.batch_size, max_tokens=opts.tokens,
        include_special=opts.include_special, name=opts.corpus,
    )  # fmt: skip
    totals = {"tokens_processed": 0, "tokens_counted": 0, "sequences": 0}
    current: list[Any] = []  # the batch site_batches is on (it skips batches with no tokens)

    def tallied(progress: Any, task: Any) -> Iterator[Any]:
        for batch in batches:
            current[:] = [batch]
            totals["tokens_processed"] += batch.input_ids.numel()
            totals["tokens_counted"] += int(batch.counted.sum())
            totals["sequences"] += batch.input_ids.shape[0]
            yield batch
            progress.update(task, advance=batch.input_ids.numel())

    with token_progress(opts.quiet) as progress:
        task = progress.add_task("cache activations", total=opts.tokens)
        # one site_batches over the whole stream: the hooks are installed once, not per batch
        for sb in site_batches(loaded.model, sites, tallied(progress, task), opts.device):
            for site, writer in writers.items():
                writer.add(sb.acts[site], sb.seq_ids + current[0].first_sequence)
    if totals["tokens_counted"] == 0:
        raise InputError(f"corpus {opts.corpus!r}: no counted tokens to cache")
    return {s.hook_name: _finish_site(w, opts, loaded, totals) for s, w in writers.items()}


def _finish_site(writer: _ShardWriter, opts: CacheOptions, loaded: Any, totals: dict) -> Path:
    from saedoctor.atomic import atomic_write_json

    writer.flush()
    site = writer.site
    index = {
        "format": FORMAT,
        "model": loaded.name,
        "corpus": opts.corpus,
        "site": {"layer": site.layer, "kind": site.kind, "hook_name": site.hook_name},
        "d_in": loaded.d_model,
        "dtype": opts.store_dtype,
        "context": opts.context,
        "include_special": opts.include_special,
        **totals,
        "shards": writer.shards,
    }
    atomic_write_json(writer.directory / INDEX, index)
    return writer.directory


# -- reading --------------------------------------------------------------------------------
class ShardedActivations:
    """A cache directory read lazily: looks enough like a `[tokens, d_in]` tensor for the
    diagnose loop (`shape`, `dim`, `numel`), yields batches one memory-mapped shard at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index = read_index(directory)
        self.tokens = sum(int(s["tokens"]) for s in self.index["shards"])
        self.shape = torch.Size((self.tokens, int(self.index["d_in"])))

    def dim(self) -> int:
        return 2

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def batches(self, batch_tokens: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x [n, d_in] float32, sequence ids [n]) of whole sequences, about `batch_tokens`
        rows each (at least one sequence)."""
        for shard in self.index["shards"]:
            x, seq = self._shard(shard)
            bounds = _sequence_bounds(seq)
            begin = 0
            while begin < x.shape[0]:
                # The last sequence boundary within batch_tokens ends the batch; a sequence
                # longer than batch_tokens makes a batch of its own.
                fits = bounds[(bounds > begin) & (bounds <= begin + batch_tokens)]
                end = int(fits[-1]) if fits.numel() else int(bounds[bounds > begin][0])
                yield x[begin:end], seq[begin:end]
                begin = end

    def _shard(self, shard: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        path = self.directory / str(shard["file"])
        try:
            with safe_open(str(path), framework="pt") as f:
                x, seq = f.get_tensor("activations"), f.get_tensor("sequence")
        except (SafetensorError, OSError, KeyError) as exc:
            raise InputError(f"activations {path}: not a readable cache shard ({exc})") from exc
        if x.dim() != 2 or x.shape != (int(shard["tokens"]), self.shape[1]) or \
                seq.shape != (x.shape[0],):  # fmt: skip
            raise InputError(f"activations {path}: shape {list(x.shape)} does not match "
                             f"{self.directory / INDEX}")  # fmt: skip
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"activations {path}: non-finite values (NaN or inf)")
        return x.float(), seq


def _sequence_bounds(seq: torch.Tensor) -> torch.Tensor:
    """Row indices where a sequence starts, and the end of the last one."""
    change = torch.ones(seq.shape[0] + 1, dtype=torch.bool)
    change[1:-1] = seq[1:] != seq[:-1]
    return change.nonzero().squeeze(1)


def read_index(directory: Path) -> dict[str, Any]:
    """The index of one site's cache; a top directory holding a single site is accepted."""
    path = directory / INDEX
    if not path.is_file():
        sites = sorted(p.parent.name for p in directory.glob(f"*/{INDEX}"))
        if len(sites) == 1:
            return read_index(directory / sites[0])
        hint = f": it holds several sites, pass one of {', '.join(sites)}" if sites else ""
        raise InputError(f"activations {directory}: no {INDEX} (not an activation cache){hint}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, expected {FORMAT}")
        index["shards"], int(index["d_in"])  # noqa: B018 - check the keys are there
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"activations {path}: not a saedoctor activation cache ({exc})") from exc
    index["_directory"] = str(path.parent)
    return index


def open_cache(directory: str | Path) -> ShardedActivations:
    """The cache in `directory` (or its only site subdirectory)."""
    index = read_index(Path(directory).expanduser())
    return ShardedActivations(Path(index["_directory"]))
