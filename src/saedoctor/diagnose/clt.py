"""Cross-layer transcoders under test: one unit per source layer, fed together.

Layer i's unit holds that layer's encoder (and its own-layer decoder slice `W_dec_i[:, 0]`,
which absorption reads); its codes give every feature metric. Its reconstruction metrics are
of the whole CLT's output at layer i, `b_dec_i + Σ_{j <= i} a_j @ W_dec_j[:, i - j]`, against
the MLP output there: what an attribution graph built on the CLT leaves in its error nodes.
A row is kept for every layer or for none (one non-finite mask shared by all layers), so
each layer's sums and the set-level error share are over the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from saedoctor.activations.splice import Replacer, Splicer
from saedoctor.diagnose.transcoder_set import splice_whole
from saedoctor.diagnose.units import CLTUnderTest, Rows, SAEUnderTest, new_suite, row_text
from saedoctor.metrics.downstream import CleanDistribution
from saedoctor.metrics.finite import RowOrigin, finite_output_rows, finite_rows
from saedoctor.sae.codes import Codes

NAME = "cross_layer_transcoder"
ABSORPTION_NOTE = ("absorption reads each layer's own-layer decoder slice W_dec_i[:, 0] (the "
                   "feature's write into its own layer's MLP output)")  # fmt: skip
RECONSTRUCTION_NOTE = ("each layer's reconstruction metrics (variance explained, FVU, error "
                       "share, loss recovered) are of the full CLT output at that layer, from "
                       "every encoder at or below it")  # fmt: skip


def shadow_units(units: list[SAEUnderTest], opts: Any) -> list[SAEUnderTest]:
    """Fresh-suite copies of `units` (a second corpus); a CLT's copies share a new group."""
    groups: dict[int, CLTUnderTest] = {}
    out = []
    for u in units:
        group = None
        if u.clt is not None:
            group = groups.setdefault(id(u.clt), CLTUnderTest(u.clt.clt, u.clt.name, u.path))
        out.append(SAEUnderTest(u.name, u.path, u.sae, new_suite(u.sae, opts), clt=group))
        if group is not None:
            group.units.append(out[-1])
    return out


def clt_groups(units: list[SAEUnderTest]) -> list[tuple[CLTUnderTest, list[SAEUnderTest]]]:
    """Each CLT among `units` with its members here (a pass may take some layers only)."""
    found: dict[int, tuple[CLTUnderTest, list[SAEUnderTest]]] = {}
    for u in units:
        if u.clt is not None:
            found.setdefault(id(u.clt), (u.clt, []))[1].append(u)
    return list(found.values())


def clt_sites(group: CLTUnderTest) -> list:
    """Every site a CLT reads: each layer's output needs the inputs of all layers below."""
    return [s for pair in group.clt.sites for s in pair]


# -- feeding ---------------------------------------------------------------------------------
Encoded = tuple[SAEUnderTest, torch.Tensor, "torch.Tensor | None", Rows]


@torch.inference_mode()
def encode_clt(group: CLTUnderTest, members: list[SAEUnderTest],
               acts: Callable[[Any], torch.Tensor], seq_ids: torch.Tensor,
               where: RowOrigin | None) -> list[Encoded]:  # fmt: skip
    """Per member: (its layer's output on every row, the kept-row mask or None, kept Rows),
    as `encode_finite` gives for one dictionary. `acts(site)` is a site's `[n, d]` rows."""
    sites = group.clt.sites
    xs = [acts(i) for i, _ in sites]
    ys = [acts(o) for _, o in sites]
    x_ok = _all_finite([*xs, *ys])
    if x_ok is not None:
        xs, where_in = [x[x_ok] for x in xs], None if where is None else where.select(x_ok)
    else:
        where_in = where
    codes = group.clt.encode_all({i: x.to(_dtype(group)) for i, x in enumerate(xs)})
    y_hats = [y for _, y in group.clt.reconstruct_all(codes)]
    out_ok = _all_outputs_finite(y_hats, codes)
    kept = _kept(x_ok, out_ok)
    ids = seq_ids if x_ok is None else seq_ids[x_ok]
    out = []
    for unit in members:
        layer = unit.sae.site.layer  # type: ignore[union-attr]
        _count_skips(unit, x_ok, out_ok, where, where_in)
        y = ys[layer] if x_ok is None else ys[layer][x_ok]
        rows = Rows(y, y_hats[layer], codes[layer], ids, None, *row_text(where_in))
        if out_ok is not None:
            rows = rows.select(out_ok)
        out.append((unit, _full(ys[layer], y_hats[layer], x_ok), kept, rows))
    return out


def _dtype(group: CLTUnderTest) -> torch.dtype:
    return group.clt.encoders[0].W_enc.dtype


def _all_finite(ts: list[torch.Tensor]) -> torch.Tensor | None:
    """Rows finite in every tensor, or None when all are (the clean case, no copy)."""
    ok = None
    for t in ts:
        m = finite_rows(t)
        if m is not None:
            ok = m if ok is None else ok & m
    return ok


