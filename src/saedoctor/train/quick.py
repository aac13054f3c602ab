"""A small TopK trainer with AuxK, good enough to make real SAEs for tests and the default.

Follows EleutherAI sparsify: encoder initialised at random, decoder rows = normalised
encoder columns and kept unit-norm (the gradient parallel to each row is removed before the
step), `b_dec` set to the mean of the first activations, loss = FVU + auxk_alpha · AuxK where
AuxK asks the dead latents to reconstruct the residual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch

from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import Site


@dataclass
class QuickTrainConfig:
    expansion_factor: int = 8
    k: int = 32
    learning_rate: float | None = None  # None: sparsify's 2e-4 / sqrt(d_sae / 2**14)
    batch_tokens: int = 1024
    shuffle_tokens: int = 32768
    auxk_alpha: float = 1 / 32
    dead_tokens_threshold: int = 100_000
    seed: int = 0


@dataclass
class TrainState:
    steps: int = 0
    tokens: int = 0
    last_fvu: float = math.nan


def init_topk_sae(d_in: int, cfg: QuickTrainConfig, site: Site | None) -> SAE:
    sae = SAE(SAEConfig("topk", d_in, d_in * cfg.expansion_factor, k=cfg.k, site=site))
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        bound = 1 / math.sqrt(d_in)
        sae.W_enc.copy_(torch.empty(d_in, sae.cfg.d_sae).uniform_(-bound, bound, generator=gen))
        sae.W_dec.copy_(sae.W_enc.T)
        normalise_decoder(sae)
    return sae


@torch.no_grad()
def normalise_decoder(sae: SAE) -> None:
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def remove_parallel_grad(sae: SAE) -> None:
    """Keep updates tangent to the unit sphere so the norm constraint does not fight Adam."""
    if sae.W_dec.grad is None:
        return
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1, keepdim=True)
    sae.W_dec.grad.sub_(parallel * sae.W_dec)


def shuffled_minibatches(
    activations: Iterable[torch.Tensor], cfg: QuickTrainConfig
) -> Iterator[torch.Tensor]:
    """Mix tokens from many sequences: consecutive tokens of one text are strongly correlated."""
    gen = torch.Generator().manual_seed(cfg.seed)
    buffer: list[torch.Tensor] = []
    held = 0
    for acts in activations:
        buffer.append(acts.float())
        held += acts.shape[0]
        if held >= cfg.shuffle_tokens:
            yield from _drain(torch.cat(buffer), cfg.batch_tokens, gen)
            buffer, held = [], 0
    if buffer:
        yield from _drain(torch.cat(buffer), cfg.batch_tokens, gen)


def _drain(pool: torch.Tensor, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(pool.shape[0], generator=gen)
    for start in range(0, pool.shape[0] - size + 1, size):
        yield pool[order[start : start + size]]


def auxk_loss(
    sae: SAE, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, variance: torch.Tensor
) -> torch.Tensor:
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(sae.cfg.d_in // 2, n_dead)
    scale = min(n_dead / (sae.cfg.d_in // 2), 1.0)
    masked = torch.where(dead[None], pre, -torch.inf)
    top = masked.topk(k_aux, sorted=False)
    codes = Codes(torch.relu(top.values), top.indices, sae.cfg.d_sae)
    e_hat = sae.decode(codes) - sae.b_dec
    return scale * (e_hat - residual.detach()).pow(2).sum() / variance


def train_topk_sae(
    activations: Iterable[torch.Tensor],
    d_in: int,
    cfg: QuickTrainConfig,
    site: Site | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> SAE:
    """Train a TopK SAE on a stream of `[n, d_in]` activation tensors."""
    torch.manual_seed(cfg.seed)
    sae = init_topk_sae(d_in, cfg, site)
    lr = cfg.learning_rate or 2e-4 / math.sqrt(sae.cfg.d_sae / 2**14)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    state = TrainState()
    for x in shuffled_minibatches(activations, cfg):
        if state.steps == 0:
            with torch.no_grad():
                sae.b_dec.copy_(x.mean(0))
        pre = sae.pre_acts(x)
        top = pre.topk(cfg.k, sorted=False)
        codes = Codes(torch.relu(top.values), top.indices, sae.cfg.d_sae)
        x_hat = sae.decode(codes)
        residual = x - x_hat
        variance = (x - x.mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / variance
        dead = since_fired > cfg.dead_tokens_threshold
        loss = fvu + cfg.auxk_alpha * auxk_loss(sae, pre, residual, dead, variance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        remove_parallel_grad(sae)
        opt.step()
        normalise_decoder(sae)
        fired = torch.zeros_like(since_fired)
        fired[codes.indices[codes.values > 0]] = 1
        since_fired = torch.where(fired.bool(), 0, since_fired + x.shape[0])
        state.steps += 1
        state.tokens += x.shape[0]
        state.last_fvu = float(fvu.detach())
        if on_step is not None:
            on_step(state)
    sae.cfg.metadata["trainer"] = {
        "name": "saedoctor.quick_topk", "b_dec_init": "mean", **asdict(cfg), "lr": lr,
    }  # fmt: skip
    sae.cfg.metadata["training_tokens"] = state.tokens
    sae.requires_grad_(False)
    return sae
