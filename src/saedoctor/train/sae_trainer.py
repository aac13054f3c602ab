"""One SAE under training: parameters, loss terms, optimizer, bookkeeping, export.

Training runs on rescaled activations `x' = s·x` (`s² = d_in / E‖x - mean‖²`, estimated
once at the start) so one set of coefficients works at every layer and model; `export()`
folds `s` back, so the saved SAE reads raw activations. Loss terms (means over the tokens of
a micro-batch, all divided by `d_in` so the reconstruction term is a fraction of variance):

- reconstruction: `‖x' - x̂'‖² / d_in`
- `l1_penalty · Σ_i f_i ‖W_dec_i‖ / d_in`
- `sparsity_penalty · L0 / d_in`: JumpReLU counts `H(z - θ)` with straight-through
  threshold gradients (Rajamanoharan et al. 2024); other architectures use the smooth
  `Σ tanh(f_i ‖W_dec_i‖)`
- `auxk_alpha · ‖ê - e‖² / d_in`: the dead latents' top activations reconstruct the
  residual `e` (Gao et al. 2024); dead = no firing for `dead_feature_threshold` tokens
- `diversity_loss_weight · Σ_{i: ρ_i > target} f_i`: an activation penalty on the latents
  whose running firing density ρ_i exceeds `diversity_target_density`, i.e. those turning
  always-on (not divided by d_in: it is an L1 of d_in × weight on those latents only)
- `decoder_orthogonality_weight · mean_{i∈S} max_{j≠i} cos(W_dec_i, W_dec_j)²` over a random
  sample S of decoder rows each step: the absorption metric itself (mean max decoder
  cosine), squared. (A Frobenius ‖W_dec W_decᵀ - I‖² penalty was measured to barely move
  the max cosine: it is dominated by the many small cosines of an overcomplete dictionary.)

Decoder rows stay unit-norm: the gradient component along each row is removed before the
Adam step and rows are renormalised after it.

A transcoder (`cfg.kind == "transcoder"`) encodes its input `x` (a block's mlp_in) and
reconstructs a target `y` (its mlp_out): both are rescaled on their own (`x' = s_in·x`,
`y' = s_out·y`), the input is not shifted by `b_dec` (which lives in the output space, and
starts at the target's mean / median), an optional linear skip adds `x' @ W_skip`, and every
term above reads `y'` for `x'` and `d_out` for `d_in`. Export folds both scales (`fold`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.activations.moments import LazyMoments, Moments
from saedoctor.sae.arch import get_architecture
from saedoctor.sae.codes import Codes
from saedoctor.sae.loaders import save_sae
from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import Site
from saedoctor.train.config import TRANSCODER_SITES, TrainConfig, d_sae_for
from saedoctor.train.layout import dense_view
from saedoctor.train.topk_encode import LatentOrder, sparse_decode, topk_encode

DENSITY_WINDOW_TOKENS = 16_384  # time constant of the running firing density (diversity loss)
ORTHO_SAMPLE_ROWS = 512
GEOMEDIAN_TOKENS = 8192
# JumpReLU thresholds live on the activation scale (~1 after rescaling) and get gradients only
# from tokens within a bandwidth of them: at the weights' learning rate they would move by
# ~0.1 in a few hundred steps, so they learn 10x faster.
THRESHOLD_LR_SCALE = 10.0
# Checkpoints mark the orientation of W_enc's Adam moments (older ones hold them row-major)
OPTIMIZER_LAYOUT = "w_enc_latent_major"
_BUFFERS = ("since_fired", "density_ema", "scale", "batchtopk_threshold")
_TRANSCODER_BUFFERS = (*_BUFFERS, "out_scale")


# -- helpers -------------------------------------------------------------------------------
def geometric_median(x: torch.Tensor, iters: int = 50, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm in float64."""
    x = x.double()
    median = x.mean(0)
    for _ in range(iters):
        dist = (x - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-12):
            return new
        median = new
    return median


