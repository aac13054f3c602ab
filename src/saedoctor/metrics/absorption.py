"""Decoder-cosine "absorption" (redundancy): SAEBench `average_max_decoder_cosine_sim`.

SAEBench (`sae_bench/evals/core/main.py`, `calculate_max_cosine_sim`) normalises the decoder
rows, masks the diagonal with -inf and takes the *signed* max over the other features (no
abs), then averages over all features. SPEC §2 asks for the same signed max but over alive
features only, so dead features neither count nor act as partners.

Exact and chunked: each chunk of rows is multiplied against all alive rows in float32 (fast),
never a full d_sae x d_sae matrix; the best few float32 candidates of every row are then
re-scored in float64 and the best kept, so the result matches a float64 computation unless
more than `_CANDIDATES` partners sit within float32 rounding (~1e-6) of the true max.

Memory is bounded and runs on the SAE's own device: beside `W_dec` itself, one float32 copy
of the normalised alive rows and one `[chunk, n_alive]` block of cosines, the chunk sized
from a byte budget (`memory_mb`). A 65,536 x 8,192 decoder (Goodfire's 70B SAE) needs its
2 GiB float32 copy plus a 256 MiB block by default. Float64 rows are formed only for the few
candidates being re-scored, never for the whole decoder.

`sample=m` measures m alive features drawn at random (each one's max is still exact, over
every other alive feature) and reports their mean with a 95 % confidence interval (Student t,
with the finite-population correction), for a quick look at a very large dictionary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

METHOD = "decoder_cosine_exact_chunked"
METHOD_SAMPLED = "decoder_cosine_sampled"
_CANDIDATES = 4
_T975_SMALL = {1: 12.706204736174698, 2: 4.302652729749464}
DEFAULT_MEMORY_MB = 256.0


@dataclass(frozen=True)
class AbsorptionSettings:
    """How `decoder_absorption` runs for a diagnosis: `sample` None is the exact mean
    (`--absorption-sample` sets it), `seed` draws the sample, `memory_mb` sizes the chunks."""

    sample: int | None = None
    memory_mb: float = DEFAULT_MEMORY_MB
    seed: int = 0


def chunk_rows(n_alive: int, d_in: int, memory_mb: float) -> int:
    """Rows per chunk so that one chunk's float32 cosines and float64 re-scoring (one partner
    at a time) fit in `memory_mb`."""
    per_row = 4 * n_alive + 32 * d_in  # cosines; a float32 and two float64 rows
    return max(1, min(n_alive, int(memory_mb * 2**20) // per_row))


def decoder_absorption(
    W_dec: torch.Tensor,
    alive: torch.Tensor,
    chunk_size: int | None = None,
    *,
    sample: int | None = None,
    memory_mb: float = DEFAULT_MEMORY_MB,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean over alive features of the max signed cosine of its decoder row with another's.

    `W_dec [d_sae, d_in]`, `alive` bool `[d_sae]`. A zero decoder row has cosine 0 with all.
    `chunk_size` None: sized from `memory_mb`. `sample` m: the sampled estimate (module doc),
    drawn with `seed`.
    """
    if W_dec.dim() != 2 or alive.shape != (W_dec.shape[0],):
        raise ValueError(f"W_dec {tuple(W_dec.shape)} / alive {tuple(alive.shape)}: mismatch")
    if (chunk_size is not None and chunk_size <= 0) or memory_mb <= 0:
        raise ValueError(f"chunk_size={chunk_size} / memory_mb={memory_mb}: expected positive")
    if sample is not None and sample < 2:
        raise ValueError(f"sample={sample}: expected at least 2 features")
    index = alive.to(W_dec.device).nonzero().squeeze(1)
    n_alive = index.numel()
    if n_alive < 2:
        return {
            "absorption": None,
            "absorption_method": METHOD if sample is None else METHOD_SAMPLED,
            "absorption_features": n_alive,
            "absorption_reason": f"{n_alive} alive feature(s): need at least 2",
        }
    chunk = chunk_size or chunk_rows(n_alive, W_dec.shape[1], memory_mb)
    scorer = _MaxCosine(W_dec.detach(), index)
    if sample is not None and sample < n_alive:
        return _sampled(scorer, sample, chunk, seed)
    best = torch.cat([scorer.best(torch.arange(s, min(s + chunk, n_alive), device=index.device))
                      for s in range(0, n_alive, chunk)])  # fmt: skip
    return {
        "absorption": float(best.mean()),
        "absorption_method": METHOD,
        "absorption_features": n_alive,
    }


class _MaxCosine:
    """The alive rows of a decoder, normalised once in float32; `best(q)` is the exact max
    signed cosine of each query row with every other alive row."""

    def __init__(self, W_dec: torch.Tensor, index: torch.Tensor) -> None:
        self.W_dec, self.index = W_dec, index
        with torch.no_grad():
            rows = W_dec[index].float()  # the one decoder-sized copy: normalised in place
            self.rows32 = rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))
            # float64 norms, clamped as F.normalize does, so a zero row has cosine 0 with all.
            self.norms = torch.cat([W_dec[index[s : s + 4096]].double().norm(dim=1)
                                    for s in range(0, index.numel(), 4096)]).clamp_min(1e-12)

    @torch.no_grad()
    def best(self, queries: torch.Tensor) -> torch.Tensor:
        """float64 `[len(queries)]`; `queries` are positions among the alive rows."""
        sims = self.rows32[queries] @ self.rows32.T
        sims[torch.arange(queries.numel(), device=sims.device), queries] = float("-inf")
        cand = sims.topk(min(_CANDIDATES, self.rows32.shape[0] - 1), dim=1).indices
        del sims
        own = self.W_dec[self.index[queries]].double().unsqueeze(1)
        best = torch.full((queries.numel(),), float("-inf"), dtype=torch.float64,
                          device=own.device)  # fmt: skip
        for j in range(cand.shape[1]):  # one partner row per query at a time: [c, d] float64
            partner = self.W_dec[self.index[cand[:, j]]].double().unsqueeze(2)
            cos = (own @ partner).view(-1) / (self.norms[queries] * self.norms[cand[:, j]])
            best = torch.maximum(best, cos)
        return best


def _sampled(scorer: _MaxCosine, m: int, chunk: int, seed: int) -> dict[str, Any]:
    n = scorer.index.numel()
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n, generator=gen)[:m].to(scorer.index.device)
    values = torch.cat([scorer.best(picked[s : s + chunk]) for s in range(0, m, chunk)]).cpu()
    mean, low, high = mean_ci95(values, population=n)
    return {
        "absorption": mean,
        "absorption_method": METHOD_SAMPLED,
        "absorption_features": n,
        "absorption_sampled": m,
        "absorption_ci95": [low, high],
    }


def mean_ci95(values: torch.Tensor, population: int | None = None) -> tuple[float, float, float]:
    """(mean, low, high): a two-sided 95 % Student-t interval for the mean of the population
    the values were drawn from without replacement (finite-population corrected)."""
    m = values.numel()
    mean = float(values.double().mean())
    if m < 2:
        return mean, mean, mean
    sd = float(values.double().std(unbiased=True))
    fpc = 1.0 if population is None else math.sqrt(max(0.0, (population - m) / (population - 1)))
    half = t_quantile_975(m - 1) * sd / math.sqrt(m) * fpc
    return mean, mean - half, mean + half


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t (Cornish-Fisher expansion, < 5e-3 off for dof >= 3;
    exact for 1 and 2, where the expansion is poor)."""
    if dof in _T975_SMALL:
        return _T975_SMALL[dof]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    v = float(dof)
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4
