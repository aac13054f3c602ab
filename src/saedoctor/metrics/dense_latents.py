"""Evidence for the dense-latent taxonomy of arXiv 2506.15679 ("dense SAE latents are features,
not bugs"), one record per always-on or dense feature.

Only numbers live here; `health/taxonomy.py` turns them into a class. The per-token statistics
(correlation with position, first-token share, token concentration) come from the accumulator
that saw the tokens and are passed in; the geometry (null space of the unembedding, principal
components, antipodal partner, mean direction) is computed here from the weights, vectorised
over the chosen features. Geometry is float64: the null-space test compares singular values
many orders of magnitude apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# The paper's PCA class: dense latents that reconstruct one of the site's top few principal
# components. Five covers the leading directions without reaching the bulk of the spectrum,
# where a random unit vector's largest |cos| with some PC grows by chance.
NUM_PCS = 5
# Near-null space of W_U: left singular directions with singular value below this fraction
# of the MEDIAN singular value. The paper (after Stolfo et al. 2024) takes the bottom singular
# directions, where the spectrum drops sharply by an order of magnitude or more. The median,
# not the largest, is the reference: the largest singular value of a (norm-folded)
# unembedding is an outlier (the shared embedding direction of anisotropic vocabularies), and
# a fraction of it would sweep ordinary, merely weaker directions into the "null space".
NULL_SPACE_FRACTION = 0.1
_COLUMN_CHUNK = 8192  # columns of W_U / W_enc per float64 block: memory stays O(d * chunk)
_EPS = 1e-12


@dataclass(frozen=True)
class FiringStats:
    """Per chosen feature (`[m]` each), from the accumulator that saw the tokens."""

    position_corr: torch.Tensor  # Pearson r of activation (zeros included) with position
    first_token_share: torch.Tensor  # share of firings on a sequence's first counted token
    token_top5_share: torch.Tensor  # share of sampled firings on its 5 most frequent tokens
    token_sample: torch.Tensor  # int: how many firings that share was taken over


@dataclass(frozen=True)
class DenseLatentEvidence:
    """The taxonomy's numbers for one feature; None where the number is not defined."""

    feature: int
    density: float
    position_corr: float | None
    first_token_share: float | None
    null_space_share: float | None  # None unless the dictionary writes to d_model
    pc_cosine: float | None
    pc_index: int | None  # 0 = the top principal component
    antipodal_partner: int | None
    antipodal_cosine: float | None
    density_sum: float | None  # density[feature] + density[partner]
    token_top5_share: float | None
    token_sample: int
    mean_cosine: float | None
    mean_cosine_of: str | None  # "encoder" or "decoder": which row gave mean_cosine

    def as_json(self, latent_class: str | None = None) -> dict[str, Any]:
        """A `dense_latents` entry of the report; the class is health's to decide."""
        return {
            "feature": self.feature,
            "density": self.density,
            "class": latent_class,
            "evidence": {
                "position_corr": self.position_corr,
                "first_token_share": self.first_token_share,
                "null_space_share": self.null_space_share,
                "pc_cosine": self.pc_cosine,
                "pc_index": self.pc_index,
                "antipodal_partner": self.antipodal_partner,
                "antipodal_cosine": self.antipodal_cosine,
                "density_sum": self.density_sum,
                "token_top5_share": self.token_top5_share,
                "token_sample": self.token_sample,
                "mean_cosine": self.mean_cosine,
                "mean_cosine_of": self.mean_cosine_of,
            },
        }


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm, in float64 (a zero row stays zero)."""
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


@dataclass(frozen=True)
class UnembeddingGram:
    """`W_U·W_Uᵀ [d_model, d_model]` float64 of an unembedding `W_U [d_model, vocab]`, and how
    many of its singular values can be non-zero (`min(d_model, vocab)`). The null space needs
    nothing more, so a caller never has to hold W_U itself as one matrix."""

    gram: torch.Tensor
    rank_max: int

    @classmethod
    def of(cls, W_U: torch.Tensor) -> UnembeddingGram:
        d_model, vocab = W_U.shape
        gram = torch.zeros(d_model, d_model, dtype=torch.float64, device=W_U.device)
        for start in range(0, vocab, _COLUMN_CHUNK):  # without a float64 copy of W_U
            block = W_U[:, start : start + _COLUMN_CHUNK].double()
            gram += block @ block.T
        return cls(gram, min(d_model, vocab))


def null_space_basis(
    unembedding: UnembeddingGram, fraction: float = NULL_SPACE_FRACTION
) -> torch.Tensor:
    """`[d_model, r]` orthonormal left singular vectors of `W_U` whose singular values are
    below `fraction` of the median one (directions W_U cannot read)."""
    eigvals, eigvecs = torch.linalg.eigh(unembedding.gram)  # ascending: σ², left singular vectors
    sigma = eigvals.clamp_min(0).sqrt()
    # Only rank_max singular values can be non-zero; the rest are the exact null space of a
    # short vocabulary and must not pull the median to zero.
    reference = sigma[-unembedding.rank_max :].median()
    return eigvecs[:, sigma < fraction * reference]


def null_space_share(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`[m]`: the fraction of each row's squared norm inside span(basis)."""
    rows = rows.double()
    inside = (rows @ basis.to(rows)).square().sum(-1)
    return inside / rows.square().sum(-1).clamp_min(_EPS)


