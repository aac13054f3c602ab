"""`MetricSuite`: every streaming SPEC §2 metric of one SAE in one mergeable object.

Not covered here: `loss_recovered`, `kl_score` (need the language model) and
`first_letter_absorption` (probe based). `nonfinite` counts the rows the caller left out
because they held NaN/inf (metrics/finite.py); it is not a metric, `compute` leaves it out.
"""

from __future__ import annotations

from typing import Any

import torch

from saedoctor.metrics import registry
from saedoctor.metrics.absorption import AbsorptionSettings, decoder_absorption
from saedoctor.metrics.blocked import BlockedStats
from saedoctor.metrics.cards import FeatureCards
from saedoctor.metrics.diversity import Diversity
from saedoctor.metrics.features import FeatureStats
from saedoctor.metrics.finite import NonFinite
from saedoctor.metrics.histogram import density_histogram
from saedoctor.metrics.intervals import Thresholds, suite_intervals
from saedoctor.metrics.reconstruction import Reconstruction
from saedoctor.sae.codes import Codes
from saedoctor.thresholds import (
    ALWAYS_ON_DENSITY,
    DEAD_DENSITY,
    DENSE_DENSITY,
    INTERVAL_BLOCKS,
)

_CONFIG_KEYS = ("d_in", "d_sae", "always_on_threshold", "dense_threshold", "dead_threshold",
                "diversity_top", "without_skip", "interval_blocks", "cards")  # fmt: skip
# What `compute` measures from the tokens (metrics/registry.py: `from_tokens`) is all None
# when no token was seen (every row skipped as non-finite): the caller reports it as not
# measured rather than as NaN or 0. A transcoder with a skip term is also measured on its
# dictionary's part alone (`without_skip`).
WITHOUT_SKIP = "_without_skip"


class _SuiteFeatures(FeatureStats):
    """FeatureStats that, having seen no token, names no always-on feature instead of failing,
    so a run whose every row was non-finite still gets as far as its report."""

    def compute(self) -> dict[str, Any]:
        if int(self.tokens) == 0:
            return {"always_on_features": []}
        return super().compute()


