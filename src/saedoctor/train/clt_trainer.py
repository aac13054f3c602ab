"""One cross-layer transcoder under training: a per-layer transcoder per block plus the
decoders from each block into every later one (`t`: a target block).

Block l's MLP output is reconstructed from the codes of every block i <= l:

    y_hat_l = b_dec_l + a_l @ W_dec_l + sum_{i < l} a_i @ W_cross[i -> l]

Each block's encoder, own decoder `W_dec_l`, bias, activation, scales and loss terms are a
`TrainableSAE` of kind transcoder (so every architecture, AuxK and the diversity loss apply
unchanged); the cross-layer decoders are extra parameters added to each target's
reconstruction before its loss terms are read. They start at zero, so training starts as a
set of per-layer transcoders, and are not norm-constrained: the own-block decoder rows stay
unit-norm and pin each feature's activation scale. The loss is the sum of the blocks' losses.

Each block trains on its own scales (input `s_in_i`, target `s_out_i`); a code of block i is
on block i's target scale, so on export a cross decoder `W'` from i into l becomes
`W' · s_out_i / s_out_l` on raw activations. The exported model is a `CrossLayerTranscoder`
in circuit-tracer's layout (blocks 0..n-1; `W_dec_i [d_t, n - i, d_model]`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.activations.moments import LazyMoments
from saedoctor.sae.clt import CrossLayerTranscoder, TensorDecoderSource
from saedoctor.sae.codes import Codes
from saedoctor.sae.loaders import save_clt
from saedoctor.sae.site import Site
from saedoctor.train.config import TRANSCODER_SITES, TrainConfig
from saedoctor.train.sae_trainer import StepOutput, TrainableSAE


def clt_sites(layers: list[int]) -> list[Site]:
    """Every site a CLT over `layers` reads: each block's MLP input and output."""
    return [Site(layer, kind) for layer in layers for kind in TRANSCODER_SITES]


