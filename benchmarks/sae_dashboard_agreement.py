"""saedoctor's feature cards against SAEDashboard 0.8.0 on the same SAE, model and tokens.

    .venv/bin/python benchmarks/sae_dashboard_agreement.py [--sequences 64] [--context 128]
        [--features auto|F,F,...] [--n-features 8] [--fold-w-dec-norm skip|force]
        [--peer-only] [--keep DIR] [--quick] [--out DIR]

1. Tokens: the default evaluation corpus (python-docs@test) packed by saedoctor's own
   `token_batches` (as `diagnose` packs it) into `--sequences` x `--context` token ids,
   written to a .safetensors file: the one input both tools read. saedoctor does not count
   BOS / EOS / pad positions; SAEDashboard is given the same ids as `ignore_tokens` (its
   activations there are set to 0), which is the same mask (checked).
2. Features (`--features auto`): the default SAE is run on those tokens through saedoctor's
   reader, and `--n-features` - 1 features that fire at least 2 x CARD_TOP times are taken
   evenly spread over firing counts (densest and sparsest included), plus one firing fewer
   than CARD_TOP times (its top list is short on both sides).
3. SAEDashboard: `_sae_dashboard_worker.py feature-data` in its own venv
   (`_sae_dashboard_env.py`: sae-dashboard 0.8.0 pins transformer-lens<3 and
   transformers<4.57), on the token file, default model and default SAE, on CPU: its
   top-activating examples (buffer none: every position eligible, as for saedoctor) and its
   logit-lens tables, with the unrounded activations it ranked.
4. saedoctor: `saedoctor diagnose` on the same corpus / tokens / context / batch size (hence
   the same packing and sequence numbers) with `--card-feature` for each feature
   (`run_saedoctor_cards`, the one place to adjust when the option changes).
5. Per feature: are the top-k (sequence, position) sets equal (k = min(CARD_TOP, firings)),
   in the same order; the largest |activation difference| at saedoctor's top contexts; do
   saedoctor's windows (CARD window: counted rows, 10 before / 5 after) hold the tokens and
   SAEDashboard's activations at those positions; are the logit-lens top / bottom token lists
   equal, and their largest value difference. Also, independently of saedoctor's report:
   does SAEDashboard's logit lens equal W_dec[f] @ (diag(g_final) W_U) - its mean over the
   vocabulary, computed here in float64 from the HF weights (`lens_formula`)?

`--peer-only` runs steps 1-3 and the lens formula only (no saedoctor run). Results go to
`<out>/sae_dashboard_agreement.json`; `--keep DIR` also keeps the token file and the worker's
output there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers  # noqa: E402
import _proc  # noqa: E402
import _results  # noqa: E402
import _sae_dashboard_env as peer_env  # noqa: E402
from saedoctor.diagnose.cards import TokenText  # noqa: E402

NAME = "sae_dashboard_agreement"
CORPUS = "python-docs@test"
CARD_TOP = 10  # saedoctor's metrics/cards.py CARD_TOP: top contexts per card
WINDOW_BEFORE, WINDOW_AFTER = 10, 5  # saedoctor's card window (counted rows)
LENS_ROWS = 10  # logit-lens tokens per side (saedoctor's LENS_TOKENS, SAEDashboard's n_rows)
# Activations: TransformerLens (eager attention, LN folded) and HF (sdpa) residual streams
# differ by float32 rounding (~3e-6 relative); an activation may move that much too.
ACT_REL_TOLERANCE = 1e-4  # of the feature's largest activation
LENS_TOLERANCE = 1e-4  # absolute, logit units (both float32 products of the same weights)
# saedoctor's report rounds window activations to 3 decimals (the focus activation is exact).
WINDOW_ROUNDING = 5e-4
# SAEDashboard's default SequencesConfig buffer: a top example needs 5 + 1 positions before it
# and 5 after it in the sequence.
DEFAULT_BUFFER = (5, 5)
QUICK_SEQUENCES, QUICK_FEATURES = 16, 4
WORKER_TIMEOUT_S = 3600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=64, help="packed sequences (default 64)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--features", default="auto", help="auto, or comma-separated feature ids")
    p.add_argument("--n-features", type=int, default=8, help="features picked by auto")
    p.add_argument(
        "--fold-w-dec-norm",
        choices=("skip", "force"),
        default="skip",
        help="what SAEDashboard's fold_W_dec_norm() call does (see the worker)",
    )
    p.add_argument(
        "--peer-only",
        action="store_true",
        help="SAEDashboard and the lens formula only; no saedoctor run",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the token file, the worker's output and saedoctor's report here",
    )
    _results.add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.sequences = min(args.sequences, QUICK_SEQUENCES)
        args.n_features = min(args.n_features, QUICK_FEATURES)
    return args


# -- 1. tokens ------------------------------------------------------------------------------
def make_tokens(tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The packed token ids [n, context], saedoctor's counted mask, and the special ids."""
    batches = _peers.eval_token_batches(tokenizer, CORPUS, args.sequences * args.context,
                                        args.context, args.batch_size)  # fmt: skip
    ids = torch.cat([b.input_ids for b in batches]).to(torch.int64)
    counted = torch.cat([b.counted for b in batches])
    specials = _peers.special_token_ids(tokenizer)
    same_mask = bool((counted == ~torch.isin(ids, torch.tensor(specials))).all())
    return {"ids": ids, "counted": counted, "specials": specials, "same_mask": same_mask}


