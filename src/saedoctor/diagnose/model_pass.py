"""One pass over a corpus: one forward per batch for every SAE, stopping at the deepest
block needed; non-finite rows skipped and counted; out-of-memory batches split in halves."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from saedoctor import distributed
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.units import (
    Rows,
    SAEUnderTest,
    Sink,
    output_sites,
    row_text,
    suite_sink,
    unit_sites,
)
from saedoctor.errors import InputError
from saedoctor.metrics.finite import RowOrigin, finite_output_rows, finite_rows
from saedoctor.progress import stderr_console, token_progress


# -- passes over a model ------------------------------------------------------------------
@dataclass
class ModelPass:
    """One streaming pass of a corpus through the model, feeding every SAE.

    `state` (the main pass only) saves the accumulators between batches and resumes them."""

    loaded: Any
    opts: DiagnoseOptions
    units: list[SAEUnderTest]
    state: Any = None  # saedoctor.diagnose_state.MainPassState
    tset: Any = None  # saedoctor.diagnose.transcoder_set.SpliceSet: the set spliced whole
    # `--tokens auto` (diagnose/auto_tokens.py): asked after each batch, True ends the pass
    stop: Callable[[dict[str, int]], bool] | None = None

    @property
    def extras(self) -> list[Any]:
        """Accumulators beyond the units': the transcoder set's, each CLT's."""
        from saedoctor.diagnose.clt import clt_groups

        sets = [] if self.tset is None else [self.tset]
        return sets + [group for group, _ in clt_groups(self.units)]

    def run(self, corpus: str, tokens: int, sink: Sink, label: str, keep=None) -> dict[str, int]:
        totals: dict[str, int] = {}
        step = self._metric_step(sink, keep)
        for batch in self._tracked(corpus, tokens, label, totals):
            self._guarded(batch, step)
        return totals

    def _metric_step(self, sink: Sink, keep=None) -> Callable[[Any], None]:
        """A batch's forward up to the deepest site, every SAE fed from it: no logits."""
        from saedoctor.activations.stream import site_batches
        from saedoctor.diagnose.clt import clt_groups, feed_clt

        sites = unit_sites(self.units)  # a fixed order, run after run
        groups = clt_groups(self.units)

        def step(batch: Any) -> None:
            for sb in site_batches(self.loaded.model, sites, [batch], self.opts.device):
                where = RowOrigin(batch.first_sequence, batch.input_ids.shape[1], sb.positions,
                                  batch.input_ids.reshape(-1)[sb.positions])  # fmt: skip
                seq_ids = sb.seq_ids + batch.first_sequence  # corpus order: interval blocks
                for unit in self.units:
                    if unit.clt is None:
                        target = sb.acts[unit.sae.output_site]
                        feed(unit, sb.acts[unit.sae.site], seq_ids, sink, where, target)
                for group, members in groups:
                    feed_clt(group, members, sb.acts, seq_ids.to(sb.acts[sites[0]].device),
                             sink, where)  # fmt: skip
                if keep is not None:  # after feeding: a batch retried in halves is kept once
                    keep(sb)

        return step

    def run_downstream(self, corpus: str, tokens: int, label: str) -> dict[str, int]:
        """The main pass with loss recovered / KL: one clean forward to the logits per batch,
        one patched tail per SAE and one zero-ablated tail per site. Batches past
        `downstream_tokens` feed the other metrics only (no logits): CE and KL need far
        fewer tokens than density does, and cost most of the pass."""
        from saedoctor.activations.splice import Splicer

        totals: dict[str, int] = {}
        splicer = Splicer(self.loaded.model, unit_sites(self.units))

        def downstream(batch: Any) -> None:
            if batch.counted.any():  # a half of a split batch may have nothing counted
                downstream_batch(splicer, self.units, batch, self.opts.device, self.tset)

        metrics_only = self._metric_step(suite_sink)
        primed = False
        for batch in self._tracked(corpus, tokens, label, totals):
            measured = self._in_downstream_budget(batch)
            if measured and not primed and batch.first_sequence > 0:  # resumed mid-pass
                self._prime(splicer, corpus, tokens)
            primed = primed or measured
            if batch.counted.any():
                self._guarded(batch, downstream if measured else metrics_only)
        return totals

    def _in_downstream_budget(self, batch: Any) -> bool:
        """Whether a batch measures CE / KL: decided by its place in the corpus (tokens before
        it), so a resumed run and every torchrun rank pick the same batches."""
        budget = self.opts.downstream_tokens
        return budget is None or batch.first_sequence * self.opts.context < budget

    @torch.inference_mode()
    def _prime(self, splicer: Any, corpus: str, tokens: int) -> None:
        """The splicer makes one-off checks on the first batch it sees (e.g. whether the
        zero-ablated logits are the same at every position, then reused): a resumed pass
        replays them on the corpus's first batch, so that every later batch is computed
        exactly as in an uninterrupted pass."""
        device = self.opts.device
        first = next((b for b in self._batches(corpus, tokens) if b.counted.any()), None)
        if first is None:
            return
        splicer.clean(first.input_ids.to(device))
        counted = first.counted.to(device)
        for site in output_sites(self.units):
            splicer.zero_ablated(site, counted)

    def _tracked(self, corpus: str, tokens: int, label: str, totals: dict[str, int]) -> Iterator:
        """Token batches with a progress bar, counting into `totals` as they go; with `state`,
        resumes after the batches already done and saves between batches."""
        state = self.state
        if state is None:
            totals.update(tokens_processed=0, tokens_counted=0, sequences=0)
            skip = 0
        else:
            skip = state.start(totals, self.opts.resume)
        with token_progress(self.opts.quiet) as progress:
            task = progress.add_task(label, total=tokens, completed=totals["tokens_processed"])
            batches = self._batches(corpus, tokens, skip * self.opts.batch_size)
            for batch in distributed.shard_main_pass(batches, state):  # this rank's share
                totals["tokens_processed"] += batch.input_ids.numel()
                totals["tokens_counted"] += int(batch.counted.sum())
                totals["sequences"] += batch.input_ids.shape[0]
                progress.update(task, advance=batch.input_ids.numel())
                yield batch
                if state is not None:  # the batch is in every accumulator by now
                    state.after_batch(totals)
                if self.stop is not None and self.stop(totals):
                    return

    def _batches(self, corpus: str, tokens: int, skip_sequences: int = 0) -> Iterator:
        from saedoctor.activations.batches import token_batches
        from saedoctor.activations.corpus import iter_documents

        # Skipped sequences are tokenised (the packing depends on them) but never batched.
        return token_batches(
            self.loaded.tokenizer,
            iter_documents(corpus, text_field=self.opts.text_field),
            context=self.opts.context,
            batch_size=self.opts.batch_size,
            max_tokens=tokens,
            include_special=self.opts.include_special,
            skip_sequences=skip_sequences,
            name=corpus,
        )

    def _guarded(self, batch: Any, step: Callable[[Any], None]) -> None:
        """`step(batch)`; out of GPU memory, the accumulators are rolled back and the batch is
        retried in halves (down to one sequence) instead of losing the run."""
        cap = _row_caps.get(self.loaded.model)
        if cap is not None and batch.input_ids.shape[0] > cap:
            for part in split_batch(batch):  # a size that failed before: don't retry it
                self._guarded(part, step)
            return
        snapshot = [(u.suite.state_dict(), u.downstream.state_dict()) for u in self.units]
        extras = self.extras
        set_snapshot = [(_suite_state(x), x.downstream.state_dict()) for x in extras]
        try:
            step(batch)
            return
        except torch.cuda.OutOfMemoryError:
            rows = batch.input_ids.shape[0]
        # Outside the except block, so the traceback's frames (and their tensors) are freed.
        if rows == 1:
            raise InputError(
                f"out of GPU memory on {self.opts.device} for one sequence of --context "
                f"{self.opts.context}: use a shorter --context, --dtype bfloat16 or fewer --sae"
            )
        for unit, (suite, down) in zip(self.units, snapshot, strict=True):
            unit.suite.load_state_dict(suite)
            unit.downstream.load_state_dict(down)
        for extra, (suite, down) in zip(extras, set_snapshot, strict=True):
            if suite is not None:
                extra.suite.load_state_dict(suite)
            extra.downstream.load_state_dict(down)
        _out_of_memory(self.loaded.model, rows, self.opts.device)
        for part in split_batch(batch):
            self._guarded(part, step)


