"""Where activations are read: a site kind at a 0-based decoder-block index."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saedoctor.errors import InputError

SITE_KINDS = ("resid_post", "resid_pre", "mlp_in", "mlp_out", "attn_out")

# Transcoders read the MLP's input and write its output; SAEs may sit anywhere.
TRANSCODER_INPUT_KINDS = ("mlp_in",)
TRANSCODER_OUTPUT_KINDS = ("mlp_out",)

_SAELENS_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_in|mlp_out|attn_out)$")
# Other TransformerLens names that transcoder files use for the MLP's input and output.
_TL_MLP_HOOK = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|mlp\.hook_in|mlp\.hook_out)$")
_LAYER_ONLY = re.compile(
    r"^(?:model\.)?(?:layers|h|blocks|transformer\.h|gpt_neox\.layers)\.(\d+)$"
)
_SPARSIFY_SUB = re.compile(
    r"^(?:model\.)?(?:layers|transformer\.h|gpt_neox\.layers)\.(\d+)"
    r"\.(mlp|self_attn|attn|attention)(?:\.(input|output))?$"
)


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
        return f"{self.hook_name} (block {self.layer} {self.kind}{_equivalent(self)})"

    def __str__(self) -> str:
        return self.hook_name


def _equivalent(site: Site) -> str:
    # The same point under another library's name, so a reader can match it to their own.
    if site.kind == "resid_post":
        return f" = HF hidden_states[{site.layer + 1}]"
    if site.kind == "resid_pre":
        return f" = HF hidden_states[{site.layer}]"
    if site.kind == "mlp_in":
        return f" = MLP input after the pre-MLP norm, TL blocks.{site.layer}.ln2.hook_normalized"
    return ""


def is_transcoder_site(kind: str, role: str) -> bool:
    """Whether a site of `kind` can be a transcoder's `role` ("input" or "output")."""
    if role == "input":
        return kind in TRANSCODER_INPUT_KINDS
    if role == "output":
        return kind in TRANSCODER_OUTPUT_KINDS
    raise ValueError(f"role {role!r}: expected 'input' or 'output'")


def parse_hook_name(name: str) -> Site | None:
    """Site from a SAELens / TransformerLens hook name, a sparsify hookpoint or an HF
    module path (`model.layers.L.mlp` is the MLP's output; `.mlp.input` its input);
    None when unrecognised."""
    name = name.strip()
    if m := _SAELENS_HOOK.match(name):
        return Site(int(m.group(1)), m.group(2))
    if m := _TL_MLP_HOOK.match(name):
        return Site(int(m.group(1)), "mlp_out" if m.group(2) == "mlp.hook_out" else "mlp_in")
    if m := _LAYER_ONLY.match(name):
        return Site(int(m.group(1)), "resid_post")
    if m := _SPARSIFY_SUB.match(name):
        return _module_site(int(m.group(1)), m.group(2), m.group(3))
    return None


def _module_site(layer: int, module: str, end: str | None) -> Site | None:
    if module != "mlp":
        # An attention module's input is a normed residual no site kind names.
        return None if end == "input" else Site(layer, "attn_out")
    return Site(layer, "mlp_in" if end == "input" else "mlp_out")