def write_tokens(ids: torch.Tensor, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / "tokens.safetensors"
    save_file({"input_ids": ids.contiguous()}, str(path))
    return path


# -- 2. features ----------------------------------------------------------------------------
@torch.inference_mode()
def firing_counts(hf_model: Any, ids: torch.Tensor, counted: torch.Tensor,
                  batch_size: int) -> torch.Tensor:  # fmt: skip
    """Per feature of the default SAE, its firings (> 0) over the counted positions."""
    from saedoctor.activations.sites import SiteReader
    from saedoctor.defaults import default_sae_dir
    from saedoctor.sae.loaders import load_sae

    sae = load_sae(default_sae_dir())
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.int64)
    with SiteReader(hf_model, [sae.site]) as reader:
        for rows in range(0, ids.shape[0], batch_size):
            x = reader.read(ids[rows : rows + batch_size])[sae.site]
            mask = counted[rows : rows + batch_size].reshape(-1)
            dense = sae.encode(x.reshape(-1, x.shape[-1])[mask]).dense()
            counts += (dense > 0).sum(0)
    return counts


def pick_features(counts: torch.Tensor, n: int) -> list[int]:
    """n - 1 features with >= 2 x CARD_TOP firings, evenly spread over their firing counts
    (ties by id), and one with 1 .. CARD_TOP - 1 firings."""
    rich = (counts >= 2 * CARD_TOP).nonzero().flatten()
    order = rich[torch.argsort(counts[rich], stable=True)]
    m = min(n - 1, order.numel())
    picks = [int(order[round(i * (order.numel() - 1) / max(m - 1, 1))]) for i in range(m)]
    sparse = ((counts > 0) & (counts < CARD_TOP)).nonzero().flatten()
    if sparse.numel():
        picks.append(int(sparse[0]))
    return sorted(set(picks))