def _suite_state(extra: Any) -> dict | None:
    return None if extra.suite is None else extra.suite.state_dict()


# Per model: the batch rows above which a forward ran out of GPU memory, shared by the passes.
_row_caps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _out_of_memory(model: Any, rows: int, device: str) -> None:
    if model not in _row_caps:  # warn once per model
        stderr_console.print(
            f"[bold yellow]warning[/]: out of GPU memory on {device} with {rows} sequences per "
            "batch; continuing in smaller pieces (same metrics, slower): a smaller "
            "--batch-size avoids the retries", highlight=False
        )
    _row_caps[model] = min(_row_caps.get(model, rows), max(1, rows // 2))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_batch(batch: Any) -> list[Any]:
    """Two halves of a token batch; global sequence ids stay those of the whole batch."""
    import dataclasses

    rows = batch.input_ids.shape[0]
    half = (rows + 1) // 2
    parts = []
    for s in (slice(0, half), slice(half, rows)):
        lengths = None if batch.lengths is None else batch.lengths[s]
        first = batch.first_sequence + s.start
        parts.append(dataclasses.replace(batch, input_ids=batch.input_ids[s],
                                         counted=batch.counted[s], lengths=lengths,
                                         first_sequence=first))  # fmt: skip
    return parts


@torch.inference_mode()
def feed(
    unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor, sink: Sink,
    where: RowOrigin | None = None, target: torch.Tensor | None = None,
) -> None:  # fmt: skip
    """The dictionary on one batch of input rows `x`, then `sink` on the rows whose input,
    target and output are finite; `target` is what the decoder should write (default: `x`,
    an SAE); `where` (when given) locates the rows left out for the report."""
    _, _, rows = encode_finite(unit, x, seq_ids.to(x.device), where, target)
    if rows.x.shape[0]:
        sink(unit, rows)


def encode_finite(
    unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor, where: RowOrigin | None,
    target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Rows]:  # fmt: skip
    """(the output of every row, the mask of rows kept or None for all, the kept `Rows`).
    A row with a non-finite input or target never reaches the dictionary (its output is its
    own target, so a splice leaves it as the model made it); one with a non-finite output
    or code is dropped after. Both are counted in `unit.suite.nonfinite`."""
    track = unit.suite.nonfinite
    target = x if target is None else target
    x_ok = _both_finite(x, target)
    x_in = x if x_ok is None else x[x_ok]
    x_hat, codes = unit.sae(x_in)
    skip = unit.sae.skip_term(x_in)
    rest = None if skip is None else x_hat - skip
    full = x_hat
    if x_ok is not None:
        track.skip("activation_rows", ~x_ok, where)
        full = target.to(x_hat.dtype).clone()
        full[x_ok] = x_hat
        target, seq_ids = target[x_ok], seq_ids[x_ok]
        where = None if where is None else where.select(x_ok)
    rows = Rows(target, x_hat, codes, seq_ids, rest, *row_text(where))
    out_ok = finite_output_rows(x_hat, codes)
    if out_ok is not None:
        track.skip("sae_output_rows", ~out_ok, where)
        rows = rows.select(out_ok)
    return full, _kept_rows(x_ok, out_ok), rows


def _both_finite(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Rows where input and target are finite, or None when all are."""
    x_ok = finite_rows(x)
    if target is x:
        return x_ok
    t_ok = finite_rows(target)
    if x_ok is None or t_ok is None:
        return t_ok if x_ok is None else x_ok
    return x_ok & t_ok


def _kept_rows(x_ok: torch.Tensor | None, out_ok: torch.Tensor | None) -> torch.Tensor | None:
    """Rows kept of the whole batch from the input mask and the output mask of its finite
    rows; None when both kept everything (the clean case)."""
    if x_ok is None:
        return out_ok
    if out_ok is None:
        return x_ok
    kept = x_ok.clone()
    kept[x_ok] = out_ok
    return kept


@torch.inference_mode()
def downstream_batch(splicer: Any, units: list[SAEUnderTest], batch: Any, device: str,
                     tset: Any = None) -> None:  # fmt: skip
    from saedoctor.activations.stream import counted_rows
    from saedoctor.metrics.downstream import CleanDistribution

    input_ids = batch.input_ids.to(device)
    logits, acts = splicer.clean(input_ids)
    counted = batch.counted.to(device)
    kl_mask = counted
    ce_mask = counted[:, :-1] & batch.real()[:, 1:].to(device)
    clean = CleanDistribution(logits, input_ids, batch.first_sequence)
    del logits
    positions, seq_ids = counted_rows(batch)
    positions, seq_ids = positions.to(device), (seq_ids + batch.first_sequence).to(device)
    where = RowOrigin(batch.first_sequence, input_ids.shape[1], positions,
                      input_ids.reshape(-1)[positions])  # fmt: skip

    ablated: dict[Any, tuple] = {}
    spliced = _SpliceContext(splicer, clean, acts, positions, counted, ce_mask, kl_mask,
                             batch.first_sequence, ablated)  # fmt: skip
    for unit in units:
        if unit.clt is not None:
            continue  # fed with its CLT in _clt_downstream
        site, out_site = unit.sae.site, unit.sae.output_site
        flat_in = acts[site].reshape(-1, acts[site].shape[-1])
        flat = acts[out_site].reshape(-1, acts[out_site].shape[-1])
        x_hat, kept, rows = encode_finite(unit, flat_in[positions], seq_ids, where,
                                          flat[positions])  # fmt: skip
        spliced.unit(unit, x_hat, kept, rows)
    _clt_downstream(spliced, units, seq_ids, where)
    if tset is not None:
        from saedoctor.diagnose.transcoder_set import set_batch

        set_batch(splicer, tset, clean, positions, ce_mask, kl_mask)


@dataclass
class _SpliceContext:
    """One batch's clean forward and masks: each unit's output spliced in alone."""

    splicer: Any
    clean: Any
    acts: dict
    positions: torch.Tensor
    counted: torch.Tensor
    ce_mask: torch.Tensor
    kl_mask: torch.Tensor
    first_sequence: int
    ablated: dict

    def unit(self, unit: SAEUnderTest, x_hat: torch.Tensor, kept: torch.Tensor | None,
             rows: Rows) -> None:  # fmt: skip
        """Fold the unit's rows into its suite and its spliced CE / KL into its downstream."""
        splicer, clean, positions = self.splicer, self.clean, self.positions
        ce_mask, kl_mask, ablated = self.ce_mask, self.kl_mask, self.ablated
        counted, out_site = self.counted, unit.sae.output_site
        if rows.x.shape[0]:
            suite_sink(unit, rows)
        out_acts = self.acts[out_site]
        flat = out_acts.reshape(-1, out_acts.shape[-1])
        spliced = flat.clone()
        spliced[positions] = x_hat.to(spliced.dtype)
        sae_scores = clean.score(splicer.patched(out_site, spliced.view_as(out_acts)))
        if out_site not in ablated:  # zero-ablation depends on the site only: once per site
            ablated[out_site] = clean.score(splicer.zero_ablated(out_site, counted))
        ok = _finite_downstream(clean.ce, sae_scores, ablated[out_site], positions, kept)
        ce_m, kl_m = (ce_mask, kl_mask) if ok is None else (ce_mask & ok[:, :-1], kl_mask & ok)
        if ok is not None:
            _skip_positions(unit, kl_mask & ~ok, self.first_sequence)
        unit.downstream.add_clean(clean.ce, ce_m, self.first_sequence)
        for which, (ce, kl) in (("sae", sae_scores), ("ablated", ablated[out_site])):
            unit.downstream.add_patched(which, ce, kl, ce_m, kl_m)


def _clt_downstream(ctx: _SpliceContext, units: list[SAEUnderTest], seq_ids: torch.Tensor,
                    where: RowOrigin) -> None:  # fmt: skip
    """Each CLT layer's output spliced in alone (from the clean inputs of every layer at or
    below it), then every layer at once, each reading the stream the ones below changed."""
    from saedoctor.diagnose.clt import clt_groups, clt_splice_batch, encode_clt

    def rows_of(site: Any) -> torch.Tensor:
        a = ctx.acts[site]
        return a.reshape(-1, a.shape[-1])[ctx.positions]

    for group, members in clt_groups(units):
        for unit, y_hat, kept, rows in encode_clt(group, members, rows_of, seq_ids, where):
            ctx.unit(unit, y_hat, kept, rows)
        clt_splice_batch(ctx.splicer, group, ctx.clean, ctx.positions, ctx.ce_mask,
                         ctx.kl_mask)  # fmt: skip


def _skip_positions(unit: SAEUnderTest, skipped: torch.Tensor, first_sequence: int) -> None:
    """Count and locate the counted positions `skipped [B, T]` left out of CE/KL sums."""
    flat = torch.arange(skipped.numel(), device=skipped.device)
    grid = RowOrigin(first_sequence, skipped.shape[1], flat)
    unit.suite.nonfinite.skip("downstream_positions", skipped.flatten(), grid)


def _finite_downstream(
    clean_ce: torch.Tensor, sae: tuple, ablated: tuple, positions: torch.Tensor,
    kept: torch.Tensor | None,
) -> torch.Tensor | None:  # fmt: skip
    """`[B, T]` mask of the positions fit for CE/KL sums, or None when all are: clean and
    patched scores finite, and the SAE kept the position's row (a row left out of the sparse
    metrics is left out here too)."""
    from saedoctor.metrics.downstream import finite_positions

    ok = finite_positions(clean_ce, sae, ablated)
    if kept is None:
        return ok
    if ok is None:
        ok = torch.ones_like(sae[1], dtype=torch.bool)
    ok.view(-1)[positions[~kept]] = False
    return ok
