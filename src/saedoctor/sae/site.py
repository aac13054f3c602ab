"""Where activations are read: a site kind at a 0-based decoder-block index."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saedoctor.errors import InputError

SITE_KINDS = ("resid_post", "resid_pre", "mlp_out", "attn_out")

_SAELENS_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)$")
_LAYER_ONLY = re.compile(
    r"^(?:model\.)?(?:layers|h|blocks|transformer\.h|gpt_neox\.layers)\.(\d+)$"
)
_SPARSIFY_SUB = re.compile(r"^(?:model\.)?layers\.(\d+)\.(mlp|self_attn|attn)$")


@dataclass(frozen=True, order=True)
class Site:
    """A read-out point in the model. `resid_post` of block L is HF `hidden_states[L+1]`."""

    layer: int
    kind: str = "resid_post"

    def __post_init__(self) -> None:
        if self.kind not in SITE_KINDS:
            raise InputError(f"site kind {self.kind!r}: expected one of {', '.join(SITE_KINDS)}")
        if self.layer < 0:
            raise InputError(f"layer {self.layer}: expected a 0-based block index >= 0")

    @property
    def hook_name(self) -> str:
        """The SAELens / TransformerLens name of this site."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    def describe(self) -> str:
        hf = f"HF hidden_states[{self.layer + 1}]" if self.kind == "resid_post" else None
        if self.kind == "resid_pre":
            hf = f"HF hidden_states[{self.layer}]"
        extra = f" = {hf}" if hf else ""
        return f"{self.hook_name} (block {self.layer} {self.kind}{extra})"

    def __str__(self) -> str:
        return self.hook_name


def parse_hook_name(name: str) -> Site | None:
    """Site from a SAELens hook name or a sparsify hookpoint; None when unrecognised."""
    name = name.strip()
    if m := _SAELENS_HOOK.match(name):
        return Site(int(m.group(1)), m.group(2))
    if m := _LAYER_ONLY.match(name):
        return Site(int(m.group(1)), "resid_post")
    if m := _SPARSIFY_SUB.match(name):
        kind = "mlp_out" if m.group(2) == "mlp" else "attn_out"
        return Site(int(m.group(1)), kind)
    return None