# -- 3. SAEDashboard --------------------------------------------------------------------------
def run_peer(
    args: argparse.Namespace,
    model_dir: Path,
    token_file: Path,
    features: list[int],
    specials: list[int],
    folder: Path,
) -> tuple[dict, dict[int, torch.Tensor], float]:
    from safetensors.torch import load_file

    from saedoctor.defaults import default_sae_dir

    out = folder / "sae_dashboard.json"
    worker_args = [
        "feature-data", "--model", str(model_dir), "--sae", str(default_sae_dir()),
        "--tokens", str(token_file), "--features", ",".join(map(str, features)),
        "--out", str(out), "--top", str(CARD_TOP), "--logit-rows", str(LENS_ROWS),
        "--buffer", "none", "--ignore-tokens", ",".join(map(str, specials)),
        "--fold-w-dec-norm", args.fold_w_dec_norm,
    ]  # fmt: skip
    peer_env.ensure_env()  # a first build is not part of the worker's wall time
    start = time.perf_counter()
    peer_env.run_worker(worker_args, timeout=WORKER_TIMEOUT_S)
    wall = time.perf_counter() - start
    tensors = load_file(str(out.with_suffix(".acts.safetensors")))
    acts = {f: tensors[f"acts_{f}"].double() for f in features}
    return json.loads(out.read_text()), acts, wall


# -- 4. saedoctor ---------------------------------------------------------------------------
def run_saedoctor_cards(args: argparse.Namespace, features: list[int], folder: Path
                        ) -> tuple[dict[int, dict[str, Any]], float]:  # fmt: skip
    """saedoctor's cards of `features` on the same tokens, by feature id, and the wall time.

    `saedoctor diagnose` (default model and SAE) on the same corpus, token count, context and
    batch size as `make_tokens`, so it packs the same sequences with the same sequence
    numbers; `--card-feature` asks for a card for each feature (the sampled `--cards` may add
    others: they are ignored here). No downstream pass: it does not touch the cards."""
    report = folder / "saedoctor_report.json"
    cmd = [sys.executable, "-m", "saedoctor", "diagnose", "--corpus", CORPUS,
           "--tokens", str(args.sequences * args.context), "--context", str(args.context),
           "--batch-size", str(args.batch_size), "--no-downstream", "--quiet",
           "--out", str(report)]  # fmt: skip
    for f in features:
        cmd += ["--card-feature", str(f)]
    measured = _proc.check(_proc.run_measured(cmd, log=folder / "saedoctor.log"),
                           "saedoctor diagnose")  # fmt: skip
    (entry,) = json.loads(report.read_text())["saes"]
    cards = {c["feature"]: c for c in (entry.get("cards") or {}).get("features", [])}
    missing = [f for f in features if f not in cards]
    if missing:
        raise SystemExit(f"saedoctor's report has no card for features {missing}")
    return cards, measured.wall_s


# -- 5. comparison --------------------------------------------------------------------------
def peer_top(peer_feature: dict[str, Any]) -> list[tuple[int, int, float]]:
    """SAEDashboard's top examples that fire: with fewer firings than the group's size its
    torch.topk fills the rest with zero activations at arbitrary positions."""
    return [(e["sequence"], e["position"], e["activation"])
            for e in peer_feature["top_examples"] if e["activation"] > 0]  # fmt: skip


def boundary_gap(acts: torch.Tensor, k: int) -> float | None:
    """The k-th largest activation minus the (k+1)-th: near 0, the k-th place is a near tie
    and float rounding may pick either."""
    flat = acts.flatten()
    if flat.numel() <= k or float(flat.topk(k + 1).values[k]) <= 0:
        return None
    top = flat.topk(k + 1).values
    return float(top[k - 1] - top[k])


def expected_window(seq: int, pos: int, ids: torch.Tensor, counted: torch.Tensor,
                    acts: torch.Tensor) -> tuple[list[int], list[float], int]:  # fmt: skip
    """A card window as the design defines it, from the token file and SAEDashboard's
    activations: the counted positions of the sequence around `pos` (10 before, 5 after)."""
    rows = counted[seq].nonzero().flatten().tolist()
    i = rows.index(pos)
    shown = rows[max(0, i - WINDOW_BEFORE) : i + WINDOW_AFTER + 1]
    return ([int(ids[seq, p]) for p in shown], [float(acts[seq, p]) for p in shown],
            shown.index(pos))  # fmt: skip