def _all_outputs_finite(y_hats: list[torch.Tensor], codes: dict[int, Codes]) -> torch.Tensor | None:
    ok = None
    for layer, y_hat in enumerate(y_hats):
        m = finite_output_rows(y_hat, codes[layer])
        if m is not None:
            ok = m if ok is None else ok & m
    return ok


def _kept(x_ok: torch.Tensor | None, out_ok: torch.Tensor | None) -> torch.Tensor | None:
    if x_ok is None or out_ok is None:
        return out_ok if x_ok is None else x_ok
    kept = x_ok.clone()
    kept[x_ok] = out_ok
    return kept


def _count_skips(unit: SAEUnderTest, x_ok: torch.Tensor | None, out_ok: torch.Tensor | None,
                 where: RowOrigin | None, where_in: RowOrigin | None) -> None:  # fmt: skip
    """Every member reports the rows the shared mask dropped, as a lone dictionary would."""
    if x_ok is not None:
        unit.suite.nonfinite.skip("activation_rows", ~x_ok, where)
    if out_ok is not None:
        unit.suite.nonfinite.skip("sae_output_rows", ~out_ok, where_in)


def _full(y: torch.Tensor, y_hat: torch.Tensor, x_ok: torch.Tensor | None) -> torch.Tensor:
    """The output on every row: a row never encoded keeps the model's own value."""
    if x_ok is None:
        return y_hat
    full = y.to(y_hat.dtype).clone()
    full[x_ok] = y_hat
    return full


def feed_clt(group: CLTUnderTest, members: list[SAEUnderTest], site_acts: dict,
             seq_ids: torch.Tensor, sink: Callable[[SAEUnderTest, Rows], None],
             where: RowOrigin | None) -> None:  # fmt: skip
    """Every member's rows of one batch into `sink` (see `model_pass.feed`)."""
    encoded = encode_clt(group, members, lambda s: site_acts[s], seq_ids, where)
    for unit, _, _, rows in encoded:
        if rows.x.shape[0]:
            sink(unit, rows)


# -- every layer spliced at once --------------------------------------------------------------
def _replacers(group: CLTUnderTest, positions: torch.Tensor) -> list[Replacer]:
    """Layer l's replacer encodes the live `mlp_in` at l (the stream the layers below already
    changed), keeps its codes, and writes the CLT's output at l from codes 0..l. Rows with a
    non-finite input or output keep the model's own MLP output."""
    codes: dict[int, Codes] = {}

    def replace(layer: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def fn(x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x_in.reshape(-1, x_in.shape[-1])[positions].to(_dtype(group))
            codes[layer] = group.clt.encoders[layer].encode(torch.nan_to_num(x))
            y_hat = group.clt.reconstruct(layer, codes)
            out = y.reshape(-1, y.shape[-1]).clone()
            ok = torch.isfinite(y_hat).all(-1) & torch.isfinite(x).all(-1)
            out[positions[ok]] = y_hat[ok].to(out.dtype)
            return out.view_as(y)

        return fn

    return [Replacer(i, o, replace(layer)) for layer, (i, o) in enumerate(group.clt.sites)]


def clt_splice_batch(splicer: Splicer, group: CLTUnderTest, clean: CleanDistribution,
                     positions: torch.Tensor, ce_mask: torch.Tensor,
                     kl_mask: torch.Tensor) -> None:  # fmt: skip
    """Fold one batch's whole-CLT-spliced and all-MLPs-ablated CE / KL into the group."""
    splice_whole(splicer, group.downstream, clean, _replacers(group, positions), ce_mask,
                 kl_mask)  # fmt: skip


# -- the report ------------------------------------------------------------------------------
NOT_SPLICED = "downstream loss not requested (--no-downstream) or undefined on this data"


def clt_entry(group: CLTUnderTest) -> dict[str, Any]:
    """The report's `cross_layer_transcoder` item: per-layer and pooled error share, and the
    loss with every layer spliced in at once."""
    assert group.suite is not None
    rec = group.suite.compute()
    layers = []
    for layer, m in rec["layers"].items():
        keep = ("variance_explained", "fvu", "error_share", "mse")
        layers.append({"layer": layer, "dictionary": group.units[layer].name,
                       "tokens": rec["tokens"][layer],
                       **{k: (None if m is None else m[k]) for k in keep}})  # fmt: skip
    metrics = group.downstream.compute()
    not_measured = {} if metrics else {"loss_recovered": NOT_SPLICED, "kl_score": NOT_SPLICED}
    return {
        "name": group.name,
        "path": group.path,
        "n_layers": group.clt.n_layers,
        "d_transcoder": group.clt.d_transcoder,
        "dictionaries": [u.name for u in group.units],
        "error_share": rec["error_share"],
        "layers": layers,
        "metrics": metrics,
        "not_measured": not_measured,
        "notes": [RECONSTRUCTION_NOTE, ABSORPTION_NOTE],
    }
