"""Linear probes for the first-letter absorption metric, in plain torch (no sklearn).

Two probes, as SAEBench (`sae_bench/evals/absorption/probing.py`, `k_sparse_probing.py`):

- `train_multi_probe`: one-vs-rest logistic regression for every class at once, trained with
  `BCEWithLogitsLoss(pos_weight = #neg / #pos)`, Adam with an exponential learning-rate decay
  from `lr` to `end_lr` over the epochs, Adam (coupled) weight decay, and an optional L1
  penalty `l1 * mean_c sum_j |W[c, j]|` (SAEBench's k-sparse feature-selection probe).
- `fit_balanced_logreg`: a binary logistic regression equal to scikit-learn's
  `LogisticRegression(C=1.0, class_weight="balanced")` (L2 on the weights, bias not
  penalised), solved to convergence with torch L-BFGS in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pos_weight(y: torch.Tensor) -> torch.Tensor:
    pos = y.sum(0)
    neg = y.shape[0] - pos
    # A class with no positives would get an infinite weight; it cannot be learned anyway.
    return torch.where(pos > 0, neg / pos.clamp_min(1), torch.ones_like(pos))


def train_multi_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-2,
    end_lr: float = 1e-5,
    weight_decay: float = 1e-4,
    l1: float = 0.0,
    min_steps: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest logistic probes; `x [n, d]`, multi-hot `y [n, c]` → `(W [c, d], b [c])`.

    `min_steps` (not in SAEBench) raises the epoch count until at least that many optimiser
    steps run: SAEBench sized its epochs for tens of thousands of words, and on a few hundred
    with a 4096 batch, 50 epochs are only 50 Adam steps, far from converged.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} / y {tuple(y.shape)}: expected [n, d] / [n, c]")
    x = x.float()
    y = y.float().to(x.device)
    n, d = x.shape
    c = y.shape[1]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    num_epochs = max(num_epochs, math.ceil(min_steps / steps_per_epoch))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    bound = 1.0 / math.sqrt(d)  # nn.Linear's default initialisation range
    W = ((torch.rand(c, d, generator=gen) * 2 - 1) * bound).to(x.device).requires_grad_()
    b = ((torch.rand(c, generator=gen) * 2 - 1) * bound).to(x.device).requires_grad_()
    opt = torch.optim.Adam([W, b], lr=lr, weight_decay=weight_decay)
    gamma = math.exp(math.log(end_lr / lr) / max(num_epochs, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    pos_weight = _pos_weight(y)
    full = n <= batch_size  # one batch per epoch: no shuffling or row gathers needed
    xb = x
    if full and float((x != 0).float().mean()) < 0.05:
        xb = x.to_sparse()  # SAE codes: a sparse product is several times faster

    def step(rows: torch.Tensor | None) -> None:
        opt.zero_grad()
        if rows is None:
            logits, target = torch.sparse.mm(xb, W.T) if xb.is_sparse else xb @ W.T, y
        else:
            logits, target = x[rows] @ W.T, y[rows]
        loss = F.binary_cross_entropy_with_logits(logits + b, target, pos_weight=pos_weight)
        if l1:
            loss = loss + l1 * W.abs().sum(-1).mean()
        loss.backward()
        opt.step()

    with torch.enable_grad():
        for _ in range(num_epochs):
            if full:
                step(None)
            else:
                order = torch.randperm(n, generator=gen).to(x.device)
                for start in range(0, n, batch_size):
                    step(order[start : start + batch_size])
            sched.step()
    return W.detach(), b.detach()


def fit_balanced_logreg(
    x: torch.Tensor, y: torch.Tensor, *, C: float = 1.0, max_iter: int = 500
) -> tuple[torch.Tensor, float]:
    """Binary L2 logistic regression with balanced class weights; `x [n, k]`, bool `y [n]`.

    Minimises `0.5 ||w||^2 + C * sum_i s_i * log(1 + exp(-t_i (x_i . w + b)))` with
    `t_i = +-1` and `s_i = n / (2 * n_class(i))`, as scikit-learn's lbfgs solver does.
    Returns `(w [k] float32, b)`.
    """
    x = x.double()
    t = y.to(x.device).double() * 2 - 1
    n = x.shape[0]
    n_pos = float((t > 0).sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("fit_balanced_logreg needs both classes present")
    s = torch.where(t > 0, n / (2 * n_pos), n / (2 * n_neg))
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-8,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ params[:-1] + params[-1]
        loss = 0.5 * params[:-1].pow(2).sum() + C * (s * F.softplus(-t * z)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    out = params.detach()
    return out[:-1].float(), float(out[-1])


def f1_score(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Binary F1 (scikit-learn's, with 0.0 where it is undefined)."""
    y_true = y_true.bool()
    y_pred = y_pred.bool()
    tp = int((y_true & y_pred).sum())
    fp = int((~y_true & y_pred).sum())
    fn = int((y_true & ~y_pred).sum())
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0