def compare_top(card: dict[str, Any], peer_feature: dict[str, Any], acts: torch.Tensor
                ) -> dict[str, Any]:  # fmt: skip
    theirs = peer_top(peer_feature)
    ours = [(c["sequence"], c["position"], c["activation"]) for c in card["top_contexts"]]
    scale = max(float(acts.max()), 1e-30)
    diffs = [abs(a - float(acts[s, p])) for s, p, a in ours]
    only_ours = sorted({(s, p) for s, p, _ in ours} - {(s, p) for s, p, _ in theirs})
    only_theirs = sorted({(s, p) for s, p, _ in theirs} - {(s, p) for s, p, _ in ours})
    return {
        "k": len(theirs), "k_saedoctor": len(ours),
        "top_set_equal": not only_ours and not only_theirs,
        "top_order_equal": [(s, p) for s, p, _ in ours] == [(s, p) for s, p, _ in theirs],
        "only_saedoctor": [list(x) for x in only_ours],
        "only_sae_dashboard": [list(x) for x in only_theirs],
        "boundary_gap": boundary_gap(acts, CARD_TOP),
        "outside_default_buffer": outside_default_buffer(ours, acts.shape[1]),
        "max_abs_activation_diff": max(diffs, default=0.0),
        "max_rel_activation_diff": max(diffs, default=0.0) / scale,
        "max_activation": {"saedoctor": ours[0][2] if ours else None,
                           "sae_dashboard": theirs[0][2] if theirs else None},
    }  # fmt: skip


def outside_default_buffer(top: list[tuple[int, int, float]], context: int) -> int:
    """saedoctor's top contexts SAEDashboard's default buffer would not consider: with it,
    the top sets would differ for that reason alone."""
    first, end = DEFAULT_BUFFER[0] + 1, context - DEFAULT_BUFFER[1]
    return sum(not first <= p < end for _, p, _ in top)


def compare_windows(card: dict[str, Any], ids: torch.Tensor, counted: torch.Tensor,
                    acts: torch.Tensor, text: TokenText) -> dict[str, Any]:  # fmt: skip
    tokens_equal = focus_equal = True
    worst = 0.0
    for c in card["top_contexts"]:
        tok, act, focus = expected_window(c["sequence"], c["position"], ids, counted, acts)
        tokens_equal &= c["tokens"] == [text(t) for t in tok]
        focus_equal &= c["focus"] == focus
        if len(c["activations"]) != len(act):
            tokens_equal = False
            continue
        for a, b in zip(c["activations"], act, strict=True):
            worst = max(worst, abs(a - b))
    return {"windows": len(card["top_contexts"]), "tokens_equal": tokens_equal,
            "focus_equal": focus_equal, "max_abs_activation_diff": worst}  # fmt: skip


def compare_lens(card: dict[str, Any], peer_feature: dict[str, Any], text: TokenText
                 ) -> dict[str, Any] | None:  # fmt: skip
    lens = card.get("logit_lens")
    if lens is None:
        return None
    out: dict[str, Any] = {}
    for side in ("top", "bottom"):
        ours = [(tok, float(v)) for tok, v in lens[side]]
        theirs = [(text(i), float(v)) for i, _, v in peer_feature["logit_lens"][side]]
        ours_by = dict(ours)
        common = [abs(ours_by[t] - v) for t, v in theirs if t in ours_by]
        out[f"{side}_tokens_equal"] = [t for t, _ in ours] == [t for t, _ in theirs]
        out[f"{side}_token_sets_equal"] = {t for t, _ in ours} == {t for t, _ in theirs}
        out[f"{side}_max_value_diff"] = max(common, default=None)
    return out