class TrainableCLT:
    """Parameters, optimizers and running statistics of one CLT being trained."""

    transcoder = True

    def __init__(self, name: str, cfg: TrainConfig, d_in: int, total_steps: int,
                 device: str = "cpu", *, d_out: int | None = None) -> None:  # fmt: skip
        self.name, self.cfg = name, cfg
        per_layer = dataclasses.replace(cfg, kind="transcoder")
        self.blocks = [
            TrainableSAE(f"{name}/L{layer}", Site(layer, TRANSCODER_SITES[0]), per_layer, d_in,
                         total_steps, device, output_site=Site(layer, TRANSCODER_SITES[1]),
                         d_out=d_out)
            for layer in cfg.layers
        ]  # fmt: skip
        first = self.blocks[0]
        self.site, self.output_site = first.site, first.output_site
        self.d_in, self.d_out, self.d_sae = first.d_in, first.d_out, first.d_sae
        self.base_lr = first.base_lr
        self.cross = {
            (i, t): torch.nn.Parameter(torch.zeros(self.d_sae, self.d_out, device=first.device))
            for t in range(len(self.blocks)) for i in range(t)
        }  # fmt: skip
        fused = first.device.type in ("cpu", "cuda")
        self.cross_opt = (torch.optim.Adam(list(self.cross.values()), lr=self.base_lr,
                                           fused=fused)
                          if self.cross else None)  # fmt: skip

    # -- what the trainer reads ----------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def initialised(self) -> bool:
        return all(b.initialised for b in self.blocks)

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        out = {f"L{b.site.layer}.{k}": p for b in self.blocks for k, p in b.params.items()}
        out.update({f"cross.{i}.{t}": p for (i, t), p in self.cross.items()})
        return out

    @property
    def reducer(self) -> Any:
        return self.blocks[0].reducer

    @reducer.setter
    def reducer(self, value: Any) -> None:
        for block in self.blocks:
            block.reducer = value

    def initialise_from(self, acts: dict[Site, torch.Tensor],
                        stats: LazyMoments | None = None) -> None:  # fmt: skip
        for block in self.blocks:
            block.initialise_from(acts, stats)

    # -- one micro-batch -----------------------------------------------------------------
    def train_rows(self, acts: dict[Site, torch.Tensor], rows: torch.Tensor, step: int,
                   scale_loss: float) -> tuple[torch.Tensor, StepOutput]:  # fmt: skip
        """Forward and backward of every block on rows `rows`; (every block's raw target
        side by side `[n, n_layers·d_out]`, the step's output over all blocks)."""
        targets = [acts[b.output_site][rows] for b in self.blocks]
        fwds = [b.forward(acts[b.site][rows], y) for b, y in zip(self.blocks, targets, strict=True)]
        for (i, t), w in self.cross.items():
            fwds[t].x_hat = fwds[t].x_hat + _decode(fwds[i].vals, fwds[i].idx, w)
        terms = [b.loss_terms(f, step) for b, f in zip(self.blocks, fwds, strict=True)]
        loss = sum(sum(t.values()) for t in terms)
        (loss * scale_loss).backward()  # type: ignore[union-attr]
        outs = [b.finish(f, t) for b, f, t in zip(self.blocks, fwds, terms, strict=True)]
        return torch.cat(targets, 1), _joined(outs, self.d_sae)

    def optimizer_step(self, step: int) -> float:
        """Every block's Adam step, then the cross decoders' at the same learning rate."""
        lr = [b.optimizer_step(step) for b in self.blocks][0]
        if self.cross_opt is not None:
            for group in self.cross_opt.param_groups:
                group["lr"] = lr
            self.cross_opt.step()
            self.cross_opt.zero_grad(set_to_none=True)
        return lr

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "blocks": [b.state_dict() for b in self.blocks],
            "cross": {f"{i}.{t}": p.detach().cpu().clone() for (i, t), p in self.cross.items()},
            "cross_optimizer": self.cross_opt.state_dict() if self.cross_opt else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for block, saved in zip(self.blocks, state["blocks"], strict=True):
            block.load_state_dict(saved)
        with torch.no_grad():
            for (i, t), p in self.cross.items():
                p.copy_(state["cross"][f"{i}.{t}"])
        if self.cross_opt is not None:
            self.cross_opt.load_state_dict(state["cross_optimizer"])

    # -- export ------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, model_name: str | None, metadata: dict[str, Any]) -> CrossLayerTranscoder:
        """The trained CLT on raw activations (every scale folded)."""
        encoders = [b.export(model_name, {**metadata, "clt_source_layer": b.site.layer})
                    for b in self.blocks]  # fmt: skip
        out_scales = [float(b.out_scale) for b in self.blocks]
        w_dec = []
        for i, enc in enumerate(encoders):
            slices = [enc.W_dec.detach().float().cpu()]
            for t in range(i + 1, self.n_layers):
                ratio = out_scales[i] / out_scales[t]
                slices.append(self.cross[(i, t)].detach().float().cpu() * ratio)
            w_dec.append(torch.stack(slices, dim=1))
        return CrossLayerTranscoder(encoders, TensorDecoderSource(w_dec, self.name), self.name)

    def save(self, exported: CrossLayerTranscoder, directory: Path) -> Path:
        """Write the CLT in circuit-tracer's layout (which `saedoctor diagnose` reads)."""
        return save_clt(exported, directory)

    def trainer_fields(self) -> dict[str, Any]:
        return {"effective_learning_rate": self.base_lr, "d_sae": self.d_sae,
                "clt_layers": [b.site.layer for b in self.blocks],
                "input_scales": [float(b.scale) for b in self.blocks],
                "output_scales": [float(b.out_scale) for b in self.blocks]}  # fmt: skip


def _decode(vals: torch.Tensor, idx: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
    if idx is None:
        return vals @ w
    return F.embedding_bag(idx, w, per_sample_weights=vals, mode="sum")


def _joined(outs: list[StepOutput], d_sae: int) -> StepOutput:
    """The blocks' outputs as one: losses summed, codes and reconstructions side by side."""
    losses: dict[str, float] = {}
    for out in outs:
        for key, value in out.losses.items():
            losses[key] = losses.get(key, 0.0) + value
    codes = [o.codes for o in outs]
    values = torch.cat([c.values for c in codes], 1)
    indices = None
    if codes[0].indices is not None:
        indices = torch.cat([c.indices + j * d_sae for j, c in enumerate(codes)], 1)
    joined = Codes(values, indices, d_sae * len(outs))
    return StepOutput(losses, joined, torch.cat([o.x_hat for o in outs], 1))
