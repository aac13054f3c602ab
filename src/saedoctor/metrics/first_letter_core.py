"""SAEBench first-letter feature absorption, computed from activations (no model needed).

Faithful to SAEBench `sae_bench/evals/absorption/` (Chanin et al., "A is for Absorption"):

1. A ground-truth (GT) probe: 26 one-vs-rest logistic probes on the model activations of the
   train words (`train_multi_probe`, SAEBench's `train_linear_probe_for_task` settings).
2. k-sparse probing on SAE latents: an L1-penalised multi-probe on the train words' SAE
   activations ranks latents per letter; for k = 1..max_k the top-k latents (by signed
   weight) get a balanced logistic regression, scored by F1 on the test words. The "main"
   (feature-split) latents of a letter are those of the largest k reached while each step
   raises the F1 by more than `f1_jump_threshold` (k = 1 is always taken).
3. Absorption, per letter, over the test words the GT probe calls positive (probe true
   positives): with `p` the unit GT probe direction and `cos_i = cos(W_dec[i], p)`, the
   probe projection of the activation is `x . p` and of latent i `f_i(x) * cos_i`.
   - absorption fraction: 0 when the main latents' projection reaches `x . p` or the top
     `max_absorbing_latents` other latents with `cos_i >= 0.1` and positive projection carry
     less than 40 % of `x . p`; 1 when the main latents' projection is <= 0; else the
     absorbed share `a / (a + main)` with `a = min(absorbers, x . p - main)`.
   - full absorption: no main latent fires, the top-projecting latent has `cos >= 0.025`,
     `x . p >= 0` and that latent carries >= 40 % of `x . p`.
   A letter's `absorption_rate` is the sum of its fractions over its probe true positives
   (SAEBench `mean_absorption_fraction`); the score is the mean over letters whose GT probe
   reaches F1 > `min_gt_probe_f1` on the test words. Lower is better.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.errors import InputError
from saedoctor.metrics.first_letter_probe import f1_score, fit_balanced_logreg, train_multi_probe
from saedoctor.sae.model import SAE

LETTERS = "abcdefghijklmnopqrstuvwxyz"
METHOD = "saebench_first_letter (probe-based)"
EPS = 1e-8  # SAEBench FeatureAbsorptionCalculator: a main latent "fires" above this


@dataclass
class FirstLetterSettings:
    """Every knob of the metric; defaults are SAEBench's unless marked."""

    # GT probe (SAEBench train_and_save_probes -> train_linear_probe_for_task)
    probe_epochs: int = 50
    probe_batch_size: int = 64
    probe_lr: float = 1e-2
    probe_end_lr: float = 1e-5
    probe_weight_decay: float = 1e-4
    # k-sparse probing (SAEBench AbsorptionEvalConfig / train_k_sparse_probes)
    max_k_value: int = 10
    f1_jump_threshold: float = 0.03
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_epochs: int = 50
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_lr: float = 1e-2
    k_sparse_probe_l2_decay: float = 1e-6
    k_sparse_logreg_max_iter: int = 500
    # absorption (SAEBench FeatureAbsorptionCalculator)
    topk_feats: int = 10
    full_absorption_probe_cos_sim_threshold: float = 0.025
    absorption_fraction_probe_cos_sim_threshold: float = 0.1
    probe_projection_proportion_threshold: float = 0.4
    absorption_fraction_max_absorbing_latents: int = 3
    # letter filter (SAEBench AbsorptionEvalConfig)
    min_gt_probe_f1: float = 0.6
    min_feats_for_eval: int = 20
    # prompting (SAEBench create_icl_prompt: 10 in-context examples)
    max_icl_examples: int = 10
    # saedoctor additions for small budgets (not in SAEBench)
    words_per_prompt: int = 10  # words read from one prompt; 1 = SAEBench's one-word prompts
    train_fraction: float = 0.8
    probe_min_steps: int = 500  # both probes train for at least this many Adam steps
    min_test_words_per_letter: int = 2
    min_train_words_per_letter: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _one_thread(device: str) -> Iterator[None]:
    """Probe fits are thousands of tiny ops: on CPU one thread is many times faster than
    several (and far faster on a busy machine). Restores the thread count afterwards."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def letter_index(word_or_letter: str) -> int:
    """Class of a word: its first alphabetic character, case-folded (SAEBench first_letter)."""
    for ch in word_or_letter.strip():
        if ch.isalpha():
            i = LETTERS.find(ch.lower())
            if i >= 0:
                return i
            break
    raise ValueError(f"{word_or_letter!r}: no first letter a-z")


@torch.no_grad()
def _sae_dense(sae: SAE, acts: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    dev = sae.W_enc.device
    out = [
        sae.encode(acts[i : i + batch].to(dev)).dense().float().cpu()
        for i in range(0, acts.shape[0], batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, sae.cfg.d_sae)


def _split_feats(f1_by_k: list[float], feats_by_k: list[list[int]], jump: float) -> tuple:
    """SAEBench add_feature_splits_to_metrics_df: grow k while the F1 jumps by > `jump`."""
    prev_best, chosen, chosen_f1 = -100.0, [], None
    for f1, feats in zip(f1_by_k, feats_by_k, strict=True):
        if f1 > prev_best + jump:
            prev_best, chosen, chosen_f1 = f1, feats, f1
        else:
            break
    return chosen, chosen_f1


def _word_absorption(
    x_proj: float,
    sae_proj: torch.Tensor,
    sae_acts: torch.Tensor,
    cos: torch.Tensor,
    main: list[int],
    s: FirstLetterSettings,
) -> tuple[float, bool]:
    """SAEBench FeatureAbsorptionCalculator.calculate_absorption for one word."""
    main_ids = torch.tensor(main, dtype=torch.long)
    main_proj = float(sae_proj[main_ids].sum())
    mask = torch.ones_like(sae_proj, dtype=torch.bool)
    mask[main_ids] = False
    mask &= cos >= s.absorption_fraction_probe_cos_sim_threshold
    mask &= sae_proj > 0
    cand = sae_proj[mask]
    top = cand.topk(min(s.absorption_fraction_max_absorbing_latents, cand.numel())).values
    absorbers = float(top.sum())
    share = absorbers / x_proj if x_proj != 0 else 0.0  # SAEBench would divide by zero
    if main_proj >= x_proj or share < s.probe_projection_proportion_threshold:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(absorbers, x_proj - main_proj)
        fraction = min(max(absorbed / (absorbed + main_proj), 0.0), 1.0)

    # full absorption by a single latent
    top_feat = int(sae_proj.topk(min(s.topk_feats, sae_proj.numel())).indices[0])
    full = (
        bool((sae_acts[main_ids].abs() < EPS).all())
        and float(cos[top_feat]) >= s.full_absorption_probe_cos_sim_threshold
        and x_proj > 0  # SAEBench: `< 0` rejects; at exactly 0 it would divide by zero
        and float(sae_proj[top_feat]) / x_proj >= s.probe_projection_proportion_threshold
    )
    return fraction, full


def absorption_from_activations(
    acts: torch.Tensor,
    letters: Sequence[str] | torch.Tensor,
    sae: SAE,
    *,
    train_mask: torch.Tensor | None = None,
    seed: int = 0,
    device: str = "cpu",
    settings: FirstLetterSettings | None = None,
) -> dict[str, Any]:
    """First-letter absorption from activations `acts [n, d_in]` (one per word) and labels.

    `letters`: the words (or their first letters), or class ids 0..25. `train_mask` (bool
    `[n]`) says which rows train the probes; the rest are the test words. Without it, a
    seeded split keeps `settings.train_fraction` for training.
    """
    with _one_thread(device):
        return _absorption(acts, letters, sae, train_mask, seed, device, settings)


def _absorption(
    acts: torch.Tensor,
    letters: Sequence[str] | torch.Tensor,
    sae: SAE,
    train_mask: torch.Tensor | None,
    seed: int,
    device: str,
    settings: FirstLetterSettings | None,
) -> dict[str, Any]:
    s = settings or FirstLetterSettings()
    acts = acts.detach().float().cpu()
    n = acts.shape[0]
    if isinstance(letters, torch.Tensor):
        y = letters.long().cpu()
    else:
        y = torch.tensor([letter_index(w) for w in letters], dtype=torch.long)
    if y.shape != (n,):
        raise ValueError(f"acts {tuple(acts.shape)} / letters {tuple(y.shape)}: mismatch")
    gen = torch.Generator().manual_seed(seed)
    if train_mask is None:
        order = torch.randperm(n, generator=gen)
        train_mask = torch.zeros(n, dtype=torch.bool)
        train_mask[order[: int(n * s.train_fraction)]] = True
    train_mask = train_mask.bool().cpu()
    test_mask = ~train_mask
    x_tr, y_tr, x_te, y_te = acts[train_mask], y[train_mask], acts[test_mask], y[test_mask]
    n_tr_letter = torch.bincount(y_tr, minlength=26)
    n_te_letter = torch.bincount(y_te, minlength=26)
    if x_tr.shape[0] == 0 or x_te.shape[0] == 0:
        raise InputError(
            f"first-letter absorption: {x_tr.shape[0]} train / {x_te.shape[0]} test words; "
            "need both"
        )

    # 1. GT probe on model activations
    W, b = train_multi_probe(
        x_tr.to(device),
        F.one_hot(y_tr, 26).to(device),
        num_epochs=s.probe_epochs,
        batch_size=s.probe_batch_size,
        lr=s.probe_lr,
        end_lr=s.probe_end_lr,
        weight_decay=s.probe_weight_decay,
        min_steps=s.probe_min_steps,
        generator=gen,
    )
    W, b = W.cpu(), b.cpu()
    logits_te = x_te @ W.T + b
    probe_accuracy = float((logits_te.argmax(1) == y_te).float().mean())

    # 2. k-sparse probing on SAE latents
    z_tr, z_te = _sae_dense(sae, x_tr), _sae_dense(sae, x_te)
    present = n_tr_letter > 0
    W_l1, _ = train_multi_probe(
        z_tr.to(device),
        F.one_hot(y_tr, 26).to(device),
        num_epochs=s.k_sparse_probe_epochs,
        batch_size=s.k_sparse_probe_batch_size,
        lr=s.k_sparse_probe_lr,
        end_lr=s.probe_end_lr,
        weight_decay=s.k_sparse_probe_l2_decay,
        l1=s.k_sparse_probe_l1_decay,
        min_steps=s.probe_min_steps,
        generator=gen,
    )
    W_l1 = W_l1.cpu()

    cos_all = F.normalize(W, dim=1) @ F.normalize(sae.W_dec.detach().float().cpu(), dim=1).T
    per_letter: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    fractions: list[float] = []
    full_rates: list[float] = []
    n_splits: list[int] = []
    k_max = min(s.max_k_value, sae.cfg.d_sae)
    for li, letter in enumerate(LETTERS):
        info: dict[str, Any] = {
            "n_train_words": int(n_tr_letter[li]),
            "n_test_words": int(n_te_letter[li]),
        }
        per_letter[letter] = info
        pos_te = y_te == li
        probe_f1 = f1_score(pos_te, logits_te[:, li] > 0)
        info["probe_f1"] = probe_f1
        reason = None
        if not present[li] or n_tr_letter[li] < s.min_train_words_per_letter:
            reason = f"too few train words ({int(n_tr_letter[li])})"
        elif n_te_letter[li] < s.min_test_words_per_letter:
            reason = f"too few test words ({int(n_te_letter[li])})"
        elif probe_f1 <= s.min_gt_probe_f1:
            reason = f"GT probe F1 {probe_f1:.2f} <= {s.min_gt_probe_f1}"
        if reason is None:
            f1_by_k, feats_by_k = [], []
            target = y_tr == li
            for k in range(1, k_max + 1):
                feats = W_l1[li].topk(k).indices
                w_k, b_k = fit_balanced_logreg(
                    z_tr[:, feats], target, max_iter=s.k_sparse_logreg_max_iter
                )
                score = z_te[:, feats] @ w_k + b_k
                f1_by_k.append(f1_score(pos_te, score > 0))
                feats_by_k.append([int(i) for i in feats])
            main, split_f1 = _split_feats(f1_by_k, feats_by_k, s.f1_jump_threshold)
            info["main_latents"] = main
            info["k_sparse_f1"] = split_f1
            tp = pos_te & (logits_te[:, li] > 0)
            n_tp = int(tp.sum())
            info["n_probe_true_positives"] = n_tp
            if n_tp == 0:
                reason = "no probe true positives among the test words"
            else:
                p = F.normalize(W[li], dim=0)
                cos = cos_all[li]
                x_proj = x_te[tp] @ p
                z = z_te[tp]
                proj = z * cos
                total, n_full = 0.0, 0
                for r in range(n_tp):
                    frac, full = _word_absorption(float(x_proj[r]), proj[r], z[r], cos, main, s)
                    total += frac
                    n_full += int(full)
                info["absorption_rate"] = total / n_tp
                info["full_absorption_rate"] = n_full / n_tp
                info["num_full_absorption"] = n_full
                fractions.append(info["absorption_rate"])
                full_rates.append(info["full_absorption_rate"])
                n_splits.append(len(main))
        info["measured"] = reason is None
        if reason is not None:
            info["skipped"] = reason
            skipped[letter] = reason

    if not fractions:
        raise InputError(
            f"first-letter absorption: no letter could be measured ({n} words: "
            f"{x_tr.shape[0]} train, {x_te.shape[0]} test; GT probe accuracy "
            f"{probe_accuracy:.2f}); use more words or a model that encodes first letters"
        )
    warnings: list[str] = []
    if len(fractions) < s.min_feats_for_eval:
        warnings.append(
            f"only {len(fractions)} letters measurable (SAEBench requires "
            f"min_feats_for_eval={s.min_feats_for_eval} and would refuse); the score is noisy"
        )
    return {
        "first_letter_absorption": statistics.mean(fractions),
        "first_letter_full_absorption": statistics.mean(full_rates),
        "first_letter_absorption_std": statistics.stdev(fractions) if len(fractions) > 1 else None,
        "mean_num_split_features": statistics.mean(n_splits),
        "method": METHOD,
        "letters": per_letter,
        "n_letters_measured": len(fractions),
        "skipped_letters": skipped,
        "probe_accuracy": probe_accuracy,
        "n_words": n,
        "n_train_words": int(x_tr.shape[0]),
        "n_test_words": int(x_te.shape[0]),
        "warnings": warnings,
        "settings": {**s.to_dict(), "seed": seed},
    }