def compare_feature(
    feature: int,
    card: dict[str, Any],
    peer_feature: dict[str, Any],
    acts: torch.Tensor,
    tokens: dict[str, Any],
    text: TokenText,
) -> dict[str, Any]:
    top = compare_top(card, peer_feature, acts)
    windows = compare_windows(card, tokens["ids"], tokens["counted"], acts, text)
    lens = compare_lens(card, peer_feature, text)
    window_tolerance = WINDOW_ROUNDING + ACT_REL_TOLERANCE * float(acts.max())
    ok = (top["top_set_equal"] and top["max_rel_activation_diff"] <= ACT_REL_TOLERANCE
          and windows["tokens_equal"] and windows["focus_equal"]
          and windows["max_abs_activation_diff"] <= window_tolerance
          and lens is not None and lens["top_tokens_equal"] and lens["bottom_tokens_equal"]
          and max(lens["top_max_value_diff"] or 0, lens["bottom_max_value_diff"] or 0)
          <= LENS_TOLERANCE)  # fmt: skip
    return {"feature": feature, "firings": peer_feature["firing_count"], "agree": ok,
            "top": top, "windows": windows, "logit_lens": lens}  # fmt: skip


# -- the lens formula, saedoctor-independent --------------------------------------------------
@torch.no_grad()
def lens_formula(hf_model: Any, peer: dict[str, Any], text: TokenText) -> dict[str, Any]:
    """SAEDashboard's logit lens against W_dec[f] @ (diag(g_final) W_U^T) minus its mean over
    the vocabulary, in float64 from the HF weights and the SAE file (no saedoctor code)."""
    from safetensors.torch import load_file

    from saedoctor.defaults import default_sae_dir

    w_dec = load_file(str(default_sae_dir() / "sae_weights.safetensors"))["W_dec"].double()
    g = hf_model.model.norm.weight.double()
    w_u = hf_model.lm_head.weight.double()  # [vocab, d_model] (tied to the embedding)
    worst, ids_equal, raw_equal = 0.0, True, True
    for pf in peer["features"]:
        raw = (w_dec[pf["feature"]] * g) @ w_u.T
        centred = raw - raw.mean()
        for side, largest in (("top", True), ("bottom", False)):
            rows = pf["logit_lens"][side]
            found = centred.topk(len(rows), largest=largest)
            ids_equal &= found.indices.tolist() == [i for i, _, _ in rows]
            raw_equal &= raw.topk(len(rows), largest=largest).indices.tolist() == [
                i for i, _, _ in rows
            ]
            worst = max(worst, *(abs(float(centred[i]) - v) for i, _, v in rows))
    return {
        "formula": "W_dec[f] @ (diag(g_final) W_U^T), minus its mean over the vocabulary",
        "token_ids_equal": ids_equal, "max_abs_value_diff": worst,
        "uncentred_token_ids_equal": raw_equal,
        "note": "centring shifts every logit of a feature by one constant: the ranking is the "
                "uncentred one, the values are not",
    }  # fmt: skip


