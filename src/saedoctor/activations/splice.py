"""Downstream runs: the clean forward to the logits, and the same forward with one site replaced.

The clean pass captures every site (mlp_in too, the input a transcoder reads) and the inputs
of every decoder block. A patched run then starts at the first block the replacement
affects, from those captured inputs, instead of recomputing the unchanged prefix: an SAE
at block 22 of 30 costs 8 blocks, not 30. The first clean pass checks that restarting from
captured inputs reproduces the model's own logits; models where it does not (an unusual
head, say) fall back to full patched forwards.

Zero-ablating a residual-stream site costs almost nothing: every position then enters the
remaining blocks with the same (zero) vector, attention averages identical values whatever
its weights, so every position leaves with the same logits, and one token's forward gives
them. The first batch checks that against a full ablated run and falls back if it differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saedoctor.activations.sites import (
    INPUT_KINDS,
    _first_tensor,
    decoder_blocks,
    module_input,
    site_module,
    with_module_input,
)
from saedoctor.activations.unembed import final_norm_and_head
from saedoctor.sae.site import Site


@dataclass(frozen=True)
class Replacer:
    """Replace `output_site` with `fn(input, output)`, `input` read at `input_site` (an
    input kind: mlp_in or resid_pre) in the same run."""

    input_site: Site
    output_site: Site
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def start_block(site: Site) -> int:
    """First block whose computation a replacement at `site` changes (mlp_in and the other
    sublayer sites sit inside their block, so that block reruns)."""
    return site.layer + 1 if site.kind == "resid_post" else site.layer


class Splicer:
    """Clean logits + site activations in one forward, then patched logits per replacement."""

    def __init__(self, model: nn.Module, sites: Iterable[Site]) -> None:
        self.model = model
        self.sites = tuple(dict.fromkeys(sites))
        self.blocks = decoder_blocks(model)
        self.first = min(start_block(s) for s in self.sites)
        self.norm, self.head = final_norm_and_head(model)
        self.resumable: bool | None = None if self.norm and self.head else False
        self._inputs: dict[int, tuple[tuple, dict]] = {}
        self._acts: dict[Site, torch.Tensor] = {}
        self._input_ids: torch.Tensor | None = None
        self._ablated: dict[Site, torch.Tensor] = {}
        self._ablated_checked: dict[Site, bool] = {}

    # -- clean pass -----------------------------------------------------------------------
    @torch.inference_mode()
    def clean(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict[Site, torch.Tensor]]:
        handles = [self._capture_site(s) for s in self.sites]
        # The last block's inputs are always kept: the resume check restarts from them.
        last = len(self.blocks) - 1
        handles += [self._capture_inputs(i) for i in range(min(self.first, last), last + 1)]
        try:
            logits = self.model(input_ids=input_ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()
        self._input_ids = input_ids
        if self.resumable is None:
            self.resumable = self._resume_matches(logits)
        return logits, dict(self._acts)

    def _capture_site(self, site: Site) -> Any:
        module = site_module(self.blocks[site.layer], site.kind)
        if site.kind in INPUT_KINDS:

            def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                self._acts[site] = module_input(args, kwargs).detach()

            return module.register_forward_pre_hook(pre, with_kwargs=True)

        def post(_m: nn.Module, _a: tuple, out: Any) -> None:
            self._acts[site] = _first_tensor(out).detach()

        return module.register_forward_hook(post)

    def _capture_inputs(self, index: int) -> Any:
        def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            self._inputs[index] = (args, dict(kwargs))

        return self.blocks[index].register_forward_pre_hook(pre, with_kwargs=True)

    def _resume_matches(self, logits: torch.Tensor) -> bool:
        hidden = _hidden_of(*self._inputs[len(self.blocks) - 1])
        again = self._run_from(len(self.blocks) - 1, hidden)
        # The first sequence is evidence enough, and comparing [B, T, vocab] is not free.
        return bool(torch.allclose(again[0], logits[0], rtol=1e-4, atol=1e-4))

    # -- patched runs ---------------------------------------------------------------------
    @torch.inference_mode()
    def patched(self, site: Site, replacement: torch.Tensor) -> torch.Tensor:
        """Logits with `site`'s activations replaced by `replacement [B, T, d]`."""
        if not self.resumable:
            return self._full_patched(site, replacement)
        start = start_block(site)
        if site.kind in ("resid_post", "resid_pre"):
            return self._run_from(start, replacement)
        handle = self._replace_output(site, replacement)
        try:
            return self._run_from(start, _hidden_of(*self._inputs[start]))
        finally:
            handle.remove()

    @torch.inference_mode()
    def patched_live(self, replacers: list[Replacer]) -> torch.Tensor:
        """Logits with several sites replaced at once, each by a function of what its input
        site holds *in this run* (a transcoder set: the transcoder at block 5 reads the
        stream that the transcoders below it already changed, as a replacement model does)."""
        seen: dict[Site, torch.Tensor] = {}
        handles = []
        for r in replacers:
            handles.append(self._watch_input(r.input_site, seen))
            handles.append(self._replace_with(r, seen))
        try:
            if not self.resumable:
                return self.model(input_ids=self._input_ids, use_cache=False).logits
            start = min(min(start_block(r.input_site), start_block(r.output_site))
                        for r in replacers)  # fmt: skip
            return self._run_from(start, _hidden_of(*self._inputs[start]))
        finally:
            for h in handles:
                h.remove()

    def _watch_input(self, site: Site, seen: dict[Site, torch.Tensor]) -> Any:
        module = site_module(self.blocks[site.layer], site.kind)

        def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen[site] = module_input(args, kwargs)

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def _replace_with(self, r: Replacer, seen: dict[Site, torch.Tensor]) -> Any:
        module = site_module(self.blocks[r.output_site.layer], r.output_site.kind)

        def post(_m: nn.Module, _a: tuple, out: Any) -> Any:
            value = r.fn(seen[r.input_site], _first_tensor(out))
            return value if isinstance(out, torch.Tensor) else (value, *out[1:])

        return module.register_forward_hook(post)

    @torch.inference_mode()
    def zero_ablated(self, site: Site, counted: torch.Tensor) -> torch.Tensor:
        """Logits with `site` zeroed: `[vocab]`, the same at every position, where that holds
        (residual-stream sites, checked on the first batch at `counted [B, T]` positions);
        else `[B, T, vocab]`."""
        if site.kind not in ("resid_post", "resid_pre") or self._ablated_checked.get(site) is False:
            return self.patched(site, torch.zeros_like(self._acts[site]))
        constant = self._ablated.get(site)
        if constant is None:
            constant = self._ablated[site] = self._one_token_ablated(site)
        if site not in self._ablated_checked:
            full = self.patched(site, torch.zeros_like(self._acts[site]))
            scale = max(1.0, float(constant.abs().max()))
            diff = float((full[counted] - constant).abs().max()) if counted.any() else 0.0
            self._ablated_checked[site] = diff <= 1e-4 * scale
            return full
        return constant

    def _one_token_ablated(self, site: Site) -> torch.Tensor:
        zeros = self._acts[site].new_zeros(1, 1, self._acts[site].shape[-1])
        handle = self._replace_output(site, zeros)
        try:
            return self.model(input_ids=self._input_ids[:1, :1], use_cache=False).logits[0, 0]
        finally:
            handle.remove()

    def _run_from(self, start: int, hidden: torch.Tensor) -> torch.Tensor:
        for index in range(start, len(self.blocks)):
            args, kwargs = self._inputs[index]
            kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            hidden = _first_tensor(self.blocks[index](hidden, *args[1:], **kwargs))
        logits = self.head(self.norm(hidden))
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _replace_output(self, site: Site, replacement: torch.Tensor) -> Any:
        module = site_module(self.blocks[site.layer], site.kind)
        if site.kind in INPUT_KINDS:

            def pre(_m: nn.Module, args: tuple, kwargs: dict) -> Any:
                return with_module_input(args, kwargs, replacement)

            return module.register_forward_pre_hook(pre, with_kwargs=True)

        def post(_m: nn.Module, _a: tuple, out: Any) -> Any:
            if isinstance(out, torch.Tensor):
                return replacement
            return (replacement, *out[1:])

        return module.register_forward_hook(post)

    def _full_patched(self, site: Site, replacement: torch.Tensor) -> torch.Tensor:
        handle = self._replace_output(site, replacement)
        try:
            return self.model(input_ids=self._input_ids, use_cache=False).logits
        finally:
            handle.remove()


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return module_input(args, kwargs)