class MetricSuite:
    """Feature statistics, diversity and reconstruction, updated batch by batch."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        always_on_threshold: float = ALWAYS_ON_DENSITY,
        dense_threshold: float = DENSE_DENSITY,
        dead_threshold: float = DEAD_DENSITY,
        diversity_top: int = 10,
        without_skip: bool = False,
        interval_blocks: int = INTERVAL_BLOCKS,
        cards: bool = False,
    ) -> None:
        """`d_in` is the width of what is reconstructed (a transcoder's output);
        `without_skip` also measures the reconstruction without a transcoder's skip term;
        `interval_blocks` sequence blocks give every metric its interval; `cards` also
        collects what every feature's card shows (metrics/cards.py), from rows with text."""
        self.d_in, self.d_sae = d_in, d_sae
        self.features = _SuiteFeatures(d_sae, always_on_threshold, dense_threshold,
                                       dead_threshold)  # fmt: skip
        self.diversity = Diversity(diversity_top)
        self.reconstruction = Reconstruction(d_in)
        self.without_skip = Reconstruction(d_in) if without_skip else None
        self.nonfinite = NonFinite()
        self.blocked = BlockedStats(d_in, d_sae, interval_blocks)
        self.cards = FeatureCards(d_sae, d_in) if cards else None

    @property
    def config(self) -> dict[str, float]:
        f = self.features
        values = (self.d_in, self.d_sae, f.always_on_threshold, f.dense_threshold,
                  f.dead_threshold, self.diversity.top,
                  int(self.without_skip is not None), self.blocked.n_blocks,
                  int(self.cards is not None))  # fmt: skip
        return dict(zip(_CONFIG_KEYS, values, strict=True))

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, x_hat: torch.Tensor, codes: Codes, seq_ids: torch.Tensor,
        x_hat_without_skip: torch.Tensor | None = None, *,
        positions: torch.Tensor | None = None, token_ids: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """Add one batch of counted tokens; each sequence must lie wholly in one batch, and
        `seq_ids` are the sequences' indices in the corpus order (they pick each sequence's
        interval block: the same sequence, the same block, on any rank). `x` is
        the target (a transcoder's: the MLP output), `x_hat` the dictionary's whole output;
        `positions` and `token_ids` (each row's place in its sequence, and its token) feed
        the cards, when collected (rows without them, cached activations, feed none)."""
        self._check(x, x_hat, codes, seq_ids)
        if (self.without_skip is None) != (x_hat_without_skip is None):
            raise ValueError("x_hat_without_skip: give it exactly when the suite measures it")
        blocks = self.blocked
        row_block = blocks.blocks_of(seq_ids)
        stats = self.reconstruction.update(x, x_hat)
        if stats is not None:
            blocks.update_reconstruction(row_block.to(x.device), x, *stats)
        if self.without_skip is not None:
            self.without_skip.update(x, x_hat_without_skip)
        entries = self.features.update(codes)
        blocks.update_features(row_block.to(entries.feats.device), codes, entries)
        sequences, distinct = self.diversity.update(codes, seq_ids)
        blocks.update_diversity(blocks.blocks_of(sequences).to(distinct.device), distinct)
        if self.cards is not None and positions is not None and token_ids is not None:
            self.cards.update(x, codes, seq_ids, positions, token_ids)

    def _check(
        self, x: torch.Tensor, x_hat: torch.Tensor, codes: Codes, seq_ids: torch.Tensor
    ) -> None:
        # All checks before any accumulator moves, so a bad batch leaves the state untouched.
        n = x.shape[0]
        if x.dim() != 2 or x.shape[1] != self.d_in or x_hat.shape != x.shape:
            raise ValueError(
                f"x {tuple(x.shape)} / x_hat {tuple(x_hat.shape)}: expected [n, {self.d_in}]"
            )
        if codes.d_sae != self.d_sae or codes.n_tokens != n:
            raise ValueError(
                f"codes: {codes.n_tokens} tokens x {codes.d_sae}, expected {n} x {self.d_sae}"
            )
        if seq_ids.shape != (n,):
            raise ValueError(f"seq_ids shape {tuple(seq_ids.shape)}: expected ({n},)")

    def merge(self, other: MetricSuite) -> MetricSuite:
        """Fold `other` (another shard) into this suite, in place; returns self."""
        if other.config != self.config:
            raise ValueError(f"cannot merge MetricSuite {other.config} into {self.config}")
        self.features.merge(other.features)
        self.diversity.merge(other.diversity)
        self.reconstruction.merge(other.reconstruction)
        if self.without_skip is not None:
            self.without_skip.merge(other.without_skip)
        self.nonfinite.merge(other.nonfinite)
        self.blocked.merge(other.blocked)
        if self.cards is not None:
            self.cards.merge(other.cards)
        return self

    def compute(
        self, W_dec: torch.Tensor | None = None, absorption: AbsorptionSettings | None = None
    ) -> dict[str, Any]:
        """Flat dict of plain Python values; absorption only when `W_dec [d_sae, d_in]` is given,
        computed as `absorption` says (default: exact).

        With no token seen because every row was left out as non-finite, every
        `measured_keys()` value is None and the per-feature lists are empty; with no token
        seen at all, ValueError (nothing was fed: a caller's mistake)."""
        if int(self.features.tokens) == 0:
            if not self.nonfinite.total:
                raise ValueError("no tokens seen: the metrics are undefined")
            return self._nothing_seen()
        feats = self.features.compute()
        density = feats.pop("density")
        mean_act = feats.pop("mean_activation_when_active")
        out: dict[str, Any] = {
            **feats,
            **self.diversity.compute(),
            **self.reconstruction.compute(),
            **self._without_skip(),
            "density": density.tolist(),
            "density_histogram": density_histogram(density),
            "mean_activation_when_active": mean_act.tolist(),
        }
        out.update(self._absorption(W_dec, density, absorption or AbsorptionSettings()))
        f = self.features
        thresholds = Thresholds(f.always_on_threshold, f.dense_threshold, f.dead_threshold)
        out.update(suite_intervals(self.blocked, out, thresholds,
                                   f"diversity_top{self.diversity.top}"))  # fmt: skip
        return out

    def snapshot(self) -> dict[str, tuple[float, list[float]]]:
        """(value, 95 % interval) of the token-measured metrics, mid-pass and cheaply (no
        absorption, no per-feature lists): what `--tokens auto` checks between batches."""
        f = self.features
        if int(f.tokens) == 0 or int((self.blocked.tokens > 0).sum()) < 2:
            return {}
        density = f.density()
        values: dict[str, Any] = {**self.reconstruction.compute(), **self.diversity.compute(),
                                  "l0": int(f.nonzero) / int(f.tokens),
                                  "always_on_count": int((density > f.always_on_threshold).sum()),
                                  "dead_pct": 100.0 * float((density < f.dead_threshold).sum())
                                  / self.d_sae}  # fmt: skip
        thresholds = Thresholds(f.always_on_threshold, f.dense_threshold, f.dead_threshold)
        intervals = suite_intervals(self.blocked, values, thresholds,
                                    f"diversity_top{self.diversity.top}")["intervals"]  # fmt: skip
        return {k: (values[k], v) for k, v in intervals.items() if values.get(k) is not None}

    def _without_skip(self) -> dict[str, Any]:
        if self.without_skip is None:
            return {}
        values = self.without_skip.compute()
        return {k + WITHOUT_SKIP: values[k] for k in registry.WITHOUT_SKIP}

    def measured_keys(self) -> tuple[str, ...]:
        """The keys of `compute` that are measured from tokens (None when none was seen)."""
        diversity = f"diversity_top{self.diversity.top}"
        keys = tuple(diversity if k == registry.DIVERSITY_KEY else k for k in registry.MEASURED)
        if self.without_skip is not None:
            keys += tuple(k + WITHOUT_SKIP for k in registry.WITHOUT_SKIP)
        return keys

    def _nothing_seen(self) -> dict[str, Any]:
        empty = torch.zeros(0, dtype=torch.float64)
        return {**dict.fromkeys(self.measured_keys()), "always_on_features": [], "tokens_seen": 0,
                "sequences_seen": 0, "density": [], "density_histogram": density_histogram(empty),
                "mean_activation_when_active": [], "absorption_method": None,
                "absorption_features": 0, "intervals": {}, "uncertain_features": None,
                "interval_blocks": None,
                "interval_method": None, "density_interval_method": None}  # fmt: skip

    def _absorption(self, W_dec: torch.Tensor | None, density: torch.Tensor,
                    settings: AbsorptionSettings) -> dict[str, Any]:  # fmt: skip
        if W_dec is None:
            return {"absorption": None, "absorption_method": None, "absorption_features": 0,
                    "absorption_reason": "no decoder weights given"}  # fmt: skip
        if W_dec.shape != (self.d_sae, self.d_in):
            raise ValueError(f"W_dec {tuple(W_dec.shape)}: expected ({self.d_sae}, {self.d_in})")
        alive = density >= self.features.dead_threshold
        return decoder_absorption(W_dec, alive.to(W_dec.device), sample=settings.sample,
                                  memory_mb=settings.memory_mb, seed=settings.seed)  # fmt: skip

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every accumulator and the config as float64/int64 CPU tensors (safetensors-ready)."""
        d = {f"config.{k}": _config_tensor(v) for k, v in self.config.items()}
        d |= self.features.state_dict("features.")
        d |= self.diversity.state_dict("diversity.")
        d |= self.reconstruction.state_dict("reconstruction.")
        if self.without_skip is not None:
            d |= self.without_skip.state_dict("without_skip.")
        d |= self.nonfinite.state_dict("nonfinite.")
        d |= self.blocked.state_dict("blocked.")
        if self.cards is not None:
            d |= self.cards.state_dict("cards.")
        return d

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        for key, value in self.config.items():
            saved = d.get(f"config.{key}")
            if saved is None or saved.item() != value:
                got = None if saved is None else saved.item()
                raise ValueError(f"metric state config {key}={got}, this suite has {value}")
        self.features.load_state_dict(d, "features.")
        self.diversity.load_state_dict(d, "diversity.")
        self.reconstruction.load_state_dict(d, "reconstruction.")
        if self.without_skip is not None:
            self.without_skip.load_state_dict(d, "without_skip.")
        self.nonfinite.load_state_dict(d, "nonfinite.")
        self.blocked.load_state_dict(d, "blocked.")
        if self.cards is not None:
            self.cards.load_state_dict(d, "cards.")


def _config_tensor(v: float) -> torch.Tensor:
    dtype = torch.int64 if isinstance(v, int) else torch.float64
    return torch.tensor(v, dtype=dtype)