# -- the report -------------------------------------------------------------------------------
DIFFERENCES = [
    "SAEDashboard 0.8.0 calls fold_W_dec_norm() on the SAE before anything else; SAELens 6.54 "
    "refuses it for TopK SAEs with rescale_acts_by_decoder_norm=False (NotImplementedError), "
    "so SAEDashboard cannot run the default SAE unaided. The worker makes the call a no-op "
    "(--fold-w-dec-norm skip, default; decoder row norms are 1 within 6e-5: float16 storage), "
    "so activations are SAELens's plain TopK encode, as saedoctor's. With 'force' the rows are "
    "normalised: activations scale by the norms and the logit lens reads unit rows.",
    "SAEDashboard reads the residual stream through TransformerLens (HookedSAETransformer, "
    "eager attention, RMSNorm weights folded); saedoctor through HF transformers (sdpa). They "
    "agree to float32 rounding (worker's tl_check), so activations differ by ~1e-6 relative and "
    "a top-k place can flip only at a near tie (boundary_gap).",
    "Ranking: SAEDashboard takes torch.topk of the flattened [sequences, positions] "
    "activations: ties come in an unspecified order; saedoctor breaks ties by (sequence, "
    "position) ascending. Sets are compared, and the order separately.",
    "SAEDashboard's default buffer (5, 5) makes only positions 6 .. context-6 eligible as a top "
    "example and shows 11 raw positions; saedoctor considers every counted position and shows "
    "a window of counted rows (10 before, 5 after). The worker runs with buffer=None (every "
    "position eligible; the window shown is the whole sequence from position 1), and the "
    "comparison rebuilds saedoctor's window from the token file and SAEDashboard's "
    "activations.",
    "SAEDashboard rounds the activations it shows to 4 decimals (SequenceData.feat_acts); the "
    "worker also records the unrounded tensor it ranked, which is what is compared. "
    "saedoctor's report rounds window activations to 3 decimals (the focus activation is "
    "unrounded), so window activations agree to WINDOW_ROUNDING only.",
    "Special tokens: saedoctor never counts BOS/EOS/pad; SAEDashboard gets the same ids as "
    "ignore_tokens (activations there set to 0 before ranking), the same mask here "
    "(tokens.same_mask). With fewer firings than the top group's size, SAEDashboard's list is "
    "padded with zero activations at arbitrary positions; those are dropped.",
    "Logit lens: SAEDashboard computes W_dec[f] @ W_U with TransformerLens's processed W_U "
    "(fold_ln: final RMSNorm weight folded in; center_unembed: each row centred over the "
    "vocabulary). saedoctor folds the same weight and centres each feature's logits, the same "
    "numbers up to float32 rounding (lens_formula checks SAEDashboard against the formula).",
    "Token strings: SAEDashboard shows vocabulary entries with 'Ġ' etc. replaced by HTML "
    "entities; saedoctor shows tokenizer.decode([id]). Tokens are compared by id through "
    "saedoctor's decoding.",
]