def lr_factor(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up over `warmup` steps, constant, then linear decay to 0 at `total`."""
    factor = 1.0
    if warmup > 0 and step < warmup:
        factor = (step + 1) / warmup
    decay_steps = int(total * decay_fraction)
    if decay_steps > 0 and step >= total - decay_steps:
        factor = min(factor, max(0.0, (total - step) / decay_steps))
    return factor


@dataclass
class Forward:
    """One micro-batch's forward pass on the training scale: rescaled input and target,
    pre-activations, codes (values, indices or None), reconstruction, norm-weighted codes (L1/L0),
    and the terms the activation added (JumpReLU's L0)."""

    xs: torch.Tensor
    target: torch.Tensor
    pre: torch.Tensor
    vals: torch.Tensor
    idx: torch.Tensor | None
    x_hat: torch.Tensor
    weighted: torch.Tensor | None  # None when no loss term reads it
    terms: dict[str, torch.Tensor]


@dataclass
class StepOutput:
    """One micro-batch: loss parts (floats), codes and reconstruction in raw units."""

    losses: dict[str, float]
    codes: Codes
    x_hat: torch.Tensor


class TrainableSAE:
    """Parameters, optimizer and running statistics of one SAE being trained."""

    def __init__(
        self, name: str, site: Site, cfg: TrainConfig, d_in: int, total_steps: int,
        device: str = "cpu", *, output_site: Site | None = None, d_out: int | None = None,
    ) -> None:  # fmt: skip
        self.name, self.site, self.cfg = name, site, cfg
        self.transcoder = cfg.kind == "transcoder"
        self.output_site = output_site or (Site(site.layer, TRANSCODER_SITES[1])
                                           if self.transcoder else site)  # fmt: skip
        self.d_in, self.d_sae = d_in, d_sae_for(cfg, d_in)
        self.d_out = d_out or d_in
        self.total_steps = total_steps
        self.device = torch.device(device)
        self.arch = cfg.architecture
        self.architecture = get_architecture(cfg.architecture)
        self.base_lr = cfg.learning_rate or 2e-4 / math.sqrt(self.d_sae / 2**14)
        self.params = self._init_params()
        fused = self.device.type in ("cpu", "cuda")
        # What Adam steps: each parameter, or for the latent-major W_enc its contiguous
        # transpose (same storage): the fused step would copy a strided tensor both ways.
        self.stepped = {k: _dense_alias(p) for k, p in self.params.items()}
        groups = [{"params": [p for k, p in self.stepped.items() if k != "threshold"],
                   "lr_scale": 1.0}]  # fmt: skip
        if "threshold" in self.params:
            groups.append({"params": [self.stepped["threshold"]],
                           "lr_scale": THRESHOLD_LR_SCALE})  # fmt: skip
        self.opt = torch.optim.Adam(groups, lr=self.base_lr, fused=fused)
        self.since_fired = torch.zeros(self.d_sae, dtype=torch.int64, device=self.device)
        self.density_ema = torch.zeros(self.d_sae, dtype=torch.float32, device=self.device)
        self.scale = torch.ones((), dtype=torch.float64)
        self.out_scale = self.scale  # the target's scale: a transcoder's is its own
        self.batchtopk_threshold = torch.full((), -1.0, dtype=torch.float64)
        # TopK in fp32 encodes through `topk_encode` (a backward pass over the k selected
        # latents only); the same values and gradients as `_encode` + `train_codes`.
        self._sparse_topk = cfg.architecture == "topk" and cfg.precision == "fp32"
        self.initialised = False
        # Under data-parallel torchrun: sums the firing counts and BatchTopK's statistics
        # over the ranks, so all take the step of the whole micro-batch (train/ranks.py).
        self.reducer: Any = None

    # -- parameters ------------------------------------------------------------------------
    def _init_params(self) -> dict[str, torch.nn.Parameter]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.site.layer)
        w_dec = torch.randn(self.d_sae, self.d_out, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        enc_scale = self.architecture.encoder_init_scale
        # An SAE's encoder starts as its decoder's transpose; a transcoder's input space is
        # another one than its output's, so its encoder directions are drawn on their own.
        w_in = w_dec
        if self.transcoder:
            w_in = torch.randn(self.d_sae, self.d_in, generator=gen)
            w_in /= w_in.norm(dim=1, keepdim=True)
        params = {
            # [d_in, d_sae] stored latent-major (column-major): the sparse encoder backward
            # builds its gradient latent by latent, so it lands in this layout without the
            # transpose copy (as large as W_enc) a row-major W_enc would need every step
            "W_enc": (w_in * enc_scale).T.clone(memory_format=torch.preserve_format),
            "b_enc": torch.zeros(self.d_sae),
            "W_dec": w_dec,
            "b_dec": torch.zeros(self.d_out),
        }
        params.update(self.architecture.init_train_params(self.cfg, self.d_sae))
        if self.cfg.skip:  # starts as no skip: the dictionary and the skip grow together
            params["W_skip"] = torch.zeros(self.d_in, self.d_out)
        return {k: torch.nn.Parameter(v.to(self.device)) for k, v in params.items()}

    @torch.no_grad()
    def initialise(self, x: torch.Tensor, y: torch.Tensor | None = None,
                   stats: LazyMoments | None = None) -> None:  # fmt: skip
        """Scales and b_dec from the first pool of raw activations `[n, d_in]` (and a
        transcoder's targets `y [n, d_out]`); `stats` holds their moments by site when the
        caller shares them."""
        x = x.to(self.device)
        if stats is None:
            stats = LazyMoments({self.site: x, self.output_site: x if y is None else y})
        x_moments = stats[self.site]
        self.scale = self.out_scale = _unit_variance_scale(x_moments, self.d_in)
        target, target_mean = x, x_moments.mean
        if self.transcoder:
            if y is None:
                raise ValueError(f"{self.name}: a transcoder needs its target activations")
            target = y.to(self.device)
            y_moments = stats[self.output_site]
            target_mean = y_moments.mean
            self.out_scale = _unit_variance_scale(y_moments, self.d_out)
        s = float(self.out_scale)
        init = self.cfg.b_dec_init
        if init == "mean":
            b = target_mean * s
        elif init == "geometric_median":
            b = geometric_median(target[:GEOMEDIAN_TOKENS]) * s
        else:
            b = torch.zeros_like(target_mean)
        self.params["b_dec"].copy_(b.float())
        self.initialised = True

    @property
    def W_dec(self) -> torch.Tensor:
        return self.params["W_dec"]

    # -- forward -----------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _encode(self, xs: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.transcoder:  # b_dec lives in the output space: nothing to subtract
            with self._autocast():
                pre = xs @ p["W_enc"]
            return pre.float() + p["b_enc"]
        b_dec = p["b_dec"]
        with self._autocast():
            pre = (xs - b_dec.detach()) @ p["W_enc"]
        # b_dec's gradient through the encoder is -Σ_t ∂L/∂pre_t · W_encᵀ: routed through this
        # zero-valued term it costs a matrix-vector product instead of the [n, d_sae] x
        # [d_sae, d_in] input-gradient matmul autograd would otherwise run.
        return pre.float() + (b_dec.detach() - b_dec) @ p["W_enc"] + p["b_enc"]

    def _decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor,
                       order: LatentOrder | None) -> torch.Tensor:  # fmt: skip
        w_dec, b_dec = self.params["W_dec"], self.params["b_dec"]
        if order is not None:  # the sparse TopK path: its backward shares the encoder's sort
            return sparse_decode(vals, idx, w_dec, order) + b_dec
        return F.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum") + b_dec

    def _decode_dense(self, acts: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = acts @ self.params["W_dec"]
        return out.float() + self.params["b_dec"]

    def _skip_term(self, xs: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            out = xs @ self.params["W_skip"]
        return out.float()

    def _target(self, xs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if not self.transcoder:
            return xs
        if y is None:
            raise ValueError(f"{self.name}: a transcoder needs its target activations")
        return y.to(self.device, torch.float32) * float(self.out_scale)

    def micro_step(self, x: torch.Tensor, step: int, scale_loss: float,
                   y: torch.Tensor | None = None) -> StepOutput:  # fmt: skip
        """Forward and backward on one micro-batch of raw activations (and a transcoder's
        raw targets `y`); grads accumulate. The output is on `y`'s raw scale."""
        fwd = self.forward(x, y)
        terms = self.loss_terms(fwd, step)
        (sum(terms.values()) * scale_loss).backward()
        return self.finish(fwd, terms)

    def train_rows(self, acts: dict[Site, torch.Tensor], rows: torch.Tensor, step: int,
                   scale_loss: float) -> tuple[torch.Tensor, StepOutput]:  # fmt: skip
        """`micro_step` on rows `rows` of a pool's activations; (raw target, output)."""
        x = acts[self.site][rows]
        if not self.transcoder:
            return x, self.micro_step(x, step, scale_loss)
        y = acts[self.output_site][rows]
        return y, self.micro_step(x, step, scale_loss, y)

    def initialise_from(self, acts: dict[Site, torch.Tensor],
                        stats: LazyMoments | None = None) -> None:  # fmt: skip
        """`initialise` from a pool's activations at this dictionary's sites (`stats`: their
        moments, shared by every dictionary of the pool)."""
        y = acts[self.output_site] if self.transcoder else None
        self.initialise(acts[self.site], y, stats)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Forward:
        """Codes and reconstruction of raw `x` (rescaled), and the activation's own terms."""
        p = self.params
        xs = x.to(self.device, torch.float32) * float(self.scale)
        target = self._target(xs, y)
        terms: dict[str, torch.Tensor] = {}
        if self._sparse_topk:
            b_dec = None if self.transcoder else p["b_dec"]
            order = LatentOrder()  # one sort of the firings for both backward passes
            codes_vals, codes_idx, pre = topk_encode(xs, b_dec, p["W_enc"], p["b_enc"],
                                                     self.cfg.top_k, order)  # fmt: skip
        else:
            order = None
            pre = self._encode(xs)
            codes_vals, codes_idx = self.architecture.train_codes(self, pre, terms)
        norms = p["W_dec"].norm(dim=1) if self._needs_weighted() else None
        weighted = None
        if codes_idx is not None:
            x_hat = self._decode_sparse(codes_vals, codes_idx, order)
            if norms is not None:
                weighted = codes_vals * norms[codes_idx]
        else:
            x_hat = self._decode_dense(codes_vals)
            if norms is not None:
                weighted = codes_vals * norms
        if "W_skip" in p:
            x_hat = x_hat + self._skip_term(xs)
        return Forward(xs, target, pre, codes_vals, codes_idx, x_hat, weighted, terms)

    def _needs_weighted(self) -> bool:
        """Whether a loss term reads the norm-weighted codes (L1, smooth L0)."""
        cfg = self.cfg
        return cfg.l1_penalty > 0 or (cfg.sparsity_penalty > 0
                                      and not self.architecture.owns_l0_penalty)  # fmt: skip

    def loss_terms(self, fwd: Forward, step: int) -> dict[str, torch.Tensor]:
        """Every loss term of `fwd`, read against `fwd.x_hat` (a CLT adds its cross-layer
        terms to it first)."""
        cfg, terms = self.cfg, fwd.terms
        residual = fwd.target - fwd.x_hat
        terms["mse"] = residual.pow(2).sum(-1).mean() / self.d_out
        weighted = fwd.weighted
        if weighted is None and self._needs_weighted():  # cfg changed since the forward
            raise ValueError(f"{self.name}: forward ran without the norm-weighted codes")
        if cfg.l1_penalty > 0 and weighted is not None:
            terms["l1"] = cfg.l1_penalty * weighted.sum(-1).mean() / self.d_out
        smooth_l0 = cfg.sparsity_penalty > 0 and not self.architecture.owns_l0_penalty
        if smooth_l0 and weighted is not None:
            terms["l0"] = (cfg.sparsity_penalty * torch.tanh(weighted).sum(-1).mean()
                           / self.d_out)  # fmt: skip
        if cfg.diversity_loss_weight > 0:
            terms["diversity"] = self._diversity(fwd.vals, fwd.idx)
        if cfg.auxk_alpha > 0:
            terms["auxk"] = self._auxk(fwd.pre, residual)
        if cfg.decoder_orthogonality_weight > 0:
            terms["orthogonality"] = self._orthogonality(step)
        return terms

    @torch.no_grad()
    def finish(self, fwd: Forward, terms: dict[str, torch.Tensor]) -> StepOutput:
        """Bookkeeping after the backward pass; the step's output on the raw target scale."""
        self._bookkeep(fwd.vals, fwd.idx, fwd.xs.shape[0])
        inv = 1.0 / float(self.out_scale)
        codes = Codes(fwd.vals.detach() * inv, fwd.idx, self.d_sae)
        return StepOutput({k: float(v) for k, v in terms.items()}, codes,
                          fwd.x_hat.detach() * inv)  # fmt: skip

    def _diversity(self, vals: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        over = (self.density_ema > self.cfg.diversity_target_density).to(vals.dtype)
        if not bool(over.any()):
            return vals.new_zeros(())
        mask = over[idx] if idx is not None else over
        return self.cfg.diversity_loss_weight * (vals * mask).sum(-1).mean()

    def _auxk(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        dead = self.since_fired > self.cfg.dead_feature_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k_aux = min(self.d_out // 2, n_dead)
        scale = min(n_dead / (self.d_out // 2), 1.0)
        masked = torch.where(dead[None], pre, -torch.inf)
        top = masked.topk(k_aux, dim=-1, sorted=False)
        e_hat = F.embedding_bag(top.indices, self.params["W_dec"],
                                per_sample_weights=F.relu(top.values), mode="sum")  # fmt: skip
        e = residual.detach()
        return self.cfg.auxk_alpha * scale * (e_hat - e).pow(2).sum(-1).mean() / self.d_out

    def _orthogonality(self, step: int) -> torch.Tensor:
        w = self.params["W_dec"]
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-8)
        gen = torch.Generator().manual_seed(self.cfg.seed * 7_919 + step)
        rows = torch.randperm(self.d_sae, generator=gen)[:ORTHO_SAMPLE_ROWS].to(self.device)
        gram = w[rows] @ w.T
        gram = gram.scatter(1, rows[:, None], 0.0)
        # the absorption metric (max |cos| to any other row), squared, on the sampled rows
        return self.cfg.decoder_orthogonality_weight * gram.abs().amax(-1).pow(2).mean()

    def _bookkeep(self, vals: torch.Tensor, idx: torch.Tensor | None, n: int) -> None:
        if idx is not None:
            count = torch.bincount(idx[vals > 0], minlength=self.d_sae)
        else:
            count = (vals > 0).sum(0)
        if self.reducer is not None:  # the whole micro-batch's counts, on every rank
            count = self.reducer.sum_(count.to(torch.int64))
            n = n * self.reducer.size
        self.since_fired = torch.where(count > 0, 0, self.since_fired + n)
        alpha = min(1.0, n / DENSITY_WINDOW_TOKENS)
        self.density_ema.mul_(1 - alpha).add_(count.float() / n, alpha=alpha)

    # -- optimizer step ------------------------------------------------------------------
    def optimizer_step(self, step: int) -> float:
        """Adam step with the scheduled learning rate; returns it."""
        lr = self.base_lr * lr_factor(step, self.total_steps, self.cfg.lr_warmup_steps,
                                      self.cfg.lr_decay_fraction)  # fmt: skip
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        w = self.params["W_dec"]
        with torch.no_grad():
            if w.grad is not None:  # keep updates tangent to the unit sphere
                w.grad.addcmul_((w.grad * w).sum(1, keepdim=True), w, value=-1)
        for k, alias in self.stepped.items():
            if alias is not self.params[k]:
                grad = self.params[k].grad
                alias.grad = grad.T if grad is not None else None  # the alias is param.T
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for param in self.params.values():
            param.grad = None
        with torch.no_grad():
            w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-8))
            if "threshold" in self.params:
                self.params["threshold"].clamp_(min=1e-6)
        return lr

    # -- state -----------------------------------------------------------------------------
    @property
    def _buffers(self) -> tuple[str, ...]:
        return _TRANSCODER_BUFFERS if self.transcoder else _BUFFERS

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.detach().cpu().clone() for k, v in self.params.items()},
            "optimizer": self.opt.state_dict(),
            "layout": OPTIMIZER_LAYOUT,
            "buffers": {k: getattr(self, k).detach().cpu().clone() for k in self._buffers},
            "initialised": self.initialised,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        alias = self.stepped["W_enc"]
        if state.get("layout") != OPTIMIZER_LAYOUT and alias is not self.params["W_enc"]:
            _transpose_moments(self.opt, alias)  # moments saved for a row-major W_enc
        for k in self._buffers:
            value = state["buffers"][k]
            keep_device = k in ("since_fired", "density_ema")
            setattr(self, k, value.to(self.device) if keep_device else value)
        if not self.transcoder:  # an SAE's target is its input
            self.out_scale = self.scale
        self.initialised = bool(state["initialised"])

    # -- export ------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, model_name: str | None, metadata: dict[str, Any]) -> SAE:
        """The trained SAE on raw activations (scale folded into the biases/thresholds)."""
        if self.transcoder:
            return self._export_transcoder(model_name, metadata)
        s = float(self.scale)
        p = {k: v.detach().float().cpu() for k, v in self.params.items()}
        cfg = SAEConfig(self.arch, self.d_in, self.d_sae, k=self.architecture.export_k(self),
                        site=self.site, model_name=model_name, metadata=metadata)  # fmt: skip
        sae = SAE(cfg)
        tensors = {"W_enc": p["W_enc"], "b_enc": p["b_enc"] / s, "W_dec": p["W_dec"],
                   "b_dec": p["b_dec"] / s}  # fmt: skip
        tensors.update(self.architecture.export_tensors(self, s))
        sae.load_weights(tensors, self.name)
        self.architecture.finish_export(self, sae, s)
        return sae.requires_grad_(False)

    def save(self, exported: SAE, directory: Path) -> Path:
        """Write what `export` returned (saedoctor's native layout)."""
        return save_sae(exported, directory)

    def trainer_fields(self) -> dict[str, Any]:
        """What the exported dictionary's metadata records about this training."""
        fields: dict[str, Any] = {"effective_learning_rate": self.base_lr, "d_sae": self.d_sae,
                                  "input_scale": float(self.scale)}  # fmt: skip
        if self.transcoder:
            fields.update(output_site=self.output_site.kind, output_scale=float(self.out_scale))
        return fields

    def _export_transcoder(self, model_name: str | None, metadata: dict[str, Any]) -> SAE:
        """Trained on `x' = s_in·x` towards `y' = s_out·y`: pre-activations, codes, thresholds
        and biases divided by s_out give the same dictionary on raw x, predicting raw y."""
        s_in, s_out = float(self.scale), float(self.out_scale)
        p = {k: v.detach().float().cpu() for k, v in self.params.items()}
        cfg = SAEConfig(self.arch, self.d_in, self.d_sae, k=self.architecture.export_k(self),
                        apply_b_dec_to_input=False, site=self.site, model_name=model_name,
                        metadata=metadata, output_site=self.output_site, d_out=self.d_out,
                        skip=self.cfg.skip)  # fmt: skip
        sae = SAE(cfg)
        ratio = s_in / s_out
        tensors = {"W_enc": p["W_enc"] * ratio, "b_enc": p["b_enc"] / s_out,
                   "W_dec": p["W_dec"], "b_dec": p["b_dec"] / s_out}  # fmt: skip
        if self.cfg.skip:
            tensors["W_skip"] = p["W_skip"] * ratio
        tensors.update(self.architecture.export_tensors(self, s_out))
        sae.load_weights(tensors, self.name)
        self.architecture.finish_export(self, sae, s_out)
        return sae.requires_grad_(False)


def _dense_alias(param: torch.nn.Parameter) -> torch.Tensor:
    """`param`, or a leaf sharing its memory in the contiguous layout `dense_view` finds."""
    view = dense_view(param)
    return param if view is param else view.detach().requires_grad_()


def _transpose_moments(opt: torch.optim.Optimizer, alias: torch.Tensor) -> None:
    """Adam moments a checkpoint holds in W_enc's `[d_in, d_sae]` orientation, turned to the
    stepped alias's `[d_sae, d_in]`."""
    state = opt.state.get(alias, {})
    for key, value in state.items():
        if torch.is_tensor(value) and value.dim() == 2:
            state[key] = value.T.contiguous()


def _unit_variance_scale(m: Moments, width: int) -> torch.Tensor:
    """`s` with `E‖s·(x - mean)‖² = width`: unit variance per dimension on average (float64)."""
    var = max(m.total_variance, 1e-12)
    return torch.sqrt(torch.tensor(width / var, dtype=torch.float64))
