"""Pre-flight rule (a): the SAE fits another block or site far better than its declared one.

The classic case is an off-by-one `hidden_states` index: HF `hidden_states[L]` is the input
of block L (`resid_pre`), `resid_post` of block L is `hidden_states[L + 1]`; an SAE read one
block off reconstructs badly (FVU > 1 in sparsify issue #74) and every metric after it is
about the wrong activations.
"""

from __future__ import annotations

from typing import Any

from saedoctor.health.fmt import num
from saedoctor.health.preflight import (
    FIT_FVU,
    WORSE_RATIO,
    Gap,
    SiteCheck,
    SiteFit,
    clearly_worse,
    preflight_of,
)
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis

SHOWN = 4  # other sites quoted in the evidence


def misplaced(check: SiteCheck) -> bool:
    """Whether another site fits the SAE clearly better than its declared one."""
    best = check.best
    if best is None or check.gap is None:
        return False
    return clearly_worse(check.declared.fvu, best.fvu, check.gap)


def preflight_site(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    pre = preflight_of(entry)
    check = pre.site if pre is not None else None
    if check is None or not misplaced(check):
        return None
    declared, best = check.declared, check.best
    assert best is not None and check.gap is not None  # misplaced() says so
    return diagnosis(
        "preflight_site",
        f"miswired: the SAE fits {best.hook_name}, not the declared {declared.hook_name}",
        "critical",
        [_headline(declared, best, check.gap, pre.tokens), _others(check), *_hint(declared, best)],
        "Before the main pass the SAE was run on a few hundred tokens at its declared site and "
        "at the neighbouring blocks and sites. It reconstructs another site clearly better, so "
        "it was trained there: every number in this report describes activations it never "
        "saw. Evaluate it where it fits (an off-by-one block index is the usual cause).",
        [_rewire(declared, best)],
    )


def _headline(declared: SiteFit, best: SiteFit, gap: Gap, tokens: int) -> str:
    return (f"FVU {declared.fvu:.3f} at the declared {declared.hook_name} vs {best.fvu:.3f} at "
            f"{best.hook_name} on {num(tokens)} pre-flight tokens ({gap.text()}; fires when "
            f"the other site's FVU ≤ {FIT_FVU} and the declared one's is "
            f"≥ {WORSE_RATIO}× it)")  # fmt: skip


def _others(check: SiteCheck) -> str:
    shown = ", ".join(f"{c.hook_name} {c.fvu:.3f}" for c in check.candidates[:SHOWN])
    more = len(check.candidates) - SHOWN
    return f"FVU at the sites tried: {shown}" + (f" and {more} more" if more > 0 else "")


def _hint(declared: SiteFit, best: SiteFit) -> list[str]:
    residual = {"resid_post", "resid_pre"}
    if declared.kind in residual and best.kind in residual and declared.kind == best.kind:
        offset = best.layer - declared.layer
        if abs(offset) == 1:
            hf = best.layer + (1 if best.kind == "resid_post" else 0)
            return [f"one block {'too shallow' if offset > 0 else 'too deep'}: {best.hook_name} "
                    f"is HF hidden_states[{hf}] (an off-by-one hidden_states index gives "
                    "FVU > 1, sparsify issue #74)"]  # fmt: skip
    return []


def _rewire(declared: SiteFit, best: SiteFit) -> Prescription:
    return Prescription(
        field="eval_site", old=declared.hook_name, new=best.hook_name,
        why=f"a diagnose option, not a training change: rerun with --layer {best.layer} "
        f"--site {best.kind}",
    )  # fmt: skip