def summary(comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    lens = [c["logit_lens"] for c in comparisons if c["logit_lens"] is not None]
    return {
        "features": len(comparisons),
        "agree": sum(c["agree"] for c in comparisons),
        "top_sets_equal": sum(c["top"]["top_set_equal"] for c in comparisons),
        "top_orders_equal": sum(c["top"]["top_order_equal"] for c in comparisons),
        "max_rel_activation_diff": max((c["top"]["max_rel_activation_diff"]
                                        for c in comparisons), default=None),
        "max_abs_activation_diff": max((c["top"]["max_abs_activation_diff"]
                                        for c in comparisons), default=None),
        "windows_equal": sum(c["windows"]["tokens_equal"] and c["windows"]["focus_equal"]
                             for c in comparisons),
        "logit_lens_lists_equal": sum(x["top_tokens_equal"] and x["bottom_tokens_equal"]
                                      for x in lens),
        "logit_lens_max_value_diff": max((max(x["top_max_value_diff"] or 0,
                                              x["bottom_max_value_diff"] or 0) for x in lens),
                                         default=None),
        "top_contexts_outside_default_buffer": sum(c["top"]["outside_default_buffer"]
                                                   for c in comparisons),
        "disagreeing_features": [c["feature"] for c in comparisons if not c["agree"]],
    }  # fmt: skip


def print_table(comparisons: list[dict[str, Any]]) -> None:
    print(f"{'feature':>8}{'firings':>9}{'top set':>9}{'order':>7}{'max|dAct|':>12}"
          f"{'windows':>9}{'lens':>6}{'max|dLogit|':>13}  agree")  # fmt: skip
    for c in comparisons:
        t, w, x = c["top"], c["windows"], c["logit_lens"] or {}
        lens_ok = bool(x) and x["top_tokens_equal"] and x["bottom_tokens_equal"]
        worst = max(x.get("top_max_value_diff") or 0, x.get("bottom_max_value_diff") or 0)
        print(f"{c['feature']:>8}{c['firings']:>9}{_yn(t['top_set_equal']):>9}"
              f"{_yn(t['top_order_equal']):>7}{t['max_abs_activation_diff']:>12.3g}"
              f"{_yn(w['tokens_equal'] and w['focus_equal']):>9}{_yn(lens_ok):>6}"
              f"{worst:>13.3g}  {_yn(c['agree'])}")  # fmt: skip


def _yn(value: bool) -> str:
    return "yes" if value else "NO"


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    out = _results.out_dir(args)
    _peers.offline()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="saedoctor-sdash-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        payload = agreement(args, folder)
    _results.write_result(NAME, payload, out, started, quick=args.quick)
    return 0


def agreement(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    model_dir = _peers.default_model_dir()
    hf_model, tokenizer = _peers.load_hf(model_dir)
    tokens = make_tokens(tokenizer, args)
    token_file = write_tokens(tokens["ids"], folder)
    if args.features.strip().lower() == "auto":
        counts = firing_counts(hf_model, tokens["ids"], tokens["counted"], args.batch_size)
        features = pick_features(counts, args.n_features)
    else:
        features = sorted({int(f) for f in args.features.split(",") if f.strip()})
    print(f"features {features}; SAEDashboard {peer_env.PEER_VERSION} ...", file=sys.stderr)
    peer, acts, peer_wall = run_peer(args, model_dir, token_file, features,
                                     tokens["specials"], folder)  # fmt: skip
    text = TokenText(tokenizer)  # token ids as saedoctor's cards show them
    formula = lens_formula(hf_model, peer, text)
    del hf_model
    payload: dict[str, Any] = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "features": features,
        "tokens": {"corpus": CORPUS, "sequences": int(tokens["ids"].shape[0]),
                   "context": int(tokens["ids"].shape[1]),
                   "counted": int(tokens["counted"].sum()), "special_ids": tokens["specials"],
                   "same_mask": tokens["same_mask"]},
        "sae_dashboard": {k: peer[k] for k in ("versions", "settings", "hook_name",
                                               "decoder_norm_range", "tl_check", "seconds")},
        "sae_dashboard_wall_s": round(peer_wall, 2),
        "timing_note": "one run each, not a timing: SAEDashboard's seconds are its worker's "
                       "(load: model + SAE; run: SaeVisRunner.run); wall includes the process",
        "lens_formula": formula,
        "tolerances": {"activation_rel": ACT_REL_TOLERANCE, "logit_abs": LENS_TOLERANCE,
                       "window_rounding": WINDOW_ROUNDING},
        "differences": DIFFERENCES,
    }  # fmt: skip
    print(
        f"SAEDashboard: {peer['seconds']} (wall {peer_wall:.1f} s); lens formula: ids "
        f"{_yn(formula['token_ids_equal'])}, max |diff| {formula['max_abs_value_diff']:.3g}"
    )
    if args.peer_only:
        payload["saedoctor"] = {"status": "not run (--peer-only)"}
        return payload
    cards, ours_wall = run_saedoctor_cards(args, features, folder)
    by_id = {pf["feature"]: pf for pf in peer["features"]}
    comparisons = [compare_feature(f, cards[f], by_id[f], acts[f], tokens, text)
                   for f in features]  # fmt: skip
    print_table(comparisons)
    payload.update(saedoctor={"status": "ran", "wall_s": round(ours_wall, 2)},
                   comparisons=comparisons, summary=summary(comparisons))  # fmt: skip
    s = payload["summary"]
    print(
        f"agreement: {s['agree']}/{s['features']} features "
        + ("" if not s["disagreeing_features"] else f"(differ: {s['disagreeing_features']})")
    )
    if not all(math.isfinite(c["top"]["max_abs_activation_diff"]) for c in comparisons):
        raise SystemExit("non-finite activation difference")
    return payload


if __name__ == "__main__":
    raise SystemExit(main())