def principal_components(cov: torch.Tensor, num: int = NUM_PCS) -> torch.Tensor:
    """`[d, num]` unit eigenvectors of a covariance, largest eigenvalue first."""
    _, eigvecs = torch.linalg.eigh(cov.double())
    return eigvecs.flip(-1)[:, :num]


def pc_alignment(rows: torch.Tensor, pcs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[m]` largest |cos| of each row with the given components, and which component."""
    cos = (unit_rows(rows) @ pcs.double()).abs()
    best = cos.max(dim=-1)
    return best.values, best.indices


def antipodal_partners(
    W_enc: torch.Tensor, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each feature, the other feature whose encoder column (`W_enc [d_in, d_sae]`) is most
    opposite, and that cosine. Ties go to the lower id (first minimum)."""
    mine = unit_rows(W_enc[:, features].T)  # [m, d_in]
    best_cos = torch.full((len(features),), math.inf, dtype=torch.float64, device=mine.device)
    best_id = torch.zeros(len(features), dtype=torch.long, device=mine.device)
    for start in range(0, W_enc.shape[1], _COLUMN_CHUNK):
        block = unit_rows(W_enc[:, start : start + _COLUMN_CHUNK].T)
        cos = mine @ block.T  # [m, chunk]
        own = features - start
        inside = (own >= 0) & (own < block.shape[0])
        cos[inside.nonzero(as_tuple=True)[0], own[inside]] = math.inf  # not its own partner
        low = cos.min(dim=-1)
        better = low.values < best_cos  # strict: an earlier chunk keeps a tie
        best_cos = torch.where(better, low.values, best_cos)
        best_id = torch.where(better, low.indices + start, best_id)
    return best_id, best_cos


def mean_alignment(rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """`[m]` |cos| of each row with a mean vector."""
    return (unit_rows(rows) @ unit_rows(mean[None])[0]).abs()


def dense_latent_evidence(
    features: Sequence[int] | torch.Tensor,
    density: torch.Tensor,
    firing: FiringStats,
    *,
    W_dec: torch.Tensor,
    target_mean: torch.Tensor,
    W_enc: torch.Tensor | None = None,
    input_mean: torch.Tensor | None = None,
    target_cov: torch.Tensor | None = None,
    unembedding: UnembeddingGram | None = None,
) -> list[DenseLatentEvidence]:
    """One record per feature, in the given order.

    `density [d_sae]` is every feature's (the partner's is needed too). `input_mean` only when
    the encoder reads the target's space (an SAE): then the encoder row's cosine with it is
    checked as well as the decoder row's with `target_mean`. `unembedding`: the Gram matrix of
    `W_U [d_model, vocab]` with the final norm's weight folded in; the null-space share is
    left None when `W_dec` does not write d_model-wide vectors. `target_cov` None leaves the
    principal-component numbers None.
    """
    ids = torch.as_tensor(features, dtype=torch.long, device=W_dec.device).reshape(-1)
    if not len(ids):
        return []
    rows = W_dec[ids].detach()
    columns: dict[str, list[Any]] = {
        "null_space_share": _null_space(rows, unembedding),
        **_pcs(rows, target_cov),
        **_partners(W_enc, ids, density),
        **_mean(rows, target_mean, W_enc, ids, input_mean),
    }
    dens = density.detach().double().cpu()[ids.cpu()]
    return [
        DenseLatentEvidence(
            feature=int(f),
            density=float(dens[j]),
            position_corr=_finite(firing.position_corr[j]),
            first_token_share=_finite(firing.first_token_share[j]),
            token_top5_share=_finite(firing.token_top5_share[j]),
            token_sample=int(firing.token_sample[j]),
            **{name: values[j] for name, values in columns.items()},
        )
        for j, f in enumerate(ids.tolist())
    ]


def _null_space(rows: torch.Tensor, unembedding: UnembeddingGram | None) -> list[float | None]:
    if unembedding is None or unembedding.gram.shape[0] != rows.shape[1]:
        return [None] * rows.shape[0]
    gram = UnembeddingGram(unembedding.gram.to(rows.device), unembedding.rank_max)
    return _floats(null_space_share(rows, null_space_basis(gram)))


def _pcs(rows: torch.Tensor, cov: torch.Tensor | None) -> dict[str, list[Any]]:
    if cov is None:
        return {"pc_cosine": [None] * rows.shape[0], "pc_index": [None] * rows.shape[0]}
    cos, index = pc_alignment(rows, principal_components(cov.detach().to(rows.device)))
    return {"pc_cosine": _floats(cos), "pc_index": index.tolist()}


def _partners(
    W_enc: torch.Tensor | None, ids: torch.Tensor, density: torch.Tensor
) -> dict[str, list[Any]]:
    m = len(ids)
    if W_enc is None or W_enc.shape[1] < 2:
        return {"antipodal_partner": [None] * m, "antipodal_cosine": [None] * m,
                "density_sum": [None] * m}  # fmt: skip
    partner, cos = antipodal_partners(W_enc.detach(), ids.to(W_enc.device))
    dens = density.detach().double().cpu()
    total = dens[ids.cpu()] + dens[partner.cpu()]
    return {"antipodal_partner": partner.tolist(), "antipodal_cosine": _floats(cos),
            "density_sum": _floats(total)}  # fmt: skip


def _mean(
    rows: torch.Tensor,
    target_mean: torch.Tensor,
    W_enc: torch.Tensor | None,
    ids: torch.Tensor,
    input_mean: torch.Tensor | None,
) -> dict[str, list[Any]]:
    decoder = mean_alignment(rows, target_mean.detach().to(rows.device))
    encoder = torch.full_like(decoder, -math.inf)
    if W_enc is not None and input_mean is not None:
        enc_rows = W_enc.detach()[:, ids.to(W_enc.device)].T
        encoder = mean_alignment(enc_rows, input_mean.detach().to(enc_rows.device)).to(decoder)
    use_encoder = encoder > decoder  # a tie reports the decoder row, today's bias check
    best = torch.where(use_encoder, encoder, decoder)
    which = ["encoder" if e else "decoder" for e in use_encoder.tolist()]
    return {"mean_cosine": _floats(best), "mean_cosine_of": which}


def _floats(x: torch.Tensor) -> list[float | None]:
    return [_finite(v) for v in x.detach().double().cpu()]


def _finite(value: Any) -> float | None:
    """A JSON-safe float: NaN or ±inf (an undefined correlation, an empty sample) is None."""
    v = float(value)
    return v if math.isfinite(v) else None
